"""Algorithmic stability, uniform and locally elastic (Deng, He & Su, ICML 2021).

``beta(z_i, z) = |loss(A_S, z) - loss(A_{S minus i}, z)|``: how much the loss at a point z changes when the
training example z_i is removed. Uniform stability (Bousquet & Elisseeff, 2002) bounds it by its worst case
``beta_U = sup_{i, z} beta(z_i, z)``; locally elastic stability keeps its dependence on the pair and enters the
bound through ``beta_LE = sup_i E_z beta(z_i, z)``, which is much smaller when removing an example only moves
the loss at similar points.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def removal_stability(fit: Callable[[torch.Tensor, torch.Tensor], object],
                      loss: Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor],
                      X: torch.Tensor, Y: torch.Tensor, Xz: torch.Tensor, Yz: torch.Tensor,
                      removed) -> torch.Tensor:
    """``beta(z_i, z)`` by refitting without each removed example.

    Args:
        fit: ``fit(X, Y) -> model``; loss: ``loss(model, Xz, Yz) -> (Z,)`` per-point losses.
        X: (m, d) training inputs, Y: (m, ...) targets; Xz, Yz: the Z evaluation points.
        removed: indices i to remove, one at a time.
    Returns:
        (len(removed), Z) absolute loss changes.
    """
    base = loss(fit(X, Y), Xz, Yz)
    rows = []
    for i in removed:
        keep = torch.ones(X.shape[0], dtype=torch.bool)
        keep[i] = False
        rows.append((loss(fit(X[keep], Y[keep]), Xz, Yz) - base).abs())
    return torch.stack(rows)


def stability_constants(beta: torch.Tensor) -> dict:
    """Uniform ``sup beta`` and locally elastic ``sup_i mean_z beta`` constants of a (removed, Z) matrix."""
    if beta.dim() != 2 or beta.numel() == 0:
        raise ValueError(f"beta must be a non-empty (removed, Z) matrix, got {tuple(beta.shape)}")
    return {"uniform": float(beta.max()), "locally_elastic": float(beta.mean(1).max()),
            "median": float(beta.median()), "mean": float(beta.mean())}


def stability_bound(beta: float, m: int, loss_bound: float, delta: float = 0.05) -> float:
    """Bousquet & Elisseeff's high-probability gap bound ``2 beta + (4 m beta + M) sqrt(ln(1/delta) / (2 m))``.

    With ``beta = beta_U`` it is the uniform-stability bound; Deng, He & Su (2021, Theorem 1) prove the same form
    with ``beta_LE = sup_i E_z beta(z_i, z)`` in place of ``beta_U`` (plus a lower-order term omitted here).
    """
    if m < 1 or not 0 < delta < 1:
        raise ValueError(f"need m >= 1 and 0 < delta < 1, got {m}, {delta}")
    return 2 * beta + (4 * m * beta + loss_bound) * math.sqrt(math.log(1 / delta) / (2 * m))
