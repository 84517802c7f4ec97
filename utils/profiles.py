"""Experiment profiles: one meaning each, the same in every chapter.

* ``quick``: 2 CPU cores, at most 2 minutes per chapter; the book build executes it.
* ``full``: one free-Colab-class GPU (T4, 15 GB), at most 10 minutes per chapter and 12 GB of
  GPU memory; the phenomenon at, or close to, the paper's scale.  A GPU selects it.
* ``paper``: the paper's exact protocol; only on explicit request (``BOOK_PROFILE=paper`` or a
  notebook's ``PROFILE = "paper"``), never automatic; checkpointed and resumable
  (:mod:`utils.checkpoint`).

The profile is chosen, in order of precedence, by an explicit argument (a notebook
parameter), the environment variable ``BOOK_PROFILE``, and finally the hardware:
a CUDA GPU selects ``full``, otherwise ``quick``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

PROFILES = ("quick", "full", "paper")
# The machine each profile is sized for, and its budget (seconds per chapter, bytes of memory).
BUDGETS = {
    "quick": {"machine": "2 CPU cores", "seconds": 120, "memory_bytes": 8 * 2**30},
    "full": {"machine": "one T4-class GPU (15 GB)", "seconds": 600, "memory_bytes": 12 * 2**30},
    "paper": {"machine": "one GPU, hours; checkpointed", "seconds": None, "memory_bytes": None},
}
ENV_VAR = "BOOK_PROFILE"


def default_device() -> torch.device:
    """The device experiments run on: the first CUDA GPU if present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_profile(override: str | None = None) -> str:
    """Return ``"quick"``, ``"full"`` or ``"paper"``.

    Args:
        override: a notebook parameter; ``None`` or ``""`` defers to ``$BOOK_PROFILE``,
            then to the hardware (GPU present: ``full``; ``paper`` is never chosen automatically).
    Raises:
        ValueError: for any other name (the message lists the three).
    """
    for source, value in (("argument", override), (ENV_VAR, os.environ.get(ENV_VAR))):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"profile from {source} must be a string, one of {PROFILES}; got {value!r}")
        if value and value.strip():
            value = value.strip().lower()
            if value not in PROFILES:
                raise ValueError(f"unknown profile {value!r} from {source}; choose one of {PROFILES}")
            return value
    return "full" if torch.cuda.is_available() else "quick"


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3   # glibc's mallopt parameters
_ALLOCATOR_TUNED = False


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's allocator reuse freed CPU tensors instead of returning them to the system.

    By default glibc serves every allocation above ~128 KiB with a fresh ``mmap`` and unmaps it on
    free, so a training loop that allocates the same (R, B, w) temporaries every step pays a page
    fault per 4 KiB page, every step: on the noisy-label sweep (48 networks side by side) that was
    a third of the run, all of it system time.  Raising the mmap threshold (to glibc's maximum,
    32 MiB) and the trim threshold keeps those pages in the heap.  The cost: the process keeps its
    peak heap size until it exits.  Process-wide and idempotent; a no-op (returning False) where the
    C library has no ``mallopt`` (macOS, musl).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in
                 ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
                  (_M_TOP_PAD, 64 << 20)))
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def flush_denormals() -> bool:
    """Treat subnormal floats (below ~1.2e-38 in float32) as zero on the CPU, process-wide.

    Adam's second-moment estimates decay into that range for parameters whose gradients vanish,
    and x86 cores compute on subnormals many times slower; flushing them changes no result the book
    reports and took about 15 % off the equi-separation training on this machine.  Returns whether
    the CPU supports it.
    """
    return torch.set_flush_denormal(True)


THREADS_ENV = "BOOK_TORCH_THREADS"


@contextlib.contextmanager
def torch_threads(n: int | None = 1, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the enclosed block with ``n`` intra-op CPU threads, then restore the previous number.

    Nothing changes when ``n`` is None or ``device`` is not a CPU (GPU work is unaffected).

    Small models (batches of ~100 x 100 matrices) train faster on one thread than on two, and
    far faster when other processes compete for the cores; larger matrix work wants them all.
    ``n=None`` keeps the current number, unless ``$BOOK_TORCH_THREADS`` sets one (the claims CLI
    sets it in its worker processes: several processes each running two OpenMP threads on two cores
    wait on each other's barriers and run many times slower than one thread each).
    On a CPU it also calls :func:`keep_freed_memory` and :func:`flush_denormals` (process-wide).
    """
    saved = torch.get_num_threads()
    if n is None and os.environ.get(THREADS_ENV, "").strip():
        n = int(os.environ[THREADS_ENV])                     # a cap set by whoever runs several processes
    on_cpu = device is None or torch.device(device).type == "cpu"
    if on_cpu:
        keep_freed_memory()
        flush_denormals()
    if n is not None and on_cpu:
        if n < 1:
            raise ValueError(f"number of threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
