"""Pure geometry metrics: tensors in, numbers out.

All scatter computations accumulate in float64 and use that the between-class scatter has rank
at most K-1: no d x d matrix is ever formed, so d can be in the hundreds of thousands. The features
are read in row chunks that are cast to float64 one at a time (never a full float64 copy of H), and
the class means are computed once per call.

Inputs are checked by :mod:`utils.checks`: a wrong shape, non-integer labels, a label >= num_classes,
an empty class, NaN/Inf features, or coinciding class means raise an error that says what was
passed and how to fix it, instead of returning a meaningless number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .checks import check_features_labels, check_matrix, raise_non_finite

# Rows per float64 chunk: about 2**18 entries (2 MB) on a CPU, small enough to stay in cache; on a GPU
# 2**24 entries (128 MB), few enough launches to keep it busy.
_CHUNK_ENTRIES = 1 << 18
_CHUNK_ENTRIES_GPU = 1 << 24
# Between-class spread below this fraction of the feature scale (RMS norm of a feature vector)
# is rounding noise: the class means coincide and Tr(Sigma_W Sigma_B^+) is not a measurement.
COINCIDE_RTOL = 1e-10


def _row_chunks(N: int, d: int, device: torch.device = torch.device("cpu")):
    rows = max(1, (_CHUNK_ENTRIES if device.type == "cpu" else _CHUNK_ENTRIES_GPU) // max(d, 1))
    for start in range(0, N, rows):
        yield start, min(N, start + rows)


@dataclass
class ClassStats:
    """Float64 class statistics of features ``H`` (N, d) with labels ``y`` (N,), computed in one pass.

    ``means`` (K, d) float64, ``counts`` (K,) float64, ``mean_sq_norm`` the mean of ``||h_i||^2``
    (the feature scale), plus the checked ``H`` and int64 ``y``."""

    H: torch.Tensor
    y: torch.Tensor
    means: torch.Tensor
    counts: torch.Tensor
    mean_sq_norm: float

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def N(self) -> int:
        return self.H.shape[0]


def class_stats(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                min_classes: int = 1) -> ClassStats:
    """Check ``(H, y)`` and compute the class means, counts and feature scale in one float64 pass.

    Raises:
        ValueError / TypeError: see :func:`utils.checks.check_labels`; NaN/Inf features (with their
        count and first row).
    """
    H, y, K = check_features_labels(H, y, num_classes, min_classes=min_classes)
    N, d = H.shape
    sums = torch.zeros(K, d, dtype=torch.float64, device=H.device)
    sq = torch.zeros((), dtype=torch.float64, device=H.device)
    for s, e in _row_chunks(N, d, H.device):
        chunk = H[s:e].to(torch.float64).reshape(e - s, d)
        sums.index_add_(0, y[s:e], chunk)
        flat = chunk.reshape(-1)
        sq += torch.dot(flat, flat)
    if not bool(torch.isfinite(sums).all()) or not math.isfinite(float(sq)):
        raise_non_finite(H, "H")
    counts = torch.bincount(y, minlength=K).to(torch.float64)
    return ClassStats(H, y, sums / counts[:, None], counts, float(sq) / N)


def project_rows(H: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``H @ V.T`` in float64 (N, r) for features H (N, d) and float64 directions V (r, d), reading H in
    float64 row chunks (no float64 copy of the whole of H)."""
    if H.dtype == torch.float64:
        return H @ V.T
    out = torch.empty(H.shape[0], V.shape[0], dtype=torch.float64, device=H.device)
    Vt = V.T
    for s, e in _row_chunks(*H.shape, H.device):
        torch.mm(H[s:e].to(torch.float64), Vt, out=out[s:e])
    return out


def class_means(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means and counts.

    Args:
        H: (N, d) features; y: (N,) integer labels in ``0..K-1`` (K = num_classes or max(y)+1).
    Returns:
        means: (K, d) float64 class means; counts: (K,) float64 class sizes.
    Raises:
        ValueError: on shape mismatch, an empty class, a label >= num_classes, NaN/Inf features.
        TypeError: non-integer labels.
    """
    stats = class_stats(H, y, num_classes)
    return stats.means, stats.counts


def _centred_residual_projection(stats: ClassStats, extra: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One float64 pass over H: ``Pc = H C^T`` (N, K) with ``C`` (K, d) the class means centred at their
    average, and ``H @ extra.T`` for optional extra rows (r, d) (e.g. the classifier W) in the same pass.

    Returns ``(C, Zc, Pc, H @ extra.T or None)`` with ``Zc = (H - mu_y) C^T = Pc - (means C^T)[y]``."""
    C = stats.means - stats.means.mean(0, keepdim=True)
    V = C if extra is None else torch.cat([C, extra.to(device=C.device, dtype=torch.float64)])
    P = project_rows(stats.H, V)
    K = stats.K
    Pc = P[:, :K]
    Zc = Pc - (stats.means @ C.T)[stats.y]
    return C, Zc, Pc, (None if extra is None else P[:, K:])


def _orthonormal_complement(s: torch.Tensor) -> torch.Tensor:
    """(K, K-1) orthonormal basis of the complement of the unit vector s (K,), by a Householder reflection."""
    K = s.shape[0]
    e1 = torch.zeros_like(s)
    e1[0] = 1.0
    v = s - e1
    if float(v.norm()) < 1e-300:
        P = torch.eye(K, dtype=s.dtype, device=s.device)
    else:
        P = torch.eye(K, dtype=s.dtype, device=s.device) - 2.0 * torch.outer(v, v) / (v @ v)
    return P[:, 1:]  # P maps e1 to s, so its other columns span the complement of s


def _scatter_trace(stats: ClassStats, C: torch.Tensor, Zc: torch.Tensor, weighting: str,
                   rtol: float | None = None) -> float:
    """Tr(Sigma_W Sigma_B^+) from the class statistics, the centred means C (K, d) and
    Zc = (H - mu_y) C^T (N, K). See :func:`within_between_trace`."""
    K, N, d = stats.K, stats.N, C.shape[1]
    if K < 2:
        raise ValueError(f"need at least two classes for a between-class scatter, got K={K}")
    if weighting == "size":
        pi = stats.counts / stats.counts.sum()
    elif weighting == "uniform":
        pi = torch.full_like(stats.counts, 1.0 / K)
    else:
        raise ValueError(f"weighting must be 'size' or 'uniform', got {weighting!r}")
    sqrt_pi = pi.sqrt()
    # Sigma_B = M^T M with M = diag(sqrt(pi)) (means - pi^T means) = B C; sqrt(pi)^T M = 0 exactly, so
    # M = Q Q^T M for Q (K, K-1) orthonormal with Q^T sqrt(pi) = 0. Working with M' = Q^T B C (K-1, d)
    # removes that null direction exactly: its rounding-level eigenvalue (which grows with d) can no
    # longer pass the pseudo-inverse cut-off.
    B = sqrt_pi[:, None] * (torch.eye(K, dtype=torch.float64, device=C.device) - pi[None, :])
    Cp = _orthonormal_complement(sqrt_pi).T @ B                    # (K-1, K)
    Mp = Cp @ C                                                      # (K-1, d)
    U, S, _ = torch.linalg.svd(Mp, full_matrices=False)
    scale = math.sqrt(stats.mean_sq_norm)
    if scale == 0.0:
        raise ValueError("the features are all zero (a dead layer?): the class means coincide and there is "
                         "no between-class scatter, so Tr(Sigma_W Sigma_B^+) (NC1, separation fuzziness D) "
                         "is undefined; measure a layer whose features vary")
    if float(S[0]) <= COINCIDE_RTOL * scale:
        raise ValueError(f"the class means coincide: the between-class spread ({float(S[0]):.3g}) is below "
                         f"{COINCIDE_RTOL:g} x the feature scale (RMS norm {scale:.3g}), so "
                         "Tr(Sigma_W Sigma_B^+) (NC1, separation fuzziness D) is not a measurement. Constant "
                         "features (a dead layer) or classes with identical examples do this; check the "
                         "labels and the layer")
    tol = (rtol if rtol is not None else max(K, d) * torch.finfo(torch.float64).eps) * S[0]
    keep = S > tol
    # Sigma_B^+ = sum_j v_j v_j^T / s_j^2 with v_j = M'^T u_j / s_j, and (H - mu_y) v_j = Zc Cp^T u_j / s_j:
    # D = sum_j ||(H - mu_y) v_j||^2 / (N s_j^2), a sum of squares, non-negative by construction.
    S_k = S[keep]
    T = Zc @ (Cp.T @ U[:, keep]) / S_k                               # (N, r)
    return float(((T * T).sum(0) / S_k.square()).sum() / N)


def within_between_trace(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                         weighting: str = "size", rtol: float | None = None) -> float:
    """Tr(Sigma_W Sigma_B^+) without forming a d x d matrix.

    ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and
    ``Sigma_B = sum_k pi_k (mu_k - mu)(mu_k - mu)^T`` with ``pi_k = n_k/N`` and ``mu`` the global
    mean (``weighting="size"``, the equi-separation paper), or ``pi_k = 1/K`` and ``mu`` the mean
    of the class means (``weighting="uniform"``, Papyan et al.'s Sigma_B).

    Writing ``Sigma_B = M'^T M'`` with ``M'`` (K-1, d) (the rows ``sqrt(pi_k)(mu_k - mu)`` expressed in
    a basis orthogonal to ``sqrt(pi)``, which removes their exact linear dependence) and the thin SVD
    ``M' = U S V^T``, ``Tr(Sigma_W Sigma_B^+) = sum_j ||(H - mu_y) v_j||^2 / (N s_j^2)`` over the
    singular values above ``rtol * s_max`` (default ``max(K, d) * eps``). Cost O(N d K), one float64
    pass over H for the means and one for the projections.

    Args:
        H: (N, d) features; y: (N,) integer labels 0..K-1; num_classes: K (default max(y)+1).
    Returns:
        The trace as a non-negative Python float.
    Raises:
        ValueError: bad shapes/labels (see :mod:`utils.checks`), NaN/Inf features, fewer than two
            classes, or coinciding class means (e.g. constant features of a dead layer).
    """
    stats = class_stats(H, y, num_classes, min_classes=2)
    if weighting not in ("size", "uniform"):
        raise ValueError(f"weighting must be 'size' or 'uniform', got {weighting!r}")
    C, Zc, _, _ = _centred_residual_projection(stats)
    return _scatter_trace(stats, C, Zc, weighting, rtol)


def separation_fuzziness(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """Separation fuzziness D = Tr(SS_w SS_b^+) of He & Su (2023).

    SS_b weights each class by its size n_k/N, so imbalanced classes are handled.
    For balanced classes ``D = K * NC1`` with Papyan et al.'s NC1 = Tr(Sigma_W Sigma_B^+)/K.

    Args:
        H: (N, d) features; y: (N,) labels in ``0..K-1``.
    Returns:
        D as a Python float (computed in float64, non-negative).
    Raises:
        ValueError: see :func:`within_between_trace` (coinciding class means, NaN/Inf, bad labels).
    """
    return within_between_trace(H, y, num_classes, weighting="size")


def layerwise_fuzziness(features: Sequence[torch.Tensor], y: torch.Tensor) -> list[float]:
    """D_l for each feature tensor in ``features`` (e.g. ``model.features(X)``)."""
    return [separation_fuzziness(H, y) for H in features]


def cosine_matrix(V: torch.Tensor) -> torch.Tensor:
    """(K, K) float64 cosines between the rows of V: (K, d). A zero row gives NaN entries."""
    V64 = check_matrix(V, "V").to(torch.float64)
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
