"""Experiment profiles: ``quick`` runs on a laptop CPU in minutes, ``full`` is the paper's scale.

The profile is chosen, in order of precedence, by an explicit argument (a notebook
parameter), the environment variable ``BOOK_PROFILE``, and finally the hardware:
a CUDA GPU selects ``full``, otherwise ``quick``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

PROFILES = ("quick", "full")
ENV_VAR = "BOOK_PROFILE"


def default_device() -> torch.device:
    """The device experiments run on: the first CUDA GPU if present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_profile(override: str | None = None) -> str:
    """Return ``"quick"`` or ``"full"``.

    Args:
        override: a notebook parameter; ``None`` or ``""`` defers to ``$BOOK_PROFILE``,
            then to the hardware (GPU present: ``full``).
    Raises:
        ValueError: for a name other than ``quick`` or ``full``.
    """
    for source, value in (("argument", override), (ENV_VAR, os.environ.get(ENV_VAR))):
        if value:
            value = value.strip().lower()
            if value not in PROFILES:
                raise ValueError(f"unknown profile {value!r} from {source}; choose one of {PROFILES}")
            return value
    return "full" if torch.cuda.is_available() else "quick"


@contextlib.contextmanager
def torch_threads(n: int | None = 1, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the enclosed block with ``n`` intra-op CPU threads, then restore the previous number.

    Nothing changes when ``n`` is None or ``device`` is not a CPU (GPU work is unaffected).

    Small models (batches of ~100 x 100 matrices) train faster on one thread than on two, and
    far faster when other processes compete for the cores; larger matrix work wants them all.
    """
    saved = torch.get_num_threads()
    if n is not None and (device is None or torch.device(device).type == "cpu"):
        if n < 1:
            raise ValueError(f"number of threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
