"""The offline data path: local copies, torchvision's reader, clear errors."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import data
from utils.data import DatasetNotAvailableError, load_dataset, prepare_fashion_mnist, select_per_class


def write_idx(folder: Path, n: int = 30, gz: bool = True) -> None:
    """Write a tiny Fashion-MNIST-format dataset (IDX files) with labels 0..9 cycling."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        blobs = {
            f"{prefix}-images-idx3-ubyte": np.array([0, 0, 8, 3], np.uint8).tobytes()
            + np.array([n, 28, 28], ">i4").tobytes() + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": np.array([0, 0, 8, 1], np.uint8).tobytes()
            + np.array([n], ">i4").tobytes() + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (folder / name).write_bytes(blob)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No Debian copy, no environment copy, no network download, a fresh cache."""
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian-copy")
    monkeypatch.delenv(data.LOCAL_COPY_ENV, raising=False)
    import torchvision

    def no_network(self, *args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_network)
    data._raw_tensors.cache_clear()
    yield tmp_path
    data._raw_tensors.cache_clear()


def test_local_copy_from_environment_folder(isolated, monkeypatch):
    src = isolated / "copy"
    src.mkdir()
    write_idx(src, n=30)
    monkeypatch.setenv(data.LOCAL_COPY_ENV, str(src))
    X, y = load_dataset("fashion-mnist", root=isolated / "root", per_class=2, seed=0)
    assert X.shape == (20, 1, 28, 28) and X.dtype == torch.float32
    assert torch.equal(torch.bincount(y), torch.full((10,), 2))
    assert (isolated / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_concurrent_preparation_of_one_folder(isolated, monkeypatch):
    """Runs started side by side prepare the same cache: none may lose its temporary files to another."""
    from concurrent.futures import ThreadPoolExecutor
    src = isolated / "copy"
    src.mkdir()
    write_idx(src, n=3000)  # large enough that the copies overlap in time
    monkeypatch.setenv(data.LOCAL_COPY_ENV, str(src))
    with ThreadPoolExecutor(6) as pool:
        done = list(pool.map(lambda _: prepare_fashion_mnist(isolated / "root"), range(6)))
    assert done == [True] * 6
    assert leftovers(isolated / "root") == sorted(data._IDX_FILES)


def test_uncompressed_copy_and_resize_and_classes(isolated, monkeypatch):
    src = isolated / "plain"
    src.mkdir()
    write_idx(src, n=40, gz=False)
    monkeypatch.setenv(data.LOCAL_COPY_ENV, str(src))
    X, y = load_dataset("fashion-mnist", train=False, root=isolated / "r", resize=10, classes=[7, 2])
    assert X.shape == (8, 1, 10, 10)
    assert y.tolist() == [0] * 4 + [1] * 4  # re-indexed in the order given


def test_no_copy_and_no_network_gives_instructions(isolated):
    with pytest.raises(DatasetNotAvailableError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=isolated / "empty")
    assert not prepare_fashion_mnist(isolated / "empty")


def test_bad_arguments():
    y = torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="larger than class 0"):
        select_per_class(y, 3, None, 0)
    with pytest.raises(ValueError, match="empty"):
        select_per_class(y, None, [], 0)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="0..9"):
        load_dataset("fashion-mnist", classes=[3, 12])


def test_per_class_draw_is_seeded():
    y = torch.arange(10).repeat(20)
    a, b, c = (select_per_class(y, 5, [1, 4], s) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_class_draw_can_continue_a_generator_stream_unsorted():
    y = torch.arange(10).repeat(20)
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(20, generator=ref)[:4]] for c in (7, 2)])
    assert torch.equal(select_per_class(y, 4, [7, 2], seed=None, generator=g, sort=False), expected)
    with pytest.raises(ValueError, match="exactly one of seed and generator"):
        select_per_class(y, 4, [7, 2], seed=0, generator=g)


@pytest.mark.skipif(not data.DEBIAN_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_statistics():
    X, y = load_dataset("fashion-mnist", train=True, per_class=100, seed=0)
    assert X.shape == (1000, 1, 28, 28)
    assert abs(X.mean().item()) < 0.1 and 0.8 < X.std().item() < 1.2


# ----------------------------------------------------------------------------- corrupt files


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def leftovers(root: Path) -> list[str]:
    raw = root / "FashionMNIST" / "raw"
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_truncated_gzip_copy_is_named_and_leaves_nothing(isolated, monkeypatch, name):
    src = isolated / "copy"
    src.mkdir()
    write_idx(src, n=30)
    truncate(src / name, 40)
    monkeypatch.setenv(data.LOCAL_COPY_ENV, str(src))
    with pytest.raises(data.DatasetCorruptError, match=f"{src / name} is corrupt.*EOFError.*copy the file again"):
        load_dataset("fashion-mnist", root=isolated / "root")
    assert leftovers(isolated / "root") == []  # no .tmp and no partial set of raw files


def test_gzip_of_a_truncated_idx_file_is_corrupt_too(isolated, monkeypatch):
    src = isolated / "copy"
    src.mkdir()
    write_idx(src, n=30, gz=False)
    blob = (src / "train-images-idx3-ubyte").read_bytes()[:-100]  # a complete gzip of a short file
    for f in src.iterdir():
        with gzip.open(f.with_name(f.name + ".gz"), "wb") as out:
            out.write(blob if f.name == "train-images-idx3-ubyte" else f.read_bytes())
        f.unlink()
    monkeypatch.setenv(data.LOCAL_COPY_ENV, str(src))
    with pytest.raises(data.DatasetCorruptError, match=r"train-images-idx3-ubyte.gz is corrupt .*needs 23536"):
        load_dataset("fashion-mnist", root=isolated / "root")
    assert leftovers(isolated / "root") == []


def test_truncated_raw_file_in_the_data_root_says_corrupt_not_missing(isolated, monkeypatch):
    src = isolated / "plain"
    src.mkdir()
    write_idx(src, n=30, gz=False)
    monkeypatch.setenv(data.LOCAL_COPY_ENV, str(src))
    root = isolated / "root"
    load_dataset("fashion-mnist", root=root)  # fills the raw folder
    data._raw_tensors.cache_clear()
    bad = root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    truncate(bad, 1000)
    with pytest.raises(data.DatasetCorruptError, match=f"{bad} is corrupt .*1000 bytes.*rm '{bad}'"):
        load_dataset("fashion-mnist", train=False, root=root)
    bad.unlink()  # the repair the message gives: the file is re-created from the local copy
    X, _ = load_dataset("fashion-mnist", train=False, root=root)
    assert X.shape == (30, 1, 28, 28)


def test_idx_problem():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_idx(folder, n=5, gz=False)
        f = folder / "train-labels-idx1-ubyte"
        assert data.idx_problem(f) is None
        f.write_bytes(f.read_bytes() + b"\0")
        assert "needs 13" in data.idx_problem(f)
        f.write_bytes(b"\x1f\x8b\x08\x00")
        assert "not an IDX file" in data.idx_problem(f)
        f.write_bytes(b"\0\0")
        assert "too short" in data.idx_problem(f)
