"""Tests for utils.ntk_kernels and utils.two_layer (closed-form kernel, trainer, kernel trajectory, label corruption) and the
chapter module utils.ntk (profiles, claims)."""
from __future__ import annotations

import math

import pytest
import torch

from utils import claims, kernels, ntk, two_layer
from utils import ntk_kernels as nk


def unit_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ntk.unit_rows(torch.randn(n, d, generator=g, dtype=torch.float64))


def _du(width: int, dim: int, kappa: float = 1.0, seed: int = 0, dtype=torch.float64) -> dict:
    """Du et al.'s network, one run: W (1, m, d), a (1, m, 1) = +-1/sqrt(m)."""
    return two_layer.init_two_layer(1, dim, width, 1, seed=seed, dtype=dtype, parametrisation="du", kappa=kappa)


def _ntk_by_torch_func(p: dict, X: torch.Tensor) -> torch.Tensor:
    """The NTK with respect to W (the trained layer) by utils.kernels.empirical_ntk in the f(params, x) shape."""
    f = lambda q, x: two_layer.two_layer_forward({**p, **q}, x)[0, :, 0]
    return kernels.empirical_ntk(f, {"W": p["W"]}, X)


def test_h_infinity_is_the_large_width_average_of_the_empirical_ntk():
    X = unit_inputs(8, 6)
    H_inf = ntk.h_infinity(X)
    draws = [_ntk_by_torch_func(_du(20000, 6, kappa=0.5, seed=s), X) for s in range(5)]
    H_mc = torch.stack(draws).mean(0)
    assert (H_mc - H_inf).abs().max() < 1e-2
    assert torch.allclose(torch.diagonal(H_inf), torch.full((8,), 0.5, dtype=torch.float64))


def test_h_infinity_is_positive_definite_on_distinct_unit_inputs():
    X = unit_inputs(30, 5, seed=1)
    X = torch.cat([X, ntk.unit_rows(X[:1] + 1e-2 * X[1:2])])       # a nearly parallel pair
    lam = torch.linalg.eigvalsh(ntk.h_infinity(X))
    assert lam.min() > 0


def test_torch_func_ntk_equals_hand_written_gradient_outer_product():
    X = unit_inputs(5, 4, seed=2)
    p = _du(7, 4, kappa=1.0, seed=3)
    W, a = p["W"][0], p["a"][0, :, 0]
    assert torch.allclose(a.abs(), torch.full((7,), 1 / math.sqrt(7), dtype=torch.float64))
    J = torch.stack([(a * (W @ x > 0))[:, None] * x[None, :] for x in X]).reshape(5, -1)
    by_hand = J @ J.T
    assert torch.allclose(_ntk_by_torch_func(p, X), by_hand, atol=1e-12)
    assert torch.allclose(two_layer.two_layer_ntk(p, X, X)[0], by_hand, atol=1e-12)


def test_kernel_prediction_starts_at_the_initial_outputs_and_follows_the_linear_recursion():
    X = unit_inputs(10, 6, seed=4)
    H = ntk.h_infinity(X)
    y = torch.sign(torch.randn(10, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    u0 = 0.1 * torch.randn(10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    eta = 1.0 / float(torch.linalg.eigvalsh(H)[-1])
    U = ntk.kernel_prediction(H, y, eta, [0, 1, 2], u0)
    assert torch.allclose(U[0] - y, u0 - y, atol=1e-12)                       # the initial gap
    assert torch.allclose(ntk.kernel_prediction(H, y, eta, [0])[0], torch.zeros(10, dtype=torch.float64),
                          atol=1e-12)
    step = torch.eye(10, dtype=torch.float64) - eta * H
    assert torch.allclose(U[2] - y, step @ (U[1] - y), atol=1e-10)
    loss = ntk.kernel_loss_curve(H, y, eta, [0, 2], u0)
    assert torch.allclose(loss, 0.5 * ((U[[0, 2]] - y) ** 2).sum(1), atol=1e-10)


def test_steps_to_fraction_is_the_first_crossing():
    X = unit_inputs(12, 5, seed=7)
    H = ntk.h_infinity(X)
    y = torch.sign(torch.randn(12, generator=torch.Generator().manual_seed(8), dtype=torch.float64))
    eta = 1.0 / float(torch.linalg.eigvalsh(H)[-1])
    t = ntk.steps_to_fraction(H, y, eta, 0.01)
    loss = ntk.kernel_loss_curve(H, y, eta, [0, t - 1, t])
    assert loss[2] <= 0.01 * loss[0] < loss[1]


def test_complexity_measure_and_projections():
    X = unit_inputs(15, 6, seed=9)
    H = ntk.h_infinity(X)
    y = torch.sign(torch.randn(15, generator=torch.Generator().manual_seed(10), dtype=torch.float64))
    direct = math.sqrt(2 * float(y @ torch.linalg.solve(H, y)) / 15)
    assert ntk.complexity_measure(H, y) == pytest.approx(direct, rel=1e-9)
    proj = ntk.label_projections(H, y)
    assert proj["cumulative"][-1] == pytest.approx(1.0)
    assert (proj["eigenvalues"][:-1] >= proj["eigenvalues"][1:]).all()


def test_closed_form_gradient_descent_matches_autograd():
    X = unit_inputs(12, 5, seed=11).float()
    y = torch.sign(torch.randn(12, generator=torch.Generator().manual_seed(12)))
    eta, widths = 0.05, (3, 40)
    out = ntk.train_widths(X, y[None], widths, steps=2, eta=eta, kappa=1.0, seed=0, X_test=X, kernel_points=12)
    for k, m in enumerate(widths):
        p = _du(m, 5, 1.0, seed=k, dtype=torch.float32)
        W, forward = p["W"], (lambda W_: two_layer.two_layer_forward({**p, "W": W_}, X)[0, :, 0])
        W0 = W.clone()
        losses = []
        for _ in range(3):
            W.requires_grad_(True)
            loss = 0.5 * ((forward(W) - y) ** 2).sum()
            losses.append(float(loss.detach()))
            (grad,) = torch.autograd.grad(loss, W)
            W = (W - eta * grad).detach()
        assert torch.allclose(out["loss"][:, k].float(), torch.tensor(losses), rtol=1e-5)
        W2 = W + eta * grad                                   # undo the third step: W after two steps
        rwc = float((W2 - W0).norm() / W0.norm())
        assert out["relative_weight_change"][k] == pytest.approx(rwc, rel=1e-4)
        assert torch.allclose(out["f_test"][k].float(), forward(W2), atol=1e-5)


def test_relative_weight_change_falls_like_inverse_square_root_of_width():
    X = unit_inputs(20, 10, seed=13).float()
    y = torch.sign(torch.randn(20, generator=torch.Generator().manual_seed(14)))
    H = ntk.h_infinity(X)
    eta = 1.0 / float(torch.linalg.eigvalsh(H)[-1])
    widths = (200, 800, 3200)
    out = ntk.train_widths(X, y[None], widths, steps=30, eta=eta, kappa=1.0, seed=0, kernel_points=20)
    slope, _ = ntk.fit_power_law(widths, out["relative_weight_change"].tolist())
    assert -0.65 < slope < -0.35
    assert out["kernel_change"][0] > out["kernel_change"][-1]


def test_random_labels_are_balanced_within_each_class_and_seeded():
    y = torch.tensor([1.0] * 10 + [-1.0] * 7)
    r = ntk.random_labels(y, seed=3)
    assert set(r.tolist()) == {-1.0, 1.0}
    assert r[:10].sum() == 0 and abs(float(r[10:].sum())) == 1
    assert torch.equal(r, ntk.random_labels(y, seed=3))
    assert not torch.equal(r, ntk.random_labels(y, seed=4))


def test_bad_inputs_raise():
    X = unit_inputs(4, 3)
    with pytest.raises(ValueError, match="width"):
        two_layer.init_two_layer(1, 3, 0, parametrisation="du")
    with pytest.raises(ValueError, match="kappa"):
        two_layer.init_two_layer(1, 3, 5, parametrisation="du", kappa=0.0)
    with pytest.raises(ValueError, match="width"):
        ntk.train_widths(X, torch.ones(1, 4), [0], steps=1, eta=0.1)
    with pytest.raises(ValueError, match="unit-norm"):
        ntk.h_infinity(2 * X)
    with pytest.raises(ValueError, match="unit-norm"):
        ntk.train_widths(2 * X, torch.ones(1, 4), [5], steps=1, eta=0.1)
    with pytest.raises(ValueError, match="fraction"):
        ntk.steps_to_fraction(ntk.h_infinity(X), torch.ones(4), 0.1, fraction=1.5)
    with pytest.raises(ValueError, match="positive definite"):
        ntk.complexity_measure(ntk.h_infinity(torch.cat([X, X[:1]])), torch.ones(5))


def test_corrupt_labels_are_nested_and_end_at_random_labels():
    y = torch.tensor([1.0] * 50 + [-1.0] * 50)
    assert torch.equal(nk.corrupt_labels(y, 0.0, seed=2), y)
    assert torch.equal(nk.corrupt_labels(y, 1.0, seed=2), nk.random_labels(y, seed=2))
    low, high = nk.corrupt_labels(y, 0.3, seed=2), nk.corrupt_labels(y, 0.6, seed=2)
    assert ((low != y) <= (high != y)).all()              # flipped at 30 % stays flipped at 60 %
    assert 0.05 < float((high != y).float().mean()) < 0.6
    with pytest.raises(ValueError, match="fraction"):
        nk.corrupt_labels(y, 1.5)


def test_config_profiles_and_memory():
    with pytest.raises(ValueError, match="quick"):
        ntk.Config.for_profile("huge")
    quick, full = ntk.Config.for_profile("quick"), ntk.Config.for_profile("full")
    assert full.peak_memory_bytes() <= 12 * 2**30
    assert max(full.widths) == full.long_width                 # the widest network is trained to zero loss
    assert ntk.Config.for_profile("paper", smoke=True).profile == "paper"
    assert quick.expected_seconds() <= 90


def _runs(true_complexity=1.24, random_complexity=5.7, true_steps=1000, random_steps=6000, slope=-0.5):
    rows = [{"labels": "true", "complexity": true_complexity, "steps_to_1pct": true_steps, "width": 10},
            {"labels": "random", "complexity": random_complexity, "steps_to_1pct": random_steps, "width": 10}]
    return {"runs": rows, "weight_change_slope": {"true": slope, "random": slope}}


def test_claim_lazy_both_verdicts():
    c = claims.get("ntk.lazy")
    assert c.holds(c.check(_runs(slope=-0.48)))
    assert not c.holds(c.check(_runs(slope=-0.2)))


def test_claim_labels_both_verdicts():
    c = claims.get("ntk.labels")
    good = {**_runs(), "corruption": {"complexity": [1.2, 2.0, 3.5, 5.7], "steps_to_1pct": [1000, 2000, 4000, 6000]}}
    assert c.holds(c.check(good))
    not_monotone = {**good, "corruption": {"complexity": [1.2, 2.0, 1.9, 5.7], "steps_to_1pct": [1000, 2000, 4000, 6000]}}
    assert not c.holds(c.check(not_monotone))                 # a 5 % dip is more than noise
    saturated = {**good, "corruption": {"complexity": [1.2, 2.0, 5.76, 5.74], "steps_to_1pct": [1000, 2000, 6480, 6390]}}
    assert c.holds(c.check(saturated))                          # dips of 0.3 % and 1.4 %: within the stated 2 %
    too_close = {**_runs(random_complexity=2.0), "corruption": good["corruption"]}
    assert not c.holds(c.check(too_close))


def test_claim_vacuous_both_verdicts():
    c = claims.get("ntk.vacuous")
    assert c.holds(c.check(_runs(true_complexity=1.24)))
    assert not c.holds(c.check(_runs(true_complexity=0.3)))


def test_claim_gap_both_verdicts():
    c = claims.get("ntk.gap")
    errors = lambda v, g: {"cntk": {"errors": {"random": {"vanilla": v, "gap": g}, "centre": {"vanilla": .2, "gap": .2}}}}
    assert c.holds(c.check(errors(0.59, 0.23)))
    assert not c.holds(c.check(errors(0.25, 0.23)))


def test_claim_zero_loss_both_verdicts():
    c = claims.get("ntk.zero_loss")
    long = lambda f, net: {"long_run": {"final_loss_fraction": f, "steps_to_1pct_network": net,
                                        "steps": [0, 10, 100, 841], "kernel_loss_fraction": [1, .2, .05, .009]}}
    m = c.check(long(0.004, 1259))
    assert c.holds(m) and m["kernel_steps_to_1pct"] == 841 and m["network_steps_to_1pct"] == 1259
    assert not c.holds(c.check(long(0.085, None)))
