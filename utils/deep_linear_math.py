"""Pure mathematics of deep matrix factorisation (Arora, Cohen, Hu & Luo, NeurIPS 2019): the
matrix-completion problems, the metrics, and the minimum-nuclear-norm baseline.

A ``n x n`` ground truth of low rank is observed on ``m`` entries chosen uniformly at random; a
completion is scored by its relative error on the unobserved entries
(:func:`reconstruction_error`), its effective rank and its nuclear norm.  Shapes carry a leading
run dimension ``B`` where noted.  The gradient-descent trainer lives in :mod:`utils.deep_linear_gd`,
the chapter's experiment in :mod:`utils.deep_linear`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# Problem generators
# ----------------------------------------------------------------------------------------------
def low_rank_ground_truth(n: int = 100, rank: int = 5, seed: int = 0,
                          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random ``(n, n)`` matrix ``U V^T`` (``U, V`` with i.i.d. Gaussian entries, ``(n, rank)``)
    scaled to unit Frobenius norm, as in the paper.

    Raises:
        ValueError: if ``n < 1`` or ``rank`` is not in ``1..n``.
    """
    if n < 1:
        raise ValueError(f"matrix size n must be at least 1, got {n}")
    if not 1 <= rank <= n:
        raise ValueError(f"rank must be between 1 and n={n}, got {rank}")
    gen = torch.Generator().manual_seed(int(seed))
    U = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    V = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    W = U @ V.T
    return (W / torch.linalg.matrix_norm(W)).to(device=device, dtype=dtype)


def observation_mask(n: int, observed: int, seed: int = 0, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, n)`` 0/1 mask with exactly ``observed`` ones at uniformly random positions.

    Raises:
        ValueError: if ``observed`` is not in ``1..n*n``.
    """
    if not 1 <= observed <= n * n:
        raise ValueError(f"the number of observed entries m must be between 1 and n*n={n * n}, got {observed}")
    gen = torch.Generator().manual_seed(int(seed))
    flat = torch.zeros(n * n, dtype=dtype)
    flat[torch.randperm(n * n, generator=gen)[:observed]] = 1.0
    return flat.reshape(n, n).to(device)


def factor_scale(scale: float, depth: int, n: int) -> float:
    """Standard deviation of every factor's entries for the starting scale ``scale`` of the *product*.

    As in the paper's code, ``scale`` fixes the size of the product, not of the factors: with the
    paper's ground truth (Frobenius norm ``n``) the product starts with Frobenius norm about
    ``scale * sqrt(n)``.  Our ground truth has unit Frobenius norm, so the same relative size is a
    product of Frobenius norm ``scale / sqrt(n)``: each of the ``depth`` factors (``n x n``) gets
    i.i.d. ``N(0, v)`` entries with ``n * (n v)^depth = scale^2 / n``, i.e.
    ``v = (scale / n)^(2 / depth) / n``.  Starting scales of different depths are then comparable, and
    a deep factor starts much larger than a shallow one.

    Raises:
        ValueError: if ``scale < 0``, ``depth < 1`` or ``n < 1``.
    """
    if scale < 0 or depth < 1 or n < 1:
        raise ValueError(f"need scale >= 0, depth >= 1 and n >= 1; got scale={scale}, depth={depth}, n={n}")
    return (float(scale) / n) ** (1.0 / depth) / n ** 0.5


def init_factors(depth: int, n: int, scale: float | Sequence[float], seeds: Sequence[int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """``depth`` factors, each ``(B, n, n)`` with i.i.d. ``N(0, scale_b^2)`` entries; run ``b`` is drawn
    from its own generator seeded by ``seeds[b]`` (so a batch equals its runs drawn one by one).

    Args:
        scale: the standard deviation of every factor entry (not the starting scale ``s`` of the product:
            see :func:`factor_scale`), one number for all runs or a
            sequence with one number per run.
    Raises:
        ValueError: if ``depth < 1``, a scale is negative, or the numbers of scales and seeds differ.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    scales = [float(scale)] * len(seeds) if np.isscalar(scale) else [float(s) for s in scale]
    if len(scales) != len(seeds):
        raise ValueError(f"{len(scales)} init scales for {len(seeds)} seeds: give one scale, or one per run")
    if any(s < 0 for s in scales):
        raise ValueError(f"init scale must be non-negative, got {min(scales)}")
    per_run = []
    for seed, s in zip(seeds, scales):
        gen = torch.Generator().manual_seed(int(seed))
        per_run.append(torch.randn(depth, n, n, generator=gen, dtype=torch.float64) * s)
    stacked = torch.stack(per_run, dim=1).to(device=device, dtype=dtype)  # (depth, B, n, n)
    return [stacked[i].clone() for i in range(depth)]


# ----------------------------------------------------------------------------------------------
# Metrics (pure functions)
# ----------------------------------------------------------------------------------------------
def effective_rank(W: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Effective rank of Roy & Vetterli (2007): ``exp`` of the Shannon entropy of the
    singular values normalised to sum one.  ``W: (..., n, n)`` -> ``(...)``.

    A rank-``r`` matrix with ``r`` equal non-zero singular values has effective rank ``r``.

    Raises:
        ValueError: if ``W`` has fewer than two dimensions or is identically zero.
    """
    if W.dim() < 2:
        raise ValueError(f"effective_rank needs a matrix (..., n, n), got shape {tuple(W.shape)}")
    s = torch.linalg.svdvals(W.to(torch.float64))
    if (s.sum(-1) <= 0).any():
        raise ValueError("effective_rank of a zero matrix is undefined")
    return _erank_from_spectrum(s, eps)


def _erank_from_spectrum(s: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Effective rank from singular values ``s: (..., n)`` (see :func:`effective_rank`)."""
    p = s / s.sum(-1, keepdim=True).clamp_min(1e-300)
    return torch.exp(-(p * torch.log(p.clamp_min(eps))).sum(-1))


def reconstruction_error(W: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error on the unobserved entries,
    ``||(1 - mask) * (W - target)||_F / ||(1 - mask) * target||_F``.  Shapes ``(..., n, n)`` -> ``(...)``.

    Raises:
        ValueError: on mismatched shapes or when every entry is observed.
    """
    if W.shape[-2:] != target.shape[-2:] or target.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"shapes differ: W {tuple(W.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}")
    hidden = 1.0 - mask.to(W.dtype)
    denom = torch.linalg.matrix_norm(hidden * target)
    if (denom == 0).any():
        raise ValueError("no unobserved entries (or a zero target on them): reconstruction error undefined")
    return torch.linalg.matrix_norm(hidden * (W - target)) / denom


def half_height_times(singular_values: torch.Tensor, clock: torch.Tensor, top: int = 5) -> torch.Tensor:
    """For each of the ``top`` largest final singular values, the clock reading at which it first
    reaches half its final value, linearly interpolated between the two records that bracket it.

    Args:
        singular_values: ``(..., T, k)`` recorded singular values (descending), ``T`` records.
        clock: ``(T,)`` or ``(..., T)`` the step or the gradient-flow time of each record
            (non-decreasing along ``T``).
    Returns:
        ``(..., top)`` clock readings.
    Raises:
        ValueError: if the numbers of records differ or ``top`` exceeds the recorded values.
    """
    if singular_values.shape[-2] != clock.shape[-1]:
        raise ValueError(f"{singular_values.shape[-2]} records but a clock with {clock.shape[-1]} readings")
    if top > singular_values.shape[-1]:
        raise ValueError(f"top={top} exceeds the {singular_values.shape[-1]} recorded singular values")
    sv = singular_values[..., :top].to(torch.float64)                # (..., T, top)
    half = 0.5 * sv[..., -1:, :]
    reached = sv >= half
    first = reached.to(torch.int64).argmax(dim=-2, keepdim=True)      # (..., 1, top)
    before = (first - 1).clamp_min(0)
    clock = clock.to(device=sv.device, dtype=torch.float64)
    clock = clock.expand(*sv.shape[:-2], clock.shape[-1]).unsqueeze(-1).expand_as(sv)
    s1, s0 = sv.gather(-2, first), sv.gather(-2, before)
    t1, t0 = clock.gather(-2, first), clock.gather(-2, before)
    frac = ((half - s0) / (s1 - s0).clamp_min(1e-300)).clamp(0.0, 1.0)
    return torch.where(first == 0, t1, t0 + frac * (t1 - t0)).squeeze(-2)


# ----------------------------------------------------------------------------------------------
# Nuclear-norm baseline
# ----------------------------------------------------------------------------------------------
def nuclear_norm_completion(target: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
                            solver: str = "SCS", eps: float = 1e-6) -> np.ndarray:
    """``argmin ||X||_*`` subject to ``X_ij = target_ij`` on observed ``(i, j)`` (cvxpy).

    Args:
        target: ``(n1, n2)`` ground truth (only observed entries are used).
        mask: ``(n1, n2)`` 0/1 observation mask.
        solver: ``"SCS"`` (first-order, fast) or ``"CLARABEL"`` (interior point, accurate).
        eps: SCS's relative accuracy (ignored by other solvers).
    Returns:
        ``(n1, n2)`` float64 minimiser.
    Raises:
        ValueError: on mismatched shapes, an empty mask, or a solver failure.
    """
    import cvxpy as cp

    target = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target, dtype=np.float64)
    mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float64)
    if target.ndim != 2 or target.shape != mask.shape:
        raise ValueError(f"target {target.shape} and mask {mask.shape} must be the same 2-D shape")
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("the mask observes no entry")
    X = cp.Variable(target.shape)
    # cvxpy vectorises column-major: entry (i, j) is index i + j * n1
    flat = rows + cols * target.shape[0]
    constraints = [cp.vec(X, order="F")[flat] == target[rows, cols]]
    problem = cp.Problem(cp.Minimize(cp.normNuc(X)), constraints)
    kwargs = {"eps": eps} if solver == "SCS" else {}
    problem.solve(solver=solver, **kwargs)
    if X.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise ValueError(f"nuclear-norm solve failed with status {problem.status!r}")
    return np.asarray(X.value)



def completion_problems(n: int, rank: int, seeds: Sequence[int], observed: Sequence[int],
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
                        ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """All (seed, m) problems as a batch: ``targets, masks: (len(seeds) * len(observed), n, n)`` and the
    ``(seed, m)`` label of each row.  The ground truth depends on the seed only; the mask on both."""
    labels = [(seed, m) for seed in seeds for m in observed]
    targets = torch.stack([low_rank_ground_truth(n, rank, seed=seed, dtype=dtype) for seed, _ in labels])
    masks = torch.stack([observation_mask(n, m, seed=10_000 * seed + m, dtype=dtype) for seed, m in labels])
    return targets.to(device), masks.to(device), labels


def nuclear_norm(W: torch.Tensor) -> torch.Tensor:
    """Sum of singular values, ``(..., n, n)`` -> ``(...)``."""
    return torch.linalg.svdvals(W.to(torch.float64)).sum(-1)


