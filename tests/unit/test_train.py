"""fit(): learning, determinism, oversampling, regularisation hooks, failure modes."""
import pytest
import torch
import torch.nn as nn

from utils.models import FeatureMLP
from utils.profiles import get_profile
from utils.train import accuracy, batch_indices, fit, make_optimizer


def blobs(n_per_class=40, K=3, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(K, d, generator=g)
    y = torch.arange(K).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), d, generator=g), y


def train_once(seed=0, epochs=15, **kw):
    X, y = blobs()
    torch.manual_seed(seed)
    model = FeatureMLP(5, 16, 1, 3)
    hist = fit(model, X, y, epochs, optimizer="momentum", lr=0.05, batch_size=32, seed=seed,
               progress=False, **kw)
    return model, hist, X, y


def test_fit_lowers_the_loss_and_learns():
    model, hist, X, y = train_once()
    assert hist.loss[-1] < 0.5 * hist.loss[0]
    assert accuracy(model, X, y) > 0.95
    assert len(hist.epoch) == 15 and hist.accuracy[-1] > 0.9


def test_same_seed_same_numbers():
    _, h1, _, _ = train_once(seed=3)
    _, h2, _, _ = train_once(seed=3)
    _, h3, _, _ = train_once(seed=4)
    assert h1.loss == h2.loss
    assert h1.loss != h3.loss


def test_batches_cover_the_epoch_and_oversample():
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(list(batch_indices(10, 4, g)))
    assert sorted(idx.tolist()) == list(range(10))
    reps = torch.tensor([1] * 8 + [3, 0])
    idx = torch.cat(list(batch_indices(10, 4, g, repeats=reps)))
    assert torch.bincount(idx, minlength=10).tolist() == reps.tolist()
    with pytest.raises(ValueError, match="non-negative"):
        next(batch_indices(10, 4, g, repeats=torch.tensor([-1] * 10)))


def test_milestones_and_callback():
    calls = []
    _, hist, _, _ = train_once(epochs=6, milestones=[2, 4], callback=lambda e, m: calls.append(e) or {"e": e})
    assert hist.lr == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])
    assert calls == list(range(1, 7)) and hist.extra[-1] == {"e": 6}


def test_penalty_and_extra_params_are_used():
    X, y = blobs()
    norms = []
    for strength in (0.0, 1.0):
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        offset = torch.zeros(len(y), 3, requires_grad=True)
        fit(model, X, y, 5, lr=0.1, progress=False, extra_params=[offset],
            loss_fn=lambda out, t, idx: nn.functional.cross_entropy(out + offset[idx], t),
            penalty=lambda m: strength * m.weight.pow(2).sum())
        assert offset.abs().sum() > 0  # the per-example offsets were trained
        norms.append(model.weight.norm().item())
    assert norms[1] < 0.5 * norms[0]  # the penalty shrinks the weights


def test_non_finite_loss_names_the_epoch():
    X, y = blobs()
    model = nn.Linear(5, 3)
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(model, X * float("nan"), y, 2, progress=False)


def test_bad_arguments():
    X, y = blobs()
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(nn.Linear(2, 2).parameters(), "rmsprop", 0.1)
    with pytest.raises(ValueError, match="examples"):
        fit(nn.Linear(5, 3), X, y[:-1], 1, progress=False)


def test_profiles(monkeypatch):
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    assert get_profile() == ("full" if torch.cuda.is_available() else "quick")
    monkeypatch.setenv("BOOK_PROFILE", "full")
    assert get_profile() == "full"
    assert get_profile("quick") == "quick"  # the notebook parameter wins
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("medium")


def test_feature_mlp_features():
    model = FeatureMLP(12, 8, 3, 4)
    X = torch.randn(50, 1, 3, 4)
    feats = model.features(X, chunk_size=7)
    assert [f.shape for f in feats] == [(50, 12)] + [(50, 8)] * 4
    assert model.depth == 5
    model.eval()
    assert torch.allclose(model.classifier(feats[-1]), model(X), atol=1e-6)
    with pytest.raises(ValueError):
        FeatureMLP(0, 8, 1, 4)


def test_torch_threads_restores():
    from utils.profiles import torch_threads
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"):
        with torch_threads(0):
            pass


def test_torch_threads_honours_the_process_cap(monkeypatch):
    """``n=None`` keeps the thread count unless $BOOK_TORCH_THREADS caps it (parallel claim runs)."""
    from utils.profiles import THREADS_ENV, torch_threads
    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    with torch_threads(None, "cpu"):
        assert torch.get_num_threads() == before
    monkeypatch.setenv(THREADS_ENV, "1")
    with torch_threads(None, "cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
