"""separation_fuzziness (rank-(K-1) route) vs the float64 pseudo-inverse route.

N = 20,000 features in K = 10 classes, d in {100, 1000, 2048}; both computed in float64;
reports the time of each, the speed-up and the relative difference:

    python benchmarks/fuzziness.py [--n 20000] [--dims 100 1000 2048]
"""
from __future__ import annotations

import argparse
import time

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere
from utils.metrics import separation_fuzziness


def pinv_route(H: torch.Tensor, y: torch.Tensor) -> float:
    """Tr(SS_w pinv(SS_b)) with explicit d x d scatter matrices and torch.linalg.pinv, float64."""
    H = H.double()
    N, K = H.shape[0], int(y.max()) + 1
    mu = H.mean(0)
    ssw = torch.zeros(H.shape[1], H.shape[1], dtype=torch.float64)
    ssb = torch.zeros_like(ssw)
    for k in range(K):
        Hk = H[y == k]
        mk = Hk.mean(0)
        C = Hk - mk
        ssw += C.T @ C / N
        ssb += len(Hk) / N * torch.outer(mk - mu, mk - mu)
    return float(torch.trace(ssw @ torch.linalg.pinv(ssb, hermitian=True)))


def best_time(fn, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dims", type=int, nargs="+", default=[100, 1000, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, N = {args.n}, K = 10")
    print(f"{'d':>6s} {'fuzziness (s)':>14s} {'pinv route (s)':>15s} {'speed-up':>9s} {'rel. diff':>10s}")
    g = torch.Generator().manual_seed(0)
    for d in args.dims:
        y = torch.randint(0, 10, (args.n,), generator=g)
        H = (torch.randn(10, d, generator=g)[y] + 2 * torch.randn(args.n, d, generator=g)).double()
        t_fast, v_fast = best_time(lambda: separation_fuzziness(H, y), args.repeats)
        t_pinv, v_pinv = best_time(lambda: pinv_route(H, y), max(1, args.repeats - 1))
        print(f"{d:6d} {t_fast:14.4f} {t_pinv:15.3f} {t_pinv / t_fast:8.1f}x {abs(v_fast - v_pinv) / v_pinv:10.1e}")


if __name__ == "__main__":
    main()
