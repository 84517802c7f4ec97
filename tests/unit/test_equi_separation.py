"""Equi-separation: the law at small scale, the fit with the input layer, every claim's verdicts."""
import math

import numpy as np
import pytest
import torch

from utils import claims
from utils import equi_separation as es
from utils.models import BatchedMLP, BlockCNN, BlockResNet


def synthetic_classes(n=60, K=4, d=20, seed=0):
    """K entangled classes: labels depend nonlinearly on Gaussian inputs."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n * K, d, generator=g)
    centres = torch.randn(K, d, generator=g)
    y = torch.cdist(torch.sin(2 * X), torch.sin(2 * centres)).argmin(1)
    return X, y


def test_trained_mlps_separate_progressively():
    """Two seeds trained together: D decreases with depth after training, not at initialisation."""
    X, y = synthetic_classes()
    cfg = es.Config(profile="quick", width=64, batch_size=64, weight_decay=5e-4)
    rows = es.train_group(cfg, (X, y, X, y), 4, [{"optimizer": "momentum", "lr": 0.05, "seed": s} for s in (0, 1)],
                          60, (40,), snapshots=(0, 60), progress=False)
    for row in rows:
        D = np.array(row["D"])
        assert row["train_acc"] > 0.95
        assert np.all(np.diff(D[1:]) < 0), D          # decreasing over the blocks
        assert D[-1] < 0.2 * D[1]
        assert row["pearson"] < -0.9 and len(row["D"]) == 4 + 2     # input + 5 blocks
        assert es.law(row["snapshots"]["0"])["pearson"] > row["pearson"]


def test_law_fit_includes_the_input():
    D = [8.0, 4.0, 2.0, 1.0]
    assert es.law(D)["rho"] == pytest.approx(0.5)
    assert es.law(D)["pearson"] == pytest.approx(-1.0)
    bent = [100.0, 4.0, 2.0, 1.0]                      # the input is far above the blocks' line
    assert es.law(bent, with_input=False)["pearson"] == pytest.approx(-1.0)
    assert es.law(bent)["pearson"] > -0.95
    assert es.layer_ratios(D) == pytest.approx([0.5, 0.5, 0.5])
    assert es.idle_layers([8.0, 4.0, 3.9, 1.0]) == [2]
    assert es.law([1.0, -2.0, 0.5])["layers_fitted"] == 2   # a non-positive D_l is left out


def test_fuzziness_profile_shapes_and_conv_features():
    X, y = synthetic_classes(n=20, d=16)
    m = BatchedMLP(2, 16, 8, 1, 4)
    D = es.fuzziness_profile(m.features(X), y)
    assert len(D) == 2 and len(D[0]) == 3 and all(v > 0 for v in D[0])
    imgs = X.view(-1, 1, 4, 4)
    for net in (BlockCNN(1, 4, channels=3, num_blocks=2, image_size=4, pool_after=(0,)),
                BlockResNet(1, 4, channels=2, num_blocks=2, image_size=4)):
        feats = net.features(imgs, bn="batch")
        assert len(feats) == len(net.blocks) + 1 and feats[0].shape == (80, 16)
        running = [b.clone() for b in net.state_dict().values() if b.dtype == torch.float32]
        net.features(imgs, bn="batch")
        assert all(torch.equal(a, b) for a, b in zip(running, [b for b in net.state_dict().values()
                                                                if b.dtype == torch.float32]))


def test_config_profiles_and_errors():
    quick, full = es.Config.for_profile("quick"), es.Config.for_profile("full")
    assert full.epochs == 600 and full.milestones == (200, 400) and len(full.grid()) == 9 and full.seeds == (0, 1, 2)
    assert full.batch_size == 128 and full.weight_decay == 5e-4 and full.normalization == "paper"
    assert quick.expected_seconds() < 120
    with pytest.raises(ValueError, match="quick"):
        es.Config.for_profile("huge")
    with pytest.raises(ValueError, match="normalization"):
        es.load_data(es.Config(profile="quick", normalization="zca"), torch.device("cpu"))


def _runs(p4=-0.99, p8=-0.99, init=0.3):
    rows = []
    for depth, p in ((4, p4), (8, p8)):
        for opt in ("sgd", "momentum", "adam"):
            for seed, shift in ((0, 0.0), (1, 0.01), (2, -0.01)):
                row = {"depth": depth, "optimizer": opt, "seed": seed, "pearson": p + shift}
                if depth == 8:
                    D0 = list(np.exp(init * np.arange(9)))
                    row["snapshots"] = {"0": D0}
                rows.append(row)
    return rows


def test_claim_law_both_verdicts():
    c = claims.get("es.law")
    assert c.holds(c.check({"runs": _runs()}))
    assert not c.holds(c.check({"runs": _runs(p8=-0.9)}))


def test_claim_emerges_both_verdicts():
    c = claims.get("es.emerges")
    assert c.holds(c.check({"runs": _runs(init=0.3)}))
    assert not c.holds(c.check({"runs": _runs(init=-0.3)}))       # already decaying at initialisation
    assert not c.holds(c.check({"runs": _runs(init=0.3, p8=-0.8)}))


def test_claim_controls_both_verdicts():
    c = claims.get("es.controls")
    good = {"controls": [{"control": "no BatchNorm", "train_acc": 1.0, "pearson": -0.97},
                         {"control": "linear (no ReLU)", "train_acc": 0.6, "pearson": -0.3}]}
    assert c.holds(c.check(good))
    bad = {"controls": [{"control": "no BatchNorm", "train_acc": 0.4, "pearson": -0.97},
                        {"control": "linear (no ReLU)", "train_acc": 0.6, "pearson": -0.3}]}
    assert not c.holds(c.check(bad))


def test_claim_cnn_both_verdicts():
    c = claims.get("es.cnn")
    assert c.holds(c.check({"convnets": [{"arch": "cnn", "pearson": -0.97, "train_acc": 1.0}]}))
    assert not c.holds(c.check({"convnets": [{"arch": "cnn", "pearson": -0.5, "train_acc": 1.0},
                                             {"arch": "resnet", "pearson": -0.9, "train_acc": 1.0}]}))
    # the residual network counts too, and so does fitting the training data
    assert not c.holds(c.check({"convnets": [{"arch": "cnn", "pearson": -0.97, "train_acc": 1.0},
                                             {"arch": "resnet", "pearson": -0.5, "train_acc": 1.0}]}))
    assert not c.holds(c.check({"convnets": [{"arch": "cnn", "pearson": -0.97, "train_acc": 0.86}]}))
    assert not c.holds(c.check({"convnets": [{"arch": "cnn", "pearson": -0.93, "train_acc": 1.0}]}))
    assert c.expected_in("full") and not c.expected_in("quick")


def test_result_round_trip():
    r = es.Result(config={"a": 1}, runs=[{"D": [1.0, 0.5]}])
    assert es.Result.from_json(r.to_json()).to_json() == r.to_json()
