"""Neural-collapse metrics, the simplex ETF, and the small convnets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.etf import etf_distance, etf_gram, simplex_etf
from utils.metrics import separation_fuzziness
from utils.neural_collapse import (equiangularity, equinorm, max_angle, measure_epochs, nc1, nc_callback,
                                   nc_metrics, ncc_mismatch, project_to_means_plane, self_duality)


def _blobs(K=4, n=30, d=12, spread=0.5, seed=0, sizes=None):
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [n] * K
    centres = 3 * torch.randn(K, d, generator=g)
    y = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    return centres[y] + spread * torch.randn(len(y), d, generator=g), y


def test_simplex_etf_gram_and_bad_input():
    for K, d in ((2, 1), (5, 4), (10, 32)):
        V = simplex_etf(K, d, seed=3)
        assert V.shape == (K, d)
        assert torch.allclose(V @ V.T, etf_gram(K), atol=1e-12)
        assert torch.allclose(V.sum(0), torch.zeros(d, dtype=V.dtype), atol=1e-12)
    with pytest.raises(ValueError, match="d >= K-1"):
        simplex_etf(5, 3)
    with pytest.raises(ValueError, match="K >= 2"):
        simplex_etf(1, 3)


def test_exact_etf_gives_zero_nc2_and_etf_distance():
    K, d = 6, 9
    M = 2.5 * simplex_etf(K, d, seed=1)
    assert etf_distance(M) < 1e-12 and etf_distance(M + 7.0, center=True) < 1e-12
    assert equinorm(M) < 1e-12 and equiangularity(M) < 1e-12 and max_angle(M) < 1e-12
    R = torch.randn(K, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert etf_distance(R) > 0.1 and max_angle(R) > 0.01


def test_collapsed_features_give_zero_nc1_nc3_nc4():
    K, d, n = 5, 8, 7
    M = simplex_etf(K, d, seed=2)
    y = torch.arange(K).repeat_interleave(n)
    H = 4.0 * M[y] + torch.ones(d, dtype=torch.float64)  # every feature on its (shifted) class mean
    W = 0.3 * M
    out = nc_metrics(H, y, W, torch.zeros(K, dtype=torch.float64))
    assert out["nc1"] < 1e-20 and out["nc4"] == 0.0 and out["nc3"] < 1e-12
    for key in ("equinorm_means", "equiangular_means", "maxangle_means", "etf_distance_means",
                "equinorm_classifiers", "equiangular_classifiers", "maxangle_classifiers"):
        assert out[key] < 1e-10, key


def test_nc1_is_fuzziness_over_K_on_balanced_data_only():
    H, y = _blobs(K=5, n=40, d=30)
    assert nc1(H, y) == pytest.approx(separation_fuzziness(H, y) / 5, rel=1e-10)
    Hi, yi = _blobs(K=4, d=30, sizes=[80, 40, 20, 10])
    assert nc1(Hi, yi) != pytest.approx(separation_fuzziness(Hi, yi) / 4, rel=1e-3)


def test_metrics_match_float64_numpy_reference():
    H32, y = _blobs(K=4, n=25, d=10, spread=1.5, seed=4)
    H32 = H32.float()
    W = torch.randn(4, 10, generator=torch.Generator().manual_seed(5))
    b = torch.randn(4, generator=torch.Generator().manual_seed(6))
    out = nc_metrics(H32, y, W, b)
    Hn, yn, Wn, bn = H32.double().numpy(), y.numpy(), W.double().numpy(), b.double().numpy()
    K, N = 4, len(yn)
    mu = np.stack([Hn[yn == k].mean(0) for k in range(K)])
    M = mu - mu.mean(0)
    Sw = (Hn - mu[yn]).T @ (Hn - mu[yn]) / N
    Sb = M.T @ M / K
    assert out["nc1"] == pytest.approx(np.trace(Sw @ np.linalg.pinv(Sb)) / K, rel=1e-8)
    cos = (M / np.linalg.norm(M, axis=1, keepdims=True)) @ (M / np.linalg.norm(M, axis=1, keepdims=True)).T
    off = cos[~np.eye(K, dtype=bool)]
    assert out["equiangular_means"] == pytest.approx(off.std(ddof=1), rel=1e-8)
    assert out["maxangle_means"] == pytest.approx(np.abs(off + 1 / (K - 1)).mean(), rel=1e-8)
    norms = np.linalg.norm(Wn, axis=1)
    assert out["equinorm_classifiers"] == pytest.approx(norms.std(ddof=1) / norms.mean(), rel=1e-8)
    nc3 = np.linalg.norm(Wn / np.linalg.norm(Wn) - M / np.linalg.norm(M))
    assert out["nc3"] == pytest.approx(nc3, rel=1e-8)
    ncc = np.argmin(((Hn[:, None] - mu[None]) ** 2).sum(-1), 1)
    assert out["nc4"] == pytest.approx(np.mean((Hn @ Wn.T + bn).argmax(1) != ncc))
    assert 0 < out["nc4"] < 1


def test_bad_inputs_raise():
    H, y = _blobs(K=3)
    with pytest.raises(ValueError, match="same d"):
        nc_metrics(H, y, torch.randn(3, 5))
    with pytest.raises(ValueError, match="same shape"):
        self_duality(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="no examples"):
        nc1(H, y, num_classes=4)
    with pytest.raises(ValueError):
        measure_epochs(0, 5)


def test_projection_to_means_plane_keeps_distances():
    H, y = _blobs(K=3, n=20, d=15)
    W = torch.randn(3, 15)
    feats, means, _ = project_to_means_plane(H, y, W)
    assert feats.shape == (60, 2) and means.shape == (3, 2)
    centred = torch.stack([H[y == k].mean(0) for k in range(3)]).double()
    centred -= centred.mean(0)
    assert torch.allclose(torch.cdist(means, means), torch.cdist(centred, centred), atol=1e-6)


def test_training_callback_records_collapse():
    from utils.models import FeatureMLP
    from utils.train import fit
    torch.manual_seed(0)
    H, y = _blobs(K=3, n=40, d=20, spread=2.0, seed=7)
    model = FeatureMLP(20, 32, 1, 3)
    when = measure_epochs(60, 4)
    cb = nc_callback(H.float(), y, H.float(), y, when, 3)
    hist = fit(model, H.float(), y, 60, "momentum", lr=0.05, weight_decay=5e-3, batch_size=32,
               progress=False, callback=cb)
    recs = [r for r in hist.extra if r]
    assert [r["epoch"] for r in recs] == when
    assert recs[-1]["train_accuracy"] == 1.0
    assert recs[-1]["nc1"] < recs[0]["nc1"] / 10


def test_convnets_shapes():
    from utils.convnets import resnet18, small_cnn, vgg11
    for net, c, s in ((small_cnn(1, 10), 1, 28), (vgg11(1, 4), 1, 32), (resnet18(3, 5), 3, 32)):
        x = torch.randn(2, c, s, s)
        assert net(x).shape == (2, net.classifier.out_features)
        assert net.penultimate(x).shape == (2, net.classifier.in_features)


# ----------------------------------------------------------------------------- the chapter's experiment

def _run(name, kind, nc1_first=1.0, nc1_tpt=2e-2, nc1_last=1e-3, mean_cos=-1 / 9, nc4=0.0, K=10,
         equiang_first=0.5, equiang_last=0.05):
    def rec(e, v, q):
        return {"epoch": e, "nc1": v, "mean_cos_means": mean_cos, "nc4": nc4, "equiangular_means": q}
    hist = [rec(1, nc1_first, equiang_first), rec(30, nc1_tpt, equiang_last), rec(300, nc1_last, equiang_last)]
    return {"name": name, "kind": kind, "num_classes": K, "tpt_epoch": 30, "history": hist}


def _results(**kw):
    return {"runs": [_run("mlp", "mlp", **kw), _run("small_cnn", "conv", **kw)], "geometry": {}}


def test_claim_nc1_both_verdicts():
    from utils import claims
    c = claims.get("nc.nc1")
    assert c.holds(c.check(_results(nc1_last=1.5e-3)))
    assert not c.holds(c.check(_results(nc1_last=0.05)))
    # orders of magnitude overall but not in the terminal phase: not shown
    assert not c.holds(c.check(_results(nc1_tpt=2e-3, nc1_last=1e-3)))
    m = c.check(_results(nc1_first=2.0, nc1_last=1e-2))
    assert m["mlp: whole run"] == pytest.approx(5e-3) and m["mlp: terminal phase"] == pytest.approx(0.5)
    never = _results()
    never["runs"][0]["tpt_epoch"] = None  # never reached zero training error
    assert not c.holds(c.check(never))


def test_claim_nc1_conv_both_verdicts():
    from utils import claims
    c = claims.get("nc.nc1_conv")
    good = c.check(_results(nc1_last=1e-3))
    assert set(good) == {"small_cnn: whole run", "small_cnn: terminal phase"} and c.holds(good)
    bad = _results()
    bad["runs"][1] = _run("small_cnn", "conv", nc1_last=0.2)
    assert not c.holds(c.check(bad))
    assert not c.holds(c.check({"runs": [_run("mlp", "mlp")]}))  # no convolutional network: not shown


def test_claim_etf_both_verdicts():
    from utils import claims
    c = claims.get("nc.etf")
    assert c.holds(c.check(_results(mean_cos=-1 / 9 + 0.02)))
    assert not c.holds(c.check(_results(mean_cos=-1 / 9 - 0.05)))
    # the right mean cosine with an unchanged spread of the cosines is not an ETF
    assert not c.holds(c.check(_results(equiang_last=0.3)))
    assert c.check(_results(mean_cos=-0.5, K=3))["mlp: mean-cosine gap"] == pytest.approx(0.0)


def test_claim_ncc_both_verdicts():
    from utils import claims
    c = claims.get("nc.ncc")
    assert c.holds(c.check(_results(nc4=0.004)))
    assert not c.holds(c.check(_results(nc4=0.03)))


def test_mean_cosine_of_centred_equinorm_means_is_the_etf_value():
    """Why nc.etf is weak on its own: centred means with equal norms average -1/(K-1) whatever their angles."""
    from utils.metrics import cosine_matrix, mean_off_diagonal
    from utils.neural_collapse import centred_class_means
    g = torch.Generator().manual_seed(0)
    K, d = 6, 20
    H = torch.randn(K * 5, d, generator=g, dtype=torch.float64)
    y = torch.arange(K).repeat_interleave(5)
    M = centred_class_means(H, y, K)
    assert max_angle(M) > 0.05
    assert mean_off_diagonal(cosine_matrix(M)) != pytest.approx(-1 / (K - 1), abs=1e-3)
    E = 3.0 * simplex_etf(K, d, seed=1)
    assert mean_off_diagonal(cosine_matrix(E)) == pytest.approx(-1 / (K - 1), abs=1e-12)


def test_measurement_grid_is_dense_around_decays():
    from utils.neural_collapse import measurement_grid
    grid = measurement_grid(300, 14, [100, 200], window=10)
    assert set(range(97, 111)) <= set(grid) and set(range(197, 211)) <= set(grid)
    assert set(measure_epochs(300, 14)) <= set(grid) and grid == sorted(set(grid))
    assert measurement_grid(300, 14, [100, 200]) == measure_epochs(300, 14)
    with pytest.raises(ValueError, match="window"):
        measurement_grid(300, 14, [100], window=-1)


def test_decay_response_reads_the_dense_window():
    from utils.neural_collapse import decay_response
    hist = [{"epoch": e, "nc1": 10.0 ** (-0.01 * e - (0.5 * min(e - 100, 3) if e > 100 else 0))}
            for e in range(95, 111)]
    rows = decay_response({"history": hist, "milestones": [100]})
    assert len(rows) == 1 and rows[0]["window_end"] == 110
    assert rows[0]["before"] == pytest.approx(-0.01) and rows[0]["later"] == pytest.approx(-0.01)
    assert rows[0]["right_after"] == pytest.approx(-0.51)
    assert decay_response({"history": hist[:3], "milestones": [100]}) == []  # not measured densely: no row


def test_out_of_span_fraction():
    from utils.neural_collapse import out_of_span_fraction
    M = simplex_etf(3, 6, seed=0)
    assert out_of_span_fraction(2.0 * M, M) < 1e-12
    N = torch.zeros(3, 6, dtype=torch.float64)
    N[:, 5] = 1.0
    P = torch.linalg.svd(M, full_matrices=False).Vh[:2]
    N = N - (N @ P.T) @ P  # orthogonal to the plane of the means
    assert out_of_span_fraction(N, M) == pytest.approx(1.0)
    assert out_of_span_fraction(M + N, M) == pytest.approx(float((N ** 2).sum() / ((M + N) ** 2).sum()))
    with pytest.raises(ValueError, match="same shape"):
        out_of_span_fraction(torch.randn(3, 4), torch.randn(3, 5))


def test_configs_follow_the_profiles():
    from utils.experiment import GiB
    from utils.neural_collapse import PAPER_WEIGHT_DECAY, Config
    quick, full, paper = (Config.for_profile(p) for p in ("quick", "full", "paper"))
    assert [s.kind for s in quick.networks] == ["mlp", "conv"] and quick.cpu_threads == 1
    assert quick.expected_seconds() <= 90
    assert full.networks[0].arch in ("vgg11", "resnet18") and full.networks[0].resize == 32
    assert full.networks[0].weight_decay == PAPER_WEIGHT_DECAY
    assert full.expected_seconds() <= 600 and full.peak_memory_bytes() <= 12 * GiB
    assert {s.arch for s in paper.networks} == {"vgg11", "resnet18"} and paper.checkpoint
    assert all(s.epochs == 350 and s.per_class is None and s.weight_decay == PAPER_WEIGHT_DECAY
               for s in paper.networks)
    smoke = Config.for_profile("full", smoke=True)
    assert [s.arch for s in smoke.networks] == [s.arch for s in full.networks]
    with pytest.raises(ValueError, match="quick"):
        Config.for_profile("huge")


def test_cost_per_image_counts_macs():
    from utils.convnets import cost_per_image
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 5))
    c = cost_per_image(net, (1, 8, 8))
    assert c["macs"] == 4 * 8 * 8 * 9 + 256 * 5
    assert c["activations"] == 256 + 256 + 256 + 5 and c["largest"] == 256
    assert c["parameters"] == sum(p.numel() for p in net.parameters())


def test_checkpointed_run_resumes_from_finished_jobs(tmp_path, monkeypatch):
    """The paper path records each finished network; a second run reads them back instead of training."""
    import dataclasses
    from utils import neural_collapse as ncm
    monkeypatch.setattr("utils.checkpoint.DEFAULT_DIR", tmp_path)
    cfg = dataclasses.replace(ncm.Config.for_profile("quick", smoke=True), checkpoint=True)
    first = ncm.run(cfg, torch.device("cpu"), progress=False).to_json()
    assert (tmp_path / "neural_collapse_quick_smoke" / "jobs.json").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(ncm, "train_network", no_training)
    assert ncm.run(cfg, torch.device("cpu"), progress=False).to_json() == first
    other = dataclasses.replace(cfg, networks=(dataclasses.replace(cfg.networks[0], lr=0.01),), )
    with pytest.raises(AssertionError, match="trained again"):  # a changed setting is not read back
        ncm.run(other, torch.device("cpu"), progress=False)
