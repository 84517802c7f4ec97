"""nc_metrics (NC1-NC4) vs the d x d pseudo-inverse algorithm of the official neural-collapse code.

The reference algorithm is the one of Papyan, Han & Donoho's measurements as implemented in
tding1/Neural-Collapse (``validate_NC.py``), re-implemented here in numpy float32: class means, the
d x d within-class scatter ``Sw = sum_k (H_k - mu_k)^T (H_k - mu_k) / N``, the d x d between-class
scatter ``Sb = M^T M / K``, its pseudo-inverse (eigenvalues above d * eps * max kept, i.e. the K-1
non-zero ones), ``NC1 = Tr(Sw Sb^+) / K`` (as a sum of an element-wise product, cheaper than the
product the official code forms), NC2 on the centred means and on W, NC3 and NC4 (nearest class mean
by the Gram expansion). Ours: :func:`utils.neural_collapse.nc_metrics` (float64 accumulation, rank-(K-1)
trick, two chunked passes over H). Features are float32 (as a network produces them), K = 10 balanced
classes with random means, W a noisy copy of the centred means.

    python benchmarks/nc_metrics_speed.py [--n 50000] [--dims 512 2048] [--threads 1]

Prints CPU seconds (best of --repeats), the speed-up, and the largest relative difference of the
NC1-NC4 values between the two (float32 reference vs float64, so ~1e-4 is expected).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="device for ours (the reference is numpy on the CPU)")
    return parser.parse_args()


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before numpy and torch load their BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere
from utils.neural_collapse import nc_metrics  # noqa: E402

KEYS = ("nc1", "equinorm_means", "equinorm_classifiers", "equiangular_means", "equiangular_classifiers",
        "maxangle_means", "maxangle_classifiers", "nc3", "nc4")


def _nc2(V: np.ndarray) -> tuple[float, float, float]:
    K = V.shape[0]
    norms = np.linalg.norm(V, axis=1)
    U = V / norms[:, None]
    off = (U @ U.T)[~np.eye(K, dtype=bool)]
    return float(norms.std(ddof=1) / norms.mean()), float(off.std(ddof=1)), float(np.abs(off + 1 / (K - 1)).mean())


def reference_nc(H: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The official d x d algorithm, numpy float32. H: (N, d), y: (N,), W: (K, d), b: (K,)."""
    N, d = H.shape
    K = W.shape[0]
    means = np.stack([H[y == k].mean(0) for k in range(K)])            # (K, d)
    M = means - means.mean(0)
    Sw = np.zeros((d, d), np.float32)
    for k in range(K):
        R = H[y == k] - means[k]
        Sw += R.T @ R
    Sw /= N
    Sb = M.T @ M / K
    evals, evecs = np.linalg.eigh(Sb)
    keep = evals > d * np.finfo(np.float32).eps * evals.max()
    Sb_pinv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    out = {"nc1": float(np.sum(Sw * Sb_pinv)) / K}
    out["equinorm_means"], out["equiangular_means"], out["maxangle_means"] = _nc2(M)
    out["equinorm_classifiers"], out["equiangular_classifiers"], out["maxangle_classifiers"] = _nc2(W)
    out["nc3"] = float(np.linalg.norm(W / np.linalg.norm(W) - M / np.linalg.norm(M)))
    dist = -2.0 * H @ means.T + (means * means).sum(1)                 # ||h - mu_k||^2 - ||h||^2
    out["nc4"] = float(np.mean((H @ W.T + b).argmax(1) != dist.argmin(1)))
    return out


def _best(clock, fn, repeats: int, sync=lambda: None):
    times, value = [], None
    for _ in range(repeats):
        sync()
        start = clock()
        value = fn()
        sync()
        times.append(clock() - start)
    return min(times), value


def best_cpu_time(fn, repeats: int, sync=lambda: None):
    """Best CPU seconds of ``repeats`` calls (the shared machine inflates wall time) and the last value."""
    return _best(time.process_time, fn, repeats, sync)


def best_wall_time(fn, repeats: int, sync=lambda: None):
    """Best wall seconds (for a GPU, whose work is not CPU time) and the last value."""
    return _best(time.perf_counter, fn, repeats, sync)


def problem(N: int, K: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat(N // K + 1)[:N]
    centres = torch.randn(K, d, generator=g)
    H = (centres[y] + 0.8 * torch.randn(N, d, generator=g)).float()
    Mc = centres - centres.mean(0)
    W = (Mc + 0.3 * torch.randn(K, d, generator=g)).float()
    b = 0.1 * torch.randn(K, generator=g)
    return H, y, W, b


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    device = torch.device(ARGS.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {ARGS.threads} thread(s), device {device}, "
          f"N = {ARGS.n}, K = {ARGS.k}, float32 features; {'CPU' if device.type == 'cpu' else 'wall'} "
          f"seconds, best of {ARGS.repeats}")
    print(f"{'d':>6s} {'ours (s)':>9s} {'d x d ref (s)':>14s} {'speed-up':>9s} {'max rel diff':>13s}")
    for d in ARGS.dims:
        H, y, W, b = problem(ARGS.n, ARGS.k, d)
        Hn, yn, Wn, bn = H.numpy(), y.numpy(), W.numpy(), b.numpy()
        Hd, yd, Wd, bd = H.to(device), y.to(device), W.to(device), b.to(device)
        timer = best_cpu_time if device.type == "cpu" else best_wall_time
        t_ours, ours = timer(lambda: nc_metrics(Hd, yd, Wd, bd), ARGS.repeats, sync)
        t_ref, ref = best_cpu_time(lambda: reference_nc(Hn, yn, Wn, bn), max(1, ARGS.repeats - 1))
        diff = max(abs(ours[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in KEYS if k != "nc4")
        diff_nc4 = abs(ours["nc4"] - ref["nc4"])
        print(f"{d:6d} {t_ours:9.3f} {t_ref:14.3f} {t_ref / t_ours:8.1f}x {diff:13.1e}  (nc4 diff {diff_nc4:.1e})")


if __name__ == "__main__":
    main()
