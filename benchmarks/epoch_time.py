"""Epoch time: `utils.train.fit` on device-resident tensors vs a torchvision DataLoader loop.

Same model (the equi-separation MLP on 28x28 Fashion-MNIST, width 100, 6 hidden blocks),
same batch size (128), same optimiser (SGD), one epoch over the 60,000 training images,
measured after a warm-up epoch. Run on the CPU and, when present, on the GPU:

    python benchmarks/epoch_time.py [--epochs 2] [--workers 4] [--devices cpu cuda]
"""
from __future__ import annotations

import argparse
import platform
import time

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere
from utils.data import _STATS, default_root, load_dataset, prepare_fashion_mnist
from utils.models import FeatureMLP
from utils.train import fit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def utils_epoch(device: torch.device, epochs: int) -> float:
    X, y = load_dataset("fashion-mnist", train=True, device=device)
    torch.manual_seed(0)
    model = FeatureMLP(784, 100, 6, 10).to(device)
    fit(model, X, y, 1, optimizer="sgd", lr=0.01, progress=False)  # warm-up (and CUDA-graph capture)
    sync(device)
    start = time.perf_counter()
    fit(model, X, y, epochs, optimizer="sgd", lr=0.01, progress=False)
    sync(device)
    return (time.perf_counter() - start) / epochs


def dataloader_epoch(device: torch.device, epochs: int, workers: int) -> float:
    root = default_root()
    prepare_fashion_mnist(root)
    mean, std = _STATS["fashion-mnist"]
    ds = torchvision.datasets.FashionMNIST(root, train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean, std)]))
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = FeatureMLP(784, 100, 6, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def one_epoch():
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()

    one_epoch()  # warm-up: starts the workers
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        one_epoch()
    sync(device)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"],
                        help="devices to measure; cuda is skipped when no GPU is present")
    args = parser.parse_args()
    devices = [torch.device(d) for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'device':28s} {'utils fit (s/epoch)':>20s} {'DataLoader x' + str(args.workers) + ' (s/epoch)':>26s} {'speed-up':>9s}")
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        t_utils = utils_epoch(device, args.epochs)
        t_loader = dataloader_epoch(device, args.epochs, args.workers)
        print(f"{name:28s} {t_utils:20.3f} {t_loader:26.3f} {t_loader / t_utils:8.1f}x")


if __name__ == "__main__":
    main()
