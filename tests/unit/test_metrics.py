"""separation_fuzziness and friends against float64 references."""
import math

import numpy as np
import pytest
import torch

from utils.metrics import (class_means, equi_separation_fit, layerwise_fuzziness, pearson,
                           separation_fuzziness, within_between_trace)


def pinv_fuzziness(H: torch.Tensor, y: torch.Tensor) -> float:
    """Reference: Tr(SS_w pinv(SS_b)) with explicit d x d matrices in float64 numpy."""
    H, y = H.double().numpy(), y.numpy()
    N, K = len(y), y.max() + 1
    mu = H.mean(0)
    ssw = np.zeros((H.shape[1],) * 2)
    ssb = np.zeros_like(ssw)
    for k in range(K):
        Hk = H[y == k]
        mk = Hk.mean(0)
        ssw += (Hk - mk).T @ (Hk - mk) / N
        ssb += len(Hk) / N * np.outer(mk - mu, mk - mu)
    return float(np.trace(ssw @ np.linalg.pinv(ssb, hermitian=True)))


def random_features(sizes, d, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    K = len(sizes)
    means = 3 * torch.randn(K, d, generator=g)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    H = means[y] + spread * torch.randn(len(y), d, generator=g)
    return H, y


@pytest.mark.parametrize("sizes,d", [((30, 5, 60, 12), 200), ((50, 50, 50), 7), ((3, 90), 40)])
def test_matches_pinv_reference_imbalanced_and_d_larger_than_n(sizes, d):
    H, y = random_features(sizes, d)
    ref = pinv_fuzziness(H, y)
    assert separation_fuzziness(H, y) == pytest.approx(ref, rel=1e-6)


def test_invariant_under_rotation_and_scale():
    H, y = random_features((20, 40, 10, 25), 30, seed=1)
    H = H.double()
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    D = separation_fuzziness(H, y)
    assert separation_fuzziness(H @ Q, y) == pytest.approx(D, rel=1e-9)
    assert separation_fuzziness(7.5 * H, y) == pytest.approx(D, rel=1e-9)


def test_two_class_closed_form():
    # Two classes of sizes n1, n2 in 1-D with means +-a and within-class variances s1, s2:
    # SS_b = (n1 n2 / N^2) (2a)^2, SS_w = (n1 s1 + n2 s2)/N, so D = SS_w / SS_b.
    n1, n2, a = 4, 6, 1.5
    h1 = torch.tensor([a - 1, a + 1, a - 0.5, a + 0.5], dtype=torch.float64)
    h2 = torch.tensor([-a - 2, -a + 2, -a, -a, -a - 1, -a + 1], dtype=torch.float64)
    s1, s2 = (h1 - a).pow(2).mean(), (h2 + a).pow(2).mean()
    N = n1 + n2
    expected = ((n1 * s1 + n2 * s2) / N) / (n1 * n2 / N**2 * (2 * a) ** 2)
    H = torch.cat([h1, h2])[:, None]
    y = torch.tensor([0] * n1 + [1] * n2)
    assert separation_fuzziness(H, y) == pytest.approx(float(expected), rel=1e-12)


def test_collapsed_features_have_zero_fuzziness():
    means = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4).repeat_interleave(5)
    assert separation_fuzziness(means[y], y) == pytest.approx(0.0, abs=1e-12)


def test_uniform_weighting_equals_size_weighting_when_balanced():
    H, y = random_features((25, 25, 25), 12)
    assert within_between_trace(H, y, weighting="uniform") == pytest.approx(separation_fuzziness(H, y), rel=1e-10)


def test_bad_inputs_raise():
    H, y = random_features((5, 5), 3)
    with pytest.raises(ValueError, match="expected H"):
        separation_fuzziness(H[:, 0], y)
    with pytest.raises(ValueError, match="no examples"):
        class_means(H, y, num_classes=3)
    with pytest.raises(ValueError, match="two classes"):
        separation_fuzziness(H, torch.zeros_like(y))
    with pytest.raises(ValueError, match="weighting"):
        within_between_trace(H, y, weighting="bogus")
    with pytest.raises(ValueError, match="positive"):
        equi_separation_fit([1.0, -1.0, 0.5])


def test_equi_separation_fit_recovers_geometric_decay():
    D = [5.0 * 0.6**l for l in range(1, 9)]
    fit = equi_separation_fit(D)
    assert fit["pearson"] == pytest.approx(-1.0, abs=1e-12)
    assert fit["rho"] == pytest.approx(0.6, rel=1e-12)
    assert fit["intercept"] == pytest.approx(math.log(5.0), rel=1e-12)


def test_layerwise_and_pearson():
    H, y = random_features((10, 10), 5)
    assert layerwise_fuzziness([H, 2 * H], y) == pytest.approx([separation_fuzziness(H, y)] * 2, rel=1e-9)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_cosine_matrix():
    from utils.metrics import cosine_matrix
    V = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    assert torch.allclose(cosine_matrix(V), torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]], dtype=torch.float64))
    assert torch.isnan(cosine_matrix(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))[0]).all()
