"""Tests for utils.local_elasticity, utils.clustering and utils.elastic_sde."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from utils import clustering as cl
from utils import elastic_sde as sde
from utils import claims
from utils import elastic_stability as stab
from utils import local_elasticity as le


def _two_layer_module(params: dict, nonlinear: bool) -> nn.Module:
    """The same network as an nn.Module (standard parametrisation: one step size for all layers)."""
    W, b, a, c = (params[k][0] for k in ("W", "b", "a", "c"))
    first = nn.Linear(W.shape[1], W.shape[0]).double()
    last = nn.Linear(W.shape[0], a.shape[1]).double()
    with torch.no_grad():
        first.weight.copy_(W); first.bias.copy_(b); last.weight.copy_(a.T); last.bias.copy_(c)
    return nn.Sequential(first, nn.ReLU() if nonlinear else nn.Identity(), last)


def test_linear_model_update_is_proportional_to_inner_product():
    """For f(x) = w.x one SGD step at x changes f(x') by -lr r <x, x'>: S_rel = |<x,x'>| / ||x||^2."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1, bias=False).double()
    X = torch.randn(7, 5, dtype=torch.float64)
    T = torch.randn(3, 1, dtype=torch.float64)
    lr = 0.1
    dp, da = le.one_step_change_module(model, X[:3], T, X, lr)
    r = (model(X[:3]) - T).detach()  # (3, 1)
    expected = -lr * r * (X[:3] @ X.T)  # (3, 7)
    torch.testing.assert_close(dp[..., 0], expected)
    S = le.relative_similarity(dp, da)
    torch.testing.assert_close(S, (X[:3] @ X.T).abs() / (X[:3] ** 2).sum(1, keepdim=True))
    # model untouched
    assert torch.equal(model.weight, model.weight.detach())


@pytest.mark.parametrize("nonlinear", [True, False])
def test_closed_form_step_matches_torch_func(nonlinear):
    p = le.init_two_layer(1, 4, 32, 2, seed=1, dtype=torch.float64, parametrisation="standard")
    X = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    T = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dp, da = le.one_step_change(p, X[:4], T, X, lr=0.05, nonlinear=nonlinear)
    dp2, da2 = le.one_step_change_module(_two_layer_module(p, nonlinear), X[:4], T, X, lr=0.05)
    torch.testing.assert_close(dp, dp2)
    torch.testing.assert_close(da, da2)


def test_ntk_matches_finite_differences_and_closed_form():
    p = le.init_two_layer(1, 3, 16, 1, seed=0, dtype=torch.float64, parametrisation="standard")
    model = _two_layer_module(p, True)
    X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ntk = le.module_ntk(nn.Sequential(model, nn.Flatten(0)), X, X)
    torch.testing.assert_close(ntk, le.two_layer_ntk(p, X, X)[0])
    # finite differences: gradient of f(x_i) by central differences in every parameter
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    eps, J = 1e-6, []
    for j in range(flat.numel()):
        out = []
        for sign in (1, -1):
            v = flat.clone(); v[j] += sign * eps
            torch.nn.utils.vector_to_parameters(v, model.parameters())
            out.append(model(X)[:, 0].detach())
        J.append((out[0] - out[1]) / (2 * eps))
    torch.nn.utils.vector_to_parameters(flat, model.parameters())
    J = torch.stack(J, 1)
    torch.testing.assert_close(ntk, J @ J.T, rtol=1e-5, atol=1e-6)


def test_kernelised_similarity_tends_to_ntk_as_step_shrinks():
    p = le.init_two_layer(1, 3, 64, 1, seed=5, dtype=torch.float64)  # NTK parametrisation, layer step sizes
    X = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    T = torch.ones(6, 1, dtype=torch.float64)
    ntk = le.two_layer_ntk(p, X, X)[0]
    errors = []
    for lr in (1e-2, 1e-4):
        dp, _ = le.one_step_change(p, X, T, X, lr)
        K = le.kernelised_similarity(dp, le.two_layer_residuals(p, X, T), lr)
        errors.append(float((K - ntk).abs().max() / ntk.abs().max()))
    assert errors[1] < 1e-3 and errors[1] < errors[0] / 10


def test_batched_training_matches_separate_runs():
    X = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Y = X[:, :1].sign()
    both = le.init_two_layer(2, 3, 8, 1, seed=0, dtype=torch.float64)
    trained = le.train_two_layer(both, X, Y, epochs=3, lr=0.5, batch_size=8, progress=False)["params"]
    single = le.train_two_layer(le.select_run(both, 1), X, Y, epochs=3, lr=0.5, batch_size=8, progress=False)
    torch.testing.assert_close(trained["W"][1:], single["params"]["W"])


def test_relu_network_is_more_elastic_than_linear_on_the_rippled_curves():
    """At initialisation S_rel of a ReLU network falls with the angular distance; a linear network's does not."""
    from utils.metrics import pearson
    X, y, t = le.donut_data(60, seed=0)
    pos = torch.nonzero(y > 0).flatten()
    geo = le.angular_distances(t, pos.tolist())[:, pos.numpy()]
    off = ~np.eye(len(pos), dtype=bool)
    r = {}
    for nl in (True, False):
        p = le.init_two_layer(1, 3, 256, 1, seed=0, dtype=torch.float64, parametrisation="standard")
        S = le.relative_similarity(*le.one_step_change(p, X[pos], y[pos, None], X[pos], 1e-4, nl)).numpy()
        r[nl] = pearson(S[off], geo[off])
    assert r[True] < -0.8 and r[False] > -0.5


def test_geodesics_on_folded_sheet_and_symmetrise():
    X, y, flat = le.folded_boxes_data(50, seed=0)
    assert X.shape == (50, 3) and set(y.tolist()) <= {-1.0, 1.0}
    D = le.flat_geodesic_distances(flat, [0, 1])
    assert D.shape == (2, 50) and D[0, 0] == pytest.approx(0, abs=1e-6)
    S = torch.arange(9.0).view(3, 3)
    torch.testing.assert_close(le.symmetrise(S), le.symmetrise(S).T)


def test_clustering_accuracy_is_invariant_to_label_swaps():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([1, 1, 0, 2, 2, 0, 0, 0])
    acc = cl.clustering_accuracy(truth, pred)
    assert acc == pytest.approx(7 / 8)
    perm = np.array([2, 0, 1])
    assert cl.clustering_accuracy(truth, perm[pred]) == acc
    assert cl.clustering_accuracy(truth, 1 - (truth == 0)) == cl.clustering_accuracy(truth, (truth == 0))


def test_clustering_methods_recover_two_blobs():
    g = np.random.default_rng(0)
    X = np.concatenate([g.normal(0, 0.3, (20, 4)), g.normal(3, 0.3, (20, 4))])
    truth = np.repeat([0, 1], 20)
    K = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1))
    for labels in (cl.kmeans_rows(K, 2), cl.spectral_clusters(K, 2), cl.kernel_kmeans(K, 2),
                   cl.pixel_kmeans(X, 2), cl.pca_kmeans(X, 2, components=2)):
        assert cl.clustering_accuracy(truth, labels) == 1.0


def test_sde_phase_transition():
    rows = sde.phase_transition([0.5, 2.0], [2, 4], time=8.0, progress=False)
    by = {(r["classes"], r["ratio"]): r for r in rows}
    for K in (2, 4):
        assert by[(K, 2.0)]["accuracy"] == 1.0 and by[(K, 2.0)]["separation"] > 10
        assert by[(K, 0.5)]["separation"] < 0.5
    det = sde.simulate(sde.elasticity_matrix(3, 0.5, 1.0), 10, 2, steps=100, dt=0.05)
    sep = sde.separation(det[0])
    assert sep[-1] < sep[0]  # deterministic and inter > intra: the class contrasts die out


def test_bad_inputs_raise():
    p = le.init_two_layer(1, 3, 4, 1)
    with pytest.raises(ValueError):
        le.init_two_layer(1, 3, 4, 1, parametrisation="mean-field")
    with pytest.raises(ValueError):
        le.one_step_change(p, torch.randn(2, 3), torch.randn(2, 1), torch.randn(5, 3), lr=0.0)
    with pytest.raises(ValueError):
        le.two_layer_forward(p, torch.randn(5, 4))
    with pytest.raises(ValueError):
        le.relative_similarity(torch.ones(1, 3, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError):
        le.symmetrise(torch.ones(2, 3))
    with pytest.raises(ValueError):
        le.torus_data(10, major=1.0, minor=2.0)
    with pytest.raises(ValueError):
        cl.clustering_accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        cl.kmeans_rows(np.ones((3, 4)), 2)
    with pytest.raises(ValueError):
        cl.kernel_kmeans(np.eye(3), 5)
    with pytest.raises(ValueError):
        sde.elasticity_matrix(1, 1.0, 0.5)
    with pytest.raises(ValueError):
        sde.simulate(torch.ones(2, 3), 5, 2, 10, 0.1)


@pytest.mark.parametrize("parametrisation", ["standard", "ntk"])
@pytest.mark.parametrize("nonlinear", [True, False])
def test_fused_probe_equals_copy_and_step_reference(parametrisation, nonlinear):
    p = le.init_two_layer(1, 6, 48, 3, seed=2, dtype=torch.float64, parametrisation=parametrisation)
    g = torch.Generator().manual_seed(7)
    X = torch.randn(25, 6, dtype=torch.float64, generator=g)
    T = torch.randn(9, 3, dtype=torch.float64, generator=g)
    ref = le.one_step_change_reference(p, X[:9], T, X, 0.05, nonlinear)
    for chunk in (None, 1, 4):
        fused = le.one_step_change(p, X[:9], T, X, 0.05, nonlinear, chunk_size=chunk)
        assert (fused[0] - ref[0]).abs().max() < 1e-12 and (fused[1] - ref[1]).abs().max() < 1e-12
    tiny = le.one_step_change(p, X[:9], T, X, 0.05, nonlinear, memory_bytes=1)  # one anchor per chunk
    assert (tiny[0] - ref[0]).abs().max() < 1e-12


def test_module_probe_chunks_agree():
    p = le.init_two_layer(1, 4, 16, 2, seed=1, dtype=torch.float64, parametrisation="standard")
    X = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    T = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    m = _two_layer_module(p, True)
    a = le.one_step_change_module(m, X[:5], T, X, 0.1, chunk_size=2)
    b = le.one_step_change_reference(p, X[:5], T, X, 0.1)
    assert (a[0] - b[0]).abs().max() < 1e-12 and (a[1] - b[1]).abs().max() < 1e-12


def test_elasticity_estimator_recovers_known_coefficients():
    """Increments generated by the per-step model with known alpha(t), beta(t) give them back exactly."""
    g = torch.Generator().manual_seed(0)
    S, K, lr = 600, 3, 0.05
    sampled = torch.randint(0, K, (S,), generator=g)
    grads = torch.randn(S, K, generator=g, dtype=torch.float64)
    alpha, beta = torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64), torch.tensor([1.0, 1.2, 1.4], dtype=torch.float64)
    which = torch.arange(S) // (S // 3)
    same = (sampled[:, None] == torch.arange(K)[None]).double()
    coef = alpha[which][:, None] * same + beta[which][:, None] * (1 - same)  # (S, K)
    inc = -lr * coef[:, :, None] * grads[:, None, :]
    a_hat, b_hat = sde.estimate_elasticity(inc, sampled, grads, lr, windows=3)
    assert (a_hat - alpha).abs().max() < 1e-6 and (b_hat - beta).abs().max() < 1e-6
    with pytest.raises(ValueError, match="windows"):
        sde.estimate_elasticity(inc, sampled, grads, lr, windows=0)
    with pytest.raises(ValueError, match="single class"):
        sde.estimate_elasticity(inc, torch.zeros(S, dtype=torch.long), grads, lr, windows=2)


def test_logit_ode_separates_only_when_intra_exceeds_inter():
    Z0 = torch.zeros(3, 3, dtype=torch.float64)
    sep = lambda Z: float((Z - Z.mean(0, keepdim=True)).norm())
    up = sde.simulate_logit_ode(Z0, torch.tensor([2.0]), torch.tensor([1.0]), 200, 0.1)
    flat = sde.simulate_logit_ode(Z0, torch.tensor([1.0]), torch.tensor([1.0]), 200, 0.1)
    assert up.shape == (201, 3, 3) and sep(up[-1]) > 1.0 and sep(flat[-1]) < 1e-12
    assert sde.relative_trajectory_error(up, up) == 0.0
    with pytest.raises(ValueError, match="does not move"):
        sde.relative_trajectory_error(flat[:3] * 0, flat[:3] * 0)


def test_removal_stability_matches_closed_form_ridge():
    """Leave-one-out ridge: w_{-i} = w - A^{-1} x_i e_i / (1 - h_i) with A = X^T X + lam I, e_i = y_i - x_i.w."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, dtype=torch.float64, generator=g)
    Y = X @ torch.randn(4, dtype=torch.float64, generator=g) + 0.1 * torch.randn(30, dtype=torch.float64, generator=g)
    Xz, Yz = torch.randn(12, 4, dtype=torch.float64, generator=g), torch.randn(12, dtype=torch.float64, generator=g)
    lam = 0.5
    fit = lambda A, b: torch.linalg.solve(A.T @ A + lam * torch.eye(4, dtype=torch.float64), A.T @ b)
    loss = lambda w, A, b: 0.5 * (A @ w - b) ** 2
    beta = stab.removal_stability(fit, loss, X, Y, Xz, Yz, range(5))
    Ainv = torch.linalg.inv(X.T @ X + lam * torch.eye(4, dtype=torch.float64))
    w = Ainv @ X.T @ Y
    for i in range(5):
        h = X[i] @ Ainv @ X[i]
        w_i = w - Ainv @ X[i] * (Y[i] - X[i] @ w) / (1 - h)
        torch.testing.assert_close(beta[i], (loss(w_i, Xz, Yz) - loss(w, Xz, Yz)).abs(), rtol=1e-10, atol=1e-12)
    c = stab.stability_constants(beta)
    assert c["median"] <= c["locally_elastic"] * 10 and c["locally_elastic"] <= c["uniform"]
    assert stab.stability_bound(c["locally_elastic"], 30, 1.0) <= stab.stability_bound(c["uniform"], 30, 1.0)
    with pytest.raises(ValueError):
        stab.stability_bound(0.1, 0, 1.0)


def test_superclass_protocol_runs_with_zero_epochs():
    g = torch.Generator().manual_seed(0)
    X_all = torch.randn(80, 1, 4, 4, generator=g)
    y_all = torch.arange(10).repeat(8)
    X_all += y_all.view(-1, 1, 1, 1).float()  # classes are shifted blobs
    rows = le.superclass_experiment(X_all, y_all, [(0, 5, 1, 2)], per_class=6, width=8, epochs=0, lr=0.1,
                                    pca_components=2, progress=False)
    assert len(rows) == 1 and "elasticity_initial" in rows[0] and "elasticity_relu" not in rows[0]
    assert rows[0]["pixel"] == 1.0 and np.isfinite(rows[0]["final_loss_initial"])
    rows = le.superclass_experiment(X_all, y_all, [(0, 5, 1, 2)], per_class=6, width=8, epochs=1, lr=0.1,
                                    pca_components=2, progress=False)
    assert {"elasticity_relu", "elasticity_linear", "elasticity_initial"} <= set(rows[0])


def test_mean_interval():
    m = le.mean_interval([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["low"] < 2.0 < m["high"] and m["n"] == 3
    with pytest.raises(ValueError, match="two values"):
        le.mean_interval([1.0])


def _fake(**over):
    r = {"synthetic": {"nets": {"relu_standard": {"pearson_trained": -0.7, "train_accuracy": 0.98},
                                "relu_ntk": {"pearson_trained": -0.93}, "linear_standard": {"pearson_trained": 0.0}}},
         "growth": {"nets": {"relu_standard": {"ratio_change": [1.4, 1.5, 1.2]},
                             "linear_standard": {"ratio_change": [0.97, 1.02, 1.05]}}},
         "class_profile": {"trained": [0.5, 0.1, 0.5, 0.3, 0.5, 0.1, 0.9, 0.1, 0.1, 0.1], "similar": [0, 2, 4],
                           "dissimilar": [5, 8, 9]},
         "clustering": {"margins": {"elasticity_relu-pixel": {"mean": 0.05, "low": 0.01, "high": 0.09, "n": 30}}},
         "sde_fit": {"runs": [{"corruption": p, "ratio": [2.0, r], "relative_error": 0.1}
                              for p, r in ((0.0, 3.0), (0.3, 2.0), (0.6, 1.5), (0.9, 1.0))]},
         "stability": {"median_over_sup": 0.01}}
    for k, v in over.items():
        r[k] = v
    return r


@pytest.mark.parametrize("claim_id", ["le.torus", "le.growth", "le.class_order", "le.clustering", "le.sde_fit",
                                      "le.stability"])
def test_claims_both_verdicts(claim_id):
    c = claims.get(claim_id)
    assert c.holds(c.check(_fake()))
    bad = {
        "le.torus": {"synthetic": {"nets": {"relu_standard": {"pearson_trained": -0.95, "train_accuracy": 1.0},
                                            "relu_ntk": {"pearson_trained": -0.7},
                                            "linear_standard": {"pearson_trained": 0.0}}}},
        "le.growth": {"growth": {"nets": {"relu_standard": {"ratio_change": [1.4, 1.5, 1.2]},
                                          "linear_standard": {"ratio_change": [0.97, 1.2, 1.0]}}}},
        "le.class_order": {"class_profile": {**_fake()["class_profile"],
                                             "trained": [0.5, 0.1, 0.5, 0.3, 0.95, 0.1, 0.9, 0.1, 0.1, 0.1]}},
        "le.clustering": {"clustering": {"margins": {"elasticity_relu-pixel": {"mean": 0.0, "low": -0.02,
                                                                               "high": 0.02, "n": 30}}}},
        "le.sde_fit": {"sde_fit": {"runs": [{"corruption": p, "ratio": [2.0, r], "relative_error": 0.1}
                                            for p, r in ((0.0, 3.0), (0.3, 0.8), (0.6, 1.5), (0.9, 1.0))]}},
        "le.stability": {"stability": {"median_over_sup": 0.7}},
    }[claim_id]
    assert not c.holds(c.check(_fake(**bad)))
