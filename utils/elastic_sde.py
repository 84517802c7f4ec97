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
