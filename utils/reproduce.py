"""Run a chapter's experiment without its notebook and write its numbers as JSON.

    python -m utils.reproduce equi_separation --profile quick --out results/equi_separation_quick.json

Each experiment module exposes ``run(profile, device, progress) -> dict`` whose dict holds
``runs`` (a list of rows) and optionally ``results``; this wrapper adds the provenance
(experiment, profile, device, seconds, versions, commit, date).  Notebooks call the same
``run`` functions, and show stored ``full``-profile files beside their live ``quick`` run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .profiles import default_device, get_profile

# experiment name -> "module:function"
EXPERIMENTS: dict[str, str] = {
    "equi_separation": "utils.equi_separation:run",
    "neural_collapse": "utils.neural_collapse:run",
    "lpm": "utils.lpm:run",
    "minority_collapse": "utils.minority_collapse:run",
    "local_elasticity": "utils.local_elasticity:run",
    "deep_linear": "utils.linear_nets:run",
    "representation": "utils.representation:run",
    "ntk": "utils.ntk:run",
    "noisy_labels": "utils.noisy_labels:run",
}
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def git_commit() -> str:
    """The repository's HEAD commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_description(device: torch.device) -> str:
    """Human-readable name of the device, e.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: 2 threads``."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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


def reproduce(experiment: str, profile: str | None = None, device: torch.device | str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run ``experiment`` and return its results with provenance (see module docstring)."""
    profile = get_profile(profile)
    device = torch.device(device) if device is not None else default_device()
    start = time.perf_counter()
    payload = _runner(experiment)(profile=profile, device=device, progress=progress)
    return {**provenance(experiment, profile, device, time.perf_counter() - start), **payload}


def save_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write results as indented JSON (creating folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=_jsonable) + "\n")
    return path


def load_results(experiment: str, profile: str = "full") -> dict[str, Any] | None:
    """The stored ``results/{experiment}_{profile}.json``, or None when no such run was committed."""
    path = RESULTS_DIR / f"{experiment}_{profile}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--profile", choices=("quick", "full"), default=None,
                        help="default: $BOOK_PROFILE, else full on a GPU and quick on a CPU")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda (default: GPU if present)")
    parser.add_argument("--out", default=None, help="default: results/{experiment}_{profile}.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    results = reproduce(args.experiment, args.profile, args.device, progress=not args.no_progress)
    out = args.out or RESULTS_DIR / f"{args.experiment}_{results['profile']}.json"
    print(f"wrote {save_results(results, out)} ({results['seconds']} s on {results['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
