"""Pure geometry metrics: tensors in, numbers out.

All scatter computations accumulate in float64 and use that the between-class
scatter has rank at most K-1: no d x d pseudo-inverse is ever formed, so d can be
several thousand.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def class_means(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means and counts.

    Args:
        H: (N, d) features; y: (N,) labels in ``0..K-1``.
    Returns:
        means: (K, d) float64 class means; counts: (K,) float64 class sizes.
    Raises:
        ValueError: on shape mismatch or an empty class.
    """
    if H.dim() != 2 or y.dim() != 1 or H.shape[0] != y.shape[0]:
        raise ValueError(f"expected H (N, d) and y (N,), got {tuple(H.shape)} and {tuple(y.shape)}")
    K = int(y.max().item()) + 1 if num_classes is None else num_classes
    H64 = H.to(torch.float64)
    counts = torch.bincount(y, minlength=K).to(H64)
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no examples")
    onehot = torch.zeros(K, H.shape[0], dtype=torch.float64, device=H.device)
    onehot[y, torch.arange(H.shape[0], device=H.device)] = 1.0
    return (onehot @ H64) / counts[:, None], counts  # a GEMM beats a scatter-add at large d


def _psd_pinv(G: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Pseudo-inverse of a small symmetric PSD matrix by eigendecomposition (float64)."""
    evals, evecs = torch.linalg.eigh(G)
    tol = (rtol if rtol is not None else G.shape[0] * torch.finfo(G.dtype).eps) * evals.abs().max()
    inv = torch.where(evals > tol, 1.0 / evals, torch.zeros_like(evals))
    return (evecs * inv) @ evecs.T


def within_between_trace(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                         weighting: str = "size", rtol: float | None = None) -> float:
    """Tr(Sigma_W Sigma_B^+) without forming a d x d pseudo-inverse.

    ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and
    ``Sigma_B = sum_k pi_k (mu_k - mu)(mu_k - mu)^T`` with ``pi_k = n_k/N`` and ``mu`` the global
    mean (``weighting="size"``, the equi-separation paper), or ``pi_k = 1/K`` and ``mu`` the mean
    of the class means (``weighting="uniform"``, Papyan et al.'s Sigma_B).

    Writing ``Sigma_B = M^T M`` with ``M = diag(sqrt(pi)) (means - mu)`` of shape (K, d),
    ``Sigma_B^+ = M^T G^+ G^+ M`` with the K x K Gram ``G = M M^T``, hence
    ``Tr(Sigma_W Sigma_B^+) = Tr(G^+ G^+ Z^T Z / N)`` with ``Z = (H - mu_y) M^T`` of shape (N, K).
    Cost O(N d K) rather than O(d^3).
    """
    means, counts = class_means(H, y, num_classes)
    K = means.shape[0]
    if K < 2:
        raise ValueError("need at least two classes for a between-class scatter")
    if weighting == "size":
        pi = counts / counts.sum()
    elif weighting == "uniform":
        pi = torch.full_like(counts, 1.0 / K)
    else:
        raise ValueError(f"weighting must be 'size' or 'uniform', got {weighting!r}")
    mu = pi @ means
    M = pi.sqrt()[:, None] * (means - mu)  # (K, d)
    Z = H.to(torch.float64) @ M.T - (means @ M.T)[y]  # (N, K) = (H - mu_y) M^T, no (N, d) temporary
    A = Z.T @ Z / H.shape[0]  # M Sigma_W M^T
    Gp = _psd_pinv(M @ M.T, rtol)
    return float(torch.trace(Gp @ Gp @ A))


def separation_fuzziness(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """Separation fuzziness D = Tr(SS_w SS_b^+) of He & Su (2023).

    SS_b weights each class by its size n_k/N, so imbalanced classes are handled.
    For balanced classes ``D = K * NC1`` with Papyan et al.'s NC1 = Tr(Sigma_W Sigma_B^+)/K.

    Args:
        H: (N, d) features; y: (N,) labels in ``0..K-1``.
    Returns:
        D as a Python float (computed in float64).
    """
    return within_between_trace(H, y, num_classes, weighting="size")


def layerwise_fuzziness(features: Sequence[torch.Tensor], y: torch.Tensor) -> list[float]:
    """D_l for each feature tensor in ``features`` (e.g. ``model.features(X)``)."""
    return [separation_fuzziness(H, y) for H in features]


def cosine_matrix(V: torch.Tensor) -> torch.Tensor:
    """(K, K) float64 cosines between the rows of V: (K, d). A zero row gives NaN entries."""
    V64 = torch.as_tensor(V).to(torch.float64)
    U = V64 / V64.norm(dim=1, keepdim=True)
    return U @ U.T


def mean_off_diagonal(C: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square (K, K) matrix, e.g. a :func:`cosine_matrix`
    (for a simplex ETF of K vectors it is -1/(K-1)). Raises ValueError for K < 2 or a non-square C."""
    C = torch.as_tensor(C).to(torch.float64)
    if C.dim() != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 2:
        raise ValueError(f"need a square matrix with at least 2 rows, got shape {tuple(C.shape)}")
    K = C.shape[0]
    return float((C.sum() - C.diagonal().sum()) / (K * (K - 1)))


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation of two equal-length sequences."""
    a64, b64 = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    a64, b64 = a64 - a64.mean(), b64 - b64.mean()
    return float((a64 @ b64) / (a64.norm() * b64.norm()))


def equi_separation_fit(D: Sequence[float], layers: Sequence[int] | None = None) -> dict:
    """Fit ``log D_l = a + l log(rho)`` by least squares.

    Args:
        D: fuzziness values D_l (positive); layers: their indices l (default 1..len(D)).
    Returns:
        ``{"pearson", "slope", "intercept", "rho"}``, where pearson is corr(l, log D_l) and
        rho = exp(slope) is the per-layer decay ratio.
    """
    if len(D) < 2:
        raise ValueError("need at least two layers to fit a line")
    if any(not (d > 0) for d in D):
        raise ValueError(f"fuzziness values must be positive, got {list(D)}")
    ls = torch.arange(1, len(D) + 1, dtype=torch.float64) if layers is None else torch.as_tensor(layers, dtype=torch.float64)
    logD = torch.log(torch.as_tensor(D, dtype=torch.float64))
    lc = ls - ls.mean()
    slope = float((lc @ (logD - logD.mean())) / (lc @ lc))
    intercept = float(logD.mean() - slope * ls.mean())
    return {"pearson": pearson(ls, logD), "slope": slope, "intercept": intercept, "rho": math.exp(slope)}
