"""Run a chapter's experiment without its notebook and write its numbers as JSON.

    python -m utils.reproduce equi_separation --profile quick --out results/equi_separation_quick.json

Each experiment module follows :mod:`utils.experiment`: ``Config.for_profile(profile, smoke)``
and ``run(config, device, progress) -> Result`` (a dataclass with ``to_json``).  This wrapper
adds the provenance (experiment, profile, device, seconds, versions, commit, date).  Notebooks
call :func:`reproduce` too, so a chapter's live run and its stored file have the same shape.
(A module not yet converted exposes ``run(profile, device, progress) -> dict`` instead.)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .experiment import jsonable
from .profiles import PROFILES, default_device, get_profile

# experiment name -> "module:function"
EXPERIMENTS: dict[str, str] = {
    "equi_separation": "utils.equi_separation:run",
    "neural_collapse": "utils.neural_collapse:run",
    "lpm": "utils.lpm:run",
    "minority_collapse": "utils.minority_collapse:run",
    "local_elasticity": "utils.local_elasticity:run",
    "deep_linear": "utils.deep_linear:run",
    "representation": "utils.representation:run",
    "ntk": "utils.ntk:run",
    "noisy_labels": "utils.noisy_labels:run",
}
COMMIT_ENV = "BOOK_COMMIT"
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def git_commit() -> str:
    """The repository's HEAD commit (with ``-dirty`` when the tree has changes outside ``results/``,
    whose files are this module's outputs, not inputs), or ``unknown``.

    A copy without ``.git`` (a GPU machine given the working tree) names it in ``$BOOK_COMMIT``."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_description(device: torch.device) -> str:
    """Human-readable name of the device, e.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: 2 threads``."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def provenance(experiment: str, profile: str, device: torch.device, seconds: float) -> dict[str, Any]:
    """The metadata block every results file starts with."""
    return {
        "experiment": experiment,
        "profile": profile,
        "device": device_description(device),
        "seconds": round(seconds, 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _runner(experiment: str):
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; available: {sorted(EXPERIMENTS)}")
    module, func = EXPERIMENTS[experiment].split(":")
    return getattr(importlib.import_module(module), func)


def module(experiment: str):
    """The chapter module of ``experiment`` (``ValueError`` naming the choices if unknown)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; available: {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[experiment].split(":")[0])


def config(experiment: str, profile: str | None = None, smoke: bool = False):
    """``Config.for_profile(profile, smoke)`` of ``experiment``'s module."""
    return module(experiment).Config.for_profile(get_profile(profile), smoke=smoke)


def reproduce(experiment: str, profile: str | None = None, device: torch.device | str | None = None,
              progress: bool = True, smoke: bool = False) -> dict[str, Any]:
    """Run ``experiment`` in ``profile`` and return its results (``Result.to_json()``) with provenance.

    Args:
        experiment: a key of :data:`EXPERIMENTS`.
        profile: ``quick``, ``full`` or ``paper`` (default: :func:`utils.profiles.get_profile`).
        device: default: the GPU if present, else the CPU.
        smoke: the profile's code path at toy scale (unit tests).
    """
    profile = get_profile(profile)
    device = torch.device(device) if device is not None else default_device()
    mod = module(experiment)
    start = time.perf_counter()
    if hasattr(mod, "Config"):
        cfg = mod.Config.for_profile(profile, smoke=smoke)
        payload = mod.run(cfg, device, progress=progress).to_json()
    else:  # a module not yet on the Config/Result pattern
        payload = _runner(experiment)(profile=profile, device=device, progress=progress)
    meta = provenance(experiment, profile, device, time.perf_counter() - start)
    if smoke:
        meta["smoke"] = True
    return {**meta, **payload}


def save_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write results as indented JSON (creating folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=1) + "\n")
    return path


def load_results(experiment: str, profile: str = "full") -> dict[str, Any] | None:
    """The stored ``results/{experiment}_{profile}.json``, or None when no such run was committed."""
    path = RESULTS_DIR / f"{experiment}_{profile}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="default: $BOOK_PROFILE, else full on a GPU and quick on a CPU; "
                             "paper (the paper's exact protocol, checkpointed) only when asked for")
    parser.add_argument("--smoke", action="store_true", help="the profile's code path at toy scale")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda (default: GPU if present)")
    parser.add_argument("--out", default=None, help="default: results/{experiment}_{profile}.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    results = reproduce(args.experiment, args.profile, args.device, progress=not args.no_progress,
                        smoke=args.smoke)
    out = args.out or RESULTS_DIR / f"{args.experiment}_{results['profile']}.json"
    print(f"wrote {save_results(results, out)} ({results['seconds']} s on {results['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
