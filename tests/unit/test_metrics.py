"""separation_fuzziness and friends against float64 references."""
import math

import numpy as np
import pytest
import torch

from utils.metrics import (class_means, equi_separation_fit, layerwise_fuzziness, pearson,
                           separation_fuzziness, within_between_trace)
from utils.neural_collapse import nc1


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
    with pytest.raises(ValueError, match="H must be a 2-D tensor"):
        separation_fuzziness(H[:, 0], y)
    with pytest.raises(ValueError, match="no examples"):
        class_means(H, y, num_classes=3)
    with pytest.raises(ValueError, match="at least 2 classes"):
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


# ----------------------------------------------------------------------------- wide features, few samples


def svd_reference(H: torch.Tensor, y: torch.Tensor, weighting: str = "size") -> float:
    """Tr(Sigma_W Sigma_B^+) in float64 numpy through the thin SVD of the (K, d) matrix
    M = diag(sqrt(pi)) (means - mu), with numpy's rank cut-off max(K, d) * eps * s_max (the null
    direction sqrt(pi) of M falls below it): sum_j ||(H - mu_y) v_j||^2 / (N s_j^2)."""
    Hn, yn = H.double().numpy(), y.numpy()
    N, d = Hn.shape
    K = int(yn.max()) + 1
    counts = np.bincount(yn, minlength=K)
    means = np.stack([Hn[yn == k].mean(0) for k in range(K)])
    pi = counts / N if weighting == "size" else np.full(K, 1.0 / K)
    M = np.sqrt(pi)[:, None] * (means - pi @ means)
    Q, R = np.linalg.qr(M.T)                       # thin SVD of the wide M through M^T = Q R (fast for d >> K)
    _, s, Wt = np.linalg.svd(R.T)
    Vt = Wt @ Q.T
    keep = s > max(K, d) * np.finfo(np.float64).eps * s[0]
    proj = (Hn - means[yn]) @ Vt[keep].T
    return float(((proj ** 2).sum(0) / s[keep] ** 2).sum() / N)


def test_wide_short_example_from_the_report():
    # 20 samples in 200,000 dimensions: the K x K Gram's null direction used to pass the cut-off (-7e8).
    H = torch.randn(20, 200_000, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4).repeat_interleave(5)
    value = nc1(H, y)
    assert value == pytest.approx(3.73e-5, rel=1e-3)
    assert value == pytest.approx(svd_reference(H, y, "uniform") / 4, rel=1e-6)


def test_200_random_wide_and_short_problems_match_the_svd_reference():
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(200):
        d = int(np.exp(rng.uniform(np.log(1e3), np.log(2e5 if trial % 10 == 0 else 1e4))))
        N = int(rng.integers(4, 51))
        K = int(rng.integers(2, min(10, N // 2) + 1))
        y = torch.as_tensor(np.concatenate([np.arange(K), rng.integers(0, K, N - K)]))
        g = torch.Generator().manual_seed(trial)
        scale, offset, spread = 10 ** rng.uniform(-3, 3), rng.uniform(-5, 5), 10 ** rng.uniform(-2, 1)
        H = scale * (offset + torch.randn(K, d, generator=g)[y] + spread * torch.randn(N, d, generator=g))
        if trial % 2:
            H = H.float()
        for weighting in ("size", "uniform"):
            ours, ref = within_between_trace(H, y, weighting=weighting), svd_reference(H, y, weighting)
            assert ours >= 0.0, (trial, d, N, K)
            worst = max(worst, abs(ours - ref) / ref)
    assert worst < 1e-6


# ----------------------------------------------------------------------------- undefined ratios


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coinciding_class_means_raise_whatever_the_order(seed):
    P = torch.randn(50, 7, generator=torch.Generator().manual_seed(seed))
    H, y = torch.cat([P, P]), torch.tensor([0] * 50 + [1] * 50)
    for perm in (torch.arange(100), torch.randperm(100, generator=torch.Generator().manual_seed(seed))):
        with pytest.raises(ValueError, match="the class means coincide"):
            separation_fuzziness(H[perm], y[perm])
        with pytest.raises(ValueError, match="the class means coincide"):
            within_between_trace(H[perm].float(), y[perm], weighting="uniform")


@pytest.mark.parametrize("value", [0.0, 3.7, -1e6])
def test_dead_layer_features_raise(value):
    y = torch.arange(3).repeat(10)
    H = torch.full((30, 16), value)
    match = "all zero" if value == 0 else "the class means coincide"
    with pytest.raises(ValueError, match=match):
        separation_fuzziness(H, y)


def test_two_coinciding_means_among_three_still_measure_the_rest():
    # Classes 0 and 1 share their points, class 2 is elsewhere: Sigma_B has rank 1, the ratio is defined
    # and equals the one-dimensional closed form on the line through the two distinct means.
    g = torch.Generator().manual_seed(0)
    P = torch.randn(20, 5, generator=g, dtype=torch.float64)
    Q = torch.randn(20, 5, generator=g, dtype=torch.float64) + torch.tensor([4.0, 0, 0, 0, 0], dtype=torch.float64)
    H, y = torch.cat([P, P, Q]), torch.tensor([0] * 20 + [1] * 20 + [2] * 20)
    assert separation_fuzziness(H, y) == pytest.approx(svd_reference(H, y), rel=1e-9)


# ----------------------------------------------------------------------------- one cast, same values


def test_float32_input_is_accumulated_in_float64(monkeypatch):
    import utils.metrics as metrics

    H, y = random_features((30, 5, 60, 12), 200, seed=3)
    H32 = H.float()
    expected = separation_fuzziness(H32.double(), y)
    assert separation_fuzziness(H32, y) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(metrics, "_CHUNK_ENTRIES", 1000)  # many small chunks
    assert separation_fuzziness(H32, y) == pytest.approx(expected, rel=1e-12)
    means, counts = class_means(H32, y)
    ref = torch.stack([H32[y == k].double().mean(0) for k in range(4)])
    assert torch.allclose(means, ref, rtol=1e-12, atol=1e-12) and counts.tolist() == [30, 5, 60, 12]


def test_nc_metrics_match_a_float64_reference_on_imbalanced_data():
    from utils.etf import etf_gram
    from utils.neural_collapse import nc_metrics

    H, y = random_features((40, 7, 25, 60, 13), 300, seed=5, spread=2.0)
    H = H.float()
    g = torch.Generator().manual_seed(6)
    W, b = torch.randn(5, 300, generator=g), torch.randn(5, generator=g)
    out = nc_metrics(H, y, W, b)
    Hn, yn, Wn, bn = H.double().numpy(), y.numpy(), W.double().numpy(), b.double().numpy()
    K = 5
    mu = np.stack([Hn[yn == k].mean(0) for k in range(K)])
    M = mu - mu.mean(0)
    assert out["nc1"] == pytest.approx(svd_reference(H, y, "uniform") / K, rel=1e-8)
    assert out["fuzziness"] == pytest.approx(pinv_fuzziness(H, y), rel=1e-8)

    def etf_dist(V):
        G = V @ V.T
        E = etf_gram(K).numpy()
        return np.linalg.norm(G / np.linalg.norm(G) - E / np.linalg.norm(E))

    assert out["etf_distance_means"] == pytest.approx(etf_dist(M), rel=1e-8)
    assert out["etf_distance_classifiers"] == pytest.approx(etf_dist(Wn), rel=1e-8)
    nearest = np.argmin(((Hn[:, None] - mu[None]) ** 2).sum(-1), 1)
    assert out["nc4"] == np.mean((Hn @ Wn.T + bn).argmax(1) != nearest)
    assert 0 < out["nc4"] < 1
