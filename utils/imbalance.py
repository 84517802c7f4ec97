"""Step-imbalanced subsets of a classification data set, and oversampling counts.

The minority-collapse experiments (Fang, He, Long & Su, 2021) keep ``n_A`` examples of
each of ``K_A`` *majority* classes and ``n_B = floor(n_A / R)`` of each of the other
``K - K_A`` *minority* classes, for an imbalance ratio ``R >= 1``.  Majority classes are
the first ``K_A`` labels ``0..K_A-1``, as in the paper.  For a fixed seed the minority
subsets are nested: the examples kept at a larger ``R`` are a subset of those kept at a
smaller one, so runs at different ``R`` differ only in what was removed.
"""
from __future__ import annotations

import math

import torch

from .data import select_per_class


def minority_size(n_majority: int, ratio: float) -> int:
    """``n_B = floor(n_A / R)`` examples per minority class.

    Raises:
        ValueError: ``n_A < 1``, ``R < 1``, or ``R > n_A`` (which would leave minority classes empty).
    """
    if n_majority < 1:
        raise ValueError(f"n_majority must be at least 1, got {n_majority}")
    if not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"imbalance ratio R must be a finite number >= 1, got {ratio}")
    n_b = int(math.floor(n_majority / ratio + 1e-9))
    if n_b < 1:
        raise ValueError(f"R = {ratio:g} leaves the minority classes empty: n_A / R = {n_majority / ratio:.3g} < 1; "
                         f"use R <= n_A = {n_majority}")
    return n_b


def class_sizes(num_classes: int, num_majority: int, n_majority: int, ratio: float) -> list[int]:
    """Sizes ``[n_A] * K_A + [n_B] * (K - K_A)`` of the imbalanced training set.

    Raises:
        ValueError: ``K_A`` outside ``1..K-1`` or a bad ``n_A``/``R`` (see :func:`minority_size`).
    """
    _check_split(num_classes, num_majority)
    n_b = minority_size(n_majority, ratio)
    return [n_majority] * num_majority + [n_b] * (num_classes - num_majority)


def _check_split(num_classes: int, num_majority: int) -> None:
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got K = {num_classes}")
    if not 1 <= num_majority <= num_classes - 1:
        raise ValueError(f"K_A = {num_majority} majority classes must lie in 1..K-1 = 1..{num_classes - 1}")


def imbalanced_indices(y: torch.Tensor, n_majority: int, ratio: float, num_majority: int,
                       num_classes: int | None = None, seed: int = 0) -> torch.Tensor:
    """Indices of a step-imbalanced subset of the labelled set ``y``.

    Args:
        y: (N,) integer labels in ``0..K-1``.
        n_majority: ``n_A``, examples kept per majority class (labels ``0..K_A-1``).
        ratio: imbalance ratio ``R >= 1``; each minority class keeps ``floor(n_A / R)``.
        num_majority: ``K_A`` in ``1..K-1``.
        num_classes: ``K`` (default ``max(y) + 1``).
        seed: seeds the per-class draw; the same seed gives nested subsets as ``R`` grows.
    Returns:
        (M,) int64 indices into ``y``, grouped by class in label order, sorted within a class.
    Raises:
        ValueError: ``R < 1``, ``R`` leaving a minority class empty, ``K_A`` outside ``1..K-1``,
            or a class with fewer than the requested examples.
    """
    if y.dim() != 1:
        raise ValueError(f"y must be a 1-D label tensor, got shape {tuple(y.shape)}")
    K = int(y.max().item()) + 1 if num_classes is None else num_classes
    sizes = class_sizes(K, num_majority, n_majority, ratio)
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    # one permutation per class from one stream: it depends only on the class, so smaller n_c gives a
    # subset (nesting)
    picked = [select_per_class(y_cpu, n_c, [c], seed=None, generator=g) for c, n_c in enumerate(sizes)]
    return torch.cat(picked).to(y.device)


def imbalanced_subset(X: torch.Tensor, y: torch.Tensor, n_majority: int, ratio: float, num_majority: int,
                      num_classes: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X[idx], y[idx])`` for ``idx = imbalanced_indices(y, ...)``. X: (N, ...) inputs; y: (N,) labels."""
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} examples but y has {y.shape[0]}")
    idx = imbalanced_indices(y, n_majority, ratio, num_majority, num_classes, seed)
    return X[idx], y[idx]


def oversampling_repeats(y: torch.Tensor, minority_classes, factor: int) -> torch.Tensor:
    """Per-example repeat counts for oversampling, as ``utils.train.fit(..., repeats=...)`` takes.

    Args:
        y: (N,) integer labels.
        minority_classes: labels whose examples are repeated.
        factor: how many times each minority example appears per epoch (1 = no oversampling).
    Returns:
        (N,) int64 tensor (on ``y``'s device): ``factor`` for minority examples, 1 otherwise.
    Raises:
        ValueError: ``factor < 1`` or a non-integer factor, or no minority classes given.
    """
    if int(factor) != factor or factor < 1:
        raise ValueError(f"oversampling factor must be an integer >= 1, got {factor}")
    minority = torch.as_tensor(list(minority_classes), dtype=y.dtype, device=y.device)
    if minority.numel() == 0:
        raise ValueError("minority_classes is empty")
    repeats = torch.ones_like(y, dtype=torch.long)
    repeats[torch.isin(y, minority)] = int(factor)
    return repeats
