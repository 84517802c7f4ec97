"""Tests for utils.representation: few-shot learning via a learned linear representation."""
from __future__ import annotations

import math

import pytest
import torch

from utils import claims
from utils import representation
from utils import representation_math as rep


def _lstsq(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(A, b.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)


# ----------------------------------------------------------------------------- task generator
def test_make_tasks_shapes_and_structure():
    tasks = rep.make_tasks(d=12, k=3, num_tasks=7, n_per_task=4, diverse=False, noise=0.0, seeds=[0, 1])
    assert tasks.B_true.shape == (2, 12, 3) and tasks.X.shape == (2, 7, 4, 12) and tasks.y.shape == (2, 7, 4)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(tasks.B_true.transpose(1, 2) @ tasks.B_true, eye.expand(2, 3, 3), atol=1e-12)
    # non-diverse: every head is +-e_1, the target head is a unit vector orthogonal to e_1
    assert torch.equal(tasks.theta[..., 1:], torch.zeros_like(tasks.theta[..., 1:]))
    assert torch.equal(tasks.theta[..., 0].abs(), torch.ones_like(tasks.theta[..., 0]))
    assert torch.allclose(tasks.theta_target[:, 0], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(tasks.theta_target.norm(dim=1), torch.ones(2, dtype=torch.float64))
    # noiseless labels are exactly the model's
    w = torch.einsum("sdk,stk->std", tasks.B_true, tasks.theta)
    assert torch.allclose(tasks.y, (tasks.X @ w.unsqueeze(-1)).squeeze(-1), atol=1e-12)


def test_make_tasks_seed_does_not_depend_on_batch():
    both = rep.make_tasks(10, 2, 3, 5, True, 0.3, seeds=[4, 9])
    alone = rep.make_tasks(10, 2, 3, 5, True, 0.3, seeds=[9])
    assert torch.equal(both.X[1], alone.X[0]) and torch.equal(both.y[1], alone.y[0])
    assert torch.equal(both.theta_target[1], alone.theta_target[0])


# ----------------------------------------------------------------------------- exact identities
def test_fit_heads_matches_per_task_lstsq():
    tasks = rep.make_tasks(8, 3, 4, 6, True, 0.5, seeds=[0])
    B = torch.linalg.qr(torch.randn(1, 8, 3, dtype=torch.float64)).Q
    heads = rep.fit_heads(tasks.X, tasks.y, B)
    for t in range(4):
        expected = _lstsq(tasks.X[0, t] @ B[0], tasks.y[0, t])
        assert torch.allclose(heads[0, t], expected, atol=1e-10)


def test_representation_step_matches_kronecker_least_squares():
    """The B-step equals least squares over vec(B) with rows theta_t kron x_ti (B[i, a] <-> i*k + a)."""
    d, k, T, n = 6, 2, 5, 4
    tasks = rep.make_tasks(d, k, T, n, True, 0.5, seeds=[3])
    theta = torch.randn(1, T, k, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    X, y = tasks.X, tasks.y
    G = X.transpose(-1, -2) @ X
    r = torch.einsum("stnd,stn->std", X, y)
    B = rep.fit_representation_step(G, r, theta, jitter=0.0)
    Z = torch.einsum("tni,ta->tnia", X[0], theta[0]).reshape(T * n, d * k)
    expected = _lstsq(Z, y[0].reshape(-1)).reshape(d, k)
    assert torch.allclose(B[0], expected, atol=1e-9)


def test_als_objective_never_increases():
    tasks = rep.make_tasks(20, 3, 15, 6, True, 0.5, seeds=[0, 1])
    learned = rep.learn_representation(tasks.X, tasks.y, 3, max_iter=15, rtol=0.0, subspace_tol=0.0)
    obj = torch.tensor(learned.objective)
    assert obj.shape == (2, 16)
    assert bool((obj[:, 1:] <= obj[:, :-1] * (1 + 1e-12)).all())


def test_batched_als_matches_single_seed_runs():
    tasks = rep.make_tasks(15, 2, 10, 8, True, 0.2, seeds=[0, 1, 2])
    batched = rep.learn_representation(tasks.X, tasks.y, 2, max_iter=10, rtol=0.0, subspace_tol=0.0)
    for s in range(3):
        single = rep.learn_representation(tasks.X[s:s + 1], tasks.y[s:s + 1], 2, max_iter=10,
                                          rtol=0.0, subspace_tol=0.0)
        P_b = batched.B[s] @ batched.B[s].T
        P_s = single.B[0] @ single.B[0].T
        assert torch.allclose(P_b, P_s, atol=1e-10)


def test_noiseless_sources_recover_true_subspace():
    """With T*n1 large and noiseless diverse sources, the learned B spans B* (angles < 1e-3)."""
    tasks = rep.make_tasks(d=40, k=4, num_tasks=40, n_per_task=30, diverse=True, noise=0.0, seeds=[0, 1, 2])
    learned = rep.learn_representation(tasks.X, tasks.y, 4)
    angles = rep.principal_angles(learned.B, tasks.B_true)
    assert float(angles.max()) < 1e-3
    assert all(learned.converged)


def test_target_fits_are_exact_without_noise():
    tasks = rep.make_tasks(10, 3, 2, 2, True, 0.0, seeds=[0, 1])
    w = tasks.w_target
    X, y = rep.sample_target(w, 15, noise=0.0, seeds=[5, 6])          # n2 >= d: OLS is exact
    assert float(rep.excess_risk(rep.fit_target_only(X, y), w).max()) < 1e-20
    X, y = rep.sample_target(w, 3, noise=0.0, seeds=[5, 6])           # n2 = k: exact in B*
    assert float(rep.excess_risk(rep.fit_in_representation(tasks.B_true, X, y), w).max()) < 1e-20


def test_min_norm_target_only_is_projection_onto_row_space():
    """For n2 < d and no noise, X^+ y = P_row(X) w*, so the excess risk is ||(I - P_row) w*||^2."""
    tasks = rep.make_tasks(10, 3, 2, 2, True, 0.0, seeds=[0])
    w = tasks.w_target
    X, y = rep.sample_target(w, 4, noise=0.0, seeds=[2])
    Q = torch.linalg.qr(X[0].T).Q
    residual = w[0] - Q @ (Q.T @ w[0])
    assert math.isclose(float(rep.excess_risk(rep.fit_target_only(X, y), w)[0]), float(residual @ residual),
                        rel_tol=1e-10)


def test_principal_angles_known_values():
    e = torch.eye(4, dtype=torch.float64)
    phi = 1e-7
    A = e[:, :2]
    B = torch.stack([e[:, 0] * math.cos(phi) + e[:, 2] * math.sin(phi), e[:, 3]], dim=1)
    angles = rep.principal_angles(A, B)
    assert torch.allclose(angles, torch.tensor([phi, math.pi / 2], dtype=torch.float64), rtol=1e-8, atol=1e-15)
    R = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64)).Q              # same span, other basis
    assert float(rep.principal_angles(A, A @ R).max()) < 1e-12
    assert torch.allclose(rep.principal_angles(e[:, :1], e[:, 1:3]), torch.tensor([math.pi / 2], dtype=torch.float64))


def test_smoke_run_rows_and_round_trip():
    cfg = representation.Config.for_profile("quick", smoke=True)
    res = representation.run(cfg, torch.device("cpu"), progress=False)
    out = res.to_json()
    assert representation.Result.from_json(out).to_json() == out
    assert len(out["runs"]) == 2 * 2 * len(cfg.n_targets) * cfg.seeds
    for row in out["runs"]:
        assert {"method", "diverse", "n_target", "seed", "excess_risk"} <= set(row)
    assert {r["sweep"] for r in out["rate"]} == {"n1", "T"}
    assert len(out["rate"]) == (len(cfg.n1_values) + len(cfg.task_values)) * cfg.seeds


def test_balanced_heads_are_exactly_well_conditioned():
    tasks = rep.make_tasks(10, 3, 12, 4, True, 0.1, seeds=[0, 1], balanced=True)
    gram = tasks.theta.transpose(1, 2) @ tasks.theta
    assert torch.allclose(gram, 4.0 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-10)
    with pytest.raises(ValueError, match="balanced"):
        rep.make_tasks(10, 3, 2, 4, True, 0.1, seeds=[0], balanced=True)


def test_representation_error_matches_the_first_order_prediction():
    """Mean sin^2 of the principal angles ~ sigma^2 k (d-k)/(n1 T) for balanced heads (within 2x)."""
    d, k, T, n1, sigma = 30, 3, 12, 100, 0.5
    tasks = rep.make_tasks(d, k, T, n1, True, sigma, seeds=[0, 1, 2, 3], balanced=True)
    learned = rep.learn_representation(tasks.X, tasks.y, k)
    sin2 = (torch.sin(rep.principal_angles(learned.B, tasks.B_true)) ** 2).mean(-1)
    ratio = float(sin2.median()) / representation.predicted_error(sigma, d, k, n1, T)
    assert 0.5 < ratio < 2.0


# ----------------------------------------------------------------------------- claims: both verdicts
def _fake(adv_div=(1.0, 0.1), adv_non=(1.0, 1.25), n1_err=(0.1, 0.05, 0.025), T_err=(0.02, 0.021, 0.022)):
    runs = []
    for diverse, (alone, learned) in ((True, adv_div), (False, adv_non)):
        runs += [{"method": "target_only", "diverse": diverse, "n_target": 20, "seed": 0, "excess_risk": alone},
                 {"method": "learned_representation", "diverse": diverse, "n_target": 20, "seed": 0,
                  "excess_risk": learned}]
    rate = [{"sweep": "n1", "T": 10, "n1": 100 * 2 ** i, "seed": 0, "sin2": e, "predicted": 0.1 / 2 ** i}
            for i, e in enumerate(n1_err)]
    rate += [{"sweep": "T", "T": 10 * 2 ** i, "n1": 400 // 2 ** i, "seed": 0, "sin2": e, "predicted": 0.02}
             for i, e in enumerate(T_err)]
    return {"runs": runs, "rate": rate}


def test_claim_rep_diversity_both_verdicts():
    c = claims.get("rep.diversity")
    assert c.holds(c.check(_fake()))
    assert not c.holds(c.check(_fake(adv_div=(1.0, 0.3))))     # only 3.3x with diverse sources
    assert not c.holds(c.check(_fake(adv_non=(1.0, 0.4))))     # non-diverse sources help 2.5x
    assert not c.holds(c.check(_fake(adv_non=(1.0, 0.8))))     # help 1.25x: they do not hurt the target


def test_claim_rep_bypass_both_verdicts():
    c = claims.get("rep.bypass")
    measured = c.check(_fake())
    assert c.holds(measured) and measured["slope"] == pytest.approx(-1.0)
    assert not c.holds(c.check(_fake(n1_err=(0.1, 0.09, 0.085))))   # a floor: slope ~ -0.1


def test_claim_rep_pooling_both_verdicts():
    c = claims.get("rep.pooling")
    assert c.holds(c.check(_fake()))
    assert not c.holds(c.check(_fake(T_err=(0.02, 0.04, 0.08))))     # error grows with T at fixed n1 T


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(d=5, k=6), "k=6 must not exceed"),
    (dict(k=0), "at least 1"),
    (dict(num_tasks=0), "num_tasks"),
    (dict(n_per_task=0), "n1"),
    (dict(noise=-0.1), "noise"),
    (dict(k=1, diverse=False), "non-diverse"),
    (dict(seeds=[]), "seed"),
])
def test_make_tasks_bad_input(kwargs, match):
    args = dict(d=10, k=2, num_tasks=3, n_per_task=4, diverse=True, noise=0.1, seeds=[0]) | kwargs
    with pytest.raises(ValueError, match=match):
        rep.make_tasks(**args)


def test_other_bad_input():
    w = torch.zeros(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="n2"):
        rep.sample_target(w, 0, 0.1, seeds=[0, 1])
    with pytest.raises(ValueError, match="one seed per"):
        rep.sample_target(w, 3, 0.1, seeds=[0])
    X = torch.zeros(1, 2, 3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="must not exceed"):
        rep.learn_representation(X, torch.zeros(1, 2, 3, dtype=torch.float64), k=6)
    with pytest.raises(ValueError, match="expected X"):
        rep.learn_representation(X, torch.zeros(1, 2, 4, dtype=torch.float64), k=2)
    with pytest.raises(ValueError, match="different dimensions"):
        rep.principal_angles(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="quick"):
        representation.Config.for_profile("huge")
    with pytest.raises(ValueError, match="sweep"):
        representation.rate_summary({"rate": []}, "n2")
