"""Tests for utils.noisy_labels: label noise, the two regularisers of Hu, Li & Yu (2020), batching."""
from __future__ import annotations

import pytest
import torch

from utils.models import FeatureMLP
from utils.noisy_labels import (BatchedMLP, BatchedObjective, RunSpec, auxiliary_loss, distance_to_init_penalty,
                                done_when, early_stopping_index, evaluation_epochs, inject_symmetric_noise,
                                lambda_by_validation, median_curve,
                                load_splits, result_rows, run, squared_loss, summarize, sweep_specs, train_sweep)
from utils.train import fit

ROW_KEYS = {"method", "noise", "lambda", "seed", "final_test_acc", "best_test_acc", "train_acc_noisy"}


@pytest.mark.parametrize("n,p", [(1000, 0.4), (1000, 0.2), (7, 0.5), (5, 0.3), (10, 0.0), (3, 0.99)])
def test_noise_flips_exactly_round_pN_and_never_to_same_class(n, p):
    y = torch.arange(n) % 10
    noisy, flipped = inject_symmetric_noise(y, p, 10, seed=3)
    assert int(flipped.sum()) == round(p * n)
    assert (noisy[flipped] != y[flipped]).all()
    assert torch.equal(noisy[~flipped], y[~flipped])
    assert noisy.min() >= 0 and noisy.max() < 10


def test_noise_is_uniform_over_other_classes_and_seeded():
    y = torch.zeros(30_000, dtype=torch.long)
    noisy, flipped = inject_symmetric_noise(y, 0.5, 4, seed=0)
    counts = torch.bincount(noisy[flipped], minlength=4).float() / flipped.sum()
    assert counts[0] == 0
    assert torch.allclose(counts[1:], torch.full((3,), 1 / 3), atol=0.02)
    again, again_mask = inject_symmetric_noise(y, 0.5, 4, seed=0)
    other, _ = inject_symmetric_noise(y, 0.5, 4, seed=1)
    assert torch.equal(noisy, again) and torch.equal(flipped, again_mask)
    assert not torch.equal(noisy, other)


@pytest.mark.parametrize("kwargs", [dict(noise_rate=1.0), dict(noise_rate=-0.1), dict(noise_rate=1.5),
                                    dict(num_classes=1), dict(y=torch.tensor([0, 12])),
                                    dict(y=torch.zeros(2, 2, dtype=torch.long))])
def test_noise_bad_input_raises(kwargs):
    args = dict(y=torch.tensor([0, 1, 2]), noise_rate=0.2, num_classes=10, seed=0) | kwargs
    with pytest.raises(ValueError):
        inject_symmetric_noise(**args)


def test_other_bad_inputs_raise():
    model = FeatureMLP(4, 8, 0, 3, batchnorm=False)
    with pytest.raises(ValueError, match="lambda"):
        distance_to_init_penalty(model, -1.0, 10)
    with pytest.raises(ValueError, match="lambda"):
        auxiliary_loss(10, 3, -0.5)
    with pytest.raises(ValueError, match="profile"):
        run("medium", torch.device("cpu"))
    with pytest.raises(ValueError, match="multiple of 10"):
        load_splits(15, 10, 10, 14, "cpu")
    with pytest.raises(ValueError, match="early stopping"):
        train_sweep([RunSpec("early_stopping", 0.0, 0.2, 0)], *([torch.zeros(10, 4), torch.zeros(10, dtype=torch.long)] * 3),
                    width=4, hidden_layers=1, num_classes=3, epochs=1, lr=0.1, batch_size=5)
    with pytest.raises(ValueError):
        BatchedMLP(4, 8, 0, 3, seeds=[0])
    with pytest.raises(ValueError):
        evaluation_epochs(10, 2, 0)


def _data(n=64, d=12, k=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)


def test_distance_to_init_with_lambda_zero_reproduces_plain_training_exactly():
    X, y = _data()
    histories, params = [], []
    for lam in (None, 0.0):
        torch.manual_seed(0)
        model = FeatureMLP(12, 32, 1, 3, batchnorm=False)
        penalty = None if lam is None else distance_to_init_penalty(model, lam, len(X))
        histories.append(fit(model, X, y, epochs=5, optimizer="momentum", lr=0.05, batch_size=16, seed=1,
                             progress=False, loss_fn=squared_loss, penalty=penalty).loss)
        params.append([p.detach().clone() for p in model.parameters()])
    assert histories[0] == histories[1]
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_auxiliary_with_lambda_zero_reproduces_plain_training_exactly():
    X, y = _data()
    params = []
    for lam in (None, 0.0):
        torch.manual_seed(0)
        model = FeatureMLP(12, 32, 1, 3, batchnorm=False)
        kwargs = {}
        if lam is not None:
            loss_fn, offsets = auxiliary_loss(len(X), 3, lam)
            kwargs = dict(loss_fn=loss_fn, extra_params=[offsets])
        else:
            kwargs = dict(loss_fn=squared_loss)
        fit(model, X, y, epochs=5, optimizer="momentum", lr=0.05, batch_size=16, seed=1, progress=False, **kwargs)
        params.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_penalty_value_is_lambda_squared_over_2n_times_squared_distance():
    torch.manual_seed(0)
    model = FeatureMLP(5, 7, 0, 3, batchnorm=False)
    penalty = distance_to_init_penalty(model, 3.0, 20)
    assert penalty(model).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    num_params = sum(p.numel() for p in model.parameters())
    assert penalty(model).item() == pytest.approx(9.0 / 40 * num_params * 0.01, rel=1e-5)


@pytest.mark.parametrize("method", ["distance_to_init", "auxiliary"])
def test_linear_model_converges_to_kernel_ridge_regression(method):
    """For f(x) = W^T x the NTK is exact: both methods give f = f0 + K (K + lam^2 I)^{-1} (Y - f0) on the
    training inputs, with K = X X^T (the paper's kernel ridge regression)."""
    n, d, k, lam = 8, 30, 3, 1.0
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) / d ** 0.5
    y = torch.randint(0, k, (n,), generator=g)
    model = torch.nn.Linear(d, k, bias=False).double()
    with torch.no_grad():
        f0 = model(X)
    kwargs = {}
    if method == "distance_to_init":
        kwargs = dict(loss_fn=squared_loss, penalty=distance_to_init_penalty(model, lam, n))
    else:
        loss_fn, offsets = auxiliary_loss(n, k, lam, dtype=torch.float64)
        kwargs = dict(loss_fn=loss_fn, extra_params=[offsets])
    fit(model, X, y, epochs=150, optimizer="sgd", lr=2.0, batch_size=n, progress=False, **kwargs)
    K = X @ X.T
    Y = torch.nn.functional.one_hot(y, k).double()
    expected = f0 + K @ torch.linalg.solve(K + lam ** 2 * torch.eye(n, dtype=torch.float64), Y - f0)
    with torch.no_grad():
        assert torch.allclose(model(X), expected, atol=1e-8)


def test_batched_mlp_matches_single_networks_and_single_training():
    X, y = _data(n=48, d=10, k=4)
    seeds = [3, 5]
    batched = BatchedMLP(10, 16, 2, 4, seeds)
    singles = []
    for s in seeds:
        torch.manual_seed(s)
        singles.append(FeatureMLP(10, 16, 1, 4, batchnorm=False))
    with torch.no_grad():
        out = batched(X)
        for r, net in enumerate(singles):
            assert torch.allclose(out[r], net(X), atol=1e-6)
    # plain training side by side equals training each network alone (same batches)
    specs = [RunSpec("plain", 0.0, 0.2, s) for s in seeds]
    objective = BatchedObjective(batched, specs, len(X), 4)
    Y = torch.stack([y, y], 1)
    fit(batched, X, Y, epochs=3, optimizer="momentum", lr=0.05, batch_size=16, seed=2, progress=False,
        loss_fn=objective.loss, penalty=objective.penalty)
    with torch.no_grad():
        out = batched(X)
    for r, net in enumerate(singles):
        fit(net, X, y, epochs=3, optimizer="momentum", lr=0.05, batch_size=16, seed=2, progress=False,
            loss_fn=squared_loss)
        with torch.no_grad():
            assert torch.allclose(out[r], net(X), atol=1e-5)


def test_batched_objective_matches_single_run_regularisers():
    X, y = _data(n=20, d=6, k=3)
    specs = [RunSpec("plain", 0.0, 0.2, 0), RunSpec("distance_to_init", 2.0, 0.2, 0),
             RunSpec("auxiliary", 3.0, 0.2, 0)]
    model = BatchedMLP(6, 8, 1, 3, [0, 0, 0])
    objective = BatchedObjective(model, specs, len(X), 3)
    torch.manual_seed(0)
    single = FeatureMLP(6, 8, 0, 3, batchnorm=False)
    penalty = distance_to_init_penalty(single, 2.0, len(X))
    with torch.no_grad():
        for p in list(model.parameters()):
            p[1].add_(0.05)
        for p in single.parameters():
            p.add_(0.05)
    assert objective.penalty(model).item() == pytest.approx(penalty(single).item(), rel=1e-5)
    with torch.no_grad():
        objective.offsets.normal_()
    idx = torch.arange(5)
    aux_fn, offsets = auxiliary_loss(len(X), 3, 3.0)
    with torch.no_grad():
        offsets.copy_(objective.offsets[0])
        outputs = model(X[idx])
        total = objective.loss(outputs, torch.stack([y[idx]] * 3, 1), idx)
        parts = squared_loss(outputs[0], y[idx]) + squared_loss(outputs[1], y[idx]) + aux_fn(outputs[2], y[idx], idx)
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)


def test_small_sweep_produces_the_issue_rows_and_plain_memorises():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g)
    def sample(n):
        labels = torch.arange(n) % 3
        return (centres[labels] + 1.5 * torch.randn(n, 20, generator=g)) / 2, labels
    X, y = sample(90)
    X_val, y_val = sample(30)
    X_test, y_test = sample(60)
    specs = sweep_specs([1.0], [1.0], [0.4], [0, 1])
    assert [s.method for s in specs] == ["plain"] * 2 + ["distance_to_init"] * 2 + ["auxiliary"] * 2
    curves = train_sweep(specs, X, y, X_val, y_val, X_test, y_test, width=256, hidden_layers=1, num_classes=3,
                         epochs=60, lr=0.02, batch_size=15, dense_until=3, eval_every=10, progress=False)
    assert curves["epochs"] == [0, 1, 2, 3, 10, 20, 30, 40, 50, 60]
    assert curves["flipped_fraction"] == [0.4] * 6
    rows = result_rows(specs, curves)
    assert all(set(r) == ROW_KEYS for r in rows)
    assert sorted({r["method"] for r in rows}) == ["auxiliary", "distance_to_init", "early_stopping", "plain"]
    table = summarize(rows)
    plain = next(t for t in table if t["method"] == "plain")
    assert plain["train_noisy"] > 0.9  # memorises the noisy labels
    assert "plain_memorises" in done_when(rows, 0.4)


def test_early_stopping_picks_first_maximum():
    assert early_stopping_index([0.1, 0.5, 0.3, 0.5]) == 1
    with pytest.raises(ValueError):
        early_stopping_index([])


def test_median_curve_and_lambda_by_validation():
    runs = [dict(method="auxiliary", noise=0.4, **{"lambda": lam}, seed=s, test_acc=[0.1, 0.2 + lam / 10 + s],
                 val_acc_noisy=[0.1, v]) for lam, v in ((1.0, 0.3), (2.0, 0.5)) for s in (0, 1)]
    assert median_curve(runs, "test_acc", "auxiliary", 0.4, 2.0) == pytest.approx([0.1, 0.9])
    assert lambda_by_validation(runs, "auxiliary", 0.4) == 2.0
    with pytest.raises(ValueError):
        median_curve(runs, "test_acc", "plain", 0.4)
