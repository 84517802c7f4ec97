"""Tests for utils.deep_linear: deep matrix factorization and the nuclear-norm baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils import claims
from utils import deep_linear as dl
from utils import deep_linear_math as dl_math
from utils.deep_linear_gd import end_to_end, hessian_bound, train_deep_factorization
from utils.deep_linear_math import (effective_rank, half_height_times, init_factors, low_rank_ground_truth,
                                    nuclear_norm_completion, observation_mask, reconstruction_error)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_effective_rank_of_equal_singular_values_is_the_rank(rank: int) -> None:
    gen = torch.Generator().manual_seed(rank)
    Q1, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    W = 3.0 * Q1[:, :rank] @ Q2[:, :rank].T
    assert effective_rank(W).item() == pytest.approx(rank, abs=1e-8)
    batch = torch.stack([W, 2 * W])
    assert torch.allclose(effective_rank(batch), torch.full((2,), float(rank), dtype=torch.float64), atol=1e-8)


def test_ground_truth_and_mask() -> None:
    W = low_rank_ground_truth(30, 4, seed=1)
    assert torch.linalg.matrix_rank(W).item() == 4
    assert torch.linalg.matrix_norm(W).item() == pytest.approx(1.0, abs=1e-12)
    M = observation_mask(30, 200, seed=2)
    assert M.sum().item() == 200 and set(M.unique().tolist()) <= {0.0, 1.0}


def test_depth_one_from_zero_leaves_unobserved_entries_at_zero() -> None:
    target = low_rank_ground_truth(15, 2, seed=0)[None]
    mask = observation_mask(15, 90, seed=0)[None]
    run = train_deep_factorization(target, mask, depth=1, init_scale=0.0, init_seeds=[0], max_steps=500)
    assert torch.all(run.product[(1 - mask).bool()] == 0)
    assert run.losses[0, -1].item() < 1e-6
    assert reconstruction_error(run.product, target, mask).item() == pytest.approx(1.0, abs=1e-12)


def test_batched_trainer_matches_unbatched_loop() -> None:
    n, depth = 12, 3
    observed = [60, 90, 120]
    targets = torch.stack([low_rank_ground_truth(n, 1, seed=s) for s in range(3)])
    masks = torch.stack([observation_mask(n, m, seed=s) for s, m in enumerate(observed)])
    seeds = [5, 6, 7]
    kwargs = dict(depth=depth, init_scale=0.01, step_fraction=0.25, max_steps=300, tol=1e-3, record_every=7)
    batched = train_deep_factorization(targets, masks, init_seeds=seeds, **kwargs)
    assert len(set(batched.steps_taken.tolist())) > 1          # runs leave the batch at different steps
    for b in range(3):
        single = train_deep_factorization(targets[b:b + 1], masks[b:b + 1], init_seeds=seeds[b:b + 1], **kwargs)
        assert torch.allclose(batched.product[b], single.product[0], atol=1e-10, rtol=0)
        assert torch.allclose(batched.losses[b, :single.losses.shape[1]], single.losses[0], atol=1e-10, rtol=0)
        assert torch.allclose(batched.record_times[b, :single.record_times.shape[1]], single.record_times[0],
                              atol=1e-10, rtol=0)
        assert batched.steps_taken[b].item() == single.steps_taken[0].item()


def test_hessian_bound_bounds_the_true_hessian() -> None:
    n, depth = 4, 3
    target = low_rank_ground_truth(n, 1, seed=3)
    mask = observation_mask(n, 10, seed=3)
    curvature = 1.0 / torch.linalg.matrix_norm(mask * target) ** 2
    factors = [W[0] for W in init_factors(depth, n, 0.7, [11])]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        Ws = list(flat.reshape(depth, n, n))
        return 0.5 * curvature * (mask * (end_to_end(Ws) - target)).pow(2).sum()

    flat = torch.stack(factors).reshape(-1)
    true_norm = torch.linalg.matrix_norm(torch.autograd.functional.hessian(loss, flat), ord=2)
    grad_e2e = curvature * mask * (end_to_end(factors) - target)
    norms = torch.stack([torch.linalg.matrix_norm(W, ord=2) for W in factors]).unsqueeze(-1)
    gn, res = hessian_bound(norms, torch.linalg.matrix_norm(grad_e2e, ord=2)[None], curvature[None])
    assert true_norm.item() <= (gn + res).item()


def test_gradient_descent_reaches_small_loss_and_low_rank() -> None:
    targets = low_rank_ground_truth(20, 2, seed=0)[None]
    masks = observation_mask(20, 250, seed=0)[None]
    run = train_deep_factorization(targets, masks, depth=3, init_scale=1e-2, init_seeds=[0], max_steps=3000)
    assert run.losses[0, -1].item() < 1e-6
    assert effective_rank(run.product).item() < 2.5
    assert reconstruction_error(run.product, targets, masks).item() < 0.05
    steps = half_height_times(run.singular_values, run.record_steps.double(), top=2)
    assert steps.shape == (1, 2) and steps[0, 0] <= steps[0, 1]
    times = half_height_times(run.singular_values, run.record_times, top=2)
    assert times.shape == (1, 2) and 0 < times[0, 0] <= times[0, 1] <= run.record_times[0, -1]


def test_nuclear_norm_reproduces_a_fully_observed_matrix() -> None:
    target = low_rank_ground_truth(8, 2, seed=4)
    solution = nuclear_norm_completion(target, torch.ones(8, 8), solver="SCS", eps=1e-8)
    assert torch.allclose(torch.as_tensor(solution), target, atol=1e-5)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="observed"):
        observation_mask(10, 101)
    with pytest.raises(ValueError, match="rank"):
        low_rank_ground_truth(5, 6)
    with pytest.raises(ValueError, match="depth"):
        init_factors(0, 5, 0.1, [0])
    target = low_rank_ground_truth(5, 1)[None]
    mask = observation_mask(5, 10)[None]
    with pytest.raises(ValueError, match="depth"):
        train_deep_factorization(target, mask, depth=0, init_scale=0.1, init_seeds=[0])
    with pytest.raises(ValueError, match="masks"):
        train_deep_factorization(target, mask[:, :4], depth=2, init_scale=0.1, init_seeds=[0])
    with pytest.raises(ValueError, match="zero matrix"):
        effective_rank(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="same 2-D shape"):
        nuclear_norm_completion(torch.zeros(3, 3), torch.ones(3, 4))


def test_half_height_times_interpolates_between_records() -> None:
    sv = torch.tensor([[[0.0, 0.0], [1.0, 0.2], [2.0, 1.0], [2.0, 2.0]]], dtype=torch.float64)  # (1, T=4, k=2)
    clock = torch.tensor([0.0, 10.0, 20.0, 30.0], dtype=torch.float64)
    # value 0 reaches half of 2 (= 1) at t = 10 exactly; value 1 crosses 1 at t = 20
    assert torch.allclose(half_height_times(sv, clock, top=2), torch.tensor([[10.0, 20.0]], dtype=torch.float64))
    sv2 = torch.tensor([[[0.0], [4.0]]], dtype=torch.float64)
    assert torch.allclose(half_height_times(sv2, torch.tensor([0.0, 8.0]), top=1), torch.tensor([[4.0]],
                                                                                                 dtype=torch.float64))
    with pytest.raises(ValueError, match="records"):
        half_height_times(sv, clock[:3])


def test_per_run_scales_equal_runs_drawn_one_by_one() -> None:
    both = init_factors(2, 5, [0.1, 1e-3], [3, 4])
    alone = init_factors(2, 5, 1e-3, [4])
    assert torch.allclose(both[1][1], alone[1][0], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="one per run"):
        init_factors(2, 5, [0.1], [3, 4])


def test_smaller_start_lowers_depth_two_error() -> None:
    """The phenomenon at toy size: depth 2 from a smaller start completes a low-rank matrix better."""
    n = 20
    target = low_rank_ground_truth(n, 1, seed=2)[None].repeat(2, 1, 1)
    mask = observation_mask(n, 90, seed=2)[None].repeat(2, 1, 1)
    run = train_deep_factorization(target, mask, depth=2, init_scale=[0.3, 1e-4], init_seeds=[0, 0],
                                   max_steps=4000, tol=1e-7)
    err = reconstruction_error(run.product, target, mask)
    assert err[1] < 0.5 * err[0]


# ------------------------------------------------------------------ claims: both verdicts
def _fake(depth_err: dict, nn_err: float = 0.3, nn_norm: float = 1.0, gd_norm: float = 1.05,
          halves: dict | None = None) -> dict:
    """A results dict with one seed: ``depth_err[(depth, scale)] -> error``."""
    halves = halves or {}
    runs = [{"depth": d, "observed": 2000, "scale": s, "seed": 0, "reconstruction_error": e,
             "nuclear_norm": gd_norm, "half_times": halves.get(d, [1.0, 1.0, 1.0, 1.0, 1.0]),
             "half_steps": [1, 1, 1, 1, 1]} for (d, s), e in depth_err.items()]
    return {"config": {"observed": [2000], "scales": [1e-3, 1e-8], "default_scale": 1e-3},
            "runs": runs, "nuclear": [{"observed": 2000, "seed": 0, "reconstruction_error": nn_err,
                                       "nuclear_norm": nn_norm}]}


def _grid(err2=(0.4, 0.01), err3=(0.01, 0.004), err4=(0.01, 0.004), err1=(1.0, 1.0)):
    out = {}
    for d, errs in ((1, err1), (2, err2), (3, err3), (4, err4)):
        out.update({(d, 1e-3): errs[0], (d, 1e-8): errs[1]})
    return out


def test_claim_dl_depth_both_verdicts() -> None:
    c = claims.get("dl.depth")
    assert c.holds(c.check(_fake(_grid())))
    assert not c.holds(c.check(_fake(_grid(err3=(0.05, 0.004)))))
    assert not c.holds(c.check(_fake(_grid(), nn_err=0.01)))


def test_claim_dl_scale_both_verdicts() -> None:
    c = claims.get("dl.scale")
    assert c.holds(c.check(_fake(_grid())))
    assert not c.holds(c.check(_fake(_grid(err2=(0.04, 0.01)))))          # falls only 4x
    assert not c.holds(c.check(_fake(_grid(err3=(0.5, 0.004)))))          # depth 3 worse than depth 2


def test_claim_dl_not_nuclear_both_verdicts() -> None:
    c = claims.get("dl.not_nuclear")
    assert c.holds(c.check(_fake(_grid(), nn_err=0.3, gd_norm=1.05)))
    assert not c.holds(c.check(_fake(_grid(), nn_err=0.3, gd_norm=0.99)))  # not above the minimum
    assert not c.holds(c.check(_fake(_grid(), nn_err=0.02)))               # only 5x better


def test_claim_dl_nuclear_trend_both_verdicts() -> None:
    c = claims.get("dl.nuclear_trend")
    assert not c.expected and c.reason

    def trend(norm_largest: float, norm_smallest: float) -> dict:
        res = _fake(_grid())
        for r in res["runs"]:
            r["nuclear_norm"] = norm_largest if r["scale"] == 1e-3 else norm_smallest
        return res

    assert c.holds(c.check(trend(1.02, 1.10)))                      # excess grows 5x: moves away
    assert not c.holds(c.check(trend(1.017, 1.018)))                # flat a little above the minimum
    assert c.check(trend(1.02, 1.10))["excess_growth"] == pytest.approx(5.0)


def test_claim_dl_incremental_both_verdicts() -> None:
    c = claims.get("dl.incremental")
    spread = [1.0, 1.5, 2.0, 2.5, 3.0]
    assert c.holds(c.check(_fake(_grid(), halves={2: spread, 3: spread, 4: spread})))
    assert not c.holds(c.check(_fake(_grid(), halves={2: [1, 1, 1, 1, 1.1], 3: spread, 4: spread})))
    assert not c.holds(c.check(_fake(_grid(), halves={1: spread, 2: spread, 3: spread, 4: spread})))


def test_config_profiles_and_memory() -> None:
    full = dl.Config.for_profile("full")
    assert full.observed == (2000, 5000) and len(full.scales) == 6 and len(full.seeds) == 5
    assert 0 < full.peak_memory_bytes() < 12 * 2**30
    with pytest.raises(ValueError, match="quick"):
        dl.Config.for_profile("huge")


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_factor_scale_gives_the_end_to_end_scale(depth: int) -> None:
    n, scale = 60, 1e-4
    factors = init_factors(depth, n, dl_math.factor_scale(scale, depth, n), [0, 1, 2, 3])
    fro = torch.linalg.matrix_norm(end_to_end(factors))
    assert 0.7 < float(fro.mean()) / (scale / n ** 0.5) < 1.3
    with pytest.raises(ValueError, match="scale"):
        dl_math.factor_scale(-1.0, depth, n)


def test_figures_keep_the_legend_off_the_panels_and_zoom_on_the_rises() -> None:
    """The sweep's legend sits below the panels (not on the dashed nuclear-norm line); a trajectory
    panel ends at three times the latest half-height time, or at the end of training if sooner."""
    import matplotlib.pyplot as plt
    times = np.linspace(0.0, 100.0, 11)
    sv = np.minimum(1.0, np.exp(times[:, None] - np.arange(10.0)[None] * 3 - 5)).tolist()
    runs = [{"depth": d, "observed": 2000, "scale": 1e-3, "seed": 0, "reconstruction_error": 0.1 / d,
             "effective_rank": 5.0, "nuclear_norm": 1.1, "final_loss": 1e-7,
             "half_times": [4.0, 5.0, 6.0, 7.0, h], "half_steps": [1, 2, 3, 4, 5]} for d, h in ((1, 10.0), (2, 50.0))]
    res = {"config": {"depths": [1, 2], "observed": [2000], "scales": [1e-3], "seeds": [0], "tol": 1e-6,
                      "trajectory_seed": 0},
           "runs": runs, "nuclear": [{"observed": 2000, "seed": 0, "reconstruction_error": 0.2,
                                      "effective_rank": 8.0, "nuclear_norm": 1.0}],
           "trajectories": {str(d): {"1e-03": {"times": times.tolist(), "singular_values": sv}} for d in (1, 2)}}
    fig = dl.plot_scale_sweep(res, 2000)
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    plt.close(fig)
    fig = dl.plot_trajectories(res, 1e-3)
    assert [ax.get_xlim()[1] for ax in fig.axes if ax.get_visible()] == [pytest.approx(30.0), pytest.approx(100.0)]
