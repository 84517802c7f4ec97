"""The law of equi-separation (He & Su, PNAS 2023): experiment code for chapter 5.

Setting of the paper: Fashion-MNIST resized to 10 x 10, 100 training images per class,
the :class:`~utils.models.FeatureMLP` of width 100 with ``layer_num`` in {2, 6, 18}
(depths 4, 8, 20), 600 epochs, batch 128, weight decay 5e-4, learning rate divided by
10 at epochs 200 and 400, and three optimisers with depth-dependent learning rates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .data import load_dataset
from .metrics import equi_separation_fit, layerwise_fuzziness
from .models import FeatureMLP
from .profiles import torch_threads
from .train import accuracy, fit, progress_bar

LAYER_NUMS = (2, 6, 18)
# Learning rates of the paper, per optimiser, for layer_num 2, 6, 18.
PAPER_LR = {
    "sgd": (0.3, 0.03, 0.01),
    "momentum": (0.3, 0.01, 0.001),
    "adam": (3e-3, 1e-3, 3e-4),
}


@dataclass(frozen=True)
class EquiSeparationConfig:
    """Scale of the chapter's experiment for one profile."""

    epochs: int
    milestones: tuple[int, ...]
    optimizers: tuple[str, ...]
    seeds: tuple[int, ...]
    # (layer_num, optimizer) pairs to train; empty means every layer_num for every optimizer.
    settings: tuple[tuple[int, str], ...] = ()
    per_class: int = 100
    image_size: int = 10
    width: int = 100
    weight_decay: float = 5e-4
    batch_size: int = 128
    snapshot_epochs: tuple[int, ...] = ()


def config_for(profile: str) -> EquiSeparationConfig:
    """``full``: the paper's 600-epoch schedule, all nine (depth, optimiser) settings, three seeds.
    ``quick``: half the schedule (300 epochs), one seed, the three depths with SGD and depth 8 with
    momentum and Adam (the law is already in place: see the chapter)."""
    if profile == "full":
        return EquiSeparationConfig(epochs=600, milestones=(200, 400), optimizers=tuple(PAPER_LR),
                                    seeds=(0, 1, 2), snapshot_epochs=(0, 5, 20, 50, 100, 200, 400, 600))
    if profile == "quick":
        return EquiSeparationConfig(epochs=300, milestones=(100, 200), optimizers=tuple(PAPER_LR),
                                    seeds=(0,), snapshot_epochs=(0, 5, 20, 50, 100, 200, 300),
                                    settings=((2, "sgd"), (6, "sgd"), (18, "sgd"), (6, "momentum"), (6, "adam")))
    raise ValueError(f"unknown profile {profile!r}")


def load_equi_separation_data(cfg: EquiSeparationConfig, device: torch.device, seed: int = 0):
    """Training subset (``per_class`` per class) and the full test set, resized to ``image_size``."""
    X, y = load_dataset("fashion-mnist", train=True, device=device, resize=cfg.image_size,
                        per_class=cfg.per_class, seed=seed)
    Xt, yt = load_dataset("fashion-mnist", train=False, device=device, resize=cfg.image_size)
    return X, y, Xt, yt


def block_fuzziness(model: FeatureMLP, X: torch.Tensor, y: torch.Tensor) -> list[float]:
    """D_l for the outputs of blocks l = 1..L+1 (the input, l = 0, is left out)."""
    return layerwise_fuzziness(model.features(X)[1:], y)


def train_and_measure(X: torch.Tensor, y: torch.Tensor, Xt: torch.Tensor, yt: torch.Tensor,
                      layer_num: int, optimizer: str, lr: float, cfg: EquiSeparationConfig,
                      seed: int = 0, batchnorm: bool = True, nonlinear: bool = True,
                      snapshots: bool = False, progress: bool = True) -> dict:
    """Train one network and measure the law at the end (and at ``cfg.snapshot_epochs`` if asked).

    Args:
        X: (N, 1, s, s) training images; y: (N,) labels; Xt, yt: test set.
    Returns:
        a results row: settings, ``train_acc``, ``test_acc``, ``D`` (list over blocks 1..L+1),
        ``D_input`` (D of the raw input), ``pearson`` and ``rho`` of the log-linear fit, and
        ``snapshots`` ``{epoch: D list}`` when requested.
    """
    torch.manual_seed(seed)
    model = FeatureMLP(X[0].numel(), cfg.width, layer_num, int(y.max()) + 1,
                       batchnorm=batchnorm, nonlinear=nonlinear).to(X.device)
    record: dict[int, list[float]] = {}
    if snapshots and 0 in cfg.snapshot_epochs:
        record[0] = block_fuzziness(model, X, y)

    def callback(epoch: int, m: torch.nn.Module) -> None:
        if snapshots and epoch in cfg.snapshot_epochs:
            record[epoch] = block_fuzziness(m, X, y)

    history = fit(model, X, y, cfg.epochs, optimizer=optimizer, lr=lr, weight_decay=cfg.weight_decay,
                  milestones=cfg.milestones, batch_size=cfg.batch_size, seed=seed, progress=progress,
                  callback=callback, desc=f"depth {layer_num + 2}, {optimizer}")
    D = block_fuzziness(model, X, y)
    law = equi_separation_fit(D)
    row = {"depth": layer_num + 2, "layer_num": layer_num, "width": cfg.width, "optimizer": optimizer,
           "lr": lr, "epochs": cfg.epochs, "seed": seed, "batchnorm": batchnorm, "nonlinear": nonlinear,
           "train_acc": accuracy(model, X, y), "test_acc": accuracy(model, Xt, yt),
           "final_loss": history.loss[-1], "D": D,
           "D_input": layerwise_fuzziness([X.flatten(1)], y)[0],
           "pearson": law["pearson"], "rho": law["rho"]}
    if snapshots:
        row["snapshots"] = {str(e): d for e, d in sorted(record.items())}
    return row


def run(profile: str, device: torch.device, progress: bool = True) -> dict:
    """The chapter's experiment: every (depth, optimiser, seed) of the profile, the emergence of the
    law during training (snapshots for depth 8), and two negative controls at depth 8."""
    cfg = config_for(profile)
    with torch_threads(1 if device.type == "cpu" else None):  # width-100 MLPs: one thread is faster
        return _run(cfg, device, progress)


def _run(cfg: EquiSeparationConfig, device: torch.device, progress: bool) -> dict:
    X, y, Xt, yt = load_equi_separation_data(cfg, device)
    settings = cfg.settings or tuple((L, opt) for opt in cfg.optimizers for L in LAYER_NUMS)
    jobs = [(L, opt, seed) for L, opt in settings for seed in cfg.seeds]
    runs = []
    for L, opt, seed in progress_bar(jobs, desc="equi-separation runs", enabled=progress):
        lr = PAPER_LR[opt][LAYER_NUMS.index(L)]
        runs.append(train_and_measure(X, y, Xt, yt, L, opt, lr, cfg, seed=seed,
                                      snapshots=(L == 6 and opt == "sgd" and seed == cfg.seeds[0]),
                                      progress=False))
    controls = []
    for label, kwargs in (("no BatchNorm", {"batchnorm": False}), ("linear (no ReLU)", {"nonlinear": False})):
        row = train_and_measure(X, y, Xt, yt, 6, "sgd", PAPER_LR["sgd"][1], cfg, seed=cfg.seeds[0],
                                progress=False, **kwargs)
        controls.append({"control": label, **row})
    return {"config": asdict(cfg), "runs": runs, "controls": controls}
