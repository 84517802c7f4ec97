"""Training on noisily labelled data: symmetric label noise and the two regularisers of
Hu, Li & Yu (ICLR 2020), "Simple and effective regularization methods for training on
noisily labeled data with generalization guarantee".

The paper trains a network ``f(theta, .)`` on inputs ``X`` with noisy labels ``y~`` under the
squared loss and proposes

* **distance to initialisation (RDI)**:
  ``L_RDI(theta) = 1/2 ||f(theta, X) - y~||^2 + lambda^2/2 ||theta - theta(0)||^2``;
* **auxiliary variables (AUX)**: one trainable offset ``b_i`` per training example, initialised
  at zero and added to the output during training only,
  ``L_AUX(theta, b) = 1/2 ||f(theta, X) + lambda b - y~||^2``; at test time ``b`` is dropped.

In the kernel (NTK) regime both are kernel ridge regression with ridge ``lambda^2``:
``f(x) = k(x, X)^T (K + lambda^2 I)^{-1} y~``.

Here the sums over the ``n`` training examples are divided by ``n`` (mean losses over a batch, as
:func:`utils.train.fit` uses), so the distance penalty becomes ``lambda^2 / (2 n) ||theta - theta(0)||^2``;
the minimisers and the kernel-ridge limit are unchanged, and ``lambda`` means the same thing for
both methods.  Multi-class labels are one-hot vectors ``e_y`` in ``R^K`` and ``b_i`` lives in ``R^K``.

Single runs use :func:`utils.train.fit` with :func:`distance_to_init_penalty` (``penalty=``) or
:func:`auxiliary_loss` (``loss_fn=`` and ``extra_params=``).  The chapter's sweep (methods x lambda x
noise rate x seed) trains every run side by side as one :class:`~utils.models.BatchedMLP` whose outputs are
``(R, B, K)``, through the same ``fit`` (:func:`train_sweep`).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import Checkpoint
from .claims import Claim
from .experiment import JsonResult, check_profile, mlp_memory_bytes
from .models import BatchedMLP
from .plotting import PALETTE, label, subplots
from .profiles import torch_threads
from .train import fit

EXPERIMENT = "noisy_labels"

METHODS = ("plain", "early_stopping", "distance_to_init", "auxiliary")


# --------------------------------------------------------------------------------------------
# label noise
# --------------------------------------------------------------------------------------------
def as_rate(noise_rate: Any) -> float:
    """``noise_rate`` as a Python float in [0, 1): accepts Python, NumPy and 0-d tensor scalars.

    Raises:
        ValueError: not a real scalar (e.g. a list, a string, a bool, a tensor with several entries),
            not finite, or outside [0, 1).
    """
    value = noise_rate
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"noise_rate must be one number in [0, 1), got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"noise_rate must be a number in [0, 1) (float, NumPy or 0-d tensor scalar), "
                         f"got {noise_rate!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"noise_rate must lie in [0, 1), got {noise_rate!r}")
    return value


def inject_symmetric_noise(y: torch.Tensor, noise_rate: float, num_classes: int,
                           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(noise_rate * N)`` labels, each to a class drawn uniformly among the others.

    Args:
        y: (N,) integer labels in ``0..num_classes-1``.
        noise_rate: fraction ``p`` in [0, 1) of labels to flip (a Python, NumPy or 0-d tensor scalar).
        num_classes: K >= 2.
        seed: seeds which labels flip and to what (CPU generator; repeatable).
    Returns:
        noisy: (N,) labels, on ``y``'s device; flipped: (N,) bool mask of the changed labels.
    Raises:
        ValueError: ``noise_rate`` outside [0, 1), K < 2, ``y`` not 1-D or labels out of range.
    """
    noise_rate = as_rate(noise_rate)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 to flip a label, got {num_classes}")
    if y.dim() != 1:
        raise ValueError(f"y must be a 1-D tensor of labels, got shape {tuple(y.shape)}")
    y_cpu = y.detach().cpu().long()
    if len(y_cpu) and (y_cpu.min() < 0 or y_cpu.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got range "
                         f"[{int(y_cpu.min())}, {int(y_cpu.max())}]")
    n = len(y_cpu)
    num_flips = int(round(noise_rate * n))
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=g)[:num_flips]
    shift = torch.randint(1, num_classes, (num_flips,), generator=g)  # 1..K-1: never the same class
    noisy = y_cpu.clone()
    noisy[chosen] = (y_cpu[chosen] + shift) % num_classes
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[chosen] = True
    return noisy.to(y.device), flipped.to(y.device)


# --------------------------------------------------------------------------------------------
# losses and the two regularisers (single run, through utils.train.fit)
# --------------------------------------------------------------------------------------------
def squared_loss(outputs: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``1/2 ||f(x_i) - e_{y_i}||^2``.

    outputs: (B, K) or (R, B, K); targets: (B,) labels (or (R, B) for per-run labels).
    With (R, B, K) outputs the per-run means are summed, so the runs' gradients stay separate.
    """
    onehot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
    per_example = 0.5 * (outputs - onehot).pow(2).sum(-1)  # (B,) or (R, B)
    return per_example.mean(-1).sum()


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the batch; outputs (B, K) or (R, B, K) (per-run means summed), targets (B,) or (R, B)."""
    if outputs.dim() == 3:
        if targets.dim() == 1:
            targets = targets.unsqueeze(0).expand(outputs.shape[0], -1)
        per_example = F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none")  # (R, B)
        return per_example.mean(-1).sum()
    return F.cross_entropy(outputs, targets)


LOSSES = {"squared": squared_loss, "cross_entropy": cross_entropy}


def distance_to_init_penalty(model: nn.Module, lam: float, num_train: int) -> Callable[[nn.Module], torch.Tensor]:
    """``penalty(model) = lam^2 / (2 n) * ||theta - theta(0)||^2`` with ``theta(0)`` the current parameters.

    The paper's ``lambda^2/2 ||theta - theta(0)||^2`` added to the summed squared loss, divided by
    the number ``n`` of training examples (``fit`` minimises mean losses).  Pass it as
    ``fit(..., penalty=distance_to_init_penalty(model, lam, len(X)))``.
    Raises:
        ValueError: negative ``lam`` or ``num_train < 1``.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lambda must be a finite non-negative number, got {lam}")
    if num_train < 1:
        raise ValueError(f"num_train must be at least 1, got {num_train}")
    initial = [p.detach().clone() for p in model.parameters()]
    scale = lam ** 2 / (2.0 * num_train)

    def penalty(m: nn.Module) -> torch.Tensor:
        sq = sum((p - p0).pow(2).sum() for p, p0 in zip(m.parameters(), initial))
        return scale * sq

    return penalty


def auxiliary_loss(num_train: int, num_classes: int, lam: float, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[Callable, torch.Tensor]:
    """The AUX method: a trainable offset ``b_i`` in ``R^K`` per example, zero at the start.

    Returns ``(loss_fn, offsets)``: ``loss_fn(outputs, targets, idx)`` is the mean over the batch of
    ``1/2 ||f(x_i) + lam * b_i - e_{y_i}||^2`` and ``offsets`` is the (n, K) tensor to pass as
    ``fit(..., loss_fn=loss_fn, extra_params=[offsets])``.  Train with ``sgd`` or ``momentum``
    (the same update rule for ``b`` and ``theta``, as in the paper's gradient descent).
    Raises:
        ValueError: negative ``lam``, ``num_train < 1`` or ``num_classes < 2``.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lambda must be a finite non-negative number, got {lam}")
    if num_train < 1 or num_classes < 2:
        raise ValueError(f"need num_train >= 1 and num_classes >= 2, got {num_train}, {num_classes}")
    offsets = torch.zeros(num_train, num_classes, device=device, dtype=dtype, requires_grad=True)

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return squared_loss(outputs + lam * offsets[idx], targets)

    return loss_fn, offsets


# --------------------------------------------------------------------------------------------
# many runs side by side
# --------------------------------------------------------------------------------------------
def batched_mlp(in_dim: int, width: int, hidden_layers: int, num_classes: int, seeds: Sequence[int],
                device: torch.device | str = "cpu") -> BatchedMLP:
    """R ReLU MLPs ``d -> w (x hidden_layers) -> K`` side by side: :class:`utils.models.BatchedMLP`
    without BatchNorm, run ``r`` starting exactly where ``FeatureMLP`` built after
    ``torch.manual_seed(seeds[r])`` would (PyTorch's default init; the global RNG is left untouched).
    Outputs (R, B, K) for shared inputs (B, ...)."""
    if len(seeds) < 1:
        raise ValueError("seeds must name at least one run")
    if hidden_layers < 1:
        raise ValueError(f"hidden_layers must be at least 1, got {hidden_layers}")
    return BatchedMLP(len(seeds), in_dim, width, hidden_layers - 1, num_classes, batchnorm=False,
                      init="torch", seeds=seeds).to(device)


@dataclass
class RunSpec:
    """One training run of the sweep: its regulariser, strength, noise rate and seed."""

    method: str  # "plain" (also gives early stopping), "distance_to_init" or "auxiliary"
    lam: float
    noise: float
    seed: int


def sweep_specs(lambdas_rdi: Sequence[float], lambdas_aux: Sequence[float], noise_rates: Sequence[float],
                seeds: Sequence[int], clean: bool = False) -> list[RunSpec]:
    """Every (method, lambda) x noise x seed combination, method-major; ``plain`` has lambda 0.

    ``clean=True`` adds plain training on the clean labels (noise 0) for every seed, first: the
    clean-label baseline.  Method-major order keeps each regulariser's runs contiguous, so
    :class:`BatchedObjective` touches only a slice of the stacked parameters.
    """
    base = [RunSpec("plain", 0.0, 0.0, int(s)) for s in seeds] if clean else []
    methods = [("plain", 0.0)] + [("distance_to_init", float(l)) for l in lambdas_rdi] + \
              [("auxiliary", float(l)) for l in lambdas_aux]
    return base + [RunSpec(m, l, float(p), int(s)) for m, l in methods for p in noise_rates for s in seeds]


def _block(indices: list[int]) -> slice | torch.Tensor:
    """A slice when ``indices`` are contiguous (a cheap view), else an index tensor."""
    if indices == list(range(indices[0], indices[-1] + 1)):
        return slice(indices[0], indices[-1] + 1)
    return torch.tensor(indices)


class BatchedObjective:
    """Loss and penalty of R runs trained side by side (plain, RDI or AUX per run).

    ``loss(outputs, targets, idx)``: outputs (R, B, K), targets (B, R) per-run noisy labels; returns
    ``sum_r mean_i 1/2 ||f_r(x_i) + lam_r b_{r,i} - e_{y_{r,i}}||^2`` (AUX runs only carry ``b``).
    ``penalty(model)``: ``sum_r lam_r^2 / (2 n) ||theta_r - theta_r(0)||^2`` over the RDI runs.
    ``offsets``: (R_aux, n, K) auxiliary variables of the AUX runs, zero at the start.
    """

    def __init__(self, model: BatchedMLP, specs: Sequence[RunSpec], num_train: int, num_classes: int,
                 loss: str = "squared"):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {tuple(LOSSES)}")
        if any(s.lam < 0 for s in specs):
            raise ValueError("lambda must be non-negative for every run")
        self.base_loss = LOSSES[loss]
        device = model.weights[0].device
        rdi = [r for r, s in enumerate(specs) if s.method == "distance_to_init"]
        aux = [r for r, s in enumerate(specs) if s.method == "auxiliary"]
        self.rdi = _block(rdi) if rdi else None
        self.aux = _block(aux) if aux else None
        self.rdi_scale = torch.tensor([specs[r].lam ** 2 / (2.0 * num_train) for r in rdi], device=device)
        self.lam_aux = torch.tensor([specs[r].lam for r in aux], device=device).view(-1, 1, 1)
        self.initial = [p[self.rdi].detach().clone() for p in model.parameters()] if rdi else []
        self.offsets = torch.zeros(len(aux), num_train, num_classes, device=device, requires_grad=bool(aux))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.aux is not None:
            outputs = outputs.clone()
            outputs[self.aux] = outputs[self.aux] + self.lam_aux * self.offsets[:, idx]
        return self.base_loss(outputs, targets.t())

    def penalty(self, model: BatchedMLP) -> torch.Tensor:
        if self.rdi is None:
            return torch.zeros((), device=self.rdi_scale.device)
        sq = sum((p[self.rdi] - p0).pow(2).flatten(1).sum(1) for p, p0 in zip(model.parameters(), self.initial))
        return (self.rdi_scale * sq).sum()

    @torch.no_grad()
    def add_penalty_grad(self, model: BatchedMLP) -> None:
        """Add the gradient of :meth:`penalty`, ``lam_r^2 / n (theta_r - theta_r(0))``, to the RDI runs'
        ``.grad`` in place (``fit(..., penalty_grad=objective.add_penalty_grad)``): the same update
        as ``penalty=objective.penalty`` without a full-size zero-filled gradient per parameter."""
        if self.rdi is None:
            return
        coef = 2.0 * self.rdi_scale
        for p, p0 in zip(model.parameters(), self.initial):
            diff = (p[self.rdi] - p0).mul_(coef.view(-1, *([1] * (p.dim() - 1))))
            if isinstance(self.rdi, slice):
                p.grad[self.rdi].add_(diff)
            else:
                p.grad.index_add_(0, self.rdi.to(p.device), diff)

    @property
    def extra_params(self) -> list[torch.Tensor]:
        return [self.offsets] if self.aux is not None else []


@torch.no_grad()
def batched_predictions(model: nn.Module, X: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """(R, N) argmax predictions of every run on X: (N, ...)."""
    return torch.cat([model(X[start:start + chunk_size]).argmax(-1)
                      for start in range(0, X.shape[0], chunk_size)], dim=1)


def batched_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(R,) accuracy of each run. predictions: (R, N); labels: (N,) shared or (N, R) per-run labels."""
    labels = labels.unsqueeze(0) if labels.dim() == 1 else labels.t()
    return (predictions == labels).double().mean(1)


def evaluation_epochs(epochs: int, dense_until: int, every: int) -> list[int]:
    """Epochs at which curves are recorded: 0..dense_until each, then every ``every``, and the last."""
    if every < 1 or dense_until < 0:
        raise ValueError(f"need every >= 1 and dense_until >= 0, got {every}, {dense_until}")
    picked = set(range(0, min(dense_until, epochs) + 1)) | set(range(0, epochs + 1, every)) | {epochs}
    return sorted(picked)


def train_sweep(specs: Sequence[RunSpec], X: torch.Tensor, y: torch.Tensor, X_val: torch.Tensor,
                y_val: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor, *, width: int,
                hidden_layers: int, num_classes: int, epochs: int, lr: float, batch_size: int,
                optimizer: str = "momentum", loss: str = "squared", milestones: Sequence[int] = (),
                gamma: float = 0.1, dense_until: int = 10, eval_every: int = 1, seed: int = 0,
                progress: bool = True, checkpoint: Checkpoint | None = None,
                checkpoint_key: str = "sweep") -> dict:
    """Train every run of ``specs`` side by side and record its curves.

    Runs with the same ``spec.seed`` share their initialisation and, at a given noise rate, their
    noisy labels (:func:`inject_symmetric_noise` with ``spec.seed``), so methods are compared on the
    same draw (paired); all runs share the images and the batch order (``seed``).

    Args:
        X: (n, ...) training images; y: (n,) clean training labels.
        X_val, y_val: validation images and clean labels (noised per run; the early-stopping split).
        X_test, y_test: clean test set.
        checkpoint, checkpoint_key: passed to :func:`utils.train.fit` (the curves live in its history,
            so a resumed sweep keeps the epochs measured before the interruption).
    Returns:
        dict with ``epochs`` (E,), and per run (R, E) lists ``test_acc`` (clean test),
        ``train_acc_noisy`` (the network alone on its noisy training labels), ``train_acc_clean``,
        ``val_acc_noisy``, plus ``flipped_fraction`` (R,).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    bad = [s.method for s in specs if s.method not in ("plain", "distance_to_init", "auxiliary")]
    if bad:
        raise ValueError(f"unknown methods {bad}; train 'plain', 'distance_to_init' or 'auxiliary' "
                         "(early stopping is read off the plain runs)")
    device = X.device
    noisy, noisy_val, flipped = [], [], []
    for s in specs:
        yn, mask = inject_symmetric_noise(y, s.noise, num_classes, seed=s.seed)
        yv, _ = inject_symmetric_noise(y_val, s.noise, num_classes, seed=10_000 + s.seed)
        noisy.append(yn)
        noisy_val.append(yv)
        flipped.append(mask.double().mean().item())
    Y = torch.stack(noisy, 1).to(device)          # (n, R)
    Y_val = torch.stack(noisy_val, 1).to(device)  # (n_val, R)
    init_seeds = [s.seed for s in specs]  # paired: runs with one seed share their initialisation
    model = batched_mlp(X[0].numel(), width, hidden_layers, num_classes, init_seeds, device=device)
    objective = BatchedObjective(model, specs, X.shape[0], num_classes, loss)
    eval_at = set(evaluation_epochs(epochs, dense_until, eval_every))

    def record(epoch: int, m: nn.Module) -> dict:
        if epoch not in eval_at:
            return {}
        train_pred = batched_predictions(m, X)
        return {"epoch": epoch,
                "test_acc": batched_accuracy(batched_predictions(m, X_test), y_test).tolist(),
                "val_acc_noisy": batched_accuracy(batched_predictions(m, X_val), Y_val).tolist(),
                "train_acc_noisy": batched_accuracy(train_pred, Y).tolist(),
                "train_acc_clean": batched_accuracy(train_pred, y).tolist()}

    model.eval()
    with torch.no_grad():
        first = record(0, model)  # the initialisation (the same after a resume: seeded)
    history = fit(model, X, Y, epochs, optimizer=optimizer, lr=lr, milestones=milestones, gamma=gamma,
                  batch_size=batch_size, seed=seed, progress=progress, loss_fn=objective.loss,
                  penalty_grad=objective.add_penalty_grad, extra_params=objective.extra_params, callback=record,
                  desc="sweep epochs", checkpoint=checkpoint, checkpoint_key=checkpoint_key)
    points = [first] + [e for e in history.extra if e]
    out = {"epochs": [p["epoch"] for p in points], "flipped_fraction": flipped}
    for key in CURVES:
        out[key] = [[p[key][r] for p in points] for r in range(len(specs))]  # (R, E)
    return out


CURVES = ("test_acc", "train_acc_noisy", "train_acc_clean", "val_acc_noisy")


# --------------------------------------------------------------------------------------------
# data and the comparison (pure functions of the runs)
# --------------------------------------------------------------------------------------------
def load_splits(n_train: int, n_val: int, n_test: int, resize: int | None, device: torch.device | str,
                seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Class-balanced Fashion-MNIST splits: train and validation (disjoint, from the training set), test.

    Returns ``X, y, X_val, y_val, X_test, y_test`` with images (N, 1, s, s) and clean labels (N,).
    Raises:
        ValueError: sizes that are not positive multiples of 10 (ten balanced classes).
    """
    from .data import load_dataset

    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 10 or n % 10:
            raise ValueError(f"{name} must be a positive multiple of 10 (balanced classes), got {n}")
    X_all, y_all = load_dataset("fashion-mnist", train=True, device=device, resize=resize,
                                per_class=(n_train + n_val) // 10, seed=seed)
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed)).to(X_all.device)
    X_all, y_all = X_all[order], y_all[order]
    X_test, y_test = load_dataset("fashion-mnist", train=False, device=device, resize=resize,
                                  per_class=n_test // 10, seed=seed)
    return X_all[:n_train], y_all[:n_train], X_all[n_train:], y_all[n_train:], X_test, y_test


def early_stopping_index(val_curve: Sequence[float]) -> int:
    """Index of the first maximum of a validation-accuracy curve (the early-stopping epoch)."""
    if len(val_curve) == 0:
        raise ValueError("the validation curve is empty")
    best = max(val_curve)
    return next(i for i, v in enumerate(val_curve) if v == best)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Mean of the per-seed differences ``a_s - b_s`` with its Student-t confidence interval.

    Args:
        a, b: per-seed values of two methods on the same seeds (same length, >= 2).
        level: coverage of the two-sided interval.
    Returns:
        ``{"mean", "sem", "low", "high", "positive", "n"}``: mean difference, its standard error,
        the interval ``mean -/+ t_{n-1} sem``, how many differences are > 0, and ``n``.
    Raises:
        ValueError: lengths differ or fewer than two seeds.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: got {len(a)} and {len(b)} values")
    if len(a) < 2:
        raise ValueError(f"an interval needs at least two seeds, got {len(a)}")
    from scipy import stats

    diff = [float(x) - float(z) for x, z in zip(a, b)]
    n = len(diff)
    mean = sum(diff) / n
    sem = statistics.stdev(diff) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem
    return {"mean": mean, "sem": sem, "low": mean - half, "high": mean + half,
            "positive": sum(d > 0 for d in diff), "n": n}


def _select(runs: Sequence[dict], method: str, noise: float, lam: float | None = None) -> dict[int, dict]:
    """``{seed: run}`` of one method at one noise rate (and lambda)."""
    return {r["seed"]: r for r in runs if r["method"] == method and r["noise"] == noise
            and (lam is None or r["lambda"] == lam)}


def compare(runs: Sequence[dict], noise: float) -> dict:
    """The chapter's comparison at one noise rate, seed by seed (every seed is one replication).

    ``runs``: dicts with ``method, lambda, noise, seed`` and the curves of :func:`train_sweep`.
    Per seed: plain training's final/best test accuracy and its accuracy on its noisy training
    labels; early stopping (the epoch of highest *noisy* validation accuracy); the clean-label
    baseline (plain training on clean labels, ``noise == 0``); for RDI and AUX the final test
    accuracy at every lambda, the lambda chosen by the final noisy validation accuracy (the
    headline: it needs no clean label) and the lambda with the best test accuracy (an optimistic
    reference no practitioner has).  Paired differences carry 95 % intervals.
    Raises:
        ValueError: no plain runs at ``noise`` or seeds that do not match across methods.
    """
    plain = _select(runs, "plain", noise)
    if not plain:
        raise ValueError(f"no plain runs at noise {noise}")
    seeds = sorted(plain)
    clean = _select(runs, "plain", 0.0)
    out: dict = {"noise": noise, "seeds": seeds}
    p = [plain[s] for s in seeds]
    out["plain"] = {"final": [r["test_acc"][-1] for r in p], "best": [max(r["test_acc"]) for r in p],
                    "train_noisy": [r["train_acc_noisy"][-1] for r in p]}
    out["plain"]["drop"] = [b - f for b, f in zip(out["plain"]["best"], out["plain"]["final"])]
    stops = [early_stopping_index(r["val_acc_noisy"]) for r in p]
    es = [r["test_acc"][i] for r, i in zip(p, stops)]
    out["early_stopping"] = {"final": es, "index": stops, "train_noisy": [r["train_acc_noisy"][i] for r, i in zip(p, stops)]}
    if set(seeds) <= set(clean) and noise > 0:
        out["clean"] = {"final": [clean[s]["test_acc"][-1] for s in seeds]}
        out["clean_minus_early_stopping"] = paired_difference(out["clean"]["final"], es)
    out["plain_minus_early_stopping"] = paired_difference(out["plain"]["final"], es) if len(seeds) > 1 else None
    for method in ("distance_to_init", "auxiliary"):
        lams = sorted({r["lambda"] for r in runs if r["method"] == method and r["noise"] == noise})
        if not lams:
            continue
        by_lam = [_select(runs, method, noise, lam) for lam in lams]
        if any(sorted(b) != seeds for b in by_lam):
            raise ValueError(f"{method} at noise {noise} was not run on the seeds {seeds} at every lambda")
        final = [[b[s]["test_acc"][-1] for s in seeds] for b in by_lam]      # (L, S)
        val = [[b[s]["val_acc_noisy"][-1] for s in seeds] for b in by_lam]   # (L, S)
        pick_val = [max(range(len(lams)), key=lambda i: val[i][k]) for k in range(len(seeds))]
        pick_test = [max(range(len(lams)), key=lambda i: final[i][k]) for k in range(len(seeds))]
        m = {"lambdas": lams, "final": final, "val_final": val,
             "train_noisy": [[b[s]["train_acc_noisy"][-1] for s in seeds] for b in by_lam],
             "lambda_val": [lams[i] for i in pick_val],
             "final_val": [final[i][k] for k, i in enumerate(pick_val)],
             "lambda_test": [lams[i] for i in pick_test],
             "final_test": [final[i][k] for k, i in enumerate(pick_test)]}
        if len(seeds) > 1:
            m["minus_early_stopping"] = paired_difference(m["final_val"], es)
            m["oracle_minus_early_stopping"] = paired_difference(m["final_test"], es)
            if "clean" in out:
                m["clean_minus"] = paired_difference(out["clean"]["final"], m["final_val"])
        out[method] = m
    return out


def mean_curve(runs: Sequence[dict], key: str, method: str, noise: float, lam: float | None = None) -> list[float]:
    """Mean over seeds of ``key`` (e.g. ``"test_acc"``) along the epochs for one method/noise/lambda."""
    members = [r[key] for r in _select(runs, method, noise, lam).values()]
    if not members:
        raise ValueError(f"no runs of method {method!r} at noise {noise}, lambda {lam}")
    return [sum(v) / len(v) for v in zip(*members)]


# --------------------------------------------------------------------------------------------
# Config, Result, run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One profile of the chapter: the batched sweep and the kernel check.

    Sweep: ``n_train`` Fashion-MNIST images (``resize``: side length, None keeps 28) with symmetric
    noise at each of ``noise_rates``, an MLP of ``hidden_layers`` x ``width`` ReLUs, the squared loss,
    SGD with momentum 0.9, ``lr`` divided by 10 at ``milestones``; plain, RDI and AUX at each
    of ``lambdas``, every seed of ``seeds``, plus plain training on the clean labels; all runs side
    by side.  Curves are recorded every epoch up to ``dense_until`` and then every ``eval_every``.

    Kernel check: ``kernel_n`` training images with noise ``kernel_noise``, an :class:`NTKNet` of
    each width in ``kernel_widths`` trained with RDI and with AUX at ``kernel_lambda`` for
    ``kernel_steps`` full-batch steps, compared with kernel ridge regression on its empirical NTK on
    ``kernel_n_test`` test images.
    """

    profile: str
    resize: int | None
    n_train: int
    n_val: int
    n_test: int
    width: int
    hidden_layers: int
    epochs: int
    milestones: tuple[int, ...]
    lr: float
    batch_size: int
    lambdas: tuple[float, ...]
    noise_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    dense_until: int
    eval_every: int
    headline_noise: float = 0.4
    kernel_n: int = 100
    kernel_n_test: int = 200
    kernel_widths: tuple[int, ...] = (1024, 4096)
    kernel_lambda: float = 0.5
    kernel_steps: int = 100
    kernel_noise: float = 0.4
    checkpoint: bool = False

    @classmethod
    def for_profile(cls, profile: str, smoke: bool = False) -> "Config":
        check_profile(profile)
        if profile == "quick":
            # 1,000 images at 14 x 14, one hidden layer of 512: 6 seeds x (plain, 3 RDI, 3 AUX) at
            # p = 0.4 plus 6 clean-label runs = 48 networks side by side.
            cfg = cls(profile, resize=14, n_train=1000, n_val=500, n_test=1000, width=512, hidden_layers=1,
                      epochs=100, milestones=(70,), lr=0.02, batch_size=32, lambdas=(2.0, 4.0, 8.0),
                      noise_rates=(0.4,), seeds=tuple(range(6)), dense_until=10, eval_every=5,
                      kernel_widths=(1024, 2048, 4096))
        elif profile == "full":
            # 784-512-512-10 on 10,000 images, p in {0.2, 0.4}, 8 seeds, 4 lambdas: 152 networks on a T4.
            cfg = cls(profile, resize=None, n_train=10_000, n_val=2_000, n_test=10_000, width=512,
                      hidden_layers=2, epochs=100, milestones=(70,), lr=0.02, batch_size=32,
                      lambdas=(1.0, 2.0, 4.0, 8.0), noise_rates=(0.2, 0.4), seeds=tuple(range(8)),
                      dense_until=20, eval_every=1, kernel_n=200, kernel_n_test=1000,
                      kernel_widths=(1024, 4096, 16384, 32768), kernel_steps=200)
        else:
            # The paper's noise rates (20/40/60 %) and squared loss on the whole Fashion-MNIST training
            # set (CIFAR-10 and ResNet-34 are not available offline), 784-512-512-10, 200 epochs.
            cfg = cls(profile, resize=None, n_train=50_000, n_val=10_000, n_test=10_000, width=512,
                      hidden_layers=2, epochs=200, milestones=(100, 150), lr=0.02, batch_size=128,
                      lambdas=(1.0, 2.0, 4.0, 8.0, 16.0), noise_rates=(0.2, 0.4, 0.6), seeds=tuple(range(6)),
                      dense_until=20, eval_every=1, kernel_n=500, kernel_n_test=2000,
                      kernel_widths=(1024, 4096, 16384, 65536), kernel_steps=300, checkpoint=True)
        if smoke:
            cfg = dataclasses.replace(cfg, resize=7, n_train=60, n_val=20, n_test=40, width=32, epochs=3,
                                      milestones=(2,), batch_size=20, lambdas=cfg.lambdas[:2],
                                      seeds=(0, 1), dense_until=1, eval_every=1, kernel_n=10,
                                      kernel_n_test=10, kernel_widths=(64, 128), kernel_steps=5)
        return cfg

    @property
    def in_dim(self) -> int:
        return (self.resize or 28) ** 2

    @property
    def num_runs(self) -> int:
        return len(self.seeds) * (1 + len(self.noise_rates) * (1 + 2 * len(self.lambdas)))

    def peak_memory_bytes(self) -> int:
        """Parameters, gradients, momentum and the RDI anchor of every run, activations of a batch and
        of an evaluation chunk, the AUX offsets, the data, and the kernel check's matrices."""
        widths = [self.in_dim] + [self.width] * self.hidden_layers + [10]
        chunk = min(1024, max(self.n_train, self.n_test))
        sweep = mlp_memory_bytes(self.num_runs, self.batch_size, widths, eval_rows=chunk, optimizer_copies=2)
        offsets = 3 * 4 * len(self.seeds) * len(self.noise_rates) * len(self.lambdas) * self.n_train * 10
        data = 4 * self.in_dim * (self.n_train + self.n_val + self.n_test)
        m, nk, tk = max(self.kernel_widths), self.kernel_n * 10, self.kernel_n_test * 10
        kernel = 4 * (2 * nk * nk + tk * nk + (nk + tk) * m + 4 * m * (self.in_dim + 10)
                      + 3 * (self.kernel_n + self.kernel_n_test) * m)
        return int(sweep + 1.5 * offsets + data + 1.5 * kernel)

    def expected_seconds(self) -> float:
        """Floating-point work over the profile machine's sustained rate (calibrated on the quick run:
        about 40 GFLOP/s on one CPU core for these batched products; 3 TFLOP/s assumed on a T4)."""
        widths = [self.in_dim] + [self.width] * self.hidden_layers + [10]
        params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
        evals = len(evaluation_epochs(self.epochs, self.dense_until, self.eval_every))
        flops = self.num_runs * params * (6 * self.n_train * self.epochs
                                          + 2 * evals * (self.n_train + self.n_val + self.n_test))
        kernel = sum(6 * 2 * self.kernel_steps * self.kernel_n * m * (self.in_dim + 10)
                     + 2 * (self.kernel_n * 10) * (self.kernel_n + self.kernel_n_test) * 10 * m
                     for m in self.kernel_widths)
        rate = 4e10 if self.profile == "quick" else 3e12
        return (flops + kernel) / rate + 5.0


@dataclass
class Result(JsonResult):
    """What the chapter shows.

    ``config``: the settings; ``epochs``: (E,) epochs at which curves were recorded; ``runs``: one
    dict per trained network (``method, lambda, noise, seed`` and (E,) curves ``test_acc``,
    ``train_acc_noisy``, ``train_acc_clean``, ``val_acc_noisy``); ``comparison``: :func:`compare`
    at every noise rate, keyed by ``str(noise)``; ``kernel``: :func:`kernel_check`.
    """

    config: dict
    epochs: list
    runs: list
    comparison: dict
    kernel: dict


def kernel_check(config: Config, device: torch.device, checkpoint: Checkpoint | None = None) -> dict:
    """RDI and AUX at equal lambda in wide :class:`~utils.noisy_kernel.NTKNet` networks against kernel
    ridge regression on each network's empirical NTK at initialisation (Hu, Li & Yu, Secs. 4-5).

    For every width: ``gap_aux_krr``, ``gap_rdi_krr``, ``gap_aux_rdi`` = relative Frobenius distance of
    the test outputs (``||f_a - f_b|| / ||f_krr - f0||``), the same on the training inputs, test
    accuracy of the three predictors, and ``sigma_max`` of the kernel (it sets the step size).
    """
    from .data import load_dataset
    from .noisy_kernel import NTKNet, ntknet_tangent_kernel, kernel_ridge, relative_gap, train_to_convergence

    X, y = load_dataset("fashion-mnist", train=True, device=device, resize=config.resize,
                        per_class=config.kernel_n // 10, seed=1)
    Xt, yt = load_dataset("fashion-mnist", train=False, device=device, resize=config.resize,
                          per_class=config.kernel_n_test // 10, seed=1)
    yn, _ = inject_symmetric_noise(y, config.kernel_noise, 10, seed=0)
    Y = F.one_hot(yn, 10).to(X.dtype)
    lam = config.kernel_lambda
    rows = []
    for width in config.kernel_widths:
        key = f"kernel_width_{width}"
        if checkpoint is not None and checkpoint.done(key) is not None:
            rows.append(checkpoint.done(key))
            continue
        net = NTKNet(X[0].numel(), width, 10, seed=0, device=device)
        with torch.no_grad():
            f0, f0t = net(X), net(Xt)
        K = ntknet_tangent_kernel(net, X)
        sigma = float(torch.linalg.eigvalsh(K.double())[-1])
        krr = f0 + kernel_ridge(K, K, Y - f0, lam)
        krr_t = f0t + kernel_ridge(K, ntknet_tangent_kernel(net, Xt, X), Y - f0, lam)
        del K
        lr = len(X) / (sigma + lam ** 2)
        out = {}
        for method in ("distance_to_init", "auxiliary"):
            trained = train_to_convergence(method, X, yn, width, lam, config.kernel_steps, lr, 10, seed=0)
            with torch.no_grad():
                out[method] = (trained(X), trained(Xt))
            del trained
        aux, rdi = out["auxiliary"], out["distance_to_init"]
        row = {"width": width, "sigma_max": sigma, "lr": lr,
               "gap_aux_krr": relative_gap(aux[1], krr_t, krr_t - f0t),
               "gap_rdi_krr": relative_gap(rdi[1], krr_t, krr_t - f0t),
               "gap_aux_rdi": relative_gap(aux[1], rdi[1], krr_t - f0t),
               "train_gap_aux_krr": relative_gap(aux[0], krr, krr - f0),
               "train_gap_rdi_krr": relative_gap(rdi[0], krr, krr - f0),
               "acc_krr": float((krr_t.argmax(1) == yt).double().mean()),
               "acc_aux": float((aux[1].argmax(1) == yt).double().mean()),
               "acc_rdi": float((rdi[1].argmax(1) == yt).double().mean()),
               "agree_aux_krr": float((aux[1].argmax(1) == krr_t.argmax(1)).double().mean()),
               "agree_rdi_krr": float((rdi[1].argmax(1) == krr_t.argmax(1)).double().mean()),
               # a few test outputs for the scatter plot (first 20 images, all classes)
               "sample_krr": (krr_t[:20] - f0t[:20]).flatten().tolist(),
               "sample_aux": (aux[1][:20] - f0t[:20]).flatten().tolist(),
               "sample_rdi": (rdi[1][:20] - f0t[:20]).flatten().tolist()}
        rows.append(checkpoint.record(key, row) if checkpoint is not None else row)
    return {"lambda": lam, "n": len(X), "n_test": len(Xt), "noise": config.kernel_noise,
            "steps": config.kernel_steps, "widths": list(config.kernel_widths), "rows": rows}


def run(config: Config, device: torch.device, progress: bool = True) -> Result:
    """``python -m utils.reproduce noisy_labels``: the batched sweep, the comparison, the kernel check.

    On a CPU training uses every intra-op thread (the stacked products of 48 networks are large enough).
    The ``paper`` profile is checkpointed (:mod:`utils.checkpoint`): re-running resumes.
    """
    device = torch.device(device)
    ck = Checkpoint.for_experiment(EXPERIMENT, config.profile) if config.checkpoint else None
    specs = sweep_specs(config.lambdas, config.lambdas, config.noise_rates, config.seeds, clean=True)
    # 48 networks side by side make (48, 32, d) x (48, d, 512) products: two threads halve them
    with torch_threads(None, device):
        sweep = ck.done("sweep") if ck is not None else None
        if sweep is None:
            X, y, X_val, y_val, X_test, y_test = load_splits(config.n_train, config.n_val, config.n_test,
                                                             config.resize, device)
            sweep = train_sweep(specs, X, y, X_val, y_val, X_test, y_test, width=config.width,
                                hidden_layers=config.hidden_layers, num_classes=10, epochs=config.epochs,
                                lr=config.lr, batch_size=config.batch_size, milestones=config.milestones,
                                dense_until=config.dense_until, eval_every=config.eval_every,
                                progress=progress, checkpoint=ck, checkpoint_key="sweep_training")
            if ck is not None:
                ck.record("sweep", sweep)
        kernel = kernel_check(config, device, ck)
    runs = [{"method": s.method, "lambda": s.lam, "noise": s.noise, "seed": s.seed,
             "flipped_fraction": sweep["flipped_fraction"][r], **{k: sweep[k][r] for k in CURVES}}
            for r, s in enumerate(specs)]
    comparison = {str(p): compare(runs, p) for p in config.noise_rates}
    cfg = dataclasses.asdict(config)
    cfg.update(in_dim=config.in_dim, num_runs=len(specs), optimizer="momentum (0.9)", loss="squared")
    return Result(config=cfg, epochs=sweep["epochs"], runs=runs, comparison=comparison, kernel=kernel)


# --------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------
KERNEL_TOLERANCE = 0.05
MARGIN = 0.02
SOURCE = "Hu, Li & Yu (ICLR 2020)"


def _headline(results: Mapping[str, Any]) -> dict:
    return results["comparison"][str(results["config"]["headline_noise"])]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def check_memorise(results: Mapping[str, Any]) -> dict:
    """Plain training at the headline noise: mean accuracy on its noisy training labels at the end,
    and the mean drop of its clean test accuracy from its best epoch to its last."""
    c = _headline(results)
    return {"train_noisy": _mean(c["plain"]["train_noisy"]), "drop": _mean(c["plain"]["drop"])}


def check_regularisers(results: Mapping[str, Any]) -> dict:
    """Paired differences at the headline noise, lambda chosen on the noisy validation split."""
    c = _headline(results)
    aux, rdi = c["auxiliary"], c["distance_to_init"]
    return {"aux_minus_es": aux["minus_early_stopping"]["mean"], "aux_low": aux["minus_early_stopping"]["low"],
            "aux_high": aux["minus_early_stopping"]["high"],
            "rdi_minus_es": rdi["minus_early_stopping"]["mean"], "rdi_low": rdi["minus_early_stopping"]["low"],
            "rdi_high": rdi["minus_early_stopping"]["high"],
            "clean_minus_aux": aux["clean_minus"]["mean"], "clean_minus_rdi": rdi["clean_minus"]["mean"],
            "clean_minus_es": c["clean_minus_early_stopping"]["mean"], "seeds": len(c["seeds"])}


def holds_regularisers(m: Mapping[str, float], min_seeds: int = 6) -> bool:
    return (m["seeds"] >= min_seeds and m["aux_minus_es"] >= -MARGIN and m["rdi_minus_es"] >= -MARGIN
            and min(m["clean_minus_aux"], m["clean_minus_rdi"], m["clean_minus_es"]) > 0)


def check_kernel(results: Mapping[str, Any]) -> dict:
    """Relative output gaps at the widest and narrowest width of the kernel check."""
    rows = sorted(results["kernel"]["rows"], key=lambda r: r["width"])
    wide, narrow = rows[-1], rows[0]
    return {"width": wide["width"], "aux_krr": wide["gap_aux_krr"], "rdi_krr": wide["gap_rdi_krr"],
            "aux_rdi": wide["gap_aux_rdi"],
            "narrow_max": max(narrow["gap_aux_krr"], narrow["gap_rdi_krr"], narrow["gap_aux_rdi"])}


def holds_kernel(m: Mapping[str, float]) -> bool:
    widest = max(m["aux_krr"], m["rdi_krr"], m["aux_rdi"])
    return widest <= KERNEL_TOLERANCE and widest < m["narrow_max"]


CLAIMS = [
    Claim(id="nl.memorise", chapter=EXPERIMENT,
          statement="Trained long enough on 40 % symmetrically flipped labels, a plain network fits almost all of "
                    "its noisy training labels and its clean test accuracy falls far below its best.",
          source=f"{SOURCE}, Sec. 1 and experiments (Table 1); Zhang et al. (ICLR 2017)",
          paper_value="over-parameterised networks fit any labelling; early stopping (84 % on CIFAR-10 at 60 % "
                      "noise) is far better than training to the end",
          criterion="at p = 0.4, mean over seeds: plain training fits >= 95 % of its noisy training labels and "
                    "ends >= 10 points below its best clean test accuracy",
          check=check_memorise, holds=lambda m: m["train_noisy"] >= 0.95 and m["drop"] >= 0.10),
    Claim(id="nl.regularisers", chapter=EXPERIMENT,
          statement="With lambda chosen on the noisy validation split, distance to initialisation (RDI) and "
                    "auxiliary variables (AUX) each end about as accurate as early stopping or better, and all "
                    "three stay below training on clean labels.",
          source=f"{SOURCE}, experiments, Table 1",
          paper_value="AUX and RDI reach test accuracy comparable to early stopping at 20-60 % noise (CIFAR-10, "
                      "ResNet-34)",
          criterion=f"at p = 0.4, >= 6 seeds, paired means: AUX - ES >= -{MARGIN:g} and RDI - ES >= -{MARGIN:g} "
                    "(95 % intervals reported); clean - AUX, clean - RDI, clean - ES > 0",
          check=check_regularisers, holds=holds_regularisers),
    Claim(id="nl.kernel", chapter=EXPERIMENT,
          statement="In a wide two-layer network in the NTK parametrisation, RDI and AUX at equal lambda end at "
                    "the same function, kernel ridge regression on the network's empirical NTK, and the "
                    "agreement improves with width.",
          source=f"{SOURCE}, the NTK analysis of RDI and AUX (Secs. 4-5)",
          paper_value="both methods converge to kernel ridge regression with ridge lambda^2 as the width grows",
          criterion=f"widest network: relative test-output gaps AUX-KRR, RDI-KRR and AUX-RDI all <= "
                    f"{KERNEL_TOLERANCE:g}, and the largest below the narrowest network's largest",
          check=check_kernel, holds=holds_kernel),
]


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
NAMES = {"plain": "plain", "early_stopping": "early stopping", "distance_to_init": "RDI (distance to init.)",
         "auxiliary": "AUX (auxiliary variables)", "clean": "clean labels"}
COLORS = {"plain": PALETTE[3], "distance_to_init": PALETTE[1], "auxiliary": PALETTE[2], "clean": PALETTE[0],
          "early_stopping": "gray"}


def transition_matrix(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int = 10) -> np.ndarray:
    """(K, K) empirical ``P(noisy class | clean class)``; clean, noisy: (N,) labels."""
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (clean.cpu().numpy(), noisy.cpu().numpy()), 1.0)
    return counts / counts.sum(1, keepdims=True).clip(min=1)


def plot_transition(clean: torch.Tensor, noisy: torch.Tensor, noise: float):
    """Heat map of :func:`transition_matrix`."""
    fig, axes = subplots(1, 1, width=4.6, height=3.8)
    ax = axes[0, 0]
    im = ax.imshow(transition_matrix(clean, noisy), cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="P(noisy class | clean class)")
    label(ax, "noisy label (class index)", "clean label (class index)", f"symmetric noise, p = {noise:g}")
    return fig


def _modal(values: Sequence[float]) -> float:
    return max(sorted(set(values)), key=list(values).count)


def plot_curves(result: Result, noise: float | None = None, lam: float | None = None):
    """Clean test accuracy (left) and accuracy on the noisy training labels (right) along training,
    means over seeds; RDI and AUX at ``lam`` (default: the lambda the validation split chose most often)."""
    noise = result.config["headline_noise"] if noise is None else noise
    comp = result.comparison[str(noise)]
    fig, axes = subplots(1, 2, width=10.0, height=3.6)
    shown = [("plain", noise, None, NAMES["plain"])]
    if "clean" in comp:
        shown.append(("clean", 0.0, None, NAMES["clean"]))
    for method in ("distance_to_init", "auxiliary"):
        if method in comp:
            lm = _modal(comp[method]["lambda_val"]) if lam is None else lam
            shown.append((method, noise, lm, f"{NAMES[method]}, lambda = {lm:g}"))
    for method, p, lm, name in shown:
        key = "plain" if method == "clean" else method
        axes[0, 0].plot(result.epochs, mean_curve(result.runs, "test_acc", key, p, lm), color=COLORS[method], label=name)
        axes[0, 1].plot(result.epochs, mean_curve(result.runs, "train_acc_noisy", key, p, lm), color=COLORS[method],
                        label=name)
    stop = float(np.mean([result.epochs[i] for i in comp["early_stopping"]["index"]]))
    axes[0, 0].axvline(stop, color="gray", ls=":", label="early stopping (mean epoch)")
    axes[0, 1].axhline(1 - noise, color="gray", ls="--", label="1 - p")
    label(axes[0, 0], "epoch", "clean test accuracy (fraction)", f"p = {noise:g}, mean of {len(comp['seeds'])} seeds")
    label(axes[0, 1], "epoch", "accuracy on its training labels (fraction)", "fitting the training labels")
    axes[0, 0].legend(loc="lower right", fontsize=7)
    axes[0, 1].legend(loc="lower right", fontsize=7)
    return fig


def plot_lambda_frame(result: Result, lam: float, noise: float | None = None):
    """One frame of the lambda slider: clean test accuracy along training of RDI and AUX at ``lam``
    (each seed faint, the mean bold), with plain training, early stopping and clean labels."""
    noise = result.config["headline_noise"] if noise is None else noise
    comp = result.comparison[str(noise)]
    fig, axes = subplots(1, 2, width=9.6, height=3.4, sharey=True)
    epochs = result.epochs
    for ax, method in zip(axes[0], ("distance_to_init", "auxiliary")):
        for r in _select(result.runs, method, noise, lam).values():
            ax.plot(epochs, r["test_acc"], color=COLORS[method], alpha=0.25, lw=0.8)
        ax.plot(epochs, mean_curve(result.runs, "test_acc", method, noise, lam), color=COLORS[method], lw=2,
                label=f"{NAMES[method]} (mean)")
        ax.plot(epochs, mean_curve(result.runs, "test_acc", "plain", noise), color=COLORS["plain"], label="plain")
        ax.axhline(_mean(comp["early_stopping"]["final"]), color="gray", ls=":", label="early stopping")
        if "clean" in comp:
            ax.axhline(_mean(comp["clean"]["final"]), color=COLORS["clean"], ls="--", label="clean labels (final)")
        ax.set_ylim(0.3, 0.9)
        label(ax, "epoch", "clean test accuracy (fraction)", f"{NAMES[method]}, lambda = {lam:g}")
        ax.legend(loc="lower right", fontsize=7)
    return fig


def plot_sweep(result: Result, noise: float | None = None):
    """Final clean test accuracy against lambda (mean +- s.e. over seeds) with the references."""
    noise = result.config["headline_noise"] if noise is None else noise
    comp = result.comparison[str(noise)]
    fig, axes = subplots(1, 1, width=5.6, height=3.8)
    ax = axes[0, 0]
    for method in ("distance_to_init", "auxiliary"):
        m = comp[method]
        means = [_mean(v) for v in m["final"]]
        errs = [statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0 for v in m["final"]]
        ax.errorbar(m["lambdas"], means, yerr=errs, fmt="o-", color=COLORS[method], capsize=3, label=NAMES[method])
    for key, style in (("plain", "-."), ("early_stopping", ":"), ("clean", "--")):
        if key in comp:
            ax.axhline(_mean(comp[key]["final"]), color=COLORS[key], ls=style, label=NAMES[key])
    lams = comp["auxiliary"]["lambdas"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(lams, [f"{v:g}" for v in lams])
    ax.minorticks_off()
    label(ax, "lambda (log scale)", "final clean test accuracy (fraction)", f"p = {noise:g}")
    ax.legend(loc="center right", fontsize=7)
    return fig


def paired_rows(result: Result, noise: float | None = None) -> list[dict]:
    """Table rows: each method's mean test accuracy and its paired difference to early stopping."""
    noise = result.config["headline_noise"] if noise is None else noise
    comp = result.comparison[str(noise)]
    es = comp["early_stopping"]["final"]
    rows = []

    def add(name, values, lam=""):
        row = {"method": name, "lambda": lam, "mean": 100 * _mean(values),
               "sd": 100 * (statistics.stdev(values) if len(values) > 1 else 0.0)}
        if len(values) > 1 and values is not es:
            d = paired_difference(values, es)
            row.update(diff=100 * d["mean"], low=100 * d["low"], high=100 * d["high"],
                       positive=f"{d['positive']} of {d['n']}")
        rows.append(row)

    add("plain (last epoch)", comp["plain"]["final"])
    add("early stopping (noisy validation)", es)
    for method in ("distance_to_init", "auxiliary"):
        m = comp[method]
        add(f"{NAMES[method]}, lambda by noisy validation", m["final_val"],
            ", ".join(f"{v:g}" for v in m["lambda_val"]))
        add(f"{NAMES[method]}, lambda by test (optimistic)", m["final_test"],
            ", ".join(f"{v:g}" for v in m["lambda_test"]))
    if "clean" in comp:
        add("clean labels (last epoch)", comp["clean"]["final"])
    return rows


PAIRED_COLUMNS = {"method": "method", "lambda": "lambda per seed", "mean": "test acc. (%)", "sd": "s.d. (points)",
                  "diff": "minus early stopping (points)", "low": "95 % CI low", "high": "95 % CI high",
                  "positive": "seeds above early stopping"}


def plot_paired(result: Result, noise: float | None = None):
    """Per-seed differences to early stopping (dots) with their mean and 95 % interval."""
    rows = [r for r in paired_rows(result, noise) if "diff" in r]
    noise = result.config["headline_noise"] if noise is None else noise
    comp = result.comparison[str(noise)]
    es = comp["early_stopping"]["final"]
    per_seed = {"plain (last epoch)": comp["plain"]["final"]}
    short = {"plain (last epoch)": "plain (last epoch)", "clean labels (last epoch)": "clean labels"}
    for method, tag in (("distance_to_init", "RDI"), ("auxiliary", "AUX")):
        for key, how, name in (("final_val", "noisy validation", "validation"), ("final_test", "test (optimistic)", "test, optimistic")):
            long = f"{NAMES[method]}, lambda by {how}"
            per_seed[long] = comp[method][key]
            short[long] = f"{tag}, lambda by {name}"
    if "clean" in comp:
        per_seed["clean labels (last epoch)"] = comp["clean"]["final"]
    fig, axes = subplots(1, 1, width=8.0, height=0.5 * len(rows) + 1.4)
    ax = axes[0, 0]
    for i, r in enumerate(rows):
        diffs = [100 * (a - b) for a, b in zip(per_seed[r["method"]], es)]
        ax.scatter(diffs, [i] * len(diffs), color="gray", s=12, alpha=0.6, zorder=2)
        ax.errorbar([r["diff"]], [i], xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]], fmt="o",
                    color=next(COLORS[k] for k in ("plain", "clean", "distance_to_init", "auxiliary")
                               if short[r["method"]].startswith({"distance_to_init": "RDI", "auxiliary": "AUX"}.get(k, k))),
                    capsize=4, zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(-100 * MARGIN, color="gray", ls=":", lw=0.8)
    ax.set_yticks(range(len(rows)), [short[r["method"]] for r in rows])
    ax.invert_yaxis()
    label(ax, "test accuracy minus early stopping's, same seed (points)", "",
          f"p = {noise:g}: differences to early stopping, mean and 95 % interval")
    return fig


def plot_kernel(result: Result):
    """Left: relative output gaps against width (log-log); right: test outputs (change from
    initialisation) of AUX and RDI against kernel ridge regression, widest network."""
    k = result.kernel
    rows = sorted(k["rows"], key=lambda r: r["width"])
    widths = [r["width"] for r in rows]
    fig, axes = subplots(1, 2, width=10.0, height=3.8)
    ax = axes[0, 0]
    for key, name, color in (("gap_aux_krr", "AUX vs kernel ridge", COLORS["auxiliary"]),
                             ("gap_rdi_krr", "RDI vs kernel ridge", COLORS["distance_to_init"]),
                             ("gap_aux_rdi", "AUX vs RDI", "black")):
        ax.plot(widths, [r[key] for r in rows], "o-", color=color, label=name)
    ax.axhline(KERNEL_TOLERANCE, color="gray", ls=":", label=f"tolerance {KERNEL_TOLERANCE:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    label(ax, "hidden width m (log scale)", "relative gap of test outputs", f"lambda = {k['lambda']:g}, n = {k['n']}")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    wide = rows[-1]
    ax.scatter(wide["sample_krr"], wide["sample_aux"], s=8, color=COLORS["auxiliary"], label="AUX", alpha=0.7)
    ax.scatter(wide["sample_krr"], wide["sample_rdi"], s=8, color=COLORS["distance_to_init"], label="RDI", alpha=0.7)
    lim = max(abs(v) for v in wide["sample_krr"] + wide["sample_aux"] + wide["sample_rdi"])
    ax.plot([-lim, lim], [-lim, lim], color="gray", lw=0.8)
    label(ax, "kernel ridge: f(x) - f0(x) (output units)", "network: f(x) - f0(x) (output units)",
          f"width {wide['width']}: 20 test images x 10 outputs")
    ax.legend(fontsize=7)
    return fig


def kernel_rows(result: Result) -> list[dict]:
    """Table rows of the kernel check, one per width (gaps in percent)."""
    return [{"width": r["width"], "aux_krr": 100 * r["gap_aux_krr"], "rdi_krr": 100 * r["gap_rdi_krr"],
             "aux_rdi": 100 * r["gap_aux_rdi"], "agree_aux": 100 * r["agree_aux_krr"],
             "agree_rdi": 100 * r["agree_rdi_krr"], "acc_krr": 100 * r["acc_krr"]}
            for r in sorted(result.kernel["rows"], key=lambda r: r["width"])]


KERNEL_COLUMNS = {"width": "width m", "aux_krr": "AUX vs KRR (%)", "rdi_krr": "RDI vs KRR (%)",
                  "aux_rdi": "AUX vs RDI (%)", "agree_aux": "AUX = KRR class (%)",
                  "agree_rdi": "RDI = KRR class (%)", "acc_krr": "KRR test acc. (%)"}
