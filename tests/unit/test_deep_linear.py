"""Tests for utils.deep_linear: deep matrix factorization and the nuclear-norm baseline."""
from __future__ import annotations

import pytest
import torch

from utils.deep_linear import (effective_rank, end_to_end, half_height_steps, hessian_bound, init_factors,
                               low_rank_ground_truth, nuclear_norm_completion, observation_mask, test_error,
                               train_deep_factorization)

# pytest would otherwise try to collect the imported metric as a test
test_error.__test__ = False


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
    assert test_error(run.product, target, mask).item() == pytest.approx(1.0, abs=1e-12)


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
    assert test_error(run.product, targets, masks).item() < 0.05
    steps = half_height_steps(run.singular_values, run.record_steps, top=2)
    assert steps.shape == (1, 2) and steps[0, 0] <= steps[0, 1]


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
