"""Pure mathematics of wide two-layer ReLU networks and their NTK (Du et al., 2019; Arora et al., 2019).

The network is

    f(x) = m^{-1/2} sum_r a_r ReLU(w_r^T x),   a_r in {-1, +1} fixed,  w_r ~ N(0, kappa^2 I_d),

trained on the squared loss Phi(W) = 1/2 sum_i (f(x_i) - y_i)^2 by full-batch gradient descent on
W only.  For unit-norm inputs its neural tangent kernel converges, as m grows, to

    H^inf_ij = x_i^T x_j (pi - arccos x_i^T x_j) / (2 pi),

and the training outputs follow u(t) = y + (I - eta H^inf)^t (u(0) - y), which is
(I - (I - eta H^inf)^t) y when u(0) = 0.  This module holds the closed form, the finite network's
kernel (by ``torch.func`` and by the closed form of its gradient), the kernel trajectory, the
complexity measure sqrt(2 y^T (H^inf)^{-1} y / n) of Arora et al.'s generalisation bound, label
corruption, and a batched trainer that runs many widths and label vectors as one computation.
The chapter's experiment is :mod:`utils.ntk`; the convolutional kernel is :mod:`utils.cntk`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch.func import jacrev, vmap

from .data import load_dataset
from .metrics import within_between_trace
from .train import progress_bar

UNIT_NORM_TOL = 1e-4


# ----------------------------------------------------------------------------- input checks

def check_unit_norm(X: torch.Tensor, tol: float = UNIT_NORM_TOL) -> None:
    """Raise ``ValueError`` unless every row of ``X: (n, d)`` has Euclidean norm 1 (within ``tol``)."""
    if X.dim() != 2:
        raise ValueError(f"inputs must be a 2-D (n, d) matrix, got shape {tuple(X.shape)}")
    norms = X.double().norm(dim=1)
    worst = (norms - 1).abs().max().item() if len(norms) else 0.0
    if worst > tol:
        raise ValueError(f"inputs must be unit-norm for the closed-form kernel; the worst row norm is off by "
                         f"{worst:.3g} (normalise with X / X.norm(dim=1, keepdim=True))")


def _check_width(width: int) -> None:
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer, got {width}")


# ----------------------------------------------------------------------------- kernels

def h_infinity(X: torch.Tensor, Z: torch.Tensor | None = None) -> torch.Tensor:
    """The infinite-width NTK of the two-layer ReLU net (first-layer weights), in float64.

    Args:
        X: (n, d) unit-norm inputs; Z: (k, d) unit-norm inputs or None for Z = X.
    Returns:
        (n, k) matrix with entries x_i^T z_j (pi - arccos x_i^T z_j) / (2 pi).
    Raises:
        ValueError: a row that is not unit-norm.
    """
    check_unit_norm(X)
    Z = X if Z is None else Z
    check_unit_norm(Z)
    G = (X.double() @ Z.double().T).clamp(-1.0, 1.0)
    return G * (math.pi - torch.arccos(G)) / (2 * math.pi)


def init_two_layer(width: int, dim: int, kappa: float = 1.0, seed: int = 0,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random initialisation: ``W: (m, d)`` with entries N(0, kappa^2), signs ``a: (m,)`` uniform in {-1, +1}."""
    _check_width(width)
    if kappa <= 0:
        raise ValueError(f"kappa (the scale of the first-layer weights) must be positive, got {kappa}")
    if dim < 1:
        raise ValueError(f"input dimension must be positive, got {dim}")
    g = torch.Generator().manual_seed(seed)
    W = kappa * torch.randn(width, dim, generator=g, dtype=torch.float64)
    a = torch.where(torch.rand(width, generator=g) < 0.5, -1.0, 1.0).double()
    return W.to(device=device, dtype=dtype), a.to(device=device, dtype=dtype)


def two_layer_forward(W: torch.Tensor, a: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Outputs f(x_i) = m^{-1/2} sum_r a_r ReLU(w_r^T x_i).  W: (m, d), a: (m,), X: (n, d) -> (n,)."""
    return torch.relu(X @ W.T) @ a / math.sqrt(W.shape[0])


def two_layer_empirical_ntk(W: torch.Tensor, a: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The finite network's NTK w.r.t. W by ``torch.func``: J J^T with J_i = df(x_i)/dW.

    Args:
        W: (m, d), a: (m,), X: (n, d).   Memory O(n m d): meant for small n m d.
    Returns:
        (n, n) kernel.
    """
    def f_single(W_: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return two_layer_forward(W_, a, x[None])[0]

    J = vmap(jacrev(f_single), in_dims=(None, 0))(W, X).reshape(X.shape[0], -1)
    return J @ J.T


def ntk_from_gradient(W: torch.Tensor, a: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The same kernel from the closed-form gradient df(x)/dw_r = m^{-1/2} a_r 1{w_r^T x > 0} x.

    H(W)_ij = x_i^T x_j * (1/m) sum_r a_r^2 1{w_r^T x_i > 0} 1{w_r^T x_j > 0}.
    W: (m, d), a: (m,), X: (n, d) -> (n, n).
    """
    M = (X @ W.T > 0).to(X.dtype) * a.abs()
    return (X @ X.T) * (M @ M.T) / W.shape[0]


# ----------------------------------------------------------------------------- kernel predictions

Eig = tuple[torch.Tensor, torch.Tensor]


def kernel_eig(H: torch.Tensor) -> Eig:
    """Eigenvalues (ascending) and eigenvectors of a symmetric kernel ``H: (n, n)``, in float64.

    Pass the result as ``eig=`` to the functions below to decompose H only once.
    """
    return torch.linalg.eigh(H.double())


def _eig(H: torch.Tensor, eig: Eig | None) -> Eig:
    return kernel_eig(H) if eig is None else eig


def kernel_prediction(H: torch.Tensor, y: torch.Tensor, eta: float, steps: Sequence[int] | torch.Tensor,
                      u0: torch.Tensor | None = None, eig: Eig | None = None) -> torch.Tensor:
    """Outputs of gradient descent in the kernel regime: u(t) = y + (I - eta H)^t (u0 - y).

    With u0 = 0 (the default) this is u(t) = (I - (I - eta H)^t) y; at t = 0 it returns u0,
    so u(0) - y is the initial outputs' gap to the targets.
    Args:
        H: (n, n) symmetric PSD kernel; y: (n,) targets; eta: step size; steps: (T,) non-negative ints;
        u0: (n,) initial outputs or None.
    Returns:
        (T, n) float64.
    """
    lam, V = _eig(H, eig)
    y = y.double().to(lam.device)
    u0 = torch.zeros_like(y) if u0 is None else u0.double().to(lam.device)
    t = torch.as_tensor(steps, dtype=torch.float64, device=lam.device).reshape(-1, 1)
    if (t < 0).any():
        raise ValueError("steps must be non-negative")
    decay = (1 - eta * lam)[None, :] ** t                 # (T, n)
    return y[None, :] + (decay * (V.T @ (u0 - y))[None, :]) @ V.T


def kernel_test_prediction(H: torch.Tensor, H_test: torch.Tensor, y: torch.Tensor, eta: float,
                           steps: Sequence[int], u0: torch.Tensor | None = None,
                           f0_test: torch.Tensor | None = None, eig: Eig | None = None) -> torch.Tensor:
    """Kernel-regime outputs on held-out inputs: f(t) = f0 + H_test H^{-1} (I - (I - eta H)^t)(y - u0).

    H: (n, n), H_test: (k, n) kernel between test and training inputs, y: (n,) -> (T, k) float64.
    """
    lam, V = _eig(H, eig)
    y = y.double().to(lam.device)
    u0 = torch.zeros_like(y) if u0 is None else u0.double().to(lam.device)
    t = torch.as_tensor(steps, dtype=torch.float64, device=lam.device).reshape(-1, 1)
    coef = (1 - (1 - eta * lam)[None, :] ** t) / lam[None, :]          # (T, n)
    alpha = (coef * (V.T @ (y - u0))[None, :]) @ V.T                   # (T, n)
    out = alpha @ H_test.double().T
    return out if f0_test is None else out + f0_test.double()[None, :]


def kernel_loss_curve(H: torch.Tensor, y: torch.Tensor, eta: float, steps: Sequence[int],
                      u0: torch.Tensor | None = None, eig: Eig | None = None) -> torch.Tensor:
    """Loss 1/2 ||u(t) - y||^2 of the kernel trajectory, (T,) float64, from the eigen-expansion."""
    lam, V = _eig(H, eig)
    y = y.double().to(lam.device)
    u0 = torch.zeros_like(y) if u0 is None else u0.double().to(lam.device)
    p2 = (V.T @ (u0 - y)) ** 2
    t = torch.as_tensor(steps, dtype=torch.float64, device=lam.device).reshape(-1, 1)
    return 0.5 * ((1 - eta * lam)[None, :].abs() ** (2 * t) * p2[None, :]).sum(1)


def steps_to_fraction(H: torch.Tensor, y: torch.Tensor, eta: float, fraction: float = 0.01,
                      max_steps: int = 10**12, eig: Eig | None = None) -> int:
    """Fewest GD steps after which the kernel trajectory's loss is at most ``fraction`` of its initial value.

    Uses u(0) = 0 and the closed form, so it costs one eigendecomposition, whatever the answer.
    Raises ValueError for fraction outside (0, 1) or a step size that does not contract (eta * lambda not in (0, 2)).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    lam, V = _eig(H, eig)
    if lam.min() <= 0 or eta * lam.max() >= 2:
        raise ValueError(f"need 0 < eta * lambda < 2 for every eigenvalue; got eta*lambda in "
                         f"[{eta * lam.min().item():.3g}, {eta * lam.max().item():.3g}]")
    p2 = (V.T @ y.double().to(lam.device)) ** 2
    log_decay = 2 * torch.log((1 - eta * lam).abs().clamp_min(1e-300))

    def ratio(t: int) -> float:
        return float((torch.exp(t * log_decay) * p2).sum() / p2.sum())

    lo, hi = 0, 1
    while ratio(hi) > fraction:
        lo, hi = hi, hi * 2
        if hi > max_steps:
            return max_steps
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ratio(mid) > fraction else (lo, mid)
    return hi


def complexity_measure(H: torch.Tensor, y: torch.Tensor, eig: Eig | None = None) -> float:
    """sqrt(2 y^T H^{-1} y / n), the data-dependent term of Arora et al.'s generalisation bound.

    H: (n, n) positive definite, y: (n,).  Raises ValueError if H is singular to working precision
    (smallest eigenvalue below 1e-12 times the largest), e.g. when two inputs coincide.
    """
    lam, V = _eig(H, eig)
    if lam[0] <= 1e-12 * lam[-1].abs():
        raise ValueError(f"H is not positive definite (smallest eigenvalue {lam[0].item():.3g}); "
                         "are two inputs parallel?")
    p = V.T @ y.double().to(lam.device)
    return math.sqrt(2 * float((p ** 2 / lam).sum()) / y.shape[0])


def label_projections(H: torch.Tensor, y: torch.Tensor, eig: Eig | None = None) -> dict[str, np.ndarray]:
    """Eigenvalues of H (descending) and the squared projections (v_i^T y)^2 / ||y||^2 of y on its eigenvectors.

    Returns dict with ``eigenvalues`` (n,), ``energy`` (n,) summing to 1, and ``cumulative`` (n,).
    """
    lam, V = _eig(H, eig)
    lam, V = lam.flip(0), V.flip(1)
    y = y.double().to(lam.device)
    energy = (V.T @ y) ** 2 / (y @ y)
    return {"eigenvalues": lam.cpu().numpy(), "energy": energy.cpu().numpy(),
            "cumulative": energy.cumsum(0).cpu().numpy()}


# ----------------------------------------------------------------------------- data

def unit_rows(X: torch.Tensor) -> torch.Tensor:
    """Rows of ``X: (n, d)`` scaled to unit Euclidean norm."""
    norms = X.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("an input is the zero vector and cannot be unit-normalised")
    return X / norms


def two_class_data(classes: Sequence[int] = (0, 1), per_class: int = 500, test_per_class: int = 500,
                   resize: int | None = 14, seed: int = 0, device: torch.device | str = "cpu"
                   ) -> dict[str, torch.Tensor]:
    """Two Fashion-MNIST classes as unit-norm vectors with labels +1 (first class) and -1 (second).

    Images are standardised (utils.data), optionally resized to ``resize`` x ``resize``, flattened,
    centred by the training mean image, and scaled to unit norm.
    Returns dict with ``X`` (n, d), ``y`` (n,), ``X_test`` (k, d), ``y_test`` (k,), all float32.
    """
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ValueError(f"need two distinct classes, got {classes}")
    X, y = load_dataset("fashion-mnist", train=True, per_class=per_class, classes=list(classes),
                        resize=resize, seed=seed)
    Xt, yt = load_dataset("fashion-mnist", train=False, per_class=test_per_class, classes=list(classes),
                          resize=resize, seed=seed)
    X, Xt = X.flatten(1), Xt.flatten(1)
    mean = X.mean(0, keepdim=True)
    out = {"X": unit_rows(X - mean), "y": 1.0 - 2.0 * y.float(),
           "X_test": unit_rows(Xt - mean), "y_test": 1.0 - 2.0 * yt.float()}
    return {k: v.to(device) for k, v in out.items()}


def corrupt_labels(y: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Labels with a seeded random ``fraction`` of ``y: (n,)`` (+-1) replaced by :func:`random_labels`.

    The corrupted sets are nested (the examples corrupted at fraction p are among those corrupted at any
    larger fraction, with the same random values), so a sweep over p changes one thing at a time; at
    fraction 1 the result is ``random_labels(y, seed)``.  Arora et al. (2019, Section 6) corrupt a fraction
    of CIFAR-10 labels the same way.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction of corrupted labels must lie in [0, 1], got {fraction}")
    noise = random_labels(y, seed)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 7919)).to(y.device)
    out = y.clone().float()
    take = order[: int(round(fraction * len(y)))]
    out[take] = noise[take]
    return out


def random_labels(y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random +-1 labels carrying no information about the class: within each class of ``y: (n,)``,
    a seeded random half (rounded down) gets +1 and the rest -1, so sum_i y_i * random_i is (almost) 0."""
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    out = torch.empty(len(y_cpu), dtype=torch.float32)
    for c in y_cpu.unique():
        idx = torch.nonzero(y_cpu == c).flatten()
        signs = torch.ones(len(idx))
        signs[: len(idx) // 2] = -1.0
        out[idx] = signs[torch.randperm(len(idx), generator=g)]
    return out.to(y.device)


# ----------------------------------------------------------------------------- batched training

def train_widths(X: torch.Tensor, Y: torch.Tensor, widths: Sequence[int], steps: int, eta: float,
                 kappa: float = 1.0, seed: int = 0, X_test: torch.Tensor | None = None,
                 kernel_points: int = 400, classes: torch.Tensor | None = None,
                 progress: bool = False) -> dict[str, torch.Tensor]:
    """Full-batch GD on W for every (label vector, width) pair, with the closed-form gradient.

    Every network is stepped in the same loop over steps, with two large matrix products per network
    and preallocated buffers (no autograd, no per-step allocation):
        P = X W^T,   u = ReLU(P) a / sqrt(m),   grad W = (a / sqrt(m)) * (1{P > 0}^T ((u - y) * X)),
    the gradient of 1/2 ||u - y||^2.  Network g = (l, k) fits labels Y[l] with width widths[k]; the same
    initialisation (seed + k) is used for every label vector at a given width.

    Args:
        X: (n, d) unit-norm inputs; Y: (L, n) label vectors; widths: K widths; steps: T;
        eta: step size; kappa: init scale; X_test: (k, d) or None; kernel_points: how many training
        inputs (a seeded random subset) the NTK change is measured on; classes: (n,) integer class
        labels or None; when given, the within/between-class scatter ratio Tr(Sigma_W Sigma_B^+) of the
        hidden features ReLU(W x) (the neural-collapse measure NC1, utils.metrics) is measured before and
        after training.
    Returns (G = L * K networks, ordered label-major: g = l * K + k):
        ``loss`` (T+1, G) 1/2 ||u - y||^2 at each step; ``u0``, ``u`` (G, n) initial and final outputs;
        ``f0_test``, ``f_test`` (G, k); ``relative_weight_change`` (G,) ||W(T) - W(0)||_F / ||W(0)||_F;
        ``kernel_change`` (G,) ||H(T) - H(0)||_F / ||H(0)||_F on the kernel points;
        ``pattern_change`` (G,) fraction of activation signs 1{w_r^T x_i > 0} on X that flipped;
        with ``classes``: ``feature_scatter_init``, ``feature_scatter_final`` (G,).
    """
    check_unit_norm(X)
    for w in widths:
        _check_width(w)
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    device, dtype = X.device, X.dtype
    Y = Y.to(device=device, dtype=dtype).reshape(-1, X.shape[0])
    L, K, n = Y.shape[0], len(widths), X.shape[0]
    nets = []
    for l in range(L):
        for k, m in enumerate(widths):
            W, a = init_two_layer(m, X.shape[1], kappa, seed + k, device, dtype)
            P = X @ W.T
            nets.append({"W": W, "W0": W.clone(), "coef": (a / math.sqrt(m))[:, None], "y": Y[l], "m": m,
                         "P": P, "M": torch.empty_like(P), "M0": P > 0, "grad": torch.empty_like(W)})
    G = len(nets)
    if classes is not None:
        scatter0 = torch.tensor([within_between_trace(torch.relu(net["P"]), classes) for net in nets])
    losses = torch.empty(steps + 1, G, dtype=torch.float64)
    u_init, u_last = torch.empty(G, n, dtype=torch.float64), torch.empty(G, n, dtype=torch.float64)
    for t in progress_bar(range(steps + 1), desc="GD steps", enabled=progress):
        for g, net in enumerate(nets):
            P, M = net["P"], net["M"]
            if t:
                torch.mm(X, net["W"].T, out=P)
            P.clamp_min_(0.0)                                   # P now holds ReLU(X W^T)
            u = (P @ net["coef"]).squeeze(1)
            r = u - net["y"]
            losses[t, g] = 0.5 * float(r.double().square().sum())
            if t == 0:
                u_init[g] = u.double().cpu()
            if t == steps:
                u_last[g] = u.double().cpu()
                continue
            torch.sign(P, out=M)                                # 1{w_r^T x_i > 0}
            torch.mm(M.T, r[:, None] * X, out=net["grad"])
            net["W"].addcmul_(net["coef"], net["grad"], value=-eta)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:kernel_points].to(device)
    Kx = X[idx] @ X[idx].T
    out = {"loss": losses, "u0": u_init, "u": u_last}
    rwc, kc, flips = (torch.empty(G, dtype=torch.float64) for _ in range(3))
    for g, net in enumerate(nets):
        W, W0, m = net["W"], net["W0"], net["m"]
        rwc[g] = float((W - W0).norm() / W0.norm())
        M1 = net["P"] > 0
        flips[g] = float((M1 != net["M0"]).double().mean())
        A0, A1 = net["M0"][idx].to(dtype), M1[idx].to(dtype)
        H0, H1 = Kx * (A0 @ A0.T) / m, Kx * (A1 @ A1.T) / m
        kc[g] = float((H1 - H0).norm() / H0.norm())
    out.update(relative_weight_change=rwc, kernel_change=kc, pattern_change=flips)
    if classes is not None:
        out["feature_scatter_init"] = scatter0
        out["feature_scatter_final"] = torch.tensor([within_between_trace(net["P"], classes) for net in nets])
    if X_test is not None:
        check_unit_norm(X_test)
        out["f0_test"] = torch.stack([(torch.relu(X_test @ net["W0"].T) @ net["coef"])[:, 0]
                                      for net in nets]).double().cpu()
        out["f_test"] = torch.stack([(torch.relu(X_test @ net["W"].T) @ net["coef"])[:, 0]
                                     for net in nets]).double().cpu()
    return out


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of log y against log x."""
    slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope), float(intercept)


