"""Two-layer networks ``f(x) = a^T s(Wx + b) + c``, the book's one building block for them.

Stored as dictionaries of tensors with a leading *run* dimension ``R`` (``W: (R, m, d)``, ``b: (R, m)``,
``a: (R, m, K)``, ``c: (R, K)``, ``lr_scale: (R, 4)`` per-layer step multipliers for ``(W, b, a, c)``), so that
several networks train side by side as one computation.  Three parametrisations (:func:`init_two_layer`):

* ``"standard"``: PyTorch's ``nn.Linear`` initialisation, one step size for every layer;
* ``"ntk"``: the NTK parametrisation (Jacot et al., 2018) written as per-layer step multipliers;
* ``"du"``: Du, Zhai, Poczos & Singh (ICLR 2019) and Arora et al. (ICML 2019):
  ``f(x) = m^{-1/2} sum_r a_r ReLU(w_r^T x)`` with ``w_r ~ N(0, kappa^2 I)``, fixed signs ``a_r in {-1, +1}``
  (stored as ``a_r / sqrt(m)``) and only ``W`` trained.

:func:`two_layer_ntk` is the network's exact (closed-form) empirical NTK; the NTK of any other model is
:func:`utils.kernels.empirical_ntk`.  Used by chapter 04 (:mod:`utils.local_elasticity`) and chapter 08
(:mod:`utils.ntk`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .train import batch_indices, progress_bar

Params = dict[str, torch.Tensor]
PARAMETRISATIONS = ("standard", "ntk", "du")


def init_two_layer(runs: int, in_dim: int, width: int, out_dim: int = 1, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   parametrisation: str = "ntk", bias: bool = True, kappa: float = 1.0) -> Params:
    """``runs`` independent two-layer networks ``f(x) = a^T s(Wx + b) + c``.

    ``parametrisation="ntk"``: ``W ~ N(0, 1/d)``, ``b ~ N(0, 1)``, ``a ~ N(0, 1/m)``, ``c = 0`` and per-layer
    SGD step multipliers ``(1/d, 1, 1/m, 1)`` for ``(W, b, a, c)``: exactly SGD on the NTK parametrisation
    ``a'^T s(W'x/sqrt(d) + b)/sqrt(m)`` with standard-normal ``W', a'``, so the tangent kernel stays O(1)
    at any width. ``"standard"``: PyTorch's uniform ``nn.Linear`` initialisation and one step size for all.
    ``"du"`` (Du et al., 2019): ``W ~ N(0, kappa^2)``, ``a_r = +-1/sqrt(m)`` with uniformly random fixed signs,
    ``b = c = 0`` and step multipliers ``(1, 0, 0, 0)``: only the first layer is trained.

    ``bias=False`` fixes ``b = c = 0`` (their step multipliers are 0): the paper's ``f(x) = sum_r a_r s(w_r.x)``.

    Returns:
        ``{"W": (R, m, d), "b": (R, m), "a": (R, m, K), "c": (R, K), "lr_scale": (R, 4)}``
        (``lr_scale`` is not trained).
    Raises:
        ValueError: a non-positive size or ``kappa``, or an unknown parametrisation.
    """
    if min(runs, in_dim, width, out_dim) < 1 or any(int(v) != v for v in (runs, in_dim, width, out_dim)):
        raise ValueError(f"runs, in_dim, width and out_dim must be positive integers, got "
                         f"{runs}, {in_dim}, {width}, {out_dim}")
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
    elif parametrisation == "du":
        if not kappa > 0:
            raise ValueError(f"kappa (the scale of the first-layer weights) must be positive, got {kappa}")
        W = kappa * torch.randn(runs, width, in_dim, generator=g, dtype=torch.float64)
        signs = torch.where(torch.rand(runs, width, out_dim, generator=g) < 0.5, -1.0, 1.0)
        p = {"W": W, "b": torch.zeros(runs, width, dtype=torch.float64),
             "c": torch.zeros(runs, out_dim, dtype=torch.float64),
             "lr_scale": torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).repeat(runs, 1)}
        out = {k: v.to(dtype=dtype, device=device) for k, v in p.items()}
        out["a"] = signs.to(dtype=dtype, device=device) / math.sqrt(width)   # rounded as m^{-1/2} a_r in dtype
        return out
    else:
        raise ValueError(f"parametrisation must be one of {PARAMETRISATIONS}, got {parametrisation!r}")
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
