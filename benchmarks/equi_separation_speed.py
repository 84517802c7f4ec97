"""Equi-separation protocol: one network at a time (the paper's algorithm) vs all networks batched.

The paper's protocol trains 27 MLPs (depths 4, 8, 20 x SGD, momentum, Adam x 3 seeds) for 600
epochs on 1,000 Fashion-MNIST images (10x10, batch 128, weight decay 5e-4, lr / 10 at 1/3 and
2/3 of training) and then measures the separation fuzziness after every layer.

* ``sequential``: the algorithm of the paper's code, re-implemented: one ``nn.Module`` and one
  ``torch.optim`` optimiser per network, a fresh shuffled mini-batch order per epoch, and at the
  end, for every layer l = 0..L+1, the features recomputed from the input in chunks of 100 with
  BatchNorm in training mode (its ``get_features(x, l)``), then D_l.  Data are device tensors
  (the paper's code builds every batch from a Python list of single images, which is slower).
* ``batched``: the chapter's path: the nine networks of one depth as one ``BatchedMLP`` trained
  by ``utils.batched.fit_many``, then every layer's features in one pass (training data only, like
  the sequential path).

Both do the same number of epochs; per-epoch costs are constant, so ``--epochs 30`` measures the
same ratio as 600 epochs in a twentieth of the time (the printed totals are for the epochs run).
Times are wall seconds with nothing else running.  The sequential runs use ``--threads``
(default 1: on this machine one thread is its fastest setting for width-100 networks), the batched
runs ``--batched-threads`` (default: every core).

    python benchmarks/equi_separation_speed.py [--epochs 600] [--device cpu] [--threads 1] [--batched-threads 2]

``--floor`` prints instead the arithmetic floor of the chapter's whole ``full`` profile: the
floating-point operations of every training step it takes (counted by
``torch.utils.flop_counter.FlopCounterMode`` on one step of each network, forward and backward,
times the steps), and the seconds they need at this machine's peak matrix-product rate (a
2048 x 2048 float32 ``matmul`` on every thread, best of five), as if nothing but matrix products
ran, at that peak.

    python benchmarks/equi_separation_speed.py --floor
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere
from utils import equi_separation as es  # noqa: E402
from utils.batched import fit_many  # noqa: E402
from utils.metrics import separation_fuzziness  # noqa: E402
from utils.models import BatchedMLP, FeatureMLP  # noqa: E402
from utils.profiles import flush_denormals, keep_freed_memory  # noqa: E402


def clock(device: torch.device) -> float:
    """Wall seconds (every thread counts once), after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def sequential_one(X, y, layer_num: int, optimizer: str, lr: float, seed: int, epochs: int) -> list[float]:
    """One network, the paper's loop (re-implemented): train, then D_l layer by layer."""
    torch.manual_seed(seed)
    model = FeatureMLP(X[0].numel(), 100, layer_num, 10).to(X.device)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if optimizer == "momentum" else 0.0,
                              weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        if epoch in (epochs // 3, 2 * epochs // 3):
            for group in opt.param_groups:
                group["lr"] /= 10
        perm = torch.randperm(len(y), generator=g).to(X.device)
        for s in range(0, len(y), 128):
            idx = perm[s:s + 128]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    D = []
    with torch.no_grad():                       # the paper's measurement: no eval(), chunks of 100
        for l in range(layer_num + 2):
            feats = []
            for s in range(0, len(y), 100):
                h = X[s:s + 100].flatten(1)
                for block in model.blocks[:l]:
                    h = block(h)
                feats.append(h)
            D.append(separation_fuzziness(torch.cat(feats), y))
    return D


def batched_all(cfg, X, y, epochs: int) -> None:
    """Every depth: its nine networks (3 optimisers x 3 seeds) as one BatchedMLP (as the chapter
    does), trained by fit_many, then D_l of every layer from one feature pass."""
    for L in es.LAYER_NUMS:
        specs = [(o, es.PAPER_LR[o][es.LAYER_NUMS.index(L)], s) for o in cfg.optimizers for s in cfg.seeds]
        model = BatchedMLP(len(specs), X[0].numel(), 100, L, 10, seeds=[s for *_, s in specs]).to(X.device)
        fit_many(model, X, y, epochs, optimizer=[o for o, *_ in specs], lr=[lr for _, lr, _ in specs],
                 weight_decay=5e-4, milestones=(epochs // 3, 2 * epochs // 3), batch_size=128,
                 seeds=[s for *_, s in specs], progress=False)
        es.fuzziness_profile(model.features(X, bn="batch"), y)


def training_flops(cfg) -> dict[str, float]:
    """FLOPs of the training steps of ``cfg`` (a ``full``-like profile), by part: the 27-network
    grid per depth, the controls and the Adam sweep (depth-8 networks), each convolutional network.
    Counted on one full batch of 128 and scaled to the examples seen (the last, smaller batch of an
    epoch costs in proportion)."""
    from torch.utils.flop_counter import FlopCounterMode

    def per_example(model: torch.nn.Module, x: torch.Tensor) -> float:
        y = torch.zeros(x.shape[0], dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x), y).backward()
        return counter.get_total_flops() / x.shape[0]

    n, d0 = 10 * cfg.per_class, cfg.image_size ** 2
    runs = len(cfg.optimizers) * len(cfg.seeds)
    out = {}
    for L in es.LAYER_NUMS:
        out[f"grid, depth {L + 2} ({runs} networks)"] = (
            runs * cfg.epochs * n * per_example(FeatureMLP(d0, cfg.width, L, 10), torch.randn(128, d0)))
    extra = 2 + len(cfg.sweep_lrs)
    out[f"controls and sweep ({extra} depth-8 networks)"] = (
        extra * cfg.epochs * n * per_example(FeatureMLP(d0, cfg.width, 6, 10), torch.randn(128, d0)))
    s = cfg.conv_image_size
    for arch in cfg.conv_archs:
        out[f"{arch} ({len(cfg.conv_seeds)} x {cfg.conv_epochs} epochs)"] = (
            len(cfg.conv_seeds) * cfg.conv_epochs * 10 * cfg.conv_per_class
            * per_example(es.conv_net(arch, cfg), torch.randn(128, 1, s, s)))
    return out


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size x size float32 matrix product on every thread, best of ``repeats``."""
    a = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):                 # the first is a warm-up
        start = clock(device)
        a @ a
        best = min(best, clock(device) - start)
    return 2 * size ** 3 / best


def print_floor(device: torch.device) -> None:
    """The ``--floor`` report (see the module docstring)."""
    cfg = es.Config.for_profile("full")
    parts = training_flops(cfg)
    peak = matmul_peak(device)
    print(f"equi-separation `full` profile: training FLOPs and their time at this machine's peak "
          f"matmul rate, {peak / 1e9:.0f} GFLOP/s ({device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    for name, flops in parts.items():
        print(f"  {name}: {flops / 1e12:.2f} TFLOP, {flops / peak:.0f} s")
    total = sum(parts.values())
    print(f"  total: {total / 1e12:.2f} TFLOP, at least {total / peak:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the sequential runs")
    p.add_argument("--batched-threads", type=int, default=None,
                   help="intra-op threads of the batched runs (default: every core)")
    p.add_argument("--floor", action="store_true",
                   help="print the full profile's training FLOPs and their time at this machine's peak instead")
    args = p.parse_args(argv)
    keep_freed_memory()
    flush_denormals()
    if args.floor:
        print_floor(torch.device(args.device))
        return 0
    seq_threads = args.threads
    batched_threads = args.batched_threads or torch.get_num_threads()
    device = torch.device(args.device)
    cfg = es.Config.for_profile("full")
    X, y, _, _ = es.load_data(cfg, device)
    # shuffle once (the paper's pickled training set is in random order; chunks of 100 then mix classes)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).to(device)
    X, y = X[perm], y[perm]
    jobs = [(L, o, s) for L in es.LAYER_NUMS for o in cfg.optimizers for s in cfg.seeds]

    torch.set_num_threads(batched_threads)
    batched_all(cfg, X, y, 1)                    # warm-up of both paths
    start = clock(device)
    batched_all(cfg, X, y, args.epochs)
    t_batched = clock(device) - start
    torch.set_num_threads(seq_threads)
    sequential_one(X, y, 2, "sgd", 0.1, 0, 1)
    start = clock(device)
    for L, o, s in jobs:
        sequential_one(X, y, L, o, es.PAPER_LR[o][es.LAYER_NUMS.index(L)], s, args.epochs)
    t_seq = clock(device) - start
    unit = "wall s"
    print(f"equi-separation protocol: {len(jobs)} networks x {args.epochs} epochs, with per-layer measurement")
    print(f"device {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores; threads: "
          f"sequential {seq_threads}, batched {batched_threads}), "
          f"torch {torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"sequential (one network at a time): {t_seq:.1f} {unit}")
    print(f"batched (one BatchedMLP per depth): {t_batched:.1f} {unit}")
    print(f"speed-up: {t_seq / t_batched:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
