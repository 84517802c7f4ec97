"""Tests for utils.cntk: the exact CNTK recursion, its finite-width limit, pooling as translation
averaging, and the guarded empirical NTK."""
from __future__ import annotations

import math

import pytest
import torch

from utils import cntk


def images(n: int, c: int = 1, s: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_one_pixel_images_by_hand():
    """1x1 images: only the centre of each 3x3 patch is non-zero, so Sigma = x x' / 9 and the
    arc-cosine formulas reduce to cos t = +-1."""
    x = torch.tensor([2.0, 3.0, -1.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    v1, g1 = cntk.cntk_pairs(x, x, depth=1)
    # same sign: K = |x||x'|/9, Kdot = 1, Theta = Sigma -> M = 2 x x' / 9; opposite sign: K = Kdot = 0
    assert v1[0, 1].item() == pytest.approx(2 * 6 / 9)
    assert v1[0, 2].item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(v1, g1)                                    # one pixel: pooling changes nothing
    v2, _ = cntk.cntk_pairs(x, x, depth=2)
    # depth 2: Sigma2 = K1 / 9 = 6/81, Theta2 = 6/81 + 6/81, K2 = 6/81, Kdot2 = 1 -> M = 18/81
    assert v2[0, 1].item() == pytest.approx(18 / 81)


def test_one_channel_two_pixel_images_by_hand():
    """x = [1, 0], x' = [0, 1] (1 x 2 pixels): Sigma = [[0, 1/9], [0, 0]], every variance 1/9."""
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64).reshape(1, 1, 1, 2)
    z = torch.tensor([[0.0, 1.0]], dtype=torch.float64).reshape(1, 1, 1, 2)
    vanilla, gap = cntk.cntk_pairs(x, z, depth=1)
    orthogonal = 1 / (9 * math.pi)                 # cos t = 0: K = sqrt(ab)/pi, Kdot = 1/2, Sigma = 0
    aligned = 1 / 9 + 1 / 9                        # cos t = 1: K = 1/9, Theta Kdot = 1/9
    assert vanilla.item() == pytest.approx(orthogonal)
    assert gap.item() == pytest.approx((3 * orthogonal + aligned) / 4)


def test_relu_arccos_limits_and_zero_variance():
    S = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)
    a = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    K, Kdot = cntk.relu_arccos(S, a, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(K, torch.tensor([1.0, 1 / math.pi, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(Kdot, torch.tensor([1.0, 0.5, 0.0, 0.5], dtype=torch.float64))
    assert torch.isfinite(K).all()


@pytest.mark.parametrize("pooling", ["none", "gap"])
def test_wide_convnet_ntk_converges_to_the_exact_cntk(pooling):
    X = images(3, c=2, s=4, seed=1)
    exact = cntk.cntk_pairs(X, X, depth=2)[0 if pooling == "none" else 1]
    errors = []
    for channels in (4, 128):
        errs = [float((cntk.empirical_ntk(cntk.ConvNet(2, (4, 4), channels, 2, pooling, seed=s).double(), X)
                       - exact).norm() / exact.norm()) for s in range(3)]
        errors.append(sum(errs) / 3)
    assert errors[1] < errors[0] / 2.5          # 32x the channels: about 5.7x smaller at rate C^-1/2
    assert errors[1] < 0.15


def test_gap_kernel_is_the_translation_average_of_the_vanilla_kernel_with_circular_padding():
    X, Z = images(2, s=4, seed=2), images(3, s=4, seed=3)
    _, gap = cntk.cntk_pairs(X, Z, depth=2, padding="circular")
    averaged = cntk.translation_averaged(lambda a, b: cntk.cntk_pairs(a, b, 2, "circular")[0], X, Z)
    assert torch.allclose(gap, averaged, atol=1e-12)
    vanilla, _ = cntk.cntk_pairs(X, Z, depth=2, padding="circular")
    assert not torch.allclose(gap, vanilla, atol=1e-3)


def test_blocked_matrix_equals_one_block_and_is_symmetric():
    X = images(7, s=4, seed=4)
    v, g = cntk.cntk_pairs(X, X, depth=2)
    bv, bg = cntk.cntk_matrix(X, depth=2, memory_budget=cntk.pair_block_bytes(4, 4, 4))   # blocks of 2 x 2
    assert torch.allclose(v, bv, atol=1e-12) and torch.allclose(g, bg, atol=1e-12)
    assert torch.allclose(bg, bg.T, atol=1e-12)
    with pytest.raises(ValueError, match="MiB"):
        cntk.cntk_matrix(X, depth=1, memory_budget=10)


def test_empirical_ntk_of_a_linear_model_is_the_gram_matrix_plus_one():
    lin = torch.nn.Linear(4, 1).double()
    model = torch.nn.Sequential(lin, torch.nn.Flatten(0))
    X = images(5, c=1, s=2, seed=5).reshape(5, 4)
    assert torch.allclose(cntk.empirical_ntk(model, X), X @ X.T + 1, atol=1e-12)


def test_empirical_ntk_chunks_give_the_same_kernel_and_multi_output_shape():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    X = torch.randn(6, 3, dtype=torch.float64)
    whole = cntk.empirical_ntk(model, X)
    chunked = cntk.empirical_ntk(model, X, memory_budget=2 * cntk.ntk_memory_bytes(model, 1, 2))   # one per chunk
    assert whole.shape == (6, 6, 2, 2)
    assert torch.allclose(whole, chunked, atol=1e-12)


def test_empirical_ntk_refuses_batch_dependent_models_with_a_clear_message():
    def net(**bn):
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8, **bn), torch.nn.ReLU(),
                                   torch.nn.Dropout(0.1), torch.nn.Linear(8, 1), torch.nn.Flatten(0))
    X = torch.randn(4, 3)
    with pytest.raises(ValueError, match="eval"):
        cntk.empirical_ntk(net().train(), X)
    with pytest.raises(ValueError, match="running statistics"):
        cntk.empirical_ntk(net(track_running_stats=False).eval(), X)
    dropout_only = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    with pytest.raises(ValueError, match="dropout"):
        cntk.empirical_ntk(dropout_only.train(), X)
    assert cntk.empirical_ntk(net().eval(), X).shape == (4, 4)          # eval mode with running stats works


def test_empirical_ntk_refuses_a_budget_below_one_jacobian_with_the_estimate():
    model = torch.nn.Linear(1000, 10)
    with pytest.raises(ValueError, match=r"MiB.*10 outputs x 10,010 parameters"):
        cntk.empirical_ntk(model, torch.randn(2, 1000), memory_budget=2**10)


def test_place_in_frame_and_bad_arguments():
    X = torch.rand(4, 1, 3, 3)
    centred = cntk.place_in_frame(X, 7, "centre")
    shifted = cntk.place_in_frame(X, 7, "random", seed=1)
    assert centred.shape == shifted.shape == (4, 1, 7, 7)
    assert torch.allclose(centred[:, :, 2:5, 2:5], X)
    assert torch.allclose(shifted.sum((1, 2, 3)), X.sum((1, 2, 3)))
    with pytest.raises(ValueError, match="frame"):
        cntk.place_in_frame(X, 2)
    with pytest.raises(ValueError, match="padding"):
        cntk.cntk_pairs(X.double(), X.double(), 1, padding="reflect")
    with pytest.raises(ValueError, match="depth"):
        cntk.cntk_pairs(X.double(), X.double(), 0)


def test_kernel_regression_interpolates_its_training_set():
    X = images(20, s=3, seed=6)
    y = torch.arange(20) % 4
    v, _ = cntk.cntk_matrix(X, depth=1)
    assert cntk.kernel_regression_error(v, v, y, y, 4) == 0.0
