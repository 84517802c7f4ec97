"""The shape every chapter module shares: a frozen ``Config``, ``run(config, device) -> Result``.

A chapter module (``utils.equi_separation``, ``utils.neural_collapse``, ...) defines

* ``EXPERIMENT``: its name, the same for notebook, module, results file and claims
  (``results/{EXPERIMENT}_{profile}.json``);
* ``Config``: a frozen dataclass with ``Config.for_profile(profile, smoke=False)``.  ``smoke=True``
  keeps the profile's code path (same networks, same loops, same measurements) and shrinks every
  size so that the unit tests can execute the ``full`` and ``paper`` paths on a CPU in seconds.
  ``Config.peak_memory_bytes()`` estimates the peak device memory of a run (parameters,
  activations, kernels), and ``Config.expected_seconds()`` the time on the profile's machine;
* ``run(config, device, progress=True) -> Result``: ``Result`` is a dataclass with
  :class:`JsonResult` as a base, so it round-trips through JSON (``to_json``/``from_json``);
* ``CLAIMS``: the :class:`utils.claims.Claim` objects the chapter asserts, each checked on
  ``Result.to_json()``;
* ``plot_*`` functions for the notebook.

This module holds only the pieces every chapter needs; it trains nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import PurePath
from typing import Any, Mapping, Protocol, TypeVar

import numpy as np
import torch

T = TypeVar("T", bound="JsonResult")
GiB = 2**30


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of ``obj``: tensors and arrays become lists, tuples lists,
    non-finite floats stay floats (Python's json writes NaN/Infinity), dataclasses dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a results file; convert it to numbers first")


class JsonResult:
    """Base for a chapter's ``Result`` dataclass: ``to_json()`` and ``Result.from_json(d)``.

    ``from_json`` ignores the provenance keys that :mod:`utils.reproduce` adds (device, seconds,
    commit, ...) and any key the dataclass does not declare, so a stored file always loads.
    """

    def to_json(self) -> dict:
        """The result as plain JSON types (lists, dicts, numbers, strings)."""
        return jsonable(self)

    @classmethod
    def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
        """Rebuild the result from :meth:`to_json`'s dict (or a stored results file)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{cls.__name__}.from_json: the data lack the fields {missing}; "
                             "was it written by another version of the chapter? Re-run utils.reproduce.")
        return cls(**{k: v for k, v in data.items() if k in names})

    def dumps(self) -> str:
        return json.dumps(self.to_json())


class ExperimentConfig(Protocol):
    """What :mod:`utils.reproduce` and the tests expect of a chapter's ``Config``."""

    @classmethod
    def for_profile(cls, profile: str, smoke: bool = False) -> "ExperimentConfig": ...

    def peak_memory_bytes(self) -> int: ...

    def expected_seconds(self) -> float: ...


def check_profile(profile: str) -> str:
    """``profile`` if it is one of the three names, else a ``ValueError`` listing them."""
    from .profiles import PROFILES
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    return profile


def mlp_memory_bytes(runs: int, batch: int, widths: list[int], eval_rows: int = 0,
                     dtype_bytes: int = 4, optimizer_copies: int = 2) -> int:
    """A generous estimate of the peak memory of ``runs`` MLPs trained side by side.

    Args:
        runs: models trained at once; batch: examples per step; widths: layer widths, input first;
        eval_rows: examples pushed through in one evaluation chunk (features of every layer kept);
        optimizer_copies: extra copies of the parameters held by the optimiser (Adam: 2).
    Returns:
        bytes: parameters x (1 + gradient + optimizer copies) plus activations of training and of
        evaluation (every layer kept, forward and backward), times 1.5 for allocator slack.
    """
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    acts = sum(widths) * max(batch, 1) * 3 + sum(widths) * eval_rows
    return int(1.5 * dtype_bytes * runs * (params * (2 + optimizer_copies) + acts))


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float when finite, else None (JSON has no NaN in strict readers)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None
