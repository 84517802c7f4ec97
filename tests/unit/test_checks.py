"""utils.checks: every public metric and trainer gives a clear error (or the right value) on bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from utils import checks
from utils.checks import check_labels, check_model_for_functional, check_repeats, env_flag
from utils.etf import etf_distance, simplex_etf
from utils.metrics import class_means, cosine_matrix, separation_fuzziness, within_between_trace
from utils.neural_collapse import (centred_class_means, equiangularity, equinorm, max_angle, nc1, nc_metrics,
                                   ncc_mismatch, self_duality)
from utils.train import batch_indices, fit, progress_bar


def blobs(K=3, n=10, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat(n)
    return 3 * torch.randn(K, d, generator=g)[y] + torch.randn(K * n, d, generator=g), y


def _W(H, y, K):
    """A classifier matching whatever (H, y, K) claim, so the checks on H and y are the ones that fire."""
    d = H.shape[-1] if H.dim() == 2 else 1
    rows = K or int(torch.as_tensor(y).max()) + 1
    return torch.randn(rows, d)


# Every public function of (H, y): the same bad inputs must give the same kind of clear error.
FEATURE_METRICS = {
    "class_means": lambda H, y, K=None: class_means(H, y, K),
    "centred_class_means": lambda H, y, K=None: centred_class_means(H, y, K),
    "separation_fuzziness": lambda H, y, K=None: separation_fuzziness(H, y, K),
    "within_between_trace": lambda H, y, K=None: within_between_trace(H, y, K, weighting="uniform"),
    "nc1": lambda H, y, K=None: nc1(H, y, K),
    "nc_metrics": lambda H, y, K=None: nc_metrics(H, y, _W(H, y, K), None, K),
    "ncc_mismatch": lambda H, y, K=None: ncc_mismatch(H, y, _W(H, y, K), None, K),
}
SIZES = [(3, 10, 6), (5, 4, 40), (2, 30, 1)]


@pytest.mark.parametrize("name", FEATURE_METRICS)
@pytest.mark.parametrize("K,n,d", SIZES)
def test_non_finite_features_name_count_and_first_row(name, K, n, d):
    H, y = blobs(K, n, d)
    H[3, 0] = float("nan")
    H[5, 0] = float("inf")
    H[8, d - 1] = float("-inf")
    with pytest.raises(ValueError, match=r"H has 3 non-finite \(NaN/Inf\) entries, the first in row 3"):
        FEATURE_METRICS[name](H, y)


@pytest.mark.parametrize("name", FEATURE_METRICS)
@pytest.mark.parametrize("K,n,d", SIZES)
def test_integer_valued_float_labels_give_the_integer_answer(name, K, n, d):
    H, y = blobs(K, n, d)
    torch.manual_seed(0)
    expected = FEATURE_METRICS[name](H, y)
    torch.manual_seed(0)
    got = FEATURE_METRICS[name](H, y.double())
    if isinstance(expected, tuple):
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(expected, got)
    else:
        assert got == expected


@pytest.mark.parametrize("name", FEATURE_METRICS)
def test_label_kinds(name):
    H, y = blobs(3, 10, 6)
    f = FEATURE_METRICS[name]
    with pytest.raises(TypeError, match="labels y must be integers.*0.5 at index 4"):
        f(H, torch.where(torch.arange(30) == 4, 0.5, y.double()))
    with pytest.raises(ValueError, match="a label of y is >= num_classes=2: got label 2"):
        f(H, y, 2)
    with pytest.raises(ValueError, match="negative label -1"):
        f(H, torch.where(torch.arange(30) == 7, -1, y))
    with pytest.raises(ValueError, match=r"classes \[1\] have no examples"):
        f(H, torch.where(y == 1, 2, y))
    with pytest.raises(ValueError, match="labels y has 29 entries but the features have 30 rows"):
        f(H, y[:29])
    with pytest.raises(ValueError, match="1-D"):
        f(H, torch.nn.functional.one_hot(y))
    with pytest.raises(ValueError, match="2-D tensor"):
        f(H[:, 0], y)
    with pytest.raises(TypeError, match="real numbers"):
        f(H > 0, y)


@pytest.mark.parametrize("fn", [ncc_mismatch, nc_metrics])
@pytest.mark.parametrize("N,d,K,W_rows", [(30, 6, 3, 5), (40, 9, 4, 2), (12, 3, 2, 3)])
def test_classifier_rows_must_match_the_classes(fn, N, d, K, W_rows):
    g = torch.Generator().manual_seed(1)
    H, y = torch.randn(N, d, generator=g), torch.arange(K).repeat(N // K)
    with pytest.raises(ValueError, match=f"W has {W_rows} rows .* but the labels y have {K} classes"):
        fn(H, y, torch.randn(W_rows, d, generator=g))
    with pytest.raises(ValueError, match="same d"):
        fn(H, y, torch.randn(K, d + 1, generator=g))
    with pytest.raises(ValueError, match=f"bias b must have shape \\({K},\\)"):
        fn(H, y, torch.randn(K, d, generator=g), torch.zeros(K + 1))
    W = torch.randn(K, d, generator=g)
    W[1, 0] = float("nan")
    with pytest.raises(ValueError, match="W has 1 non-finite"):
        fn(H, y, W)


@pytest.mark.parametrize("fn", [equinorm, equiangularity, max_angle, etf_distance, cosine_matrix])
def test_vector_metrics_check_their_input(fn):
    V = simplex_etf(4, 6)
    V[2, 3] = float("inf")
    with pytest.raises(ValueError, match="V has 1 non-finite"):
        fn(V)
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.ones(4))


def test_zero_vectors_have_no_direction():
    V = simplex_etf(4, 6)
    V[1] = 0
    for fn in (equiangularity, max_angle):
        with pytest.raises(ValueError, match=r"rows \[1\] of V are zero"):
            fn(V)
    with pytest.raises(ValueError, match="all rows of V are zero"):
        equinorm(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="all zero"):
        self_duality(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="at least 2 row"):
        equinorm(torch.ones(1, 3))


def test_numpy_inputs_are_accepted():
    H, y = blobs()
    assert nc1(H.numpy(), y.numpy()) == nc1(H, y)


# ----------------------------------------------------------------------------- environment flag


@pytest.mark.parametrize("value,disabled", [("false", False), ("0", False), ("", False), ("No", False),
                                            ("off", False), ("1", True), ("true", True), ("YES", True)])
def test_tqdm_disable_is_a_boolean(monkeypatch, value, disabled):
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert env_flag("TQDM_DISABLE") is disabled
    assert progress_bar(range(3)).disable is disabled
    assert progress_bar(range(3), enabled=False).disable is True


def test_tqdm_disable_unset_and_nonsense(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_bar(range(3)).disable is False
    monkeypatch.setenv("TQDM_DISABLE", "maybe")
    with pytest.raises(ValueError, match=r"\$TQDM_DISABLE='maybe' is not a boolean"):
        progress_bar(range(3))


# ----------------------------------------------------------------------------- trainers


def test_fit_rejects_an_empty_epoch_and_bad_arguments():
    H, y = blobs(3, 10, 5)
    model = nn.Linear(5, 3)
    with pytest.raises(ValueError, match="repeats are all zero"):
        fit(model, H, y, 2, repeats=torch.zeros(30, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="repeats must be 30"):
        fit(model, H, y, 2, repeats=torch.ones(29, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="non-integer"):
        fit(model, H, y, 2, repeats=torch.full((30,), 1.5), progress=False)
    with pytest.raises(TypeError, match="integer class labels"):
        fit(model, H, y.float(), 2, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        fit(model, H, y, 2, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        fit(model, H, y, 2, lr=float("nan"), progress=False)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fit(model, H, y, 2, optimizer="adamw", progress=False)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        fit(model, H, y, -1, progress=False)
    with pytest.raises(ValueError, match="nothing to train on"):
        fit(model, H[:0], y[:0], 2, progress=False)
    with pytest.raises(ValueError, match="X has 30 examples but y has 29"):
        fit(model, H, y[:29], 2, progress=False)
    with pytest.raises(ValueError, match="non-negative"):
        fit(model, H, y - 1, 2, progress=False)
    # integer-valued float repeats are accepted and oversample as integers would
    reps = torch.tensor([2.0] * 10 + [0.0] * 20)
    assert fit(model, H, y, 1, repeats=reps, progress=False).loss[0] > 0


def test_batch_indices_checks():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="repeats are all zero"):
        next(batch_indices(4, 2, g, repeats=torch.zeros(4)))
    with pytest.raises(ValueError, match="n \\(the number of examples\\) must be an integer >= 1"):
        next(batch_indices(0, 2, g))
    idx = torch.cat(list(batch_indices(4, 3, g, repeats=torch.tensor([0.0, 2.0, 1.0, 0.0]))))
    assert sorted(idx.tolist()) == [1, 1, 2]


def test_check_repeats_and_labels_directly():
    assert check_repeats([1, 0, 2], 3).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="1 negative"):
        check_repeats([1, -1, 2], 3)
    y, K = check_labels(torch.tensor([True, False, True]), 3)
    assert y.dtype == torch.int64 and K == 2
    with pytest.raises(TypeError, match="nan"):
        check_labels(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        check_labels(torch.zeros(4, dtype=torch.long), 4, min_classes=2)


# ----------------------------------------------------------------------------- torch.func


def test_check_model_for_functional():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="training mode.*model.eval"):
        check_model_for_functional(mlp)
    with pytest.raises(ValueError, match="dropout layer '2' is active"):
        check_model_for_functional(mlp)
    check_model_for_functional(mlp.eval())  # eval mode: dropout is the identity

    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="batch-norm layer '1' has no running statistics"):
        check_model_for_functional(bn)
    check_model_for_functional(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval())
    half = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    half[1].train()
    with pytest.raises(ValueError, match=r"training mode: \['1'\]"):
        check_model_for_functional(half)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        check_model_for_functional(lambda x: x)
