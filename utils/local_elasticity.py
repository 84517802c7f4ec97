"""Local elasticity (He & Su, 2020): how much one SGD step at ``x`` moves the prediction at ``x'``.

Relative similarity ``S_rel(x, x') = |f(x', w+) - f(x', w)| / |f(x, w+) - f(x, w)|`` where ``w+`` is
one plain SGD step on the squared loss at the labelled example ``(x, y)``; its kernelised form
``-(f(x', w+) - f(x', w)) / (lr * l'(x))`` tends to the neural tangent kernel
``<grad_w f(x), grad_w f(x')>`` as ``lr -> 0``.

Two implementations of the one-step probe:

* :func:`one_step_change` — exact and fast for the two-layer network ``f(x) = a^T s(Wx + b) + c``
  used throughout the chapter: after a step at ``x`` the pre-activation at ``x'`` moves by
  ``-lr * D_x (x.x' + 1)``, so every (anchor, probe) pair costs ``O(m)`` and the weights are
  never copied (they are "restored" trivially).
* :func:`one_step_change_module` — for any ``nn.Module``, with ``torch.func`` (a per-anchor
  gradient by ``vmap(grad)``, then the probes through ``vmap(functional_call)`` of the stepped
  weights); the model's own weights are never modified.

The two-layer networks are stored as dictionaries of tensors with a leading *run* dimension
``R`` (``W: (R, m, d)``, ``b: (R, m)``, ``a: (R, m, K)``, ``c: (R, K)``) so that several networks
(the ReLU and linear controls, or six super-class problems) train side by side as one computation.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch.func import functional_call, grad, jacrev, vmap

from .metrics import pearson
from .train import batch_indices, progress_bar

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Two-layer networks with a leading run dimension
# --------------------------------------------------------------------------------------------
def init_two_layer(runs: int, in_dim: int, width: int, out_dim: int = 1, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   parametrisation: str = "ntk", bias: bool = True) -> Params:
    """``runs`` independent two-layer networks ``f(x) = a^T s(Wx + b) + c``.

    ``parametrisation="ntk"``: ``W ~ N(0, 1/d)``, ``b ~ N(0, 1)``, ``a ~ N(0, 1/m)``, ``c = 0`` and per-layer
    SGD step multipliers ``(1/d, 1, 1/m, 1)`` for ``(W, b, a, c)``: exactly SGD on the NTK parametrisation
    ``a'^T s(W'x/sqrt(d) + b)/sqrt(m)`` with standard-normal ``W', a'``, so the tangent kernel stays O(1)
    at any width. ``"standard"``: PyTorch's uniform ``nn.Linear`` initialisation and one step size for all.

    ``bias=False`` fixes ``b = c = 0`` (their step multipliers are 0): the paper's ``f(x) = sum_r a_r s(w_r.x)``.

    Returns:
        ``{"W": (R, m, d), "b": (R, m), "a": (R, m, K), "c": (R, K), "lr_scale": (R, 4)}``
        (``lr_scale`` is not trained).
    """
    if min(runs, in_dim, width, out_dim) < 1:
        raise ValueError(f"runs, in_dim, width and out_dim must be positive, got {runs}, {in_dim}, {width}, {out_dim}")
    g = torch.Generator().manual_seed(seed)
    if parametrisation == "standard":
        u = lambda shape, bound: ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound)
        p = {"W": u((runs, width, in_dim), 1 / math.sqrt(in_dim)), "b": u((runs, width), 1 / math.sqrt(in_dim)),
             "a": u((runs, width, out_dim), 1 / math.sqrt(width)), "c": u((runs, out_dim), 1 / math.sqrt(width)),
             "lr_scale": torch.ones(runs, 4, dtype=torch.float64)}
    elif parametrisation == "ntk":
        n = lambda shape, std: torch.randn(shape, generator=g, dtype=torch.float64) * std
        p = {"W": n((runs, width, in_dim), 1 / math.sqrt(in_dim)), "b": n((runs, width), 1.0),
             "a": n((runs, width, out_dim), 1 / math.sqrt(width)), "c": torch.zeros(runs, out_dim, dtype=torch.float64),
             "lr_scale": torch.tensor([1 / in_dim, 1.0, 1 / width, 1.0], dtype=torch.float64).repeat(runs, 1)}
    else:
        raise ValueError(f"parametrisation must be 'ntk' or 'standard', got {parametrisation!r}")
    if not bias:
        p["b"].zero_()
        p["c"].zero_()
        p["lr_scale"][:, [1, 3]] = 0.0
    return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}


TRAINED = ("W", "b", "a", "c")


def _lr_scale(params: Params) -> torch.Tensor:
    """(R, 4) per-layer step multipliers for (W, b, a, c); ones when absent."""
    if "lr_scale" in params:
        return params["lr_scale"]
    return torch.ones(params["W"].shape[0], 4, dtype=params["W"].dtype, device=params["W"].device)


def _act(h: torch.Tensor, nonlinear: bool) -> torch.Tensor:
    return torch.relu(h) if nonlinear else h


def _act_grad(h: torch.Tensor, nonlinear: bool) -> torch.Tensor:
    return (h > 0).to(h.dtype) if nonlinear else torch.ones_like(h)


def _batched_inputs(params: Params, X: torch.Tensor) -> torch.Tensor:
    """X: (N, d) shared by all runs or (R, N, d) -> (R, N, d) view."""
    R, _, d = params["W"].shape
    if X.dim() == 2:
        X = X.unsqueeze(0).expand(R, -1, -1)
    if X.dim() != 3 or X.shape[0] != R or X.shape[2] != d:
        raise ValueError(f"inputs must be (N, {d}) or ({R}, N, {d}), got {tuple(X.shape)}")
    return X


def two_layer_hidden(params: Params, X: torch.Tensor) -> torch.Tensor:
    """Pre-activations ``Wx + b``. X: (N, d) or (R, N, d) -> (R, N, m)."""
    X = _batched_inputs(params, X).to(params["W"].dtype)
    return torch.baddbmm(params["b"].unsqueeze(1), X, params["W"].transpose(1, 2))


def two_layer_forward(params: Params, X: torch.Tensor, nonlinear: bool = True) -> torch.Tensor:
    """Outputs ``a^T s(Wx + b) + c``. X: (N, d) or (R, N, d) -> (R, N, K)."""
    H = _act(two_layer_hidden(params, X), nonlinear)
    return torch.baddbmm(params["c"].unsqueeze(1), H, params["a"])


def train_two_layer(params: Params, X: torch.Tensor, Y: torch.Tensor, epochs: int, lr: float,
                    batch_size: int = 32, nonlinear: bool = True, seed: int = 0, progress: bool = True,
                    callback: Callable[[int, Params], dict | None] | None = None) -> dict:
    """Plain SGD on the squared loss ``0.5 ||f(x) - y||^2`` (batch mean), all runs side by side.

    Args:
        params: from :func:`init_two_layer` (not modified; a trained copy is returned).
        X: (N, d) shared inputs or (R, N, d) per-run inputs; Y: (N, K) or (R, N, K) targets.
        callback: ``callback(epoch, params)`` after every epoch (epoch 0 = before training);
            returned dicts are collected in ``history["extra"]``.
    Returns:
        ``{"params": trained copy, "loss": [per-epoch mean loss per run], "extra": [...]}``.
    """
    X = _batched_inputs(params, X)
    R, N, _ = X.shape
    if Y.dim() == 2:
        Y = Y.unsqueeze(0).expand(R, -1, -1)
    if Y.shape[:2] != (R, N) or Y.shape[2] != params["a"].shape[2]:
        raise ValueError(f"targets must be (N, K) or (R, N, K) matching inputs {tuple(X.shape)}, got {tuple(Y.shape)}")
    p = {k: params[k].detach().clone().requires_grad_(True) for k in TRAINED}
    scale = _lr_scale(params).to(p["W"].dtype)
    X, Y = X.to(p["W"].dtype), Y.to(p["W"].dtype)
    gen = torch.Generator().manual_seed(seed)
    history: dict = {"loss": [], "extra": []}
    if callback is not None:
        with torch.no_grad():
            history["extra"].append(callback(0, {**params, **{k: v.detach() for k, v in p.items()}}) or {})
    for epoch in progress_bar(range(1, epochs + 1), desc="SGD epochs", enabled=progress):
        total = torch.zeros(R, dtype=torch.float64, device=X.device)
        for idx in batch_indices(N, batch_size, gen, device=X.device):
            out = two_layer_forward(p, X[:, idx], nonlinear)
            per_run = 0.5 * ((out - Y[:, idx]) ** 2).sum(-1).mean(-1)  # (R,)
            grads = torch.autograd.grad(per_run.sum(), list(p.values()))
            with torch.no_grad():
                for j, (v, g_) in enumerate(zip(p.values(), grads)):
                    v.sub_(lr * scale[:, j].view(-1, *([1] * (v.dim() - 1))) * g_)
            total += per_run.detach().to(torch.float64) * len(idx)
        loss = (total / N).tolist()
        if not all(math.isfinite(v) for v in loss):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}; lower the learning rate")
        history["loss"].append(loss)
        if callback is not None:
            with torch.no_grad():
                history["extra"].append(callback(epoch, {**params, **{k: v.detach() for k, v in p.items()}}) or {})
    history["params"] = {**params, **{k: v.detach() for k, v in p.items()}}
    return history


def select_run(params: Params, run: int) -> Params:
    """The parameters of one run, keeping a run dimension of size 1."""
    return {k: v[run:run + 1] for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# One SGD step at an anchor, observed at many probes
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def one_step_change(params: Params, anchors: torch.Tensor, anchor_targets: torch.Tensor,
                    probes: torch.Tensor, lr: float, nonlinear: bool = True, chunk_size: int = 16,
                    dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact change of the outputs after one SGD step (squared loss) at each anchor, for one network.

    For ``f(x) = a^T s(Wx + b) + c``, residual ``r = f(x) - y`` and per-layer step multipliers
    ``(lw, lb, la, lc)`` (``params["lr_scale"]``), the step is ``a+ = a - lr la s_x r^T``,
    ``c+ = c - lr lc r``, ``W+ = W - lr lw D_x x^T``, ``b+ = b - lr lb D_x`` with ``D_x = (a r) * s'(h_x)``,
    so the probe's pre-activation becomes ``h' - lr D_x (lw x.x' + lb)``: no weights are copied.

    Args:
        params: one network (run dimension 1).
        anchors: (A, d) examples stepped on, one at a time; anchor_targets: (A, K).
        probes: (P, d) examples observed.
        lr: the SGD step size.
    Returns:
        ``delta_probe``: (A, P, K) ``f(x', w+) - f(x', w)``; ``delta_anchor``: (A, K) the change at the anchor.
    """
    if params["W"].shape[0] != 1:
        raise ValueError(f"one_step_change expects one network (run dimension 1), got {params['W'].shape[0]}")
    if anchors.dim() != 2 or probes.dim() != 2 or anchor_targets.dim() != 2 \
            or anchor_targets.shape[0] != anchors.shape[0]:
        raise ValueError(f"expected anchors (A, d), targets (A, K), probes (P, d); got {tuple(anchors.shape)}, "
                         f"{tuple(anchor_targets.shape)}, {tuple(probes.shape)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    lw, lb, la, lc = _lr_scale(params)[0].tolist()
    p = {k: params[k][0].to(dtype) for k in TRAINED}
    anchors, probes, T = anchors.to(dtype), probes.to(dtype), anchor_targets.to(dtype)
    Ha = anchors @ p["W"].T + p["b"]  # (A, m)
    Hp = probes @ p["W"].T + p["b"]  # (P, m)
    Sa = _act(Ha, nonlinear)
    r = Sa @ p["a"] + p["c"] - T  # (A, K) residuals
    D = (r @ p["a"].T) * _act_grad(Ha, nonlinear)  # (A, m)
    G = lw * (anchors @ probes.T) + lb  # (A, P)
    Ga = lw * (anchors * anchors).sum(1) + lb  # (A,)
    f_probe = _act(Hp, nonlinear) @ p["a"] + p["c"]  # (P, K)
    delta_probe = torch.empty(anchors.shape[0], probes.shape[0], p["a"].shape[1], dtype=dtype, device=anchors.device)
    for s in range(0, anchors.shape[0], chunk_size):
        sl = slice(s, s + chunk_size)
        a_plus = p["a"] - lr * la * Sa[sl, :, None] * r[sl, None, :]  # (C, m, K)
        c_plus = p["c"] - lr * lc * r[sl]  # (C, K)
        H_plus = Hp[None] - lr * G[sl, :, None] * D[sl, None, :]  # (C, P, m)
        f_plus = torch.bmm(_act(H_plus, nonlinear), a_plus) + c_plus[:, None, :]
        delta_probe[sl] = f_plus - f_probe[None]
    a_plus = p["a"] - lr * la * Sa[:, :, None] * r[:, None, :]
    Ha_plus = Ha - lr * Ga[:, None] * D
    f_anchor = Sa @ p["a"] + p["c"]
    delta_anchor = (torch.einsum("am,amk->ak", _act(Ha_plus, nonlinear), a_plus) + (p["c"] - lr * lc * r)
                    - f_anchor)
    return delta_probe, delta_anchor


def one_step_change_module(model: nn.Module, anchors: torch.Tensor, anchor_targets: torch.Tensor,
                           probes: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step (squared loss) at each anchor of any ``nn.Module``, observed at the probes.

    The per-anchor gradients come from ``vmap(grad(...))`` and the stepped weights are evaluated
    with ``vmap(functional_call)``; ``model``'s own parameters are never changed.

    Args:
        anchors: (A, ...) inputs; anchor_targets: (A, K); probes: (P, ...) inputs.
    Returns:
        ``delta_probe``: (A, P, K); ``delta_anchor``: (A, K).
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def out(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (x,))

    def loss(p: Params, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out(p, x[None])[0] - t) ** 2).sum()

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, anchors, anchor_targets)
    stepped = {k: params[k][None] - lr * g for k, g in grads.items()}
    before_probe = out(params, probes)  # (P, K)
    before_anchor = out(params, anchors)  # (A, K)
    after_probe = vmap(out, in_dims=(0, None))(stepped, probes)  # (A, P, K)
    after_anchor = vmap(lambda p, x: out(p, x[None])[0])(stepped, anchors)  # (A, K)
    return after_probe - before_probe[None], after_anchor - before_anchor


def relative_similarity(delta_probe: torch.Tensor, delta_anchor: torch.Tensor) -> torch.Tensor:
    """``S_rel = ||f(x', w+) - f(x', w)|| / ||f(x, w+) - f(x, w)||``.

    Args:
        delta_probe: (A, P, K) or (A, P); delta_anchor: (A, K) or (A,).
    Returns:
        (A, P) relative similarities.
    Raises:
        ValueError: when a change at an anchor is exactly zero (a perfectly fitted anchor; raise lr).
    """
    if delta_probe.dim() == 2:
        delta_probe, delta_anchor = delta_probe[..., None], delta_anchor[..., None]
    denom = delta_anchor.norm(dim=-1)
    if (denom == 0).any():
        raise ValueError("the SGD step did not change f at some anchors (zero residual or underflow); "
                         "use float64 or a larger step")
    return delta_probe.norm(dim=-1) / denom[:, None]


def kernelised_similarity(delta_probe: torch.Tensor, residual: torch.Tensor, lr: float) -> torch.Tensor:
    """``-<f(x', w+) - f(x', w), r> / (lr ||r||^2)``: the one-step change per unit step and unit loss slope.

    For a scalar output this is ``-(f(x', w+) - f(x', w)) / (lr * l'(x))`` with ``l'(x) = f(x) - y``,
    which tends to the NTK ``<grad f(x), grad f(x')>`` as ``lr -> 0``.

    Args:
        delta_probe: (A, P, K); residual: (A, K) ``f(x) - y`` at the anchors.
    Returns:
        (A, P).
    """
    rr = (residual ** 2).sum(-1)
    if (rr == 0).any():
        raise ValueError("zero residual at some anchor: the kernelised form is undefined there")
    return -torch.einsum("apk,ak->ap", delta_probe, residual) / (lr * rr[:, None])


def two_layer_residuals(params: Params, X: torch.Tensor, Y: torch.Tensor, nonlinear: bool = True,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``f(x) - y`` for one network. X: (N, d), Y: (N, K) -> (N, K)."""
    p = {k: params[k].to(dtype) for k in TRAINED}
    return two_layer_forward(p, X.to(dtype), nonlinear)[0] - Y.to(dtype)


@torch.no_grad()
def two_layer_ntk(params: Params, X1: torch.Tensor, X2: torch.Tensor, nonlinear: bool = True,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Closed-form empirical NTK of the first output of every run of a two-layer network.

    ``Theta(x, x') = lc + la s(h).s(h') + sum_j a_j^2 s'(h_j) s'(h'_j) (lw x.x' + lb)`` with the per-layer
    step multipliers ``(lw, lb, la, lc)``; it is the kernel of the one-step change, see :func:`one_step_change`.

    Returns:
        (R, N1, N2).
    """
    p = {k: params[k].to(dtype) for k in TRAINED}
    lam = _lr_scale(params).to(dtype)
    lw, lb, la, lc = (lam[:, j, None, None] for j in range(4))
    H1, H2 = two_layer_hidden(p, X1.to(dtype)), two_layer_hidden(p, X2.to(dtype))
    a2 = p["a"][..., 0] ** 2  # (R, m)
    X1b, X2b = _batched_inputs(p, X1.to(dtype)), _batched_inputs(p, X2.to(dtype))
    gram = lw * torch.bmm(X1b, X2b.transpose(1, 2)) + lb
    first = la * torch.bmm(_act(H1, nonlinear), _act(H2, nonlinear).transpose(1, 2)) + lc
    second = torch.bmm(_act_grad(H1, nonlinear) * a2[:, None], _act_grad(H2, nonlinear).transpose(1, 2))
    return first + second * gram


def empirical_ntk(model: nn.Module, X1: torch.Tensor, X2: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """Empirical NTK ``sum_k <grad_w f_k(x), grad_w f_k(x')>`` of any module, with ``torch.func``.

    Per-example Jacobians come from ``vmap(jacrev(functional_call))``; the kernel is their
    contraction over parameters and outputs (the trace of the K x K NTK block).

    Args:
        X1: (N1, ...), X2: (N2, ...) inputs.
    Returns:
        (N1, N2) kernel matrix.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f_single(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (x[None],))[0]

    def jac(X: torch.Tensor) -> torch.Tensor:
        parts = []
        for s in range(0, X.shape[0], chunk_size):
            J = vmap(jacrev(f_single), in_dims=(None, 0))(params, X[s:s + chunk_size])
            parts.append(torch.cat([j.flatten(2) for j in J.values()], dim=2))  # (n, K, P)
        return torch.cat(parts)

    J1, J2 = jac(X1), jac(X2)
    return torch.einsum("akp,bkp->ab", J1, J2)


def symmetrise(S: torch.Tensor) -> torch.Tensor:
    """``(S + S^T) / 2`` of a square (N, N) similarity matrix."""
    if S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity matrix must be square, got {tuple(S.shape)}")
    return 0.5 * (S + S.T)


def similarity_matrix(params: Params, X: torch.Tensor, Y: torch.Tensor, lr: float, nonlinear: bool = True,
                      kind: str = "relative", chunk_size: int = 32) -> torch.Tensor:
    """Symmetrised similarity of every pair in a set, for one two-layer network.

    Args:
        X: (N, d) examples (each one both anchor and probe); Y: (N, K) their targets.
        kind: ``"relative"`` (S_rel) or ``"kernel"`` (the kernelised form).
    Returns:
        (N, N) float64 symmetric matrix.
    """
    if kind not in ("relative", "kernel"):
        raise ValueError(f"kind must be 'relative' or 'kernel', got {kind!r}")
    dp, da = one_step_change(params, X, Y, X, lr, nonlinear, chunk_size=chunk_size)
    if kind == "relative":
        return symmetrise(relative_similarity(dp, da))
    return symmetrise(kernelised_similarity(dp, two_layer_residuals(params, X, Y, nonlinear), lr))


# --------------------------------------------------------------------------------------------
# Synthetic manifolds with geodesic distances
# --------------------------------------------------------------------------------------------
def torus_data(n: int, major: float = 2.0, minor: float = 1.0, sectors: int = 2, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points spread uniformly (in area) on a torus in R^3, labelled +-1 by alternating sectors of the long angle.

    Returns:
        X: (n, 3) points; y: (n,) labels in {-1, +1}; angles: (n, 2) (theta around the axis, phi around the tube).
    """
    if n < 2 or not (major > minor > 0) or sectors < 1:
        raise ValueError(f"need n >= 2, major > minor > 0, sectors >= 1; got {n}, {major}, {minor}, {sectors}")
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, n)
    phi = np.empty(0)
    while phi.size < n:  # area element (major + minor cos phi): rejection sampling
        cand = rng.uniform(0, 2 * np.pi, 4 * n)
        keep = rng.uniform(0, major + minor, cand.size) < major + minor * np.cos(cand)
        phi = np.concatenate([phi, cand[keep]])
    phi = phi[:n]
    ring = major + minor * np.cos(phi)
    X = np.stack([ring * np.cos(theta), ring * np.sin(theta), minor * np.sin(phi)], 1)
    y = np.where(np.floor(theta / (2 * np.pi / (2 * sectors))) % 2 == 0, 1.0, -1.0) if sectors > 1 else np.ones(n)
    return (torch.tensor(X, dtype=dtype), torch.tensor(y, dtype=dtype),
            torch.tensor(np.stack([theta, phi], 1), dtype=dtype))


def folded_boxes_data(n: int, length: float = 4.0, width: float = 1.0, fold_angle: float = 0.6 * np.pi,
                      gap: float = 0.5, seed: int = 0, dtype: torch.dtype = torch.float64
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rectangles ``[0, length] x [0, width]``, each folded in the middle by ``fold_angle``, stacked ``gap`` apart.

    Box ``+1`` and box ``-1`` are the same folded sheet shifted along z (so the two classes nest);
    the geodesic distance between points of one box is their distance in the unfolded rectangle.

    Returns:
        X: (n, 3); y: (n,) box labels in {-1, +1}; flat: (n, 2) coordinates in the unfolded rectangle.
    """
    if n < 2 or length <= 0 or width <= 0 or not 0 < fold_angle < np.pi:
        raise ValueError(f"need n >= 2, positive sizes and 0 < fold_angle < pi; got {n}, {length}, {width}, {fold_angle}")
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, length, n)
    v = rng.uniform(0, width, n)
    y = np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0)
    half = length / 2
    # Left half lies flat; the right half rises at (pi - fold_angle) from the fold line at u = half.
    rise = np.pi - fold_angle
    s = np.maximum(u - half, 0.0)
    x_coord = np.minimum(u, half) + s * np.cos(rise) - half
    z_coord = s * np.sin(rise) + np.where(y > 0, gap, -gap) / 2
    X = np.stack([x_coord, v - width / 2, z_coord], 1)
    return torch.tensor(X, dtype=dtype), torch.tensor(y, dtype=dtype), torch.tensor(np.stack([u, v], 1), dtype=dtype)


def graph_geodesic_distances(X: torch.Tensor, sources: Sequence[int], n_neighbors: int = 10) -> np.ndarray:
    """Geodesic distances along a sampled manifold: shortest paths in its k-nearest-neighbour graph.

    Args:
        X: (N, D) points densely sampling a connected manifold; sources: indices of the start points.
    Returns:
        (len(sources), N) distances (``inf`` where the graph is disconnected).
    """
    if n_neighbors < 1 or n_neighbors >= X.shape[0]:
        raise ValueError(f"n_neighbors must be in 1..N-1, got {n_neighbors} for N={X.shape[0]}")
    Xn = X.detach().cpu().double()
    D = torch.cdist(Xn, Xn)
    dist, nbr = D.topk(n_neighbors + 1, largest=False)
    rows = np.repeat(np.arange(X.shape[0]), n_neighbors)
    W = csr_matrix((dist[:, 1:].reshape(-1).numpy(), (rows, nbr[:, 1:].reshape(-1).numpy())), shape=(X.shape[0],) * 2)
    return dijkstra(W, directed=False, indices=list(sources))


def flat_geodesic_distances(flat: torch.Tensor, sources: Sequence[int]) -> np.ndarray:
    """Euclidean distances in the unfolded coordinates (exact geodesics of a folded sheet). -> (S, N)."""
    F = flat.detach().cpu().double()
    return torch.cdist(F[list(sources)], F).numpy()


# --------------------------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------------------------
def elasticity_vs_geodesic(params: Params, X: torch.Tensor, y: torch.Tensor, geodesic: np.ndarray,
                           anchors: Sequence[int], lr: float, nonlinear: bool,
                           probe_mask: np.ndarray | None = None) -> dict:
    """S_rel from each anchor to every point, against geodesic distance.

    Args:
        params: one two-layer network with scalar output; X: (N, d); y: (N,) targets.
        geodesic: (A, N) distances from each anchor; probe_mask: optional (A, N) booleans of pairs to use.
    Returns:
        ``{"pearson": mean per-anchor Pearson(S_rel, geodesic), "pearson_each": [...],
        "s_rel": (A, N) array, "pearson_pooled": Pearson over all pairs}``.
    """
    anchors = list(anchors)
    dp, da = one_step_change(params, X[anchors], y[anchors, None], X, lr, nonlinear)
    S = relative_similarity(dp, da).cpu().numpy()
    mask = np.isfinite(geodesic) if probe_mask is None else (probe_mask & np.isfinite(geodesic))
    mask[np.arange(len(anchors)), anchors] = False  # drop the anchor itself
    each = [pearson(S[i][mask[i]], geodesic[i][mask[i]]) for i in range(len(anchors))]
    return {"pearson": float(np.mean(each)), "pearson_each": each, "s_rel": S,
            "pearson_pooled": pearson(S[mask], geodesic[mask])}


FASHION_NAMES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
# (positive A, positive B, negative C, negative D). Pairs A, B on which pixel K-means is not already
# perfect: a first run had two more tuples (trouser|sneaker, pullover|ankle boot) where every method scored ~1.
SUPERCLASS_TUPLES = ((0, 8, 6, 5), (5, 7, 9, 1), (2, 3, 4, 8), (3, 5, 1, 7), (6, 1, 0, 8), (4, 8, 2, 5))


def superclass_data(X_all: torch.Tensor, y_all: torch.Tensor, tuples: Sequence[Sequence[int]], per_class: int,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack the binary super-class problems ``A u B (+1) vs C u D (-1)`` side by side.

    Args:
        X_all: (N, ...) images; y_all: (N,) original labels 0..9; tuples: R tuples ``(A, B, C, D)``.
        per_class: examples drawn from each class for each problem.
    Returns:
        X: (R, 4 n, d) flattened inputs, positives first (A then B); Y: (R, 4 n, 1) targets +-1;
        sub: (R, 4 n) original labels.
    """
    g = torch.Generator().manual_seed(seed)
    Xs, Ys, subs = [], [], []
    for t in tuples:
        if len(t) != 4 or len(set(t)) != 4:
            raise ValueError(f"each tuple needs four distinct classes (A, B, C, D), got {t}")
        idx = []
        for c in t:
            pool = torch.nonzero(y_all == c).flatten()
            if len(pool) < per_class:
                raise ValueError(f"class {c} has {len(pool)} examples, fewer than per_class={per_class}")
            idx.append(pool[torch.randperm(len(pool), generator=g)[:per_class].to(pool.device)])
        idx = torch.cat(idx)
        Xs.append(X_all[idx].flatten(1))
        subs.append(y_all[idx])
        Ys.append(torch.cat([torch.ones(2 * per_class), -torch.ones(2 * per_class)]).to(X_all)[:, None])
    return torch.stack(Xs), torch.stack(Ys), torch.stack(subs)


def superclass_experiment(X_all: torch.Tensor, y_all: torch.Tensor, tuples: Sequence[Sequence[int]],
                          per_class: int, width: int, epochs: int, lr: float, batch_size: int = 32,
                          probe_lr: float = 1e-2, pca_components: int = 20, seed: int = 0,
                          device: torch.device | str = "cpu", progress: bool = True) -> list[dict]:
    """He & Su's super-class protocol for several tuples at once.

    For each tuple ``(A, B, C, D)`` a two-layer ReLU network learns ``A u B`` against ``C u D`` (all
    R networks train as one batched computation); then the positives are clustered back into A and B
    with the network's local elasticity and with pixel baselines.

    Returns:
        one row per tuple: classes, training accuracy and the clustering accuracy of each method.
    """
    from . import clustering as cl

    X, Y, sub = superclass_data(X_all, y_all, tuples, per_class, seed)
    X, Y = X.to(device), Y.to(device)
    R, N, d = X.shape
    params = init_two_layer(R, d, width, 1, seed=seed, device=device)
    hist = train_two_layer(params, X, Y, epochs, lr, batch_size=batch_size, seed=seed, progress=progress)
    trained = hist["params"]
    with torch.no_grad():
        train_acc = (two_layer_forward(trained, X).sign() == Y).double().mean((1, 2)).tolist()
    rows = []
    n_pos = 2 * per_class
    for r, t in enumerate(progress_bar(tuples, desc="clustering", enabled=progress)):
        one = select_run(trained, r)
        Xp, Yp = X[r, :n_pos], Y[r, :n_pos]
        truth = (sub[r, :n_pos] == t[1]).long().cpu().numpy()
        dp, da = one_step_change(one, Xp, Yp, Xp, probe_lr)
        S_rel = symmetrise(relative_similarity(dp, da))
        K_el = symmetrise(kernelised_similarity(dp, two_layer_residuals(one, Xp, Yp), probe_lr))
        ntk = two_layer_ntk(one, Xp, Xp)[0]
        methods = {
            "elasticity K-means (S_rel rows)": cl.kmeans_rows(S_rel, 2, seed),
            "elasticity spectral (S_rel)": cl.spectral_clusters(S_rel, 2, seed),
            "kernel K-means (kernelised)": cl.kernel_kmeans(K_el, 2, seed),
            "kernel K-means (NTK)": cl.kernel_kmeans(ntk, 2, seed),
            "pixel K-means": cl.pixel_kmeans(Xp, 2, seed),
            f"PCA({pca_components}) + K-means": cl.pca_kmeans(Xp, 2, pca_components, seed),
        }
        row = {"tuple": [FASHION_NAMES[c] for c in t], "classes": list(t), "train_accuracy": train_acc[r],
               "final_loss": hist["loss"][-1][r]}
        row.update({name: cl.clustering_accuracy(truth, labels) for name, labels in methods.items()})
        rows.append(row)
    return rows


def class_similarity_profile(X_all: torch.Tensor, y_all: torch.Tensor, classes: Sequence[int], anchor_class: int,
                             per_class: int, width: int, epochs: int, lr: float, anchors: int = 20,
                             probe_lr: float = 1e-2, seed: int = 0, device: torch.device | str = "cpu",
                             progress: bool = True) -> dict:
    """Mean S_rel from examples of ``anchor_class`` to examples of each class, for a network trained on ``classes``.

    A two-layer ReLU network learns one-hot targets of ``classes`` with SGD on the squared loss;
    ``anchors`` examples of ``anchor_class`` are stepped on and held-out-free probes of every class observed.
    Returns:
        ``{"classes": names, "mean_s_rel": [...], "std_s_rel": [...], "train_accuracy"}``.
    """
    if anchor_class not in classes:
        raise ValueError(f"anchor_class {anchor_class} is not among classes {list(classes)}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.nonzero(y_all == c).flatten()[torch.randperm(int((y_all == c).sum()), generator=g)[:per_class]]
                     for c in classes])
    X = X_all[idx].flatten(1).to(device)
    lab = torch.tensor([list(classes).index(int(c)) for c in y_all[idx]], device=device)
    Y = torch.nn.functional.one_hot(lab, len(classes)).to(X) * 2 - 1
    params = init_two_layer(1, X.shape[1], width, len(classes), seed=seed, device=device)
    trained = train_two_layer(params, X, Y, epochs, lr, seed=seed, progress=progress)["params"]
    with torch.no_grad():
        acc = float((two_layer_forward(trained, X)[0].argmax(1) == lab).double().mean())
    k = list(classes).index(anchor_class)
    pos = torch.nonzero(lab == k).flatten()[:anchors]
    dp, da = one_step_change(trained, X[pos], Y[pos], X, probe_lr)
    S = relative_similarity(dp, da)  # (A, N)
    keep = torch.ones_like(S, dtype=torch.bool)
    keep[torch.arange(len(pos)), pos] = False  # drop each anchor's own entry
    means, stds = [], []
    for j in range(len(classes)):
        vals = S[:, lab == j][keep[:, lab == j]]
        means.append(float(vals.mean()))
        stds.append(float(vals.std()))
    return {"classes": [FASHION_NAMES[c] for c in classes], "anchor": FASHION_NAMES[anchor_class],
            "mean_s_rel": means, "std_s_rel": stds, "train_accuracy": acc}


def synthetic_experiment(dataset: str, n: int, width: int, epochs: int, lr: float, anchors: int = 20,
                         batch_size: int = 32, probe_lr: float = 1e-3, record_every: int = 1, seed: int = 0,
                         device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """S_rel against geodesic distance on the torus or the folded boxes, ReLU network vs linear network.

    Both networks are ``f(x) = sum_r a_r s(w_r.x)`` (no biases, NTK parametrisation) trained by plain SGD
    on the squared loss; the linear one has ``s(h) = h``. The Pearson correlation of S_rel with the geodesic
    distance is recorded every ``record_every`` epochs (pairs within one box for the folded boxes).

    Returns:
        ``{"dataset", "width", "relu": {...}, "linear": {...}, "geodesic": (1, n) distances from the first anchor,
        "points": (n, 3), "labels": (n,), "anchors": [...]}`` where each network entry has
        ``"pearson"`` (final, mean over anchors), ``"pearson_pooled"``, ``"s_rel"`` (1, n) from the first anchor, ``"epochs"``, ``"pearson_by_epoch"``, ``"loss"``.
    """
    if dataset == "torus":
        X, y, _ = torus_data(n, major=1.0, minor=0.125, sectors=2, seed=seed)
        anchor_idx = list(range(anchors))
        geo = graph_geodesic_distances(X, anchor_idx, n_neighbors=10)
        mask = None
    elif dataset == "folded_boxes":
        X, y, flat = folded_boxes_data(n, seed=seed)
        anchor_idx = list(range(anchors))
        geo = flat_geodesic_distances(flat, anchor_idx)
        mask = (y[anchor_idx, None] == y[None, :]).numpy()
    else:
        raise ValueError(f"dataset must be 'torus' or 'folded_boxes', got {dataset!r}")
    X, y = X.to(device), y.to(device)
    out = {"dataset": dataset, "width": width, "geodesic": geo[:1], "points": X.cpu().numpy(), "labels": y.cpu().numpy(),
           "anchors": anchor_idx}
    for name, nonlinear in (("relu", True), ("linear", False)):
        params = init_two_layer(1, 3, width, 1, seed=seed, dtype=torch.float64, device=device, bias=False)
        record = lambda ep, p, nl=nonlinear: (
            {"epoch": ep, "pearson": elasticity_vs_geodesic(p, X, y, geo, anchor_idx, probe_lr, nl, mask)["pearson"]}
            if ep % record_every == 0 or ep == epochs else None)
        hist = train_two_layer(params, X, y[:, None], epochs, lr, batch_size=batch_size, nonlinear=nonlinear,
                               seed=seed, progress=progress, callback=record)
        final = elasticity_vs_geodesic(hist["params"], X, y, geo, anchor_idx, probe_lr, nonlinear, mask)
        recs = [e for e in hist["extra"] if e]
        out[name] = {"pearson": final["pearson"], "pearson_pooled": final["pearson_pooled"], "s_rel": final["s_rel"][:1],
                     "epochs": [e["epoch"] for e in recs], "pearson_by_epoch": [e["pearson"] for e in recs],
                     "loss": [l[0] for l in hist["loss"]]}
    return out


PROFILES = {
    "quick": {"synthetic": {"n": 800, "width": 512, "epochs": 8, "lr": 1.0, "anchors": 16, "record_every": 2},
              "class_profile": {"per_class": 100, "width": 256, "epochs": 15, "lr": 0.5},
              "superclass": {"per_class": 100, "width": 256, "epochs": 30, "lr": 0.8, "resize": 14},
              "sde": {"per_class": 30, "dim": 5, "dt": 0.05}},
    "full": {"synthetic": {"n": 2000, "width": 40960, "epochs": 20, "lr": 1.0, "anchors": 40, "record_every": 2},
             "class_profile": {"per_class": 1000, "width": 2048, "epochs": 40, "lr": 0.5},
             "superclass": {"per_class": 500, "width": 2048, "epochs": 60, "lr": 0.8, "resize": None},
             "sde": {"per_class": 100, "dim": 20, "dt": 0.01}},
}
SDE_RATIOS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0)
SDE_CLASSES = (2, 3, 5, 10)
SDE_TIMES = (2.5, 5.0, 10.0)


def run(profile: str, device: torch.device, progress: bool = True) -> dict:
    """The chapter's numbers: synthetic manifolds, Fashion-MNIST similarity and super-class clustering, the SDE."""
    from . import elastic_sde
    from .data import load_dataset

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    cfg = PROFILES[profile]
    device = torch.device(device)
    runs, results = [], {}
    for dataset in ("torus", "folded_boxes"):
        res = synthetic_experiment(dataset, **cfg["synthetic"], device=device, progress=progress)
        results[dataset] = res
        for net in ("relu", "linear"):
            runs.append({"part": "synthetic", "dataset": dataset, "network": net, "width": res["width"],
                         "pearson_s_rel_geodesic": res[net]["pearson"], "pearson_pooled": res[net]["pearson_pooled"]})
    sc = cfg["superclass"]
    X_all, y_all = load_dataset("fashion-mnist", train=True, device=device, resize=sc["resize"],
                                per_class=max(sc["per_class"], cfg["class_profile"]["per_class"]), seed=0)
    cp = cfg["class_profile"]
    results["class_profile"] = class_similarity_profile(X_all, y_all, (6, 0, 2, 4, 5, 8), 6, cp["per_class"], cp["width"],
                                                        cp["epochs"], cp["lr"], device=device, progress=progress)
    rows = superclass_experiment(X_all, y_all, SUPERCLASS_TUPLES, sc["per_class"], sc["width"], sc["epochs"], sc["lr"],
                                 device=device, progress=progress)
    results["superclass"] = rows
    runs += [{"part": "superclass", **r} for r in rows]
    sde = cfg["sde"]
    results["sde"] = {f"time={t}": elastic_sde.phase_transition(SDE_RATIOS, SDE_CLASSES, time=t, progress=progress, **sde)
                      for t in SDE_TIMES}
    return {"runs": runs, "results": results}
