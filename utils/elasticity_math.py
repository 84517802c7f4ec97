"""The mathematics of local elasticity (He & Su, ICLR 2020): two-layer networks, the one-step probe, kernels, manifolds.

Pure functions with shapes in their docstrings; the chapter module :mod:`utils.local_elasticity` runs the
experiments.  How much one SGD step at ``x`` moves the prediction at ``x'``:

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
PROBE_MEMORY_BYTES = 256 * 2**20  # working memory of one chunk of the one-step probe


def probe_chunk(anchors: int, probes: int, width: int, bytes_per: int = 8,
                memory_bytes: int = PROBE_MEMORY_BYTES) -> int:
    """Anchors per chunk so that one ``(chunk, probes, width)`` temporary fits ``memory_bytes`` (at least 1)."""
    return max(1, min(anchors, memory_bytes // max(1, probes * width * bytes_per)))


@torch.no_grad()
def one_step_change(params: Params, anchors: torch.Tensor, anchor_targets: torch.Tensor,
                    probes: torch.Tensor, lr: float, nonlinear: bool = True, chunk_size: int | None = None,
                    dtype: torch.dtype = torch.float64,
                    memory_bytes: int = PROBE_MEMORY_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact change of the outputs after one SGD step (squared loss) at each anchor, for one network.

    For ``f(x) = a^T s(Wx + b) + c``, residual ``r = f(x) - y`` and per-layer step multipliers
    ``(lw, lb, la, lc)`` (``params["lr_scale"]``), the step is ``a+ = a - lr la s_x r^T``,
    ``c+ = c - lr lc r``, ``W+ = W - lr lw D_x x^T``, ``b+ = b - lr lb D_x`` with ``D_x = (a r) * s'(h_x)``,
    so the probe's pre-activation becomes ``h' - lr D_x (lw x.x' + lb)``: no weights are copied.

    The only ``(anchors, probes, width)`` temporary is built by one fused rank-one ``baddbmm`` (``alpha=-lr``)
    and rectified in place, chunked over anchors so that it stays within ``memory_bytes``; the output layer's
    change is split as ``s(h+) a+ = s(h+) a - lr la (s(h+) s_x) r^T`` (two matrix products, no ``(C, m, K)`` copy).

    Args:
        params: one network (run dimension 1).
        anchors: (A, d) examples stepped on, one at a time; anchor_targets: (A, K).
        probes: (P, d) examples observed.
        lr: the SGD step size.
        chunk_size: anchors per chunk (default: from ``memory_bytes``).
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
    A, P, m = anchors.shape[0], probes.shape[0], p["W"].shape[0]
    Ha = torch.addmm(p["b"], anchors, p["W"].T)  # (A, m)
    Hp = torch.addmm(p["b"], probes, p["W"].T)  # (P, m)
    Sa = _act(Ha, nonlinear)
    r = torch.addmm(p["c"], Sa, p["a"]) - T  # (A, K) residuals
    D = (r @ p["a"].T) * _act_grad(Ha, nonlinear)  # (A, m)
    G = torch.addmm(torch.full((A, P), lb, dtype=dtype, device=anchors.device), anchors, probes.T, alpha=lw)  # (A, P)
    Ga = lw * (anchors * anchors).sum(1) + lb  # (A,)
    f_probe = torch.addmm(p["c"], _act(Hp, nonlinear), p["a"])  # (P, K)
    delta_probe = torch.empty(A, P, p["a"].shape[1], dtype=dtype, device=anchors.device)
    C = chunk_size or probe_chunk(A, P, m, torch.finfo(dtype).bits // 8, memory_bytes)
    for s in range(0, A, C):
        sl = slice(s, s + C)
        n = min(C, A - s)
        H_plus = torch.baddbmm(Hp.expand(n, P, m), G[sl, :, None], D[sl, None, :], alpha=-lr)  # (C, P, m)
        if nonlinear:
            H_plus.relu_()
        out = H_plus @ p["a"]  # (C, P, K)
        if la != 0:
            proj = torch.bmm(H_plus, Sa[sl, :, None])  # (C, P, 1)
            out.sub_(lr * la * proj * r[sl, None, :])
        out.add_((p["c"] - lr * lc * r[sl])[:, None, :]).sub_(f_probe[None])
        delta_probe[sl] = out
    a_plus = p["a"] - lr * la * Sa[:, :, None] * r[:, None, :]
    Ha_plus = Ha - lr * Ga[:, None] * D
    f_anchor = Sa @ p["a"] + p["c"]
    delta_anchor = (torch.einsum("am,amk->ak", _act(Ha_plus, nonlinear), a_plus) + (p["c"] - lr * lc * r)
                    - f_anchor)
    return delta_probe, delta_anchor


@torch.no_grad()
def one_step_change_reference(params: Params, anchors: torch.Tensor, anchor_targets: torch.Tensor,
                              probes: torch.Tensor, lr: float, nonlinear: bool = True,
                              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The same quantity the slow, obvious way (one anchor at a time: step the weights, evaluate, restore).

    This is the official code's algorithm (copy the model, take one SGD step, evaluate); kept as the
    reference for tests and the benchmark. Shapes as in :func:`one_step_change`.
    """
    lw, lb, la, lc = _lr_scale(params)[0].tolist()
    p = {k: params[k][0].to(dtype) for k in TRAINED}
    anchors, probes, T = anchors.to(dtype), probes.to(dtype), anchor_targets.to(dtype)
    f = lambda q, X: _act(X @ q["W"].T + q["b"], nonlinear) @ q["a"] + q["c"]
    dps, das = [], []
    for i in range(anchors.shape[0]):
        x = anchors[i:i + 1]
        q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        with torch.enable_grad():
            loss = 0.5 * ((f(q, x) - T[i:i + 1]) ** 2).sum()
            grads = torch.autograd.grad(loss, [q[k] for k in TRAINED])
        stepped = {k: p[k] - lr * s * g for k, s, g in zip(TRAINED, (lw, lb, la, lc), grads)}
        dps.append(f(stepped, probes) - f(p, probes))
        das.append((f(stepped, x) - f(p, x))[0])
    return torch.stack(dps), torch.stack(das)


def one_step_change_module(model: nn.Module, anchors: torch.Tensor, anchor_targets: torch.Tensor,
                           probes: torch.Tensor, lr: float, chunk_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step (squared loss) at each anchor of any ``nn.Module``, observed at the probes.

    The per-anchor gradients come from ``vmap(grad(...))`` and the stepped weights
    (``torch.add(w, g, alpha=-lr)``, one fused op per tensor) are evaluated with ``vmap(functional_call)``,
    ``chunk_size`` anchors at a time; ``model``'s own parameters are never changed.

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

    before_probe = out(params, probes)  # (P, K)
    before_anchor = out(params, anchors)  # (A, K)
    dps, das = [], []
    for s in range(0, anchors.shape[0], chunk_size):
        xa, ta = anchors[s:s + chunk_size], anchor_targets[s:s + chunk_size]
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xa, ta)
        stepped = {k: torch.add(params[k][None], g, alpha=-lr) for k, g in grads.items()}
        dps.append(vmap(out, in_dims=(0, None))(stepped, probes).sub_(before_probe[None]))  # (C, P, K)
        das.append(vmap(lambda p, x: out(p, x[None])[0])(stepped, xa) - before_anchor[s:s + chunk_size])
    return torch.cat(dps), torch.cat(das)


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




def donut_data(n: int, radius: float = 8.0, ripples: int = 4, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """He & Su's torus-like data: two interleaved rippled closed curves in R^3, one per class.

    Class +1: ``(R cos t + sin(k t) cos t, R sin t + sin(k t) sin t, cos(k t))``; class -1 the same with the
    ripple's sign flipped, so the two curves wind around each other. ``t`` is uniform on ``[-pi, pi)``.

    Returns:
        X: (n, 3) points (classes alternate, +1 first); y: (n,) labels in {-1, +1}; t: (n,) curve angles.
    """
    if n < 2 or radius <= 1 or ripples < 1:
        raise ValueError(f"need n >= 2, radius > 1 and ripples >= 1; got {n}, {radius}, {ripples}")
    rng = np.random.default_rng(seed)
    t = rng.uniform(-np.pi, np.pi, n)
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    ring = radius + sign * np.sin(ripples * t)
    X = np.stack([ring * np.cos(t), ring * np.sin(t), sign * np.cos(ripples * t)], 1)
    return torch.tensor(X, dtype=dtype), torch.tensor(sign, dtype=dtype), torch.tensor(t, dtype=dtype)


def angular_distances(t: torch.Tensor, sources: Sequence[int]) -> np.ndarray:
    """Distance along a closed curve measured, as He & Su do, by the wrapped angle ``min(|t-t'|, 2 pi - |t-t'|)``.

    Args:
        t: (N,) angles in radians; sources: anchor indices.
    Returns:
        (S, N) distances in radians.
    """
    T = t.detach().cpu().double().numpy()
    d = np.abs(T[list(sources)][:, None] - T[None])
    return np.minimum(d, 2 * np.pi - d)
