"""The batched trainer: R models trained as one computation equal R sequential `fit` runs."""
import pytest
import torch

from utils.batched import fit_many, per_model_batches
from utils.models import BatchedMLP, FeatureMLP
from utils.train import batch_indices, fit


def _data(n=90, d=12, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 1).long()
    return X, y


@pytest.mark.parametrize("batchnorm", [True, False])
def test_batched_training_equals_sequential_fit(batchnorm):
    """Different seeds, optimisers, learning rates, weight decays and milestones: same parameters."""
    X, y = _data()
    settings = [("sgd", 0.1, 5e-4, (2,), 0), ("momentum", 0.05, 1e-3, (3,), 1),
                ("adam", 3e-3, 5e-4, (2, 4), 2), ("sgd", 0.03, 0.0, (), 3)]
    seeds = [s for *_, s in settings]
    batched = BatchedMLP(len(settings), 12, 16, 2, 3, batchnorm=batchnorm, seeds=seeds)
    hists = fit_many(batched, X, y, 5, optimizer=[s[0] for s in settings], lr=[s[1] for s in settings],
                     weight_decay=[s[2] for s in settings], milestones=[s[3] for s in settings],
                     batch_size=32, seeds=seeds, progress=False)
    for r, (opt, lr, wd, ms, seed) in enumerate(settings):
        torch.manual_seed(seed)
        model = FeatureMLP(12, 16, 2, 3, batchnorm=batchnorm)
        hist = fit(model, X, y, 5, optimizer=opt, lr=lr, weight_decay=wd, milestones=ms, batch_size=32,
                   seed=seed, progress=False)
        ref = dict(model.named_parameters())
        got = dict(batched.to_model(r).named_parameters())
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=f"model {r}: {name}")
        if batchnorm:
            torch.testing.assert_close(batched.running_var0[r], model.blocks[0][1].running_var, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor(hists[r].loss), torch.tensor(hist.loss), rtol=1e-4, atol=1e-6)
        assert hists[r].lr == pytest.approx(hist.lr)
        assert hists[r].accuracy == pytest.approx(hist.accuracy, abs=1.5 / len(X))


def test_same_initialisation_and_forward():
    X, _ = _data()
    batched = BatchedMLP(3, 12, 8, 1, 3, seeds=[5, 6, 7])
    torch.manual_seed(6)
    single = FeatureMLP(12, 8, 1, 3)
    single.eval(), batched.eval()
    torch.testing.assert_close(batched(X)[1], single(X))
    feats = batched.features(X)
    assert len(feats) == 3 and feats[0].shape == (3, 90, 12) and feats[-1].shape == (3, 90, 8)
    torch.testing.assert_close(feats[2][1], single.features(X)[2])
    # batch-statistics features equal a train-mode forward without updating running statistics
    before = batched.running_mean0.clone()
    fb = batched.features(X, bn="batch")
    single.train()
    h = X
    for block in single.blocks:
        h = block(h)
    torch.testing.assert_close(fb[-1][1], h)
    assert torch.equal(before, batched.running_mean0)


def test_batch_order_matches_batch_indices():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    batches = per_model_batches(50, 16, gens)
    for r, s in enumerate((3, 4)):
        ref = list(batch_indices(50, 16, torch.Generator().manual_seed(s)))
        assert all(torch.equal(b[r], a) for a, b in zip(ref, batches))


def test_he_init_and_no_classifier_bias():
    m = BatchedMLP(2, 50, 40, 1, 4, init="he", classifier_bias=False, batchnorm=False, seeds=[0, 1])
    assert len(m.biases) == 2  # hidden biases only
    W = m.weights[1]
    bound = (6 / 40) ** 0.5
    assert W.abs().max() <= bound and W.abs().max() > 0.9 * bound
    assert not torch.equal(W[0], W[1])
    assert float(m.biases[0].detach().abs().sum()) == 0.0
    assert m(torch.randn(7, 50)).shape == (2, 7, 4)


def test_he_hidden_init_draws_the_classifier_like_pytorch_and_penultimate_feeds_it():
    m = BatchedMLP(2, 50, 40, 1, 4, init="he_hidden", classifier_bias=False, batchnorm=False, seeds=[0, 1])
    hidden, classifier = m.weights[1], m.weights[-1]
    assert hidden.abs().max() > 0.9 * (6 / 40) ** 0.5                       # He-uniform hidden layer
    assert classifier.abs().max() <= 40 ** -0.5 < 0.5 * (6 / 40) ** 0.5    # U(+-1/sqrt(width)) classifier
    x = torch.randn(7, 50)
    torch.testing.assert_close(m(x), torch.bmm(m.penultimate(x), classifier))


def test_bad_inputs_raise_clear_errors():
    m = BatchedMLP(2, 12, 8, 1, 3)
    X, y = _data()
    with pytest.raises(ValueError, match="one entry per model"):
        fit_many(m, X, y, 1, lr=[0.1, 0.2, 0.3], progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit_many(m, X, y, 1, optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="features per example"):
        m(torch.randn(4, 5))
    with pytest.raises(ValueError, match="init"):
        BatchedMLP(2, 12, 8, 1, 3, init="xavier")


def test_checkpoint_resumes_batched_training(tmp_path):
    """An interrupted fit_many resumes from its saved state to the same parameters."""
    from utils.checkpoint import Checkpoint
    X, y = _data()
    kw = dict(optimizer=["momentum", "adam"], lr=[0.05, 1e-3], milestones=(3,), batch_size=32, seeds=[0, 1],
              progress=False)
    reference = BatchedMLP(2, 12, 8, 1, 3, seeds=[0, 1])
    fit_many(reference, X, y, 6, **kw)
    ck = Checkpoint(tmp_path, every_seconds=1e-9)
    fit_many(BatchedMLP(2, 12, 8, 1, 3, seeds=[0, 1]), X, y, 4, checkpoint=ck, checkpoint_key="job", **kw)
    assert ck.load_state("job")["epoch"] == 3
    resumed = BatchedMLP(2, 12, 8, 1, 3, seeds=[0, 1])
    hists = fit_many(resumed, X, y, 6, checkpoint=ck, checkpoint_key="job", **kw)
    assert hists[0].epoch == [1, 2, 3, 4, 5, 6]
    for a, b in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_optimizer_updates_through_views_of_its_flat_buffers():
    """Autograd accumulates into the gradients the optimiser aliases (same tensors every step)."""
    X, y = _data()
    model = BatchedMLP(2, 12, 8, 1, 3, seeds=[0, 1])
    fit_many(model, X, y, 2, optimizer=["sgd", "adam"], lr=[0.1, 1e-3], weight_decay=1e-3, batch_size=32,
             progress=False)
    grads = [p.grad.data_ptr() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(X[:8]).flatten(0, 1), y[:8].repeat(2)).backward()
    assert [p.grad.data_ptr() for p in model.parameters()] == grads


def test_adam_without_the_fused_kernel_gives_the_same_models(monkeypatch):
    """The element-wise fallback (devices without ``torch._fused_adam_``) equals the fused path."""
    X, y = _data()
    kinds, lrs = ["adam", "momentum", "adam"], [3e-3, 0.05, 1e-3]
    out = []
    for fused in (True, False):
        if not fused:
            monkeypatch.delattr(torch, "_fused_adam_")
        model = BatchedMLP(3, 12, 16, 1, 3, seeds=[0, 1, 2])
        fit_many(model, X, y, 4, optimizer=kinds, lr=lrs, weight_decay=1e-3, milestones=(2,), batch_size=32,
                 progress=False)
        out.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
