"""Minority collapse: imbalanced subsets, measures, the symmetric LPM, batched training, widgets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils import imbalance, minority_collapse as mc
from utils.train import batch_indices


# ----------------------------------------------------------------------------- imbalance

def _labels(K: int = 10, per_class: int = 50) -> torch.Tensor:
    return torch.arange(K).repeat_interleave(per_class)[torch.randperm(K * per_class,
                                                                      generator=torch.Generator().manual_seed(1))]


def test_imbalanced_indices_sizes_and_nesting():
    y = _labels()
    idx10 = imbalance.imbalanced_indices(y, 40, 10, num_majority=5, seed=3)
    counts = torch.bincount(y[idx10], minlength=10).tolist()
    assert counts == [40] * 5 + [4] * 5
    idx40 = imbalance.imbalanced_indices(y, 40, 40, num_majority=5, seed=3)
    assert set(idx40.tolist()) <= set(idx10.tolist())  # larger R keeps a subset
    assert torch.equal(idx10, imbalance.imbalanced_indices(y, 40, 10, num_majority=5, seed=3))
    assert imbalance.class_sizes(10, 3, 100, 7.5) == [100] * 3 + [13] * 7


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 0.5}, "R must be"),
    ({"ratio": 41}, "leaves the minority classes empty"),
    ({"num_majority": 0}, "K_A = 0"),
    ({"num_majority": 10}, "1..K-1"),
    ({"n_majority": 60}, "fewer than"),
])
def test_imbalanced_indices_errors(kwargs, match):
    args = {"n_majority": 40, "ratio": 10, "num_majority": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        imbalance.imbalanced_indices(_labels(), **args)


def test_oversampling_repeats_feed_fit_batches():
    y = torch.tensor([0, 0, 0, 1, 2])
    reps = imbalance.oversampling_repeats(y, [1, 2], 4)
    assert reps.tolist() == [1, 1, 1, 4, 4]
    seen = torch.cat(list(batch_indices(len(y), 3, torch.Generator().manual_seed(0), repeats=reps)))
    assert torch.bincount(y[seen]).tolist() == [3, 4, 4]
    with pytest.raises(ValueError, match="integer >= 1"):
        imbalance.oversampling_repeats(y, [1], 0)


# ----------------------------------------------------------------------------- measures

def test_measures_on_a_simplex():
    K = 6
    etf = torch.eye(K) - 1.0 / K
    assert mc.group_cosine(etf) == pytest.approx(-1 / (K - 1), abs=1e-12)
    assert math.isnan(mc.group_cosine(etf[:1]))
    geo = mc.group_geometry(etf, 2, "w")
    assert geo["w_minority_cosine"] == pytest.approx(-1 / (K - 1))
    assert geo["w_minority_norm"] == pytest.approx(math.sqrt(1 - 1 / K))
    acc = mc.per_class_accuracy(torch.tensor([0, 1, 1, 2, 0, 2]), torch.tensor([0, 1, 2, 2, 0, 1]), 3)
    assert acc.tolist() == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="K_A"):
        mc.group_geometry(etf, 6, "w")


# ----------------------------------------------------------------------------- symmetric LPM

def test_balanced_lpm_is_a_simplex():
    sol = mc.solve_symmetric_lpm(10, 5, 1.0, 3.0, 3.0)
    assert sol.minority_cosine == pytest.approx(-1 / 9, abs=1e-5)
    assert sol.majority_cosine == pytest.approx(-1 / 9, abs=1e-5)
    G = sol.gram
    assert np.linalg.eigvalsh(G).min() > -1e-7
    assert np.trace(G[:10, :10]) / 10 == pytest.approx(3.0, rel=1e-5)  # budget is active


def test_symmetric_lpm_depends_on_the_product_and_collapses():
    a = mc.solve_symmetric_lpm(10, 5, 20.0, 1.0, 9.0).minority_cosine
    b = mc.solve_symmetric_lpm(10, 5, 20.0, 3.0, 3.0).minority_cosine
    assert a == pytest.approx(b, abs=1e-5)
    cos = mc.lpm_sweep([1, 3, 10, 30, 100, 1000], 10, 5, 3.0, 3.0)
    assert np.all(np.diff(cos) > -1e-4) and cos[-1] > 1 - 1e-3
    thresholds = [mc.collapse_threshold(10, 5, math.sqrt(E), math.sqrt(E), rel_precision=1e-2) for E in (4, 9, 25)]
    # the paper's budgets E_W = 1, E_H = 5: R* ~ 12 (Fang et al., Fig. 3); only the product matters
    paper = mc.collapse_threshold(10, 5, 1.0, 5.0, rel_precision=1e-3)
    assert 10 <= paper <= 15
    assert mc.collapse_threshold(10, 5, math.sqrt(5), math.sqrt(5), rel_precision=1e-3) == pytest.approx(paper, rel=2e-3)
    assert 1 < thresholds[0] < thresholds[1] < thresholds[2] < 1e6
    with pytest.raises(ValueError, match="R must"):
        mc.solve_symmetric_lpm(10, 5, 0.5)
    with pytest.raises(ValueError, match="K_A"):
        mc.solve_symmetric_lpm(10, 10, 2.0)


@pytest.mark.parametrize("K, KA, R", [(4, 2, 1.0), (4, 2, 5.0), (5, 2, 30.0), (6, 3, 300.0)])
def test_symmetric_lpm_matches_the_full_sdp(K, KA, R):
    lpm = pytest.importorskip("utils.lpm")
    E = 2.0
    sizes = [R] * KA + [1.0] * (K - KA)
    full = lpm.solve_lpm_convex(sizes, E, E)
    sym = mc.solve_symmetric_lpm(K, KA, R, E, E)
    assert sym.objective == pytest.approx(full.objective, abs=1e-6)
    assert sym.minority_cosine == pytest.approx(lpm.minority_classifier_cosine(full.gram, KA), abs=1e-3)
    assert lpm.lpm_objective(sym.gram, sizes) == pytest.approx(full.objective, abs=1e-6)


# ----------------------------------------------------------------------------- batched training

def _clusters(K: int, per_class: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(K, d, generator=g)
    y = torch.arange(K).repeat_interleave(per_class)
    return centres[y] + torch.randn(len(y), d, generator=g), y


def test_batched_runs_are_independent():
    model = mc.BatchedMLP(3, 5, 8, 2, 4, seed=0)
    x = torch.randn(3, 7, 5)
    out = model(x)
    x2 = x.clone()
    x2[1] += 10.0  # changing run 1's inputs leaves runs 0 and 2 unchanged
    out2 = model(x2)
    assert torch.equal(out[0], out2[0]) and torch.equal(out[2], out2[2]) and not torch.equal(out[1], out2[1])


def test_minority_collapse_in_small_training():
    """Through utils.train.fit: the collapsed run's minority classifiers align, oversampling helps."""
    X, y = _clusters(6, 200, 20, seed=0)
    Xt, yt = _clusters(6, 50, 20, seed=0)
    specs = [mc.RunSpec(1), mc.RunSpec(100), mc.RunSpec(100, oversample=100)]
    rows = mc.train_imbalanced_batched(specs, X, y, Xt, yt, n_majority=200, num_majority=3, width=32, depth=1,
                                       steps=600, lr=0.05, weight_decay=5e-3, progress=False)
    assert [r["n_minority"] for r in rows] == [200, 2, 2]
    assert rows[1]["w_minority_cosine"] > rows[0]["w_minority_cosine"] + 0.2
    assert rows[2]["minority_accuracy"] >= rows[1]["minority_accuracy"]
    assert len(rows[0]["per_class_accuracy"]) == 6 and np.array(rows[0]["w_cosines"]).shape == (6, 6)
    assert rows[0]["E_W"] > 0 and rows[0]["E_H"] > 0


def test_run_table_covers_each_pool_evenly():
    pools = [torch.arange(10), torch.tensor([20, 21, 22])]
    table = mc.run_table(pools, seed=0)
    assert table.shape == (10, 2)
    assert sorted(table[:, 0].tolist()) == list(range(10))
    counts = torch.bincount(table[:, 1] - 20)
    assert counts.max() - counts.min() <= 1


def test_feature_centring_global_mean_vs_mean_of_means():
    """The paper centres class means by the global sample mean: at large R it sits near the majority."""
    K, KA = 4, 2
    centres = torch.eye(K, dtype=torch.float64) * 3.0
    y = torch.cat([torch.full((100,), 0), torch.full((100,), 1), torch.full((1,), 2), torch.full((1,), 3)])
    H = centres[y]
    W = centres.clone()
    m = mc.minority_collapse_measures(W, H, y, y, y, KA)
    means = centres
    g = (torch.tensor([100.0, 100, 1, 1], dtype=torch.float64) @ means) / 202
    expected = mc.group_cosine(means[KA:] - g)
    assert m["h_minority_cosine"] == pytest.approx(expected, abs=1e-12)
    assert m["hbar_minority_cosine"] == pytest.approx(mc.group_cosine(means[KA:] - means.mean(0)), abs=1e-12)
    assert m["h_minority_cosine"] != pytest.approx(m["hbar_minority_cosine"], abs=1e-3)
    # budgets the network spends: E_W = mean ||w_k||^2, E_H = class-averaged mean ||h||^2
    assert m["E_W"] == pytest.approx(9.0) and m["E_H"] == pytest.approx(9.0)


# ----------------------------------------------------------------------------- widgets

def test_explorer_settings_adapt_and_reject():
    from utils import widgets

    s = widgets.explorer_settings(num_classes=3)
    assert s["num_majority"] == 1  # K_A adapted to K = 3 (two minority classes remain)
    assert widgets.explorer_settings()["energy"] == pytest.approx(5.0)  # the paper's E_W * E_H
    big = widgets.explorer_settings(ratio=1e6)
    assert big["max_decades"] == 6 and big["ratio"] == 1e6
    with pytest.raises(ValueError, match="K >= 3"):
        widgets.explorer_settings(num_classes=2)
    with pytest.raises(ValueError, match="1..K-2"):
        widgets.explorer_settings(num_classes=10, num_majority=9)
    with pytest.raises(ValueError, match="R must"):
        widgets.explorer_settings(ratio=0.5)


def test_lpm_explorer_shows_the_requested_settings():
    pytest.importorskip("ipywidgets")
    from utils import widgets

    box = widgets.lpm_explorer(num_classes=3, dpi=30)
    r_slider, ka_select, e_slider = box.children[0].children
    assert ka_select.value == 1 and list(ka_select.options) == [1]
    box = widgets.lpm_explorer(ratio=1e6, dpi=30)
    r_slider = box.children[0].children[0]
    assert r_slider.value == pytest.approx(1e6) and r_slider.max >= 6  # not clamped to 1e4


def test_classifier_coordinates_and_frames():
    from utils import widgets

    sol = mc.solve_symmetric_lpm(10, 5, 1000.0, 2.0, 2.0)  # collapsed: minority classifiers share a point
    xy = widgets.classifier_coordinates(sol.gram[:10, :10], 5)
    assert np.ptp(xy[5:], axis=0).max() < 1e-3 * np.abs(xy).max()
    fig = widgets.draw_lpm(10.0)
    assert len(fig.axes) >= 3
    rows = [{"name": "R=1", "w_cosines": np.eye(4).tolist(), "per_class_accuracy": [1, 1, 0.5, 0.5],
             "w_minority_cosine": -0.3, "minority_accuracy": 0.5}]
    assert len(widgets.draw_training_run(rows, 0, num_majority=2).axes) >= 2


# ----------------------------------------------------------------------------- claims

def _result(threshold=12.2, cos_top=0.95, acc_top=0.0, cos_one=-0.11, over_cos=0.02, over_acc=0.45):
    runs = [{"ratio": 1.0, "oversample": 1, "w_minority_cosine": cos_one, "minority_accuracy": 0.9},
            {"ratio": 600.0, "oversample": 1, "w_minority_cosine": cos_top, "minority_accuracy": acc_top},
            {"ratio": 600.0, "oversample": 10, "w_minority_cosine": 0.5, "minority_accuracy": 0.2},
            {"ratio": 600.0, "oversample": 600, "w_minority_cosine": over_cos, "minority_accuracy": over_acc}]
    return {"config": {"K": 10, "ratios": [1.0, 600.0]}, "runs": runs,
            "lpm": {"budgets": [[1.0, 5.0], [1.0, 1.0]], "thresholds": [threshold, 1.7]}}


def test_claim_mc_threshold_both_verdicts():
    from utils import claims
    c = claims.get("mc.threshold")
    assert c.check(_result()) == 12.2 and c.holds(12.2)
    assert not c.holds(c.check(_result(threshold=57.8)))


def test_claim_mc_trained_both_verdicts():
    from utils import claims
    c = claims.get("mc.trained")
    assert c.holds(c.check(_result()))
    assert not c.holds(c.check(_result(cos_top=0.67)))
    assert not c.holds(c.check(_result(acc_top=0.3)))
    assert not c.holds(c.check(_result(cos_one=-0.05)))  # not yet a simplex at R = 1


def test_claim_mc_oversampling_both_verdicts():
    from utils import claims
    c = claims.get("mc.oversampling")
    assert c.check(_result())["oversample"] == 600  # the largest rate
    assert c.holds(c.check(_result()))
    assert not c.holds(c.check(_result(over_acc=0.3))) and not c.holds(c.check(_result(over_cos=0.5)))
