"""separation_fuzziness (rank-(K-1) route) vs the float64 pseudo-inverse route.

N = 20,000 features in K = 10 classes, d in {100, 1000, 2048}. separation_fuzziness is timed on
float32 features (as a network produces them; it accumulates in float64 from row chunks) and on
float64 features; the pinv route on float64. Reports CPU seconds (best of --repeats, one thread),
the speed-ups over the pinv route and the relative difference of the values:

    python benchmarks/fuzziness.py [--n 20000] [--dims 100 1000 2048] [--threads 1]
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
        start = time.process_time()
        value = fn()
        times.append(time.process_time() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dims", type=int, nargs="+", default=[100, 1000, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), N = {args.n}, K = 10, CPU seconds")
    print(f"{'d':>6s} {'D f32 in (s)':>13s} {'D f64 in (s)':>13s} {'pinv f64 (s)':>13s} "
          f"{'x (f32)':>8s} {'x (f64)':>8s} {'rel. diff':>10s}")
    g = torch.Generator().manual_seed(0)
    for d in args.dims:
        y = torch.randint(0, 10, (args.n,), generator=g)
        H32 = torch.randn(10, d, generator=g)[y] + 2 * torch.randn(args.n, d, generator=g)
        H = H32.double()
        t32, v32 = best_time(lambda: separation_fuzziness(H32, y), args.repeats)
        t64, v64 = best_time(lambda: separation_fuzziness(H, y), args.repeats)
        t_pinv, v_pinv = best_time(lambda: pinv_route(H, y), max(1, args.repeats - 1))
        diff = max(abs(v32 - v_pinv), abs(v64 - v_pinv)) / v_pinv
        print(f"{d:6d} {t32:13.4f} {t64:13.4f} {t_pinv:13.3f} {t_pinv / t32:7.1f}x {t_pinv / t64:7.1f}x {diff:10.1e}")


if __name__ == "__main__":
    main()
