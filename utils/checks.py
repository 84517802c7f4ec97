"""One validation layer for the shared metrics and trainers.

Every public metric (``utils.metrics``, ``utils.neural_collapse``, ``utils.etf``) and every trainer
(``utils.train``) checks its inputs here, so a bad input gives the same clear error everywhere: what
was passed and how to fix it, never a silent wrong number. The checks on the happy path cost
O(N) (labels) or nothing extra: finiteness of large feature matrices is checked on the float64
class sums the metrics compute anyway, and only a failed check scans the features to say where.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn as nn

_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("", "0", "false", "no", "off", "n", "f")


def env_flag(name: str, default: bool = False) -> bool:
    """Boolean environment variable: ``1/true/yes/on`` -> True, ``0/false/no/off``/empty -> False
    (case-insensitive); unset -> ``default``. Anything else raises ValueError naming the variable."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"${name}={raw!r} is not a boolean; set it to 1/true/yes/on or 0/false/no/off")


def as_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a tensor (numpy arrays and nested lists are converted); TypeError naming ``name`` otherwise."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor or array, got {type(x).__name__}") from err


def check_matrix(V, name: str = "V", min_rows: int = 1, finite: bool = True) -> torch.Tensor:
    """A real 2-D tensor ``(rows, d)`` with at least ``min_rows`` rows and (by default) finite entries.

    Returns the tensor, detached (metrics are numbers, not part of a graph), converted from an array if
    needed. Raises TypeError for a non-real dtype, ValueError for a wrong shape or for NaN/Inf entries
    (with their count and the first row)."""
    V = as_tensor(V, name).detach()
    if V.dtype == torch.bool or V.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {V.dtype}; convert it with {name}.float()")
    if V.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (rows, d), got shape {tuple(V.shape)}; "
                         f"flatten each example to a row, e.g. {name}.flatten(1)")
    if V.shape[0] < min_rows or V.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} row(s) and one column, got shape {tuple(V.shape)}")
    if finite and V.is_floating_point() and not bool(torch.isfinite(V).all()):
        raise_non_finite(V, name)
    return V


def raise_non_finite(V: torch.Tensor, name: str = "H") -> None:
    """Raise ValueError saying how many entries of ``V`` are NaN/Inf and in which row the first one is."""
    bad = ~torch.isfinite(V)
    count = int(bad.sum())
    if count == 0:  # the values are finite but a float64 sum of them overflowed
        raise ValueError(f"{name} is too large: summing its entries overflows float64 "
                         f"(max |entry| = {float(V.abs().max()):.3g}); rescale it")
    rows = torch.nonzero(bad.reshape(V.shape[0], -1).any(1)).flatten() if V.dim() else torch.zeros(1)
    first = int(rows[0]) if V.dim() else 0
    kinds = []
    if bool(torch.isnan(V).any()):
        kinds.append("NaN")
    if bool(torch.isinf(V).any()):
        kinds.append("Inf")
    raise ValueError(f"{name} has {count} non-finite ({'/'.join(kinds)}) entries, the first in row {first} "
                     f"({len(rows)} rows affected); the network or its inputs diverged: lower the learning "
                     f"rate or drop those rows before measuring")


def check_labels(y, n: int, num_classes: int | None = None, name: str = "y",
                 require_all: bool = True, min_classes: int = 1) -> tuple[torch.Tensor, int]:
    """Class labels as an int64 tensor ``(n,)`` in ``0..K-1``, and K.

    Integer-valued float labels (e.g. ``tensor([0., 1.])``) are accepted and converted; other floats
    raise TypeError naming the labels. ``K = num_classes`` when given, else ``max(y) + 1``.

    Raises:
        TypeError: non-integer labels.
        ValueError: wrong shape or length; a negative label; a label >= num_classes; fewer than
            ``min_classes`` classes; with ``require_all``, a class in ``0..K-1`` without examples.
    """
    y = as_tensor(y, name)
    if y.dim() != 1:
        raise ValueError(f"labels {name} must be a 1-D tensor (N,), got shape {tuple(y.shape)}; "
                         f"for one-hot labels pass {name}.argmax(1)")
    if y.shape[0] != n:
        raise ValueError(f"labels {name} has {y.shape[0]} entries but the features have {n} rows; "
                         "pass one label per row")
    if n == 0:
        raise ValueError("no examples: the features and labels are empty")
    if y.dtype == torch.bool:
        y = y.long()
    elif y.is_floating_point() or y.is_complex():
        if y.is_complex() or not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            bad = torch.nonzero(~torch.isfinite(y) | (y != y.round())).flatten() if not y.is_complex() else [0]
            i = int(bad[0])
            raise TypeError(f"labels {name} must be integers 0..K-1, got dtype {y.dtype} with a non-integer "
                            f"value {y[i].item()} at index {i}; pass integer class labels ({name}.long())")
        y = y.long()
    else:
        y = y.long()
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"labels {name} must be in 0..K-1, got a negative label {lo} "
                         f"(at index {int(torch.nonzero(y < 0)[0])})")
    if num_classes is None:
        K = hi + 1
    else:
        K = int(num_classes)
        if K < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        if hi >= K:
            raise ValueError(f"a label of {name} is >= num_classes={K}: got label {hi} "
                             f"(at index {int(torch.nonzero(y == hi)[0])}); labels must be in 0..{K - 1}, "
                             "so pass a larger num_classes or re-index the labels")
    if K < min_classes:
        raise ValueError(f"need at least {min_classes} classes, got {K} (labels {name} take values {lo}..{hi})")
    if require_all:
        counts = torch.bincount(y, minlength=K)
        missing = torch.nonzero(counts == 0).flatten().tolist()
        if missing:
            raise ValueError(f"classes {missing} have no examples (K={K}, labels {name} in {lo}..{hi}); "
                             "every class needs at least one example: re-index the labels to 0..K-1 "
                             "or pass the right num_classes")
    return y, K


def check_features_labels(H, y, num_classes: int | None = None, min_classes: int = 1,
                          name: str = "H") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Features ``(N, d)`` (real dtype; finiteness is left to the caller's float64 sums) and labels
    checked by :func:`check_labels`; labels are moved to the features' device. Returns (H, y, K)."""
    H = check_matrix(H, name, finite=False)
    y, K = check_labels(y, H.shape[0], num_classes, min_classes=min_classes)
    return H, y.to(H.device), K


def check_classifier(W, b, d: int, K: int, labels_K: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A last layer ``W (K, d)`` and bias ``b (K,)`` or None, finite, matching features of width d and K classes."""
    W = check_matrix(W, "W")
    if W.shape[1] != d:
        raise ValueError(f"need H (N, d) and W (K, d) with the same d: the features have d={d} columns but "
                         f"W has shape {tuple(W.shape)}")
    if W.shape[0] != K:
        raise ValueError(f"W has {W.shape[0]} rows (one classifier per class) but the labels y have "
                         f"{K} classes (0..{K - 1}); pass the matching last layer or num_classes")
    if b is not None:
        b = as_tensor(b, "b")
        if b.shape != (K,):
            raise ValueError(f"bias b must have shape ({K},) to match W {tuple(W.shape)}, got {tuple(b.shape)}")
        if b.is_floating_point() and not bool(torch.isfinite(b).all()):
            raise_non_finite(b, "b")
    return W, b


def check_repeats(repeats, n: int, allow_empty: bool = False) -> torch.Tensor:
    """Per-example repeat counts ``(n,)``: non-negative integers (integer-valued floats accepted).

    Raises ValueError for a wrong shape, a negative or non-integer count, or (unless ``allow_empty``)
    all counts zero, which would make every epoch train on nothing."""
    r = as_tensor(repeats, "repeats")
    if r.shape != (n,):
        raise ValueError(f"repeats must be {n} non-negative integers (one per example), got shape {tuple(r.shape)}")
    if r.is_floating_point():
        if not bool(torch.isfinite(r).all()) or not bool((r == r.round()).all()):
            raise ValueError("repeats must be non-negative integers (how often each example appears per epoch), "
                             "got non-integer values; round them first")
    r = r.long().cpu()
    if bool((r < 0).any()):
        raise ValueError(f"repeats must be non-negative integers, got {int((r < 0).sum())} negative value(s), "
                         f"e.g. {int(r.min())}")
    if not allow_empty and int(r.sum()) == 0:
        raise ValueError("repeats are all zero: every epoch would train on nothing (and report loss 0); "
                         "give at least one example a positive count, or pass repeats=None")
    return r


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; ValueError naming it otherwise (bools and non-integers rejected)."""
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def check_model_for_functional(model: nn.Module) -> None:
    """Check that ``model`` is a deterministic function of its parameters, as ``torch.func``
    (``functional_call``, ``jacrev``, ``vmap``: the empirical NTK) requires.

    The model must be in eval mode (``model.eval()``), every batch-norm layer must use running
    statistics (a per-batch statistic couples the examples and ``vmap`` over single examples breaks
    it), and no dropout layer may be active.

    Raises:
        ValueError: naming each offending module and how to fix it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    problems = []
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        problems.append(f"modules in training mode: {training[:5]}{' ...' if len(training) > 5 else ''} "
                        "(call model.eval())")
    for name, m in model.named_modules():
        if isinstance(m, _BATCHNORM) and (not m.track_running_stats or m.running_mean is None):
            problems.append(f"batch-norm layer {name!r} has no running statistics (track_running_stats=False), "
                            "so it normalises with batch statistics; rebuild it with track_running_stats=True "
                            "and estimate the statistics, or remove it")
        if isinstance(m, _DROPOUT) and m.training and m.p > 0:
            problems.append(f"dropout layer {name!r} is active (p={m.p}); call model.eval() or set p=0")
    if problems:
        raise ValueError("model is not a deterministic function of its parameters for torch.func: "
                         + "; ".join(problems))


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; ValueError listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value
