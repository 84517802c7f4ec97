"""Datasets as normalised tensors on the device, read with torchvision's own classes.

Online (Colab), torchvision downloads Fashion-MNIST as usual.  Offline, a local copy
of the four original IDX files is used: Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) or any folder named by ``$FASHION_MNIST_DIR``.
The files are gunzipped once into torchvision's ``<root>/FashionMNIST/raw`` layout.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import shutil
import threading
import zlib
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

DATASETS = ("fashion-mnist", "mnist", "cifar10")
LOCAL_COPY_ENV = "FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_ROOT_ENV = "BOOK_DATA_ROOT"
_IDX_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
# Per-channel mean and standard deviation of the training images, in [0, 1] units.
_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
HOW_TO_GET_DATA = (
    "Fashion-MNIST was not found and could not be downloaded. Get it one of three ways:\n"
    "  * on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist  "
    f"(puts the IDX files in {DEBIAN_DIR});\n"
    f"  * copy the four files {', '.join(f + '.gz' for f in _IDX_FILES)} into a folder and "
    f"set {LOCAL_COPY_ENV}=/that/folder;\n"
    "  * run once with internet access: torchvision downloads it into the data root."
)


class DatasetNotAvailableError(RuntimeError):
    """Raised when a dataset is neither on disk nor downloadable; the message says how to get it."""


class DatasetCorruptError(DatasetNotAvailableError):
    """Raised when a dataset file exists but is corrupt (truncated download or copy); the message names
    the file and says how to repair it."""


# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> bytes per entry.
_IDX_ITEM_SIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def idx_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete IDX file (bad magic number, or a size that disagrees with the
    dimensions in its header, as in a truncated copy), or None when it is one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4:
            return f"{size} bytes, too short for an IDX header"
        if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_ITEM_SIZE or not 1 <= head[3] <= 4:
            return f"not an IDX file (magic bytes {head.hex()})"
        dims_raw = f.read(4 * head[3])
    if len(dims_raw) < 4 * head[3]:
        return f"{size} bytes, too short for its header"
    dims = [int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(head[3])]
    expected = 4 + 4 * head[3] + math.prod(dims) * _IDX_ITEM_SIZE[head[2]]
    if size != expected:
        return f"{size} bytes where its header (shape {tuple(dims)}) needs {expected}: truncated or padded"
    return None


def default_root() -> Path:
    """Where torchvision-format data lives: ``$BOOK_DATA_ROOT`` or ``~/.cache/geometry-book``."""
    return Path(os.environ.get(DATA_ROOT_ENV, Path.home() / ".cache" / "geometry-book"))


def local_fashion_mnist_dirs() -> list[Path]:
    """Folders searched for a local copy of the IDX files, in order."""
    dirs = [Path(os.environ[LOCAL_COPY_ENV])] if os.environ.get(LOCAL_COPY_ENV) else []
    return dirs + [DEBIAN_DIR]


def prepare_fashion_mnist(root: Path) -> bool:
    """Fill ``root/FashionMNIST/raw`` from a local copy. Returns True when the raw files are present.

    Every file is checked against the size its IDX header implies. A corrupt file (a truncated
    download, copy or gzip stream) raises :class:`DatasetCorruptError` naming it and saying how to
    repair it; a failed copy leaves no partial files behind.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    if all((raw / name).exists() for name in _IDX_FILES):
        for name in _IDX_FILES:
            problem = idx_problem(raw / name)
            if problem is not None:
                raise DatasetCorruptError(
                    f"{raw / name} is corrupt ({problem}). Repair: delete it (rm '{raw / name}') and load "
                    "again; it is re-created from a local copy or downloaded.")
        return True
    for folder in local_fashion_mnist_dirs():
        sources = {}
        for name in _IDX_FILES:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.exists():
                    sources[name] = candidate
                    break
        if len(sources) < len(_IDX_FILES):
            continue
        raw.mkdir(parents=True, exist_ok=True)
        # Names of this process and thread alone: several runs may prepare the same folder at once
        # (the GPU job starts its experiments side by side); each renames complete files into place.
        tag = f"{os.getpid()}.{threading.get_ident()}"
        tmps = {name: raw / f".{name}.{tag}.tmp" for name in sources}
        try:
            for name, src in sources.items():  # all four into temporary files first ...
                opener = gzip.open if src.suffix == ".gz" else open
                try:
                    with opener(src, "rb") as fin, open(tmps[name], "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                    problem = f"{type(err).__name__}: {err}"
                else:
                    problem = idx_problem(tmps[name])
                if problem is not None:
                    hint = (f"sudo apt-get install --reinstall dataset-fashion-mnist" if folder == DEBIAN_DIR
                            else f"copy the file again, or point ${LOCAL_COPY_ENV} at a good copy")
                    raise DatasetCorruptError(
                        f"{src} is corrupt ({problem}); nothing was written to {raw}. Repair: {hint}.")
            for name in sources:  # ... then renamed, so a failure never leaves a partial set
                tmps[name].replace(raw / name)
        finally:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)
        return True
    return False


@functools.lru_cache(maxsize=8)
def _raw_tensors(name: str, train: bool, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``(N, C, s, s)`` and int64 labels ``(N,)`` on the CPU (cached per process)."""
    import torchvision

    root_path = Path(root)
    if name == "fashion-mnist":
        have_local = prepare_fashion_mnist(root_path)
        try:
            ds = torchvision.datasets.FashionMNIST(root_path, train=train, download=not have_local)
        except Exception as err:  # no copy and no network
            raise DatasetNotAvailableError(HOW_TO_GET_DATA) from err
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    if name == "mnist":
        ds = torchvision.datasets.MNIST(root_path, train=train, download=True)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    ds = torchvision.datasets.CIFAR10(root_path, train=train, download=True)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.long)


def select_per_class(y: torch.Tensor, per_class: int | None, classes: Sequence[int] | None,
                     seed: int | None, generator: torch.Generator | None = None, sort: bool = True) -> torch.Tensor:
    """Indices of ``per_class`` random examples of each class in ``classes`` (all when None).

    Args:
        y: (N,) integer labels.
        seed: seeds a fresh CPU generator; or pass ``generator`` (and ``seed=None``) to continue a stream,
            one ``randperm`` per class in the order of ``classes``.
        sort: keep each class's picks in dataset order (else in the random order drawn).
    Returns:
        (M,) indices on ``y``'s device, grouped by class in the order of ``classes``.
    Raises:
        ValueError: empty class list, a class absent from ``y``, or ``per_class`` larger than a class.
    """
    classes = sorted(set(y.tolist())) if classes is None else list(classes)
    if len(classes) == 0:
        raise ValueError("classes is empty: give at least one class label")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has repeated labels: {classes}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if (seed is None) == (generator is None):
        raise ValueError("give exactly one of seed and generator")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    picked = []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        if len(idx) == 0:
            raise ValueError(f"class {c} has no examples in this split")
        if per_class is not None:
            if per_class > len(idx):
                raise ValueError(f"per_class={per_class} is larger than class {c}, which has {len(idx)} examples "
                                 f"(fewer than requested)")
            idx = idx[torch.randperm(len(idx), generator=g)[:per_class].to(idx.device)]
            if sort:
                idx = idx.sort().values
        picked.append(idx)
    return torch.cat(picked)


def load_dataset(name: str = "fashion-mnist", train: bool = True, root: str | Path | None = None,
                 device: torch.device | str | None = None, resize: int | None = None,
                 per_class: int | None = None, classes: Sequence[int] | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset as normalised float tensors on ``device``.

    Args:
        name: ``"fashion-mnist"`` (offline default), ``"mnist"`` or ``"cifar10"`` (download only).
        train: training split if True, else test split.
        root: torchvision data root (default :func:`default_root`).
        device: where the tensors live (default CPU).
        resize: side length ``s`` to resize to (bilinear, antialiased), or None to keep the original.
        per_class: number of examples drawn (seeded) per class, or None for all.
        classes: labels to keep; the returned labels are re-indexed ``0..len(classes)-1`` in this order.
        seed: seed for the per-class draw.
    Returns:
        X: (N, C, s, s) float32 images, standardised per channel; y: (N,) int64 labels.
    Raises:
        ValueError: unknown dataset, empty/invalid ``classes``, ``per_class`` larger than a class,
            non-positive ``resize``.
        DatasetNotAvailableError: no local copy and no network.
    """
    key = name.lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {DATASETS}")
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be a positive side length, got {resize}")
    if classes is not None:
        bad = [c for c in classes if not 0 <= int(c) < 10]
        if bad:
            raise ValueError(f"class labels must lie in 0..9, got {bad}")
    images, labels = _raw_tensors(key, bool(train), str(Path(root) if root else default_root()))
    idx = select_per_class(labels, per_class, classes, seed)
    X = images[idx].float().div_(255.0)
    y = labels[idx]
    if classes is not None:
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(list(classes))] = torch.arange(len(classes))
        y = remap[y]
    if resize is not None and resize != X.shape[-1]:
        X = F.interpolate(X, size=(resize, resize), mode="bilinear", antialias=True, align_corners=False)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in _STATS[key])
    X = (X - mean) / std
    return X.to(device or "cpu"), y.to(device or "cpu")


def main() -> int:
    """``python -m utils.data``: make Fashion-MNIST available under the data root and report where."""
    root = default_root()
    X, y = load_dataset("fashion-mnist", train=True, root=root)
    Xt, _ = load_dataset("fashion-mnist", train=False, root=root)
    print(f"Fashion-MNIST ready in {root / 'FashionMNIST'}: {len(X)} training, {len(Xt)} test images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
