"""Benchmark: the fused one-step probe against copy-the-model-and-take-one-SGD-step.

The workload of chapter 04: the change of a two-layer ReLU network (width 4096, Fashion-MNIST-sized inputs,
d = 784) at 1000 points after one SGD step (squared loss) at each of 20 anchors. He & Su's code copies the model,
takes the step with an optimiser and evaluates, once per anchor; ``utils.elasticity_math.one_step_change`` builds
the stepped pre-activations as one fused rank-one update per chunk of anchors. Both in float64 on one thread.

    python benchmarks/local_elasticity_probe.py [--width 4096] [--anchors 20] [--probes 1000] [--dim 784]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.elasticity_math import init_two_layer, one_step_change  # noqa: E402


def copy_and_step(model: nn.Module, anchors: torch.Tensor, targets: torch.Tensor, probes: torch.Tensor,
                  lr: float) -> torch.Tensor:
    """(A, P, K) change at the probes, one deep copy and one optimiser step per anchor."""
    with torch.no_grad():
        before = model(probes)
    out = []
    for i in range(anchors.shape[0]):
        stepped = copy.deepcopy(model)
        opt = torch.optim.SGD(stepped.parameters(), lr=lr)
        opt.zero_grad()
        (0.5 * ((stepped(anchors[i:i + 1]) - targets[i:i + 1]) ** 2).sum()).backward()
        opt.step()
        with torch.no_grad():
            out.append(stepped(probes) - before)
    return torch.stack(out)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--anchors", type=int, default=20)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=784)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.probes, args.dim, dtype=torch.float64, generator=g)
    T = torch.randn(args.anchors, 1, dtype=torch.float64, generator=g)
    p = init_two_layer(1, args.dim, args.width, 1, seed=0, dtype=torch.float64, parametrisation="standard")
    model = nn.Sequential(nn.Linear(args.dim, args.width), nn.ReLU(), nn.Linear(args.width, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(p["W"][0]); model[0].bias.copy_(p["b"][0])
        model[2].weight.copy_(p["a"][0].T); model[2].bias.copy_(p["c"][0])
    lr = 1e-3

    def best(fn):
        times = []
        for _ in range(args.repeats):
            t = time.process_time()
            out = fn()
            times.append(time.process_time() - t)
        return min(times), out

    t_ref, ref = best(lambda: copy_and_step(model, X[:args.anchors], T, X, lr))
    t_fused, (fused, _) = best(lambda: one_step_change(p, X[:args.anchors], T, X, lr))
    diff = float((ref - fused).abs().max() / ref.abs().max())
    print(f"{args.anchors} anchors x {args.probes} probes, width {args.width}, d = {args.dim}, float64, 1 thread")
    print(f"copy-the-model-and-step: {t_ref:.3f} CPU-s")
    print(f"fused one_step_change:   {t_fused:.3f} CPU-s")
    print(f"speed-up: {t_ref / t_fused:.2f}x   (max relative difference {diff:.1e})")
    return t_ref / t_fused


if __name__ == "__main__":
    main()
