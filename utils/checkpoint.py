"""Checkpoints for the ``paper`` profile: a long run saves itself and resumes where it stopped.

A chapter's experiment is a list of *jobs* (one network, one seed, one setting).  A
:class:`Checkpoint` keeps, in one folder,

* ``jobs.json``: the result row of every finished job, written the moment it finishes, so that a
  re-run skips them (:meth:`Checkpoint.done`, :meth:`Checkpoint.record`);
* ``<job>.pt``: the training state of the job in flight (model, optimiser, scheduler, epoch,
  history, the shuffling generator), written by :func:`utils.train.fit` at most every
  ``every_seconds`` (default 10 minutes) and at the end of each epoch after that much time.

Re-running the same command (``python -m utils.reproduce NAME --profile paper``) resumes.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_DIR = Path(os.environ.get("BOOK_CHECKPOINT_DIR", Path.home() / ".cache" / "geometry-book" / "checkpoints"))


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


class Checkpoint:
    """Finished jobs and in-flight training state of one experiment, in ``folder``.

    Args:
        folder: where to keep the files (created); use one folder per (experiment, profile).
        every_seconds: minimum time between two saves of a job's training state.
    """

    def __init__(self, folder: str | Path, every_seconds: float = 600.0):
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be positive, got {every_seconds}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.every_seconds = float(every_seconds)
        self._jobs_path = self.folder / "jobs.json"
        self._jobs: dict[str, Any] = json.loads(self._jobs_path.read_text()) if self._jobs_path.exists() else {}
        self._last_save: dict[str, float] = {}

    @classmethod
    def for_experiment(cls, experiment: str, profile: str, every_seconds: float = 600.0) -> "Checkpoint":
        """The default folder ``$BOOK_CHECKPOINT_DIR/<experiment>_<profile>`` (~/.cache/geometry-book)."""
        return cls(DEFAULT_DIR / f"{experiment}_{profile}", every_seconds)

    # finished jobs ------------------------------------------------------------------------------
    def done(self, key: str) -> Any | None:
        """The stored result of job ``key``, or None if it has not finished."""
        return self._jobs.get(key)

    def record(self, key: str, row: Any) -> Any:
        """Store job ``key``'s result (JSON types) atomically, drop its training state, return ``row``."""
        self._jobs[key] = row
        tmp = self._jobs_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._jobs))
        tmp.replace(self._jobs_path)
        self.state_path(key).unlink(missing_ok=True)
        return row

    # training state of the job in flight --------------------------------------------------------
    def state_path(self, key: str) -> Path:
        return self.folder / f"{_safe(key)}.pt"

    def load_state(self, key: str) -> dict | None:
        """The saved training state of job ``key`` (a dict), or None."""
        path = self.state_path(key)
        return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None

    def restore(self, key: str, model: torch.nn.Module, optimizer) -> dict | None:
        """Load job ``key``'s saved state into ``model`` and ``optimizer`` and return the whole state
        (for the caller's scheduler, shuffling generators and history), or None when none is saved."""
        state = self.load_state(key)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        return state

    def due(self, key: str) -> bool:
        """Whether ``every_seconds`` have passed since job ``key``'s state was last saved."""
        last = self._last_save.setdefault(key, time.monotonic())
        return time.monotonic() - last >= self.every_seconds

    def save_state(self, key: str, state: dict) -> None:
        """Write job ``key``'s training state atomically."""
        path = self.state_path(key)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        self._last_save[key] = time.monotonic()
