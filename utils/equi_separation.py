"""The law of equi-separation (He & Su, PNAS 2023): chapter 5's experiment.

The paper's protocol (its code: ``representation_dynamics_terminal.py``): Fashion-MNIST resized
to 10 x 10 and normalised with mean 0.5 and std 0.5, 100 training images per class, the MLP
``input block -> layer_num hidden blocks -> linear classifier`` (``Linear -> BatchNorm -> ReLU``,
width 100; ``layer_num`` 2, 6, 18 give depths 4, 8, 20), 600 epochs, batch 128, weight decay
5e-4, learning rate divided by 10 at epochs 200 and 400, three optimisers with depth-dependent
learning rates.  After training it measures the separation fuzziness ``D_l`` of the training
data after every block *and of the raw input* (``l = 0..L+1``), with BatchNorm in training mode
(the code never calls ``eval()``), and fits ``log D_l = a + l log(rho)``.

Here the networks of one depth are trained together as one :class:`utils.models.BatchedMLP`
(:func:`utils.batched.fit_many`; the same parameters as sequential training to float32 rounding).
Besides the law in the nine (depth, optimiser) settings, the run measures its emergence during
training, two negative controls, ``D_l`` on the test set, a learning-rate sweep (the paper's
practical reading: straighter laws go with better test accuracy), and the law block by block in a
small CNN and a residual network on 28 x 28 Fashion-MNIST.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

import numpy as np
import torch

from .batched import accuracy_many, fit_many
from .claims import Claim
from .data import _STATS, load_dataset
from .experiment import JsonResult, check_profile, mlp_memory_bytes
from .metrics import equi_separation_fit, separation_fuzziness
from .models import BatchedMLP, BlockCNN, BlockResNet
from .profiles import torch_threads
from .train import accuracy, fit, progress_bar

EXPERIMENT = "equi_separation"
PAPER = "He & Su, A law of data separation in deep learning, PNAS 2023"
LAYER_NUMS = (2, 6, 18)
# Learning rates of the paper (its run_experiments.sh), per optimiser, for layer_num 2, 6, 18.
PAPER_LR = {
    "sgd": (0.3, 0.03, 0.01),
    "momentum": (0.3, 0.01, 0.001),
    "adam": (3e-3, 1e-3, 3e-4),
}
# The paper's learning-rate grid for Adam (run_optimization.sh), used for the practical reading.
ADAM_LR_GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Scale of the chapter's experiment.

    ``settings``: the (layer_num, optimiser) pairs of the MLP grid (empty: all nine).
    ``snapshot_epochs``: epochs at which the depth-8 networks are measured during training.
    ``control_*``, ``nobn_*``, ``linear_lr``: the no-BatchNorm and linear controls at depth 8 (Adam).
    The paper's figures use Adam at 3e-5 for both; without BatchNorm and with PyTorch's default
    initialisation that does not fit the training data at depth 8, so the no-BatchNorm control
    uses He initialisation and the smallest learning rate of the paper's Adam grid that fits it
    (1e-4 for 600 epochs; 1e-3 for the quick profile's 150 epochs).
    ``sweep_lrs``: Adam learning rates of the depth-8 sweep (practical reading).
    ``conv_*``: the CNN / residual networks on 28 x 28 images (empty ``conv_archs``: none).
    ``normalization``: ``"paper"`` ((x - 0.5)/0.5, the paper's code) or ``"dataset"`` (mean 0.286, std 0.353).
    """

    profile: str
    epochs: int = 600
    milestones: tuple[int, ...] = (200, 400)
    optimizers: tuple[str, ...] = ("sgd", "momentum", "adam")
    seeds: tuple[int, ...] = (0, 1, 2)
    settings: tuple[tuple[int, str], ...] = ()
    per_class: int = 100
    image_size: int = 10
    width: int = 100
    weight_decay: float = 5e-4
    batch_size: int = 128
    normalization: str = "paper"
    snapshot_epochs: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 400, 500, 600)
    control_optimizer: str = "adam"
    nobn_lr: float = 1e-4
    nobn_init: str = "he"
    linear_lr: float = 3e-5
    control_epochs: int = 600
    sweep_lrs: tuple[float, ...] = ADAM_LR_GRID
    conv_archs: tuple[str, ...] = ("cnn", "resnet")
    conv_seeds: tuple[int, ...] = (0, 1, 2)
    conv_epochs: int = 600
    conv_lr: float = 1e-3
    conv_per_class: int = 100
    conv_image_size: int = 28
    conv_channels: int = 16
    conv_blocks: int = 4
    smoke: bool = False

    @classmethod
    def for_profile(cls, profile: str, smoke: bool = False) -> "Config":
        """``quick``: depths 4 and 8 with the three optimisers (one seed, 150 epochs, milestones
        50/100), depth 20 with SGD, the controls, a 3-point sweep and the small CNN; ``full``: the
        paper's MLP protocol (3 depths x 3 optimisers x 3 seeds, 600 epochs), the controls, a
        3-point Adam sweep, and one CNN and one residual network (200 epochs); ``paper``: ``full``
        with the paper's whole Adam grid at depth 8, three seeds of each convolutional network for
        600 epochs, and checkpoints.  ``smoke`` keeps the code path and shrinks every size."""
        check_profile(profile)
        if profile == "quick":
            cfg = cls(profile="quick", epochs=150, milestones=(50, 100), seeds=(0,),
                      settings=((2, "sgd"), (2, "momentum"), (2, "adam"), (6, "sgd"), (6, "momentum"),
                                (6, "adam"), (18, "sgd")),
                      snapshot_epochs=(0, 1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 125, 150),
                      control_epochs=150, nobn_lr=1e-3, sweep_lrs=(1e-4, 1e-3, 3e-3), conv_archs=("cnn",), conv_seeds=(0,),
                      conv_epochs=30, conv_channels=8)
        elif profile == "full":
            cfg = cls(profile="full", sweep_lrs=(3e-5, 3e-4, 3e-3), conv_seeds=(0,), conv_epochs=200)
        else:
            cfg = cls(profile="paper")
        if smoke:
            cfg = cls(**{**asdict(cfg), "epochs": 3, "milestones": (1, 2), "per_class": 8, "width": 24,
                         "settings": tuple((L, o) for L in (2, 6) for o in cfg.optimizers) if profile == "quick" else (),
                         "seeds": cfg.seeds[:2], "snapshot_epochs": (0, 1, 3), "control_epochs": 2,
                         "sweep_lrs": cfg.sweep_lrs[:2], "conv_seeds": (0,), "conv_epochs": 2,
                         "conv_per_class": 4, "conv_image_size": 8, "conv_channels": 2, "conv_blocks": 2,
                         "smoke": True})
        return cfg

    def grid(self) -> tuple[tuple[int, str], ...]:
        """The (layer_num, optimiser) pairs trained."""
        return self.settings or tuple((L, opt) for L in LAYER_NUMS for opt in self.optimizers)

    def peak_memory_bytes(self) -> int:
        """The largest batched MLP (depth 20, all optimisers and seeds) with test-set features of
        every layer, or the residual network's activations, whichever is larger."""
        runs = max(sum(1 for L, _ in self.grid() if L == Lx) for Lx in LAYER_NUMS) * len(self.seeds)
        widths = [self.image_size ** 2] + [self.width] * (max(L for L, _ in self.grid()) + 2) + [10]
        mlp = mlp_memory_bytes(runs, self.batch_size, widths, eval_rows=10_000, optimizer_copies=3)
        s, c = self.conv_image_size, self.conv_channels
        conv = 4 * 1.5 * (10 * self.conv_per_class) * c * s * s * (2 * self.conv_blocks + 2) * 3
        return int(max(mlp, conv))

    def expected_seconds(self) -> float:
        """Rough time on the profile's machine. quick: per model-epoch CPU costs measured on one
        (shared) CPU thread; full/paper: a launch-bound GPU, about 0.25 ms per layer and step for a
        whole batched group, plus the convolutional networks."""
        if self.profile == "quick":
            per_epoch = {2: 0.012, 6: 0.025, 18: 0.07}      # CPU seconds per model-epoch
            mlp = sum(per_epoch[L] * self.epochs * len(self.seeds) for L, _ in self.grid())
            mlp += per_epoch[6] * (2 * self.control_epochs + self.epochs * len(self.sweep_lrs))
            conv = 0.5 * self.conv_epochs * len(self.conv_seeds) * len(self.conv_archs) * (self.conv_channels / 8)
            return mlp + conv
        steps = math.ceil(10 * self.per_class / self.batch_size)
        groups = {(L, opt == "adam") for L, opt in self.grid()}
        mlp = sum(steps * self.epochs * (L + 2) * 2.5e-4 for L, _ in groups)
        mlp += steps * (2 * self.control_epochs + (self.epochs if self.sweep_lrs else 0)) * 8 * 2.5e-4
        conv = 0.02 * steps * self.conv_epochs * len(self.conv_seeds) * len(self.conv_archs)
        return max(1.0, mlp + conv)


# ---------------------------------------------------------------------------------------------
# Data and measurement
# ---------------------------------------------------------------------------------------------
def load_data(cfg: Config, device: torch.device, image_size: int | None = None, per_class: int | None = None):
    """Training subset (``per_class`` per class, seed 0) and the whole test set, resized.

    ``normalization="paper"`` maps pixel values p in [0, 1] to (p - 0.5)/0.5 like the paper's
    code; ``"dataset"`` keeps :func:`utils.data.load_dataset`'s (p - 0.286)/0.353.
    Returns X (N, 1, s, s), y (N,), Xt, yt.
    """
    if cfg.normalization not in ("paper", "dataset"):
        raise ValueError(f"normalization must be 'paper' or 'dataset', got {cfg.normalization!r}")
    s = image_size or cfg.image_size
    X, y = load_dataset("fashion-mnist", train=True, device=device, resize=s,
                        per_class=per_class or cfg.per_class, seed=0)
    Xt, yt = load_dataset("fashion-mnist", train=False, device=device, resize=s)
    if cfg.smoke:
        keep = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))[:300].to(yt.device)
        Xt, yt = Xt[keep], yt[keep]
    if cfg.normalization == "paper":
        (mean,), (std,) = _STATS["fashion-mnist"]
        X, Xt = ((Z * std + mean - 0.5) / 0.5 for Z in (X, Xt))
    return X, y, Xt, yt


def fuzziness_profile(features: list[torch.Tensor], y: torch.Tensor) -> list[list[float]]:
    """D_l per model: ``features`` are L+2 tensors (R, N, d) -> R lists of L+2 values."""
    return [[separation_fuzziness(F[r], y) for F in features] for r in range(features[0].shape[0])]


def law(D: list[float], with_input: bool = True) -> dict:
    """Fit of ``log D_l = a + l log rho``: over ``l = 0..L+1`` (input included, the paper's fit)
    or over the blocks ``l = 1..L+1`` only. Returns ``pearson``, ``rho``, ``slope``, ``intercept``
    and ``layers_fitted`` (layers whose D_l is positive and finite; normally all of them)."""
    ls = [l for l in range(0 if with_input else 1, len(D)) if math.isfinite(D[l]) and D[l] > 0]
    if len(ls) < 2:  # numerically degenerate features everywhere (only seen at smoke scale)
        return {"pearson": 0.0, "slope": 0.0, "intercept": 0.0, "rho": 1.0, "layers_fitted": len(ls)}
    # a non-positive D_l (rank-deficient class means, float round-off) is left out of the fit
    return {**equi_separation_fit([D[l] for l in ls], layers=ls), "layers_fitted": len(ls)}


def layer_ratios(D: list[float]) -> list[float]:
    """Per-layer reduction ratios D_{l+1}/D_l, l = 0..L (a perfect law: all equal to rho)."""
    return [b / a if a > 0 and b > 0 else 1.0 for a, b in zip(D[:-1], D[1:])]


def idle_layers(D: list[float], share: float = 0.5) -> list[int]:
    """Layers l (1-based, the layer that maps D_{l-1} to D_l) whose log-reduction log(D_{l-1}/D_l)
    is below ``share`` times the mean log-reduction: the layers "not pulling their weight"."""
    red = [math.log(a / b) if a > 0 and b > 0 else 0.0 for a, b in zip(D[:-1], D[1:])]
    mean = sum(red) / len(red)
    return [l + 1 for l, r in enumerate(red) if r < share * mean]


def _row(D, D_test, D_eval, **info) -> dict:
    fit_in, fit_blocks = law(D), law(D, with_input=False)
    return {**info, "D": D, "D_test": D_test, "D_eval": D_eval,
            "pearson": fit_in["pearson"], "rho": fit_in["rho"], "slope": fit_in["slope"],
            "intercept": fit_in["intercept"],
            "pearson_blocks": fit_blocks["pearson"], "rho_blocks": fit_blocks["rho"],
            "pearson_test": law(D_test)["pearson"], "rho_test": law(D_test)["rho"],
            "pearson_eval": law(D_eval)["pearson"],
            "ratios": layer_ratios(D), "total_reduction": D[1] / D[-1], "idle_layers": idle_layers(D)}


def train_group(cfg: Config, data, layer_num: int, specs: list[dict], epochs: int, milestones,
                batchnorm: bool = True, nonlinear: bool = True, snapshots: tuple[int, ...] = (),
                progress: bool = True, desc: str = "", checkpoint=None, key: str = "",
                init: str = "torch") -> list[dict]:
    """Train the models ``specs`` (dicts with ``optimizer``, ``lr``, ``seed``) of one architecture
    and measure each: D_l on training data (BatchNorm with batch statistics, the paper's way), on
    test data (same), on training data in eval mode; accuracies; snapshots of D_l.
    ``init``: ``"torch"`` (PyTorch's default, the paper's) or ``"he"`` (He-uniform, zero biases).

    All the models are trained together as one :class:`BatchedMLP` (per-model optimiser,
    learning rate and batch order; :func:`utils.batched.fit_many`); rows come back in ``specs`` order.
    """
    X, y, Xt, yt = data
    seeds = [s["seed"] for s in specs]
    model = BatchedMLP(len(specs), X[0].numel(), cfg.width, layer_num, int(y.max()) + 1,
                       batchnorm=batchnorm, nonlinear=nonlinear, init=init, seeds=seeds).to(X.device)
    snaps: dict[int, list[list[float]]] = {}
    if 0 in snapshots:
        snaps[0] = fuzziness_profile(model.features(X, bn="batch"), y)

    def callback(epoch, m):
        if epoch in snapshots:
            snaps[epoch] = fuzziness_profile(m.features(X, bn="batch"), y)

    hists = fit_many(model, X, y, epochs, optimizer=[s["optimizer"] for s in specs], lr=[s["lr"] for s in specs],
                     weight_decay=cfg.weight_decay, milestones=milestones, batch_size=cfg.batch_size,
                     seeds=seeds, callback=callback if snapshots else None, progress=progress, desc=desc,
                     checkpoint=checkpoint, checkpoint_key=key or "fit_many")
    D = fuzziness_profile(model.features(X, bn="batch"), y)
    Dt = fuzziness_profile(model.features(Xt, bn="batch"), yt)
    De = fuzziness_profile(model.features(X, bn="running"), y)
    tr, te = accuracy_many(model, X, y), accuracy_many(model, Xt, yt)
    rows = []
    for r, s in enumerate(specs):
        row = _row(D[r], Dt[r], De[r], depth=layer_num + 2, layer_num=layer_num, optimizer=s["optimizer"],
                   lr=s["lr"], seed=s["seed"], epochs=epochs, batchnorm=batchnorm, nonlinear=nonlinear, init=init,
                   train_acc=tr[r], test_acc=te[r], final_loss=hists[r].loss[-1],
                   train_acc_history=hists[r].accuracy[:: max(1, epochs // 50)])
        if snapshots:
            row["snapshots"] = {str(e): snaps[e][r] for e in sorted(snaps)}
        rows.append(row)
    return rows


def conv_net(arch: str, cfg: Config) -> torch.nn.Module:
    if arch == "cnn":
        return BlockCNN(1, 10, channels=cfg.conv_channels, num_blocks=cfg.conv_blocks,
                        image_size=cfg.conv_image_size)
    if arch == "resnet":
        return BlockResNet(1, 10, channels=cfg.conv_channels // 2 or 1, num_blocks=cfg.conv_blocks,
                           image_size=cfg.conv_image_size)
    raise ValueError(f"unknown convolutional architecture {arch!r}; choose 'cnn' or 'resnet'")


def train_conv(cfg: Config, data, arch: str, seed: int, progress: bool, checkpoint=None) -> dict:
    """One CNN / residual network (Adam, ``conv_lr``), measured block by block, input included."""
    X, y, Xt, yt = data
    torch.manual_seed(seed)
    model = conv_net(arch, cfg).to(X.device)
    m1, m2 = cfg.conv_epochs // 3, 2 * cfg.conv_epochs // 3
    hist = fit(model, X, y, cfg.conv_epochs, optimizer="adam", lr=cfg.conv_lr, weight_decay=cfg.weight_decay,
               milestones=(m1, m2), batch_size=cfg.batch_size, seed=seed, progress=progress,
               desc=f"{arch}, seed {seed}", cuda_graph=False, checkpoint=checkpoint,
               checkpoint_key=f"{arch}_{seed}")
    D = [separation_fuzziness(F, y) for F in model.features(X, bn="batch")]
    De = [separation_fuzziness(F, y) for F in model.features(X, bn="running")]
    fit_in = law(D)
    return {"arch": arch, "seed": seed, "epochs": cfg.conv_epochs, "lr": cfg.conv_lr, "blocks": len(D) - 1,
            "train_acc": accuracy(model, X, y), "test_acc": accuracy(model, Xt, yt),
            "final_loss": hist.loss[-1], "D": D, "D_eval": De, "pearson": fit_in["pearson"], "rho": fit_in["rho"],
            "pearson_blocks": law(D, with_input=False)["pearson"], "pearson_eval": law(De)["pearson"],
            "ratios": layer_ratios(D)}


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
@dataclass
class Result(JsonResult):
    """Everything the chapter shows. ``runs``: one row per MLP of the grid (``D`` over l = 0..L+1,
    ``D_test``, ``D_eval``, fits, ratios, accuracies; depth-8 rows carry ``snapshots``);
    ``controls``: no-BatchNorm and linear rows; ``sweep``: the depth-8 Adam learning-rate sweep;
    ``convnets``: CNN / residual rows."""

    config: dict
    runs: list = field(default_factory=list)
    controls: list = field(default_factory=list)
    sweep: list = field(default_factory=list)
    convnets: list = field(default_factory=list)


def run(config: Config, device: torch.device, progress: bool = True) -> Result:
    """Train and measure everything the profile asks for (see :class:`Config`)."""
    # the nine networks of a depth as one batched model: two threads beat one (48 s vs 54 s, quick)
    with torch_threads(None, device):
        return _run(config, device, progress)


def _checkpoint(cfg: Config):
    if cfg.profile != "paper":
        return None
    from .checkpoint import Checkpoint
    return Checkpoint.for_experiment(EXPERIMENT, "paper" + ("_smoke" if cfg.smoke else ""))


def _cached(ck, key: str, job):
    if ck is not None and ck.done(key) is not None:
        return ck.done(key)
    out = job()
    return ck.record(key, out) if ck is not None else out


def _run(cfg: Config, device: torch.device, progress: bool) -> Result:
    data = load_data(cfg, device)
    ck = _checkpoint(cfg)
    result = Result(config=asdict(cfg))
    grid = cfg.grid()
    for L in progress_bar(sorted({L for L, _ in grid}), desc="depths", enabled=progress):
        specs = [{"optimizer": opt, "lr": PAPER_LR[opt][LAYER_NUMS.index(L)], "seed": s}
                 for Lx, opt in grid if Lx == L for s in cfg.seeds]
        key = f"grid_L{L}"
        result.runs += _cached(ck, key, lambda: train_group(
            cfg, data, L, specs, cfg.epochs, cfg.milestones, snapshots=cfg.snapshot_epochs if L == 6 else (),
            progress=progress, desc=f"depth {L + 2}: {len(specs)} networks", checkpoint=ck, key=key))
    L8 = 6
    ms = tuple(m for m in cfg.milestones if m < cfg.control_epochs)
    for name, lr, kw in (("no BatchNorm", cfg.nobn_lr, {"batchnorm": False, "init": cfg.nobn_init}),
                         ("linear (no ReLU)", cfg.linear_lr, {"nonlinear": False})):
        spec = [{"optimizer": cfg.control_optimizer, "lr": lr, "seed": cfg.seeds[0]}]
        key = "control_" + ("no_bn" if "batchnorm" in kw else "linear")
        rows = _cached(ck, key, lambda: train_group(cfg, data, L8, spec, cfg.control_epochs, ms, progress=progress,
                                                    desc=name, checkpoint=ck, key=key, **kw))
        result.controls += [{"control": name, **r} for r in rows]
    if cfg.sweep_lrs:
        specs = [{"optimizer": "adam", "lr": lr, "seed": cfg.seeds[0]} for lr in cfg.sweep_lrs]
        result.sweep = _cached(ck, "sweep", lambda: train_group(
            cfg, data, L8, specs, cfg.epochs, cfg.milestones, progress=progress, desc="Adam learning-rate sweep",
            checkpoint=ck, key="sweep"))
    if cfg.conv_archs:
        conv_data = load_data(cfg, device, image_size=cfg.conv_image_size, per_class=cfg.conv_per_class)
        for arch in cfg.conv_archs:
            for seed in cfg.conv_seeds:
                result.convnets.append(_cached(ck, f"{arch}_{seed}", lambda: train_conv(
                    cfg, conv_data, arch, seed, progress, checkpoint=ck)))
    return result


# ---------------------------------------------------------------------------------------------
# Summaries used by the claims and the notebook (pure functions of the results dict)
# ---------------------------------------------------------------------------------------------
def _median_pearson(results: dict, depth: int, optimizer: str, key: str = "pearson") -> float:
    vals = [r[key] for r in results["runs"] if r["depth"] == depth and r["optimizer"] == optimizer]
    if not vals:
        raise KeyError(f"no depth-{depth} {optimizer} runs")
    return float(median(vals))


def accuracy_correlations(results: dict, fit_threshold: float = 0.99) -> list[dict[str, Any]]:
    """Pearson correlation, across networks, between the law's straightness (Pearson(l, log D_l))
    and test accuracy: over every network of the grid, over those that fit their training data
    (train acc. >= ``fit_threshold``, the paper's "networks that all fit"), and within each depth.
    Rows ``{"networks": str, "count": int, "correlation": float | None}`` (None below 3 networks)."""
    def corr(rows):
        if len(rows) < 3:
            return None
        return float(np.corrcoef([r["pearson"] for r in rows], [r["test_acc"] for r in rows])[0, 1])

    runs = results["runs"]
    groups = [("all networks", runs),
              (f"those fitting their training data (train acc. >= {fit_threshold:g})",
               [r for r in runs if r["train_acc"] >= fit_threshold])]
    groups += [(f"depth {d} only", [r for r in runs if r["depth"] == d]) for d in sorted({r["depth"] for r in runs})]
    return [{"networks": name, "count": len(rows), "correlation": corr(rows)} for name, rows in groups]


def law_summary(results: dict) -> dict:
    """Median (over seeds) Pearson(l, log D_l), input included, at depths 4 and 8 per optimiser."""
    opts = [o for o in ("sgd", "momentum", "adam")
            if any(r["optimizer"] == o and r["depth"] in (4, 8) for r in results["runs"])]
    out = {f"depth {d}, {o}": _median_pearson(results, d, o) for d in (4, 8) for o in opts}
    if len(out) < 6:
        raise KeyError(f"the law needs depths 4 and 8 with sgd, momentum and adam; the results have {sorted(out)}")
    return out


def emergence_summary(results: dict) -> dict:
    """Median Pearson of the depth-8 networks at initialisation and at the last epoch."""
    rows = [r for r in results["runs"] if r["depth"] == 8 and "snapshots" in r]
    if not rows:
        raise KeyError("no depth-8 snapshots")
    first = [law(r["snapshots"]["0"])["pearson"] for r in rows]
    last = [r["pearson"] for r in rows]
    return {"init": float(median(first)), "end": float(median(last))}


def controls_summary(results: dict) -> dict:
    c = {r["control"]: r for r in results["controls"]}
    nobn, lin = c["no BatchNorm"], c["linear (no ReLU)"]
    return {"no_bn_train_acc": nobn["train_acc"], "no_bn_pearson": nobn["pearson"],
            "linear_pearson": lin["pearson"], "linear_train_acc": lin["train_acc"]}


def cnn_summary(results: dict) -> dict:
    """Median Pearson (input included) of the CNN runs and, when present, of the residual networks."""
    rows = [r for r in results["convnets"] if r["arch"] == "cnn"]
    if not rows:
        raise KeyError("no CNN runs")
    out = {"cnn": float(median(r["pearson"] for r in rows))}
    res = [r for r in results["convnets"] if r["arch"] == "resnet"]
    if res:
        out["resnet"] = float(median(r["pearson"] for r in res))
    return out


def cnn_claim_summary(results: dict) -> dict:
    """:func:`cnn_summary` with the lowest training accuracy of those networks (``min_train_acc``):
    the law is a statement about trained networks."""
    return cnn_summary(results) | {"min_train_acc": float(min(r["train_acc"] for r in results["convnets"]))}


CLAIMS = [
    Claim(id="es.law", chapter=EXPERIMENT,
          statement="After training, log D_l falls close to a straight line in the layer index l (input included) "
                    "at depths 4 and 8 for SGD, SGD with momentum and Adam: Pearson <= -0.95, where the paper's "
                    "panels reach about -0.99 (depth 4 does here; depth 8 comes close).",
          source=f"{PAPER}, Fig. 2 (Fashion-MNIST 10x10, widths 100, depths 4/8/20, three optimisers)",
          paper_value="Pearson correlations about -0.99 or closer to -1 in every panel",
          criterion="median over seeds of Pearson(l, log D_l), l = 0..L+1, <= -0.95 for all six (depth, optimiser)",
          check=law_summary, holds=lambda m: max(m.values()) <= -0.95),
    Claim(id="es.emerges", chapter=EXPERIMENT,
          statement="The law is learned: at initialisation D_l does not decay with depth (Pearson >= 0); after "
                    "training it decays geometrically (Pearson <= -0.95) at depth 8.",
          source=f"{PAPER}, Fig. 3 (the law emerges during training)",
          paper_value="no decay at initialisation; Pearson near -1 at the end of training",
          criterion="median Pearson of the depth-8 networks >= 0 at epoch 0 and <= -0.95 at the last epoch",
          check=emergence_summary, holds=lambda m: m["init"] >= 0 and m["end"] <= -0.95),
    Claim(id="es.controls", chapter=EXPERIMENT,
          statement="Without BatchNorm the depth-8 MLP (He initialisation, Adam) still fits its training data and "
                    "its law is reported; without ReLUs (a linear network, Adam 3e-5 as in the paper's figure) "
                    "there is no geometric decay.",
          source=f"{PAPER}, SI figures for networks without BatchNorm and linearised networks",
          paper_value="no-BatchNorm: the law holds more loosely; linear network: no law",
          criterion="no-BatchNorm training accuracy >= 0.99 (its Pearson reported) and linear Pearson > -0.9",
          check=controls_summary, holds=lambda m: m["no_bn_train_acc"] >= 0.99 and m["linear_pearson"] > -0.9,
          expected=False,
          reason="the no-BatchNorm half holds (train acc. 0.993 at 600 epochs, 1.0 at 150), but the linear network's "
                 "D_l also decays steadily once trained for the paper's 600 epochs (Pearson -0.96 in the full run; "
                 "-0.72 after the quick run's 150 epochs), so straightness alone does not separate it from the law"),
    Claim(id="es.cnn", chapter=EXPERIMENT,
          statement="Measured block by block, a convolutional network's fuzziness decays geometrically too.",
          source=f"{PAPER}, Fig. 5 (VGG, AlexNet and residual networks on Fashion-MNIST)",
          paper_value="Pearson about -0.98 or closer to -1 for the convolutional and residual networks",
          criterion="median Pearson(l, log D_l), input included, <= -0.95 (the MLPs' bar) for the CNN and "
                    "(when trained) the residual network, every one of them fitting its training data "
                    "(train acc. >= 0.99)",
          check=cnn_claim_summary,
          holds=lambda m: max(v for k, v in m.items() if k != "min_train_acc") <= -0.95 and m["min_train_acc"] >= 0.99,
          fails_in=("quick",),
          reason="the quick profile trains the small CNN for 30 epochs only: it does not fit its training data "
                 "(train acc. 0.86), although its decay is straight (Pearson -0.96)"),
]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def _plotting():
    from .plotting import PALETTE, label, subplots
    return PALETTE, label, subplots


DEPTH_COLOURS = {4: 0, 8: 1, 20: 2}


def _first_seed_rows(results: dict, optimizer: str) -> list[dict]:
    seed0 = min(r["seed"] for r in results["runs"])
    return [r for r in results["runs"] if r["optimizer"] == optimizer and r["seed"] == seed0]


def _draw_law(ax, D, color, name, PALETTE=None, marker="o"):
    D = np.asarray(D)
    fit_ = law(list(D))
    ls = np.arange(len(D))
    ax.semilogy(ls, D, marker, color=color, ms=4)
    ax.semilogy(ls, np.exp(fit_["intercept"] + fit_["slope"] * ls), "-", color=color, alpha=0.7,
                label=f"{name}: r={fit_['pearson']:.3f}, ρ={fit_['rho']:.2f}")


def plot_law(results: dict):
    """log D_l (l = 0 is the raw input) with the fitted line, one panel per optimiser."""
    PALETTE, label, subplots = _plotting()
    opts = [o for o in ("sgd", "momentum", "adam") if any(r["optimizer"] == o for r in results["runs"])]
    fig, axes = subplots(1, len(opts), width=min(4.4 * len(opts), 9.0), height=3.4, sharey=True)
    for ax, opt in zip(axes[0], opts):
        for row in sorted(_first_seed_rows(results, opt), key=lambda r: r["depth"]):
            _draw_law(ax, row["D"], PALETTE[DEPTH_COLOURS[row["depth"]]], f"depth {row['depth']}")
        label(ax, "layer l (0 = input)", "fuzziness D_l (unitless, log scale)", f"optimiser: {opt}")
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("Separation fuzziness after each layer, training data, with the least-squares line")
    return fig


def plot_ratios(results: dict):
    """Per-layer ratios D_{l+1}/D_l (median over the runs of a depth) against l; a perfect law is flat."""
    PALETTE, label, subplots = _plotting()
    fig, axes = subplots(1, 1, width=7, height=3.8)
    ax = axes[0, 0]
    for depth in sorted({r["depth"] for r in results["runs"]}):
        R = np.array([r["ratios"] for r in results["runs"] if r["depth"] == depth])
        med = np.median(R, axis=0)
        ls = np.arange(1, len(med) + 1)
        ax.plot(ls, med, "o-", color=PALETTE[DEPTH_COLOURS[depth]], ms=4,
                label=f"depth {depth} (median of {len(R)} networks)")
        if len(R) > 1:
            ax.fill_between(ls, R.min(0), R.max(0), color=PALETTE[DEPTH_COLOURS[depth]], alpha=0.15)
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    label(ax, "layer l (maps $D_{l-1}$ to $D_l$)", "ratio $D_l / D_{l-1}$ (unitless, log scale)",
          "Reduction factor of each layer (band: min to max over runs)")
    ax.legend(fontsize=8)
    return fig


def plot_emergence(results: dict):
    """Left: D_l of the first depth-8 SGD network at several epochs; right: Pearson and rho over epochs."""
    PALETTE, label, subplots = _plotting()
    import matplotlib
    row = next(r for r in _first_seed_rows(results, "sgd") if r["depth"] == 8)
    epochs = sorted(int(e) for e in row["snapshots"])
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = subplots(1, 2, width=9, height=3.6)
    ax = axes[0, 0]
    shown = epochs if len(epochs) <= 8 else [epochs[i] for i in np.linspace(0, len(epochs) - 1, 8).astype(int)]
    for i, e in enumerate(shown):
        D = row["snapshots"][str(e)]
        ax.semilogy(np.arange(len(D)), D, "o-", color=cmap(i / max(len(shown) - 1, 1)), ms=3, label=f"epoch {e}")
    label(ax, "layer l (0 = input)", "D_l (unitless, log scale)", "depth 8, SGD: D_l during training")
    ax.legend(ncol=2, fontsize=7)
    ax = axes[0, 1]
    for j, r in enumerate(rr for rr in results["runs"] if rr["depth"] == 8 and "snapshots" in rr):
        ps = [law(r["snapshots"][str(e)])["pearson"] for e in epochs]
        ax.plot(epochs, ps, "o-", ms=3, color=PALETTE[j % len(PALETTE)], label=f"{r['optimizer']}, seed {r['seed']}")
    ax.axhline(-1, color="grey", lw=0.8, ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(epochs) * 1.1)
    label(ax, "epoch (symmetric log scale)", "Pearson(l, log D_l) (unitless)", "straightness of the decay")
    ax.legend(fontsize=7, ncol=2)
    return fig


def draw_epoch(results: dict, epoch: int):
    """One frame of the explorable figure: log D_l of the depth-8 SGD network at ``epoch`` with its line."""
    from matplotlib.figure import Figure
    PALETTE, label, _ = _plotting()
    row = next(r for r in _first_seed_rows(results, "sgd") if r["depth"] == 8)
    fig = Figure(figsize=(6, 3.6), constrained_layout=True)
    ax = fig.add_subplot()
    D = row["snapshots"][str(epoch)]
    _draw_law(ax, D, PALETTE[1], f"epoch {epoch}")
    allD = np.concatenate([np.asarray(v) for v in row["snapshots"].values()])
    ax.set_ylim(allD.min() / 2, allD.max() * 2)
    label(ax, "layer l (0 = input)", "D_l (unitless, log scale)", f"depth 8, SGD, epoch {epoch}")
    ax.legend(loc="lower left")
    ax.grid(True, alpha=0.3)
    return fig


def plot_controls(results: dict):
    """Depth 8: the law (BatchNorm + ReLU) against the no-BatchNorm and linear controls."""
    PALETTE, label, subplots = _plotting()
    fig, axes = subplots(1, 1, width=6.5, height=3.8)
    ax = axes[0, 0]
    base = next(r for r in _first_seed_rows(results, "adam") if r["depth"] == 8)
    rows = [(base, "BatchNorm + ReLU, Adam " + f"{base['lr']:g}")] + [
        (c, f"{c['control']}, Adam {c['lr']:g}") for c in results["controls"]]
    for (row, name), color in zip(rows, PALETTE):
        _draw_law(ax, row["D"], color, f"{name} (train acc {row['train_acc']:.2f})")
    label(ax, "layer l (0 = input)", "D_l (unitless, log scale)", "depth 8: the law and two controls")
    ax.legend(fontsize=7, loc="lower left")
    return fig


def plot_train_test(results: dict):
    """D_l on training and on test data for the depth-8 networks of the first seed."""
    PALETTE, label, subplots = _plotting()
    fig, axes = subplots(1, 1, width=6.5, height=3.8)
    ax = axes[0, 0]
    for j, opt in enumerate(o for o in ("sgd", "momentum", "adam") if _first_seed_rows(results, o)):
        rows = [r for r in _first_seed_rows(results, opt) if r["depth"] == 8]
        if not rows:
            continue
        r = rows[0]
        ls = np.arange(len(r["D"]))
        ax.semilogy(ls, r["D"], "o-", color=PALETTE[j], ms=3, label=f"{opt}: training data")
        ax.semilogy(ls, r["D_test"], "s--", color=PALETTE[j], ms=3, alpha=0.7,
                    label=f"{opt}: test data (r={r['pearson_test']:.2f})")
    label(ax, "layer l (0 = input)", "D_l (unitless, log scale)", "depth 8: training vs held-out test data")
    ax.legend(fontsize=7)
    return fig


def plot_practical(results: dict):
    """The paper's practical reading: straightness of the law against test accuracy."""
    PALETTE, label, subplots = _plotting()
    fig, axes = subplots(1, 2, width=9, height=3.6)
    ax = axes[0, 0]
    if results["sweep"]:
        sw = sorted(results["sweep"], key=lambda r: r["lr"])
        lrs = [r["lr"] for r in sw]
        ax.plot(lrs, [r["pearson"] for r in sw], "o-", color=PALETTE[0], label="Pearson(l, log D_l)")
        ax.set_xscale("log")
        ax2 = ax.twinx()
        ax2.plot(lrs, [r["test_acc"] for r in sw], "s--", color=PALETTE[1], label="test accuracy")
        ax2.set_ylabel("test accuracy (fraction)")
        ax2.grid(False)
        label(ax, "Adam learning rate", "Pearson (unitless)", "depth 8, Adam: learning-rate sweep")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center left")
    ax = axes[0, 1]
    for depth in sorted({r["depth"] for r in results["runs"]}):
        rows = [r for r in results["runs"] if r["depth"] == depth]
        ax.plot([r["pearson"] for r in rows], [r["test_acc"] for r in rows], "o", ms=5,
                color=PALETTE[DEPTH_COLOURS[depth]], label=f"depth {depth}")
    label(ax, "Pearson(l, log D_l) (unitless)", "test accuracy (fraction)", "every network of the grid")
    ax.legend(fontsize=8)
    return fig


def plot_convnets(results: dict):
    """Block-by-block D_l of the convolutional and residual networks (first seed of each)."""
    PALETTE, label, subplots = _plotting()
    fig, axes = subplots(1, 1, width=6.5, height=3.8)
    ax = axes[0, 0]
    for j, arch in enumerate(a for a in ("cnn", "resnet") if any(r["arch"] == a for r in results["convnets"])):
        r = next(r for r in results["convnets"] if r["arch"] == arch)
        _draw_law(ax, r["D"], PALETTE[j], {"cnn": "CNN", "resnet": "residual network"}[arch])
    label(ax, "block l (0 = input)", "D_l (unitless, log scale)", "Fashion-MNIST 28x28, block by block")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def runs_table_rows(results: dict, key: str = "runs") -> list[dict[str, Any]]:
    """Rows for :func:`utils.tables.table` (one per network)."""
    return [{k: r.get(k) for k in ("depth", "optimizer", "lr", "seed", "train_acc", "test_acc", "pearson",
                                   "pearson_blocks", "pearson_test", "pearson_eval", "rho", "total_reduction")}
            | ({"control": r["control"]} if "control" in r else {}) for r in results[key]]
