"""Batched gradient descent on a deep matrix factorisation ``W = W_N ... W_1`` (Arora, Cohen, Hu &
Luo, NeurIPS 2019), following gradient flow with a state-dependent step.

Independent runs (seeds x problems x starting scales) share one batched matrix product: every
tensor carries a leading run dimension ``B``.

Step size.  Plain gradient descent with a *state-dependent scalar* step
``eta_k = c / h(theta_k)``, where ``h`` approximately bounds the spectral norm of the loss Hessian
at the current parameters (see :func:`hessian_bound`; the factor and gradient norms in it are
warm-started power-iteration estimates, and the Gauss-Newton part may be 1.5 times a power estimate).  A positive scalar
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

import torch

from .deep_linear_math import _erank_from_spectrum, init_factors
from .train import progress_bar


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


def train_deep_factorization(targets: torch.Tensor, masks: torch.Tensor, depth: int,
                             init_scale: float | Sequence[float],
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
        init_scale: standard deviation of the i.i.d. Gaussian entries of every factor at step 0 (one
            number for every run, or one per run: a sweep over starting scales is one batch).
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


