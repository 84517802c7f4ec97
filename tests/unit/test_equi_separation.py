"""The law at small scale: after training, fuzziness decreases with depth; not at initialisation."""
import numpy as np
import pytest
import torch

from utils.equi_separation import EquiSeparationConfig, block_fuzziness, train_and_measure
from utils.metrics import equi_separation_fit
from utils.models import FeatureMLP


def synthetic_classes(n=60, K=4, d=20, seed=0):
    """K entangled classes: labels depend nonlinearly on Gaussian inputs."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n * K, d, generator=g)
    centres = torch.randn(K, d, generator=g)
    y = torch.cdist(torch.sin(2 * X), torch.sin(2 * centres)).argmin(1)
    return X, y


def test_trained_mlp_separates_progressively():
    X, y = synthetic_classes()
    cfg = EquiSeparationConfig(epochs=60, milestones=(40,), optimizers=("sgd",), seeds=(0,), width=64,
                               batch_size=64)
    row = train_and_measure(X, y, X, y, 4, "momentum", 0.05, cfg, progress=False)
    D = np.array(row["D"])
    assert row["train_acc"] > 0.95
    assert np.all(np.diff(D) < 0), D          # decreasing with depth
    assert D[-1] < 0.2 * D[0]
    assert row["pearson"] < -0.9


def test_no_law_at_initialisation():
    X, y = synthetic_classes()
    torch.manual_seed(0)
    D = block_fuzziness(FeatureMLP(20, 64, 4, 4), X, y)
    assert D[-1] > 0.5 * D[0]  # random layers do not separate
