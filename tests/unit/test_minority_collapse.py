"""Minority collapse: imbalanced subsets, measures, the symmetric LPM, batched training, widgets."""
from __future__ import annotations

import json
import math
import re

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
    assert mc.mean_pairwise_cosine(etf) == pytest.approx(-1 / (K - 1), abs=1e-12)
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
    assert sym.minority_cosine == pytest.approx(mc.minority_cosine_from_gram(full.gram, KA, E), abs=1e-3)
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
    X, y = _clusters(6, 200, 20, seed=0)
    Xt, yt = _clusters(6, 50, 20, seed=0)
    specs = [mc.RunSpec(1), mc.RunSpec(100), mc.RunSpec(100, oversample=100)]
    rows = mc.train_imbalanced_batched(specs, X, y, Xt, yt, n_majority=200, num_majority=3, width=32, depth=1,
                                       steps=600, lr=0.05, weight_decay=5e-3, progress=False)
    assert [r["n_minority"] for r in rows] == [200, 2, 2]
    assert rows[1]["w_minority_cosine"] > rows[0]["w_minority_cosine"] + 0.2
    assert rows[2]["minority_accuracy"] >= rows[1]["minority_accuracy"]
    assert len(rows[0]["per_class_accuracy"]) == 6 and np.array(rows[0]["w_cosines"]).shape == (6, 6)


# ----------------------------------------------------------------------------- widgets

def test_static_slider_html_and_coordinates():
    from utils import widgets

    html = widgets.static_slider_html([b"\x89PNG a", b"\x89PNG b", b"\x89PNG c"], ["R = 1", "R = 10", "R = 100"],
                                      "imbalance ratio R", start=1)
    assert 'type="range"' in html and 'max="2"' in html and 'value="1"' in html
    data = json.loads(re.search(r'<script type="application/json"[^>]*>(.*?)</script>', html, re.S).group(1))
    assert len(data["frames"]) == 3 and data["labels"][2] == "R = 100"
    assert "http" not in html  # no CDN
    with pytest.raises(ValueError, match="one label per frame"):
        widgets.static_slider_html([b"a"], ["x", "y"], "t")
    sol = mc.solve_symmetric_lpm(10, 5, 1000.0, 2.0, 2.0)  # collapsed: minority classifiers share a point
    xy = widgets.classifier_coordinates(sol.gram[:10, :10], 5)
    assert np.ptp(xy[5:], axis=0).max() < 1e-3 * np.abs(xy).max()
    fig = widgets.LPMFigure(10, ratios=np.logspace(0, 3, 7))
    fig.update(10.0, 5, 9.0)
    assert fig.png(40).startswith(b"\x89PNG")
