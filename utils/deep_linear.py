"""Deep matrix factorization for matrix completion (Arora, Cohen, Hu & Luo, NeurIPS 2019).

A ``n x n`` ground truth of low rank is observed on ``m`` entries chosen uniformly at random.
Gradient descent fits the observed entries with the end-to-end product
``W = W_N ... W_1`` of ``N`` square matrices from a small random initialisation; the
baseline is the minimum-nuclear-norm matrix that agrees with the observations.

Independent runs (seeds x numbers of observations) share one batched matrix product: every
tensor carries a leading run dimension ``B``.

Step size.  Plain gradient descent with a *state-dependent scalar* step
``eta_k = c / h(theta_k)``, where ``h`` is a computable upper bound on the spectral norm of the
loss Hessian at the current parameters (see :func:`hessian_bound`).  A positive scalar
step that depends only on the state is a reparametrisation of time, so in the limit of small
``c`` the iterates follow the *same path* as gradient flow ``d theta / dt = -grad L``; ``c``
(a fraction of the local stability limit ``2 / h``) controls the discretisation error.  Near
the small initialisation the bound is tiny, so the steps are large exactly where gradient flow
is slow (the plateaus before each singular value is learned).  The gradient-flow time
``t = sum_k eta_k`` is recorded alongside the step count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .profiles import torch_threads
from .train import progress_bar

DEPTHS_QUICK = (1, 2, 3, 4)
OBSERVED_QUICK = (1000, 2000, 3000, 5000)


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


def init_factors(depth: int, n: int, scale: float, seeds: Sequence[int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """``depth`` factors, each ``(B, n, n)`` with i.i.d. ``N(0, scale^2)`` entries; run ``b`` is drawn
    from its own generator seeded by ``seeds[b]`` (so a batch equals its runs drawn one by one).

    Raises:
        ValueError: if ``depth < 1`` or ``scale < 0``.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if scale < 0:
        raise ValueError(f"init scale must be non-negative, got {scale}")
    per_run = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        per_run.append(torch.randn(depth, n, n, generator=gen, dtype=torch.float64) * scale)
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


def test_error(W: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
        raise ValueError("no unobserved entries (or a zero target on them): test error undefined")
    return torch.linalg.matrix_norm(hidden * (W - target)) / denom


def half_height_steps(singular_values: torch.Tensor, steps: torch.Tensor, top: int = 5) -> torch.Tensor:
    """For each of the ``top`` largest final singular values, the first recorded step at which it
    reaches half its final value.

    Args:
        singular_values: ``(..., T, k)`` recorded singular values (descending), ``T`` records.
        steps: ``(T,)`` the step (or time) of each record.
    Returns:
        ``(..., top)`` steps.
    """
    if singular_values.shape[-2] != steps.shape[0]:
        raise ValueError(f"{singular_values.shape[-2]} records but {steps.shape[0]} steps")
    if top > singular_values.shape[-1]:
        raise ValueError(f"top={top} exceeds the {singular_values.shape[-1]} recorded singular values")
    sv = singular_values[..., :top]
    reached = sv >= 0.5 * sv[..., -1:, :]                  # (..., T, top)
    first = reached.to(torch.int64).argmax(dim=-2)         # first True along T
    return steps.to(singular_values.device)[first]


# ----------------------------------------------------------------------------------------------
# The batched trainer
# ----------------------------------------------------------------------------------------------
@dataclass
class FactorizationRun:
    """Result of :func:`train_deep_factorization` for a batch of ``B`` runs.

    Attributes:
        product: ``(B, n, n)`` end-to-end matrix at the end.
        losses: ``(B, S + 1)`` relative training loss ``||P(W - W*)||^2 / ||P W*||^2`` after each step
            (entry 0 at initialisation; frozen once the run converged).
        record_steps: ``(T,)`` steps at which singular values were recorded.
        record_times: ``(B, T)`` gradient-flow time ``sum eta`` at those steps.
        singular_values: ``(B, T, k)`` top-``k`` singular values of the product at those steps.
        effective_ranks: ``(B, T)`` effective rank of the product at those steps.
        steps_taken: ``(B,)`` steps until the loss fell below ``tol`` (``max_steps`` if it did not).
        step_sizes: ``(B, S)`` step size used at each step (zero after convergence).
    """

    product: torch.Tensor
    losses: torch.Tensor
    record_steps: torch.Tensor
    record_times: torch.Tensor
    singular_values: torch.Tensor
    effective_ranks: torch.Tensor
    steps_taken: torch.Tensor
    step_sizes: torch.Tensor


def end_to_end(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``W_N ... W_1`` for factors ``[W_1, ..., W_N]``, each ``(B, n, n)``."""
    product = factors[0]
    for W in factors[1:]:
        product = W @ product
    return product


def _power_step(A: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One warm-started power iteration for the spectral norm of ``A: (B, n, n)``; ``v: (B, n)`` unit.
    Returns the estimate ``||A v||`` (a lower bound that converges to ``||A||_2``) and the new ``v``."""
    Av = torch.linalg.vecdot(A, v.unsqueeze(1))                # (B, n) = A v
    sigma = torch.linalg.vector_norm(Av, dim=-1)
    w = (A * Av.unsqueeze(-1)).sum(-2)                         # (B, n) = A^T A v
    norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    v_new = torch.where(norm > 0, w / norm.clamp_min(1e-300), v)
    return sigma, v_new


def hessian_bound(layer_norms: torch.Tensor, grad_norm: torch.Tensor,
                  curvature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper bound on the spectral norm of the Hessian of ``L(W_1..W_N) = g(W_N ... W_1)`` with
    ``g(W) = curvature / 2 * ||P(W - W*)||_F^2``, split into its two parts.

    Writing ``a_j = prod_{i != j} ||W_i||_2`` and ``b_ij = prod_{k != i, j} ||W_k||_2``,
    ``||H|| <= curvature * sum_j a_j^2 + ||grad g||_2 * max_i sum_{j != i} b_ij``:
    the Gauss-Newton part ``J^T P J`` plus the residual times the second derivative of the product.

    Args:
        layer_norms: ``(N, B)`` spectral norms of the factors.
        grad_norm: ``(B,)`` spectral norm of ``grad g`` at the product.
        curvature: ``(B,)`` the constant in ``g``.
    Returns:
        ``(gauss_newton, residual)`` bounds, each ``(B,)``.
    """
    N = layer_norms.shape[0]
    log_norms = torch.log(layer_norms.clamp_min(1e-300))
    total = log_norms.sum(0)
    a = torch.exp(total.unsqueeze(0) - log_norms)                      # (N, B)
    gauss_newton = curvature * (a ** 2).sum(0)
    residual = torch.zeros_like(gauss_newton)
    if N >= 2:
        b = torch.exp(total - log_norms.unsqueeze(0) - log_norms.unsqueeze(1))  # (N, N, B)
        b = b * (1 - torch.eye(N, dtype=b.dtype, device=b.device)).unsqueeze(-1)
        residual = grad_norm * b.sum(1).max(0).values
    return gauss_newton, residual


def _backward(upstream: torch.Tensor, factors: Sequence[torch.Tensor],
              prefixes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Pull a ``(B, n, n)`` end-to-end cotangent ``G`` back to the factors:
    ``grad_j = W_N^T ... W_{j+1}^T G (W_{j-1} ... W_1)^T``; ``prefixes[j] = W_{j+1} ... W_1`` (0-based)."""
    depth = len(factors)
    grads: list[torch.Tensor] = [upstream] * depth
    for j in range(depth - 1, 0, -1):
        grads[j] = upstream @ prefixes[j - 1].mT
        upstream = factors[j].mT @ upstream
    grads[0] = upstream
    return grads


def _gauss_newton_power_step(direction: list[torch.Tensor], factors: Sequence[torch.Tensor],
                             prefixes: Sequence[torch.Tensor], masks: torch.Tensor,
                             curvature: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One power iteration on the Gauss-Newton matrix ``J^T (curvature * P) J`` of the factorisation.

    ``direction``: list of ``(B, n, n)`` tangent blocks with unit total norm per run.  Returns the
    estimate ``||GN d||`` (a lower bound on its top eigenvalue) and the normalised ``GN d``."""
    tangent = direction[0]                                          # J d, accumulated layer by layer
    for j in range(1, len(factors)):
        tangent = factors[j] @ tangent + direction[j] @ prefixes[j - 1]
    image = _backward(curvature.view(-1, 1, 1) * masks * tangent, factors, prefixes)
    norm = torch.sqrt(sum((g ** 2).sum((-2, -1)) for g in image))
    scale = (1.0 / norm.clamp_min(1e-300)).view(-1, 1, 1)
    return norm, [g * scale for g in image]


def train_deep_factorization(targets: torch.Tensor, masks: torch.Tensor, depth: int, init_scale: float,
                             init_seeds: Sequence[int], step_fraction: float = 0.2, max_steps: int = 20_000,
                             tol: float = 1e-6, record_every: int = 10, record_top: int = 10,
                             curvature_every: int = 5, curvature_safety: float = 1.5,
                             progress: bool = False) -> FactorizationRun:
    """Gradient descent on ``L = ||P(W_N...W_1 - W*)||_F^2 / (2 ||P W*||_F^2)`` for ``B`` runs at once.

    ``L`` is the mean squared error over the observed entries divided by the mean square of the
    observed targets (a constant per run), so the stopping rule ``2 L < tol`` is scale-free.

    Args:
        targets: ``(B, n, n)`` ground truths ``W*``.
        masks: ``(B, n, n)`` 0/1 observation masks ``P``.
        depth: number of factors ``N >= 1``.
        init_scale: standard deviation of the i.i.d. Gaussian entries of every factor at step 0.
        init_seeds: ``B`` seeds for the initialisation (see :func:`init_factors`).
        step_fraction: ``c`` in ``eta_k = c / h_k`` where ``h_k`` estimates the top Hessian eigenvalue
            (``c < 2`` is the stability limit; smaller ``c`` follows gradient flow more closely).
        curvature_every: every this many steps, one warm-started power iteration on the Gauss-Newton
            matrix refreshes the estimate ``lambda_GN`` of its top eigenvalue.
        curvature_safety: ``h_k = min(GN bound, curvature_safety * lambda_GN) + residual bound``
            (see :func:`hessian_bound`); the rigorous Gauss-Newton bound ignores that the observation
            mask passes only a fraction ``~ m / n^2`` of a low-rank update, so it is ``~ n^2 / m`` too
            pessimistic once the factors are low-rank, and the power estimate recovers that factor.
        max_steps: step cap.
        tol: stop a run once its relative training loss ``||P(W - W*)||^2 / ||P W*||^2`` is below ``tol``.
        record_every: record the top singular values every this many steps (and at the end).
        record_top: how many singular values to record.
        progress: show a progress bar.
    Raises:
        ValueError: on bad shapes, ``depth < 1``, an all-zero mask, or a non-positive ``step_fraction``.
    """
    if targets.dim() != 3 or targets.shape[-1] != targets.shape[-2]:
        raise ValueError(f"targets must be (B, n, n), got {tuple(targets.shape)}")
    if masks.shape != targets.shape:
        raise ValueError(f"masks {tuple(masks.shape)} must match targets {tuple(targets.shape)}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if len(init_seeds) != targets.shape[0]:
        raise ValueError(f"{len(init_seeds)} init seeds for {targets.shape[0]} runs")
    if step_fraction <= 0:
        raise ValueError(f"step_fraction must be positive, got {step_fraction}")
    if max_steps < 1 or record_every < 1:
        raise ValueError("max_steps and record_every must be at least 1")
    B, n, _ = targets.shape
    dtype, device = targets.dtype, targets.device
    masks = masks.to(dtype)
    observed_target = masks * targets
    target_energy = torch.linalg.matrix_norm(observed_target) ** 2          # (B,)
    if (target_energy <= 0).any():
        raise ValueError("a run observes no non-zero target entry")
    curvature = 1.0 / target_energy
    factors = init_factors(depth, n, init_scale, init_seeds, device=device, dtype=dtype)
    k = min(record_top, n)

    # warm start of the power iterations (layers and gradient)
    start = torch.ones(B, n, dtype=dtype, device=device) / math.sqrt(n)
    layer_vecs = [start.clone() for _ in range(depth)]
    grad_vec = start.clone()
    for _ in range(20):
        for i in range(depth):
            _, layer_vecs[i] = _power_step(factors[i], layer_vecs[i])
    gn_direction = [W / torch.sqrt(sum((V ** 2).sum((-2, -1)) for V in factors)).clamp_min(1e-300).view(B, 1, 1)
                    for W in factors]
    gn_estimate = torch.full((B,), float("inf"), dtype=dtype, device=device)

    # full-batch bookkeeping; the working state below holds only the runs still training
    losses = torch.zeros(B, max_steps + 1, dtype=dtype, device=device)
    step_sizes = torch.zeros(B, max_steps, dtype=dtype, device=device)
    final_product = torch.zeros(B, n, n, dtype=dtype, device=device)
    current_sv = torch.zeros(B, k, dtype=dtype, device=device)
    current_erank = torch.zeros(B, dtype=dtype, device=device)
    time_all = torch.zeros(B, dtype=dtype, device=device)
    steps_taken = torch.full((B,), max_steps, dtype=torch.int64, device=device)
    record_steps, record_times, record_sv, record_erank = [], [], [], []
    idx = torch.arange(B, device=device)

    step = 0
    for step in progress_bar(range(max_steps + 1), desc=f"depth {depth}", enabled=progress):
        # forward: prefixes L_j = W_j ... W_1
        prefixes = [factors[0]]
        for W in factors[1:]:
            prefixes.append(W @ prefixes[-1])
        product = prefixes[-1]
        residual = masks * product - observed_target
        rel_loss = torch.linalg.matrix_norm(residual) ** 2 * curvature
        losses[idx, step] = rel_loss
        final_product[idx] = product
        done = rel_loss < tol
        last = step == max_steps
        if step % record_every == 0 or last or bool(done.any()):
            spectrum = torch.linalg.svdvals(product)
            current_sv[idx] = spectrum[:, :k]
            current_erank[idx] = _erank_from_spectrum(spectrum)
        if step % record_every == 0 or last:
            record_steps.append(step)
            record_times.append(time_all.clone())
            record_sv.append(current_sv.clone())
            record_erank.append(current_erank.clone())
        if bool(done.any()):
            steps_taken[idx[done]] = step
            losses[idx[done], step + 1:] = rel_loss[done].unsqueeze(-1)
            keep = ~done
            idx, masks, observed_target, curvature = idx[keep], masks[keep], observed_target[keep], curvature[keep]
            factors = [W[keep] for W in factors]
            prefixes = [P[keep] for P in prefixes]
            layer_vecs = [v[keep] for v in layer_vecs]
            gn_direction = [d[keep] for d in gn_direction]
            grad_vec, residual, gn_estimate = grad_vec[keep], residual[keep], gn_estimate[keep]
        if last or len(idx) == 0:
            break
        Ba = len(idx)
        grad_e2e = curvature.view(Ba, 1, 1) * residual                     # (Ba, n, n)
        # step size: c / (estimated top eigenvalue of the Hessian)
        layer_norms = []
        for i in range(depth):
            sigma, layer_vecs[i] = _power_step(factors[i], layer_vecs[i])
            layer_norms.append(sigma)
        grad_norm, grad_vec = _power_step(grad_e2e, grad_vec)
        gn_bound, residual_bound = hessian_bound(torch.stack(layer_norms), grad_norm, curvature)
        if depth >= 2 and step % curvature_every == 0:
            for _ in range(10 if step == 0 else 1):
                gn_estimate, gn_direction = _gauss_newton_power_step(gn_direction, factors, prefixes, masks,
                                                                     curvature)
        gauss_newton = torch.minimum(gn_bound, curvature_safety * gn_estimate) if depth >= 2 else gn_bound
        eta = step_fraction / (gauss_newton + residual_bound)
        step_sizes[idx, step] = eta
        time_all[idx] += eta
        grads = _backward(grad_e2e, factors, prefixes)
        eta = eta.view(Ba, 1, 1)
        factors = [W - eta * g for W, g in zip(factors, grads)]
    if record_steps[-1] != step:
        record_steps.append(step)
        record_times.append(time_all.clone())
        record_sv.append(current_sv.clone())
        record_erank.append(current_erank.clone())
    return FactorizationRun(
        product=final_product,
        losses=losses[:, :step + 1],
        record_steps=torch.tensor(record_steps, dtype=torch.int64),
        record_times=torch.stack(record_times, dim=1),
        singular_values=torch.stack(record_sv, dim=1),
        effective_ranks=torch.stack(record_erank, dim=1),
        steps_taken=steps_taken,
        step_sizes=step_sizes[:, :step],
    )


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


# ----------------------------------------------------------------------------------------------
# The experiment: python -m utils.reproduce deep_linear
# ----------------------------------------------------------------------------------------------
def profile_settings(profile: str) -> dict:
    """Settings of the sweep for ``profile`` (``"quick"``: CPU in minutes; ``"full"``: finer, longer, float64).

    ``init_scale`` maps depth -> standard deviation of every factor's entries at initialisation.
    """
    if profile not in ("quick", "full"):
        raise ValueError(f"unknown profile {profile!r}")
    common = dict(n=100, rank=5, depths=[1, 2, 3, 4], init_scale={1: 1e-3, 2: 1e-4, 3: 1e-3, 4: 5e-3},
                  tol=1e-6, record_top=10, trajectory_observed=2000, trajectory_seed=0)
    if profile == "quick":
        return dict(common, seeds=list(range(5)), observed=[1000, 2000, 3000, 5000],
                    step_fraction={1: 0.25, 2: 0.25, 3: 0.25, 4: 1.0}, max_steps={1: 1000, 2: 4000, 3: 4000, 4: 5000},
                    record_every=10, dtype="float32", solver="SCS", solver_eps=1e-4)
    return dict(common, seeds=list(range(10)), observed=[1000, 1500, 2000, 2500, 3000, 4000, 5000],
                step_fraction={1: 0.1, 2: 0.1, 3: 0.1, 4: 0.25}, max_steps={1: 5000, 2: 40000, 3: 40000, 4: 60000},
                record_every=5, dtype="float64", solver="SCS", solver_eps=1e-6)


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


def run(profile: str, device: torch.device, progress: bool = True) -> dict:
    """The sweep over depths, numbers of observations and seeds, plus the nuclear-norm baseline.

    Returns ``{"runs": rows, "settings", "convergence", "trajectories", "timing"}``; rows follow issue 7:
    ``{"method": "gd", "depth", "observed", "seed", "test_error", "effective_rank", "half_steps"}`` and
    ``{"method": "nuclear_norm", "observed", "seed", "test_error", "effective_rank"}``.
    """
    with torch_threads(1, device):  # 100 x 100 products gain nothing from more threads; avoids oversubscription
        return _sweep(profile_settings(profile), torch.device(device), progress)


def _sweep(cfg: dict, device: torch.device, progress: bool) -> dict:
    """The body of :func:`run` for the settings ``cfg`` (see :func:`profile_settings`)."""
    import time as _time

    dtype = getattr(torch, cfg["dtype"])
    targets, masks, labels = completion_problems(cfg["n"], cfg["rank"], cfg["seeds"], cfg["observed"],
                                                 device=device, dtype=dtype)
    rows, convergence, trajectories, timing = [], [], {}, {}
    traj_index = labels.index((cfg["trajectory_seed"], cfg["trajectory_observed"]))
    for depth in cfg["depths"]:
        start = _time.process_time()
        result = train_deep_factorization(
            targets, masks, depth, cfg["init_scale"][depth], [1000 * seed + depth for seed, _ in labels],
            step_fraction=cfg["step_fraction"][depth], max_steps=cfg["max_steps"][depth], tol=cfg["tol"],
            record_every=1 if depth == 1 else cfg["record_every"], record_top=cfg["record_top"], progress=progress)
        timing[f"gd_depth_{depth}_cpu_s"] = round(_time.process_time() - start, 2)
        errors = test_error(result.product, targets, masks)
        eranks = effective_rank(result.product)
        halves = half_height_steps(result.singular_values, result.record_steps, top=5)
        norms = nuclear_norm(result.product)
        for b, (seed, m) in enumerate(labels):
            rows.append({"method": "gd", "depth": depth, "observed": m, "seed": seed,
                         "test_error": float(errors[b]), "effective_rank": float(eranks[b]),
                         "half_steps": [int(h) for h in halves[b]]})
            convergence.append({"method": "gd", "depth": depth, "observed": m, "seed": seed,
                                "steps": int(result.steps_taken[b]), "final_loss": float(result.losses[b, -1]),
                                "gradient_flow_time": float(result.record_times[b, -1]),
                                "nuclear_norm": float(norms[b])})
        b = traj_index
        trajectories[str(depth)] = {
            "steps": result.record_steps.tolist(),
            "times": result.record_times[b].tolist(),
            "singular_values": result.singular_values[b].tolist(),
            "effective_rank": result.effective_ranks[b].tolist(),
            "loss": result.losses[b, result.record_steps.clamp_max(result.losses.shape[1] - 1)].tolist(),
        }
    start = _time.process_time()
    for b, (seed, m) in enumerate(progress_bar(labels, desc="nuclear norm", enabled=progress)):
        solution = torch.as_tensor(nuclear_norm_completion(targets[b].double(), masks[b].double(), solver=cfg["solver"],
                                                           eps=cfg["solver_eps"]))
        target64, mask64 = targets[b].double().cpu(), masks[b].double().cpu()
        rows.append({"method": "nuclear_norm", "observed": m, "seed": seed,
                     "test_error": float(test_error(solution, target64, mask64)),
                     "effective_rank": float(effective_rank(solution))})
        convergence.append({"method": "nuclear_norm", "observed": m, "seed": seed,
                            "nuclear_norm": float(nuclear_norm(solution))})
    timing["nuclear_norm_cpu_s"] = round(_time.process_time() - start, 2)
    return {"runs": rows, "settings": cfg, "convergence": convergence,
            "trajectory_run": {"seed": cfg["trajectory_seed"], "observed": cfg["trajectory_observed"]},
            "trajectories": trajectories, "timing": timing}


def summarise(rows: Sequence[dict], key: str = "test_error") -> dict[str, dict[int, tuple[float, float, float]]]:
    """Seed statistics of ``key`` from ``run``'s rows: ``{label: {m: (median, min, max)}}`` with labels
    ``"depth N"`` for gradient descent and ``"nuclear norm"`` for the baseline."""
    groups: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        label = f"depth {row['depth']}" if row["method"] == "gd" else "nuclear norm"
        groups.setdefault(label, {}).setdefault(int(row["observed"]), []).append(float(row[key]))
    return {label: {m: (float(np.median(v)), float(np.min(v)), float(np.max(v))) for m, v in sorted(by_m.items())}
            for label, by_m in groups.items()}


def half_step_spread(rows: Sequence[dict], depth: int, observed: int) -> list[float]:
    """Per seed, ``max / min`` of the half-height steps of the top five singular values (1 = all at once)."""
    return [max(r["half_steps"]) / max(min(r["half_steps"]), 1) for r in rows
            if r["method"] == "gd" and r["depth"] == depth and r["observed"] == observed]
