"""A linear locally elastic SDE for class features, in the spirit of Zhang, Wang & Su (2021).

Each training example ``(k, i)`` (class k, index i) has a feature ``X_{k,i}(t)`` in R^d. An SGD
step at an example of class k' pushes that example's own feature along itself (the gradient of a
loss that rewards large, aligned features), and by local elasticity it moves every feature of class k
by ``E[k, k']`` times the same push. Averaging over which example is sampled gives the SDE

    dX_{k,i} = sum_{k'} E[k, k'] mean_j X_{k',j} dt + sigma dB_{k,i},

with intra-class impact ``E[k, k] = alpha`` and inter-class impact ``E[k, k'] = beta``. The class means
then split into a common mode growing at rate ``alpha + (K-1) beta`` and ``K-1`` contrast modes growing at
rate ``alpha - beta``; features within a class only move by noise. Linear separability does not care
about the common mode, so the classes separate (the contrasts outgrow the noise) when ``alpha > beta``
and stay mixed when ``alpha < beta``: a phase transition at ``alpha / beta = 1`` for every number of classes.
This is a simplification of the paper's model, stated in the chapter.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .train import progress_bar


def elasticity_matrix(num_classes: int, intra: float, inter: float) -> torch.Tensor:
    """The K x K impact matrix with ``intra`` on the diagonal and ``inter`` elsewhere (float64)."""
    if num_classes < 2:
        raise ValueError(f"need at least two classes, got {num_classes}")
    E = torch.full((num_classes, num_classes), float(inter), dtype=torch.float64)
    E.fill_diagonal_(float(intra))
    return E


def simulate(E: torch.Tensor, per_class: int, dim: int, steps: int, dt: float, noise: float = 0.0,
             init_scale: float = 1.0, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Euler–Maruyama for the locally elastic SDE, for one or many impact matrices at once.

    Args:
        E: (K, K) impact matrix, or (S, K, K) for S simulations side by side.
        per_class: examples per class n; dim: feature dimension d.
        steps, dt: number and size of the time steps (final time ``steps * dt``).
        noise: sigma of the Brownian term (0: the deterministic ODE).
        init_scale: features start i.i.d. N(0, init_scale^2 I) (so the classes start mixed).
    Returns:
        (S, steps + 1, K, n, d) trajectory (S = 1 when a single E is given), in the frame of the global
        mean: the common mode (a translation of all features, irrelevant to separability) is removed
        after every step so it cannot overflow.
    """
    E = torch.as_tensor(E, dtype=torch.float64, device=device)
    if E.dim() == 2:
        E = E[None]
    if E.dim() != 3 or E.shape[1] != E.shape[2] or E.shape[1] < 2:
        raise ValueError(f"E must be (K, K) or (S, K, K) with K >= 2, got {tuple(E.shape)}")
    if per_class < 2 or dim < 1 or steps < 1 or dt <= 0 or noise < 0:
        raise ValueError(f"need per_class >= 2, dim >= 1, steps >= 1, dt > 0, noise >= 0; got "
                         f"{per_class}, {dim}, {steps}, {dt}, {noise}")
    S, K = E.shape[0], E.shape[1]
    g = torch.Generator(device="cpu").manual_seed(seed)
    X = (torch.randn(S, K, per_class, dim, generator=g, dtype=torch.float64) * init_scale).to(device)
    path = [X]
    for _ in range(steps):
        drift = torch.einsum("skl,sld->skd", E, X.mean(2))[:, :, None, :]
        X = X + drift * dt
        if noise > 0:
            X = X + noise * dt ** 0.5 * torch.randn(X.shape, generator=g, dtype=torch.float64).to(device)
        X = X - X.mean((1, 2), keepdim=True)  # frame of the global mean (exact for equal row sums of E)
        path.append(X)
    return torch.stack(path, 1)


def separation(X: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise of the class structure: between-class spread of the centred class means over the
    within-class spread, ``sqrt(mean_k ||mu_k - mu||^2 / mean_{k,i} ||x_ki - mu_k||^2)``.

    Args:
        X: (..., K, n, d) features.
    Returns:
        (...) separation values (large: separated; small: mixed).
    """
    if X.dim() < 3:
        raise ValueError(f"features must be (..., K, n, d), got {tuple(X.shape)}")
    mu_k = X.mean(-2)
    between = ((mu_k - mu_k.mean(-2, keepdim=True)) ** 2).sum(-1).mean(-1)
    within = ((X - mu_k[..., None, :]) ** 2).sum(-1).mean((-1, -2))
    return (between / within).sqrt()


def nearest_mean_accuracy(X: torch.Tensor) -> torch.Tensor:
    """Training accuracy of the nearest-class-mean classifier on the features. X: (..., K, n, d) -> (...)."""
    mu_k = X.mean(-2)  # (..., K, d)
    d2 = ((X[..., None, :] - mu_k[..., None, None, :, :]) ** 2).sum(-1)  # (..., K, n, K)
    K = X.shape[-3]
    truth = torch.arange(K, device=X.device).view(K, 1)
    return (d2.argmin(-1) == truth).double().mean((-1, -2))


def phase_transition(ratios: Sequence[float], num_classes: Sequence[int], inter: float = 1.0,
                     per_class: int = 30, dim: int = 5, time: float = 10.0, dt: float = 0.05,
                     noise: float = 1.0, seed: int = 0, progress: bool = True) -> list[dict]:
    """Final separation and nearest-mean accuracy across ``alpha / beta = ratio`` for several K.

    Returns:
        one row per (K, ratio): ``{"classes", "ratio", "separation", "accuracy"}``.
    """
    steps = max(1, round(time / dt))
    rows = []
    for K in progress_bar(num_classes, desc="phase transition", enabled=progress):
        E = torch.stack([elasticity_matrix(K, r * inter, inter) for r in ratios])
        final = simulate(E, per_class, dim, steps, dt, noise, seed=seed)[:, -1]
        sep, acc = separation(final), nearest_mean_accuracy(final)
        rows += [{"classes": K, "ratio": float(r), "separation": float(s), "accuracy": float(a)}
                 for r, s, a in zip(ratios, sep, acc)]
    return rows


# --------------------------------------------------------------------------------------------
# Fitting the locally elastic model to a real network (Zhang, Wang & Su 2021, Section 4)
# --------------------------------------------------------------------------------------------
def elastic_design(sampled: torch.Tensor, grads: torch.Tensor, num_classes: int, lr: float) -> torch.Tensor:
    """Regressors of the per-step model ``Delta Z_k(s) = -lr E[k, c_s] g_s`` with ``E = alpha I + beta (1 - I)``.

    An SGD step on one example of class ``c_s`` with loss gradient ``g_s`` in logit space (cross-entropy:
    ``softmax(f(x)) - e_y``) moves the mean logit vector ``Z_k`` of class k by ``-lr E[k, c_s] g_s``:
    ``alpha`` for the class stepped on, ``beta`` for every other class (local elasticity averaged per class).

    Args:
        sampled: (S,) class of the example stepped on at each step; grads: (S, K) its logit gradient.
    Returns:
        (S, K, K, 2) regressors: ``[..., 0]`` multiplies alpha, ``[..., 1]`` beta, for class k and logit j.
    """
    S, K = grads.shape
    if K != num_classes or sampled.shape != (S,):
        raise ValueError(f"expected sampled (S,) and grads (S, {num_classes}); got {tuple(sampled.shape)}, {tuple(grads.shape)}")
    same = (sampled[:, None] == torch.arange(K, device=sampled.device)[None]).to(grads.dtype)  # (S, K)
    base = -lr * grads[:, None, :]  # (S, 1, K)
    return torch.stack([same[:, :, None] * base, (1 - same)[:, :, None] * base], -1)


def estimate_elasticity(increments: torch.Tensor, sampled: torch.Tensor, grads: torch.Tensor, lr: float,
                        windows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``alpha_hat(t), beta_hat(t)`` from the increments of the class-mean logits.

    Args:
        increments: (S, K, K) ``Z_k(s+1) - Z_k(s)`` (class k, logit j) for every SGD step s.
        sampled: (S,) class stepped on; grads: (S, K) logit gradient of that example; lr: the step size.
        windows: number of consecutive, equal blocks of steps, each with its own (alpha, beta).
    Returns:
        alpha, beta: (windows,) estimates, exact when the increments follow the model.
    Raises:
        ValueError: shapes disagree or a window sees only one class (beta is then not identifiable).
    """
    S, K, _ = increments.shape
    if windows < 1 or windows > S:
        raise ValueError(f"windows must be in 1..{S}, got {windows}")
    X = elastic_design(sampled, grads, K, lr).double()
    y = increments.double()
    alphas, betas = [], []
    for block in torch.arange(S).tensor_split(windows):
        if len(torch.unique(sampled[block])) < 2:
            raise ValueError("a window saw a single class; use fewer windows")
        A = X[block].reshape(-1, 2)
        sol = torch.linalg.lstsq(A, y[block].reshape(-1, 1)).solution[:, 0]
        alphas.append(sol[0])
        betas.append(sol[1])
    return torch.stack(alphas), torch.stack(betas)


def simulate_logit_ode(Z0: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, steps: int, lr: float,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """The mean-field locally elastic ODE for class-mean logits, with time-varying coefficients.

    ``Z_k(s+1) = Z_k(s) - lr sum_k' pi_k' E_s[k, k'] (softmax(Z_k') - e_k')`` with ``E_s = alpha I + beta (1 - I)``
    taken from the window containing step s and ``pi`` the sampling frequencies of the classes.

    Args:
        Z0: (K, K) class-mean logits at the start; alpha, beta: (W,) per-window coefficients (W <= steps);
        steps: number of SGD steps to imitate; weights: (K,) class frequencies (default uniform).
    Returns:
        (steps + 1, K, K) trajectory.
    """
    K = Z0.shape[0]
    if Z0.shape != (K, K) or alpha.shape != beta.shape or alpha.dim() != 1:
        raise ValueError(f"Z0 must be (K, K) and alpha, beta (W,); got {tuple(Z0.shape)}, {tuple(alpha.shape)}")
    pi = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights.double() / weights.sum()
    window = torch.arange(steps).tensor_split(len(alpha))
    which = torch.cat([torch.full((len(b),), i) for i, b in enumerate(window)])
    eye = torch.eye(K, dtype=torch.float64)
    Z = Z0.double().clone()
    path = [Z]
    for s in range(steps):
        E = beta[which[s]] + (alpha[which[s]] - beta[which[s]]) * eye
        G = torch.softmax(Z, 1) - eye  # (K, K): row k' is the mean-field gradient of class k'
        Z = Z - lr * (E * pi[None]) @ G
        path.append(Z)
    return torch.stack(path)


def relative_trajectory_error(simulated: torch.Tensor, real: torch.Tensor) -> float:
    """``||Z_sim - Z_real|| / ||Z_real - Z_real(0)||`` over the whole trajectory (Frobenius norms): the error
    relative to how far the real class-mean logits moved. Both (T, K, K)."""
    if simulated.shape != real.shape:
        raise ValueError(f"trajectories differ in shape: {tuple(simulated.shape)} vs {tuple(real.shape)}")
    moved = (real - real[:1]).norm()
    if moved == 0:
        raise ValueError("the real trajectory does not move; the relative error is undefined")
    return float((simulated - real).norm() / moved)
