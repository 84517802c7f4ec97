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
noise rate x seed) trains every run side by side as one :class:`BatchedMLP` whose outputs are
``(R, B, K)``, through the same ``fit`` (:func:`train_sweep`).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import FeatureMLP
from .profiles import torch_threads
from .train import fit

METHODS = ("plain", "early_stopping", "distance_to_init", "auxiliary")


# --------------------------------------------------------------------------------------------
# label noise
# --------------------------------------------------------------------------------------------
def inject_symmetric_noise(y: torch.Tensor, noise_rate: float, num_classes: int,
                           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(noise_rate * N)`` labels, each to a class drawn uniformly among the others.

    Args:
        y: (N,) integer labels in ``0..num_classes-1``.
        noise_rate: fraction ``p`` in [0, 1) of labels to flip.
        num_classes: K >= 2.
        seed: seeds which labels flip and to what (CPU generator; repeatable).
    Returns:
        noisy: (N,) labels, on ``y``'s device; flipped: (N,) bool mask of the changed labels.
    Raises:
        ValueError: ``noise_rate`` outside [0, 1), K < 2, ``y`` not 1-D or labels out of range.
    """
    if not (isinstance(noise_rate, (int, float)) and 0.0 <= noise_rate < 1.0):
        raise ValueError(f"noise_rate must lie in [0, 1), got {noise_rate!r}")
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
class BatchedMLP(nn.Module):
    """R independent ReLU MLPs ``d -> w -> ... -> w -> K`` evaluated as one batched computation.

    Layer ``l`` holds weights (R, d_in, d_out) and biases (R, 1, d_out); the forward pass is a
    chain of ``torch.baddbmm`` calls.  Built from R ``FeatureMLP(..., batchnorm=False)`` networks
    so that run ``r`` starts exactly where a single network built with ``seed_r`` would.
    """

    def __init__(self, in_dim: int, width: int, hidden_layers: int, num_classes: int, seeds: Sequence[int],
                 device: torch.device | str = "cpu"):
        super().__init__()
        if len(seeds) < 1:
            raise ValueError("seeds must name at least one run")
        if hidden_layers < 1:
            raise ValueError(f"hidden_layers must be at least 1, got {hidden_layers}")
        nets = []
        for s in seeds:
            torch.manual_seed(int(s))
            nets.append(FeatureMLP(in_dim, width, hidden_layers - 1, num_classes, batchnorm=False))
        linears = [[m for m in net.modules() if isinstance(m, nn.Linear)] for net in nets]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer in range(len(linears[0])):
            W = torch.stack([lin[layer].weight.detach().t() for lin in linears])  # (R, d_in, d_out)
            b = torch.stack([lin[layer].bias.detach()[None] for lin in linears])   # (R, 1, d_out)
            self.weights.append(nn.Parameter(W.to(device).contiguous()))
            self.biases.append(nn.Parameter(b.to(device).contiguous()))
        self.num_runs = len(seeds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...) shared inputs -> (R, B, K) outputs of every run."""
        h = x.flatten(1).unsqueeze(0).expand(self.num_runs, -1, -1)
        last = len(self.weights) - 1
        for layer, (W, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, W)
            if layer < last:
                h = torch.relu(h)
        return h

    def squared_distance_to(self, initial: Sequence[torch.Tensor]) -> torch.Tensor:
        """(R,) ``||theta_r - theta_r(0)||^2`` per run; ``initial`` as returned by :meth:`snapshot`."""
        total = 0.0
        for p, p0 in zip(self.parameters(), initial):
            total = total + (p - p0).pow(2).flatten(1).sum(1)
        return total

    def snapshot(self) -> list[torch.Tensor]:
        """Detached copies of the parameters (``theta(0)`` when called at the start)."""
        return [p.detach().clone() for p in self.parameters()]


@dataclass
class RunSpec:
    """One training run of the sweep: its regulariser, strength, noise rate and seed."""

    method: str  # "plain" (also gives early stopping), "distance_to_init" or "auxiliary"
    lam: float
    noise: float
    seed: int


def sweep_specs(lambdas_rdi: Sequence[float], lambdas_aux: Sequence[float], noise_rates: Sequence[float],
                seeds: Sequence[int]) -> list[RunSpec]:
    """Every (method, lambda) x noise x seed combination, method-major; ``plain`` has lambda 0.

    Method-major order keeps each regulariser's runs contiguous, so :class:`BatchedObjective` touches
    only a slice of the stacked parameters.
    """
    methods = [("plain", 0.0)] + [("distance_to_init", float(l)) for l in lambdas_rdi] + \
              [("auxiliary", float(l)) for l in lambdas_aux]
    return [RunSpec(m, l, float(p), int(s)) for m, l in methods for p in noise_rates for s in seeds]


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

    @property
    def extra_params(self) -> list[torch.Tensor]:
        return [self.offsets] if self.aux is not None else []


@torch.no_grad()
def batched_predictions(model: nn.Module, X: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
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
                progress: bool = True) -> dict:
    """Train every run of ``specs`` side by side and record its curves.

    Runs with the same ``spec.seed`` share their initialisation and their noisy labels at a given
    noise rate (:func:`inject_symmetric_noise` with ``spec.seed``), so methods are compared on the
    same draw; all runs share the images and the batch order (``seed``).

    Args:
        X: (n, ...) training images; y: (n,) clean training labels.
        X_val, y_val: validation images and clean labels (noised per run; the early-stopping split).
        X_test, y_test: clean test set.
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
    for r, s in enumerate(specs):
        yn, mask = inject_symmetric_noise(y, s.noise, num_classes, seed=s.seed)
        yv, _ = inject_symmetric_noise(y_val, s.noise, num_classes, seed=10_000 + s.seed)
        noisy.append(yn)
        noisy_val.append(yv)
        flipped.append(mask.double().mean().item())
    Y = torch.stack(noisy, 1).to(device)          # (n, R)
    Y_val = torch.stack(noisy_val, 1).to(device)  # (n_val, R)
    init_seeds = [s.seed for s in specs]  # paired: runs with one seed share their initialisation
    model = BatchedMLP(X[0].numel(), width, hidden_layers, num_classes, init_seeds, device=device)
    objective = BatchedObjective(model, specs, X.shape[0], num_classes, loss)
    curves: dict[str, list] = {"epochs": [], "test_acc": [], "train_acc_noisy": [], "train_acc_clean": [],
                               "val_acc_noisy": []}

    eval_at = set(evaluation_epochs(epochs, dense_until, eval_every))

    def record(epoch: int, m: nn.Module) -> dict:
        if epoch not in eval_at:
            return {}
        curves["epochs"].append(epoch)
        curves["test_acc"].append(batched_accuracy(batched_predictions(m, X_test), y_test))
        curves["val_acc_noisy"].append(batched_accuracy(batched_predictions(m, X_val), Y_val))
        train_pred = batched_predictions(m, X)
        curves["train_acc_noisy"].append(batched_accuracy(train_pred, Y))
        curves["train_acc_clean"].append(batched_accuracy(train_pred, y))
        return {}

    record(0, model)  # the initialisation
    fit(model, X, Y, epochs, optimizer=optimizer, lr=lr, milestones=milestones, gamma=gamma,
        batch_size=batch_size, seed=seed, progress=progress, loss_fn=objective.loss,
        penalty=objective.penalty, extra_params=objective.extra_params, callback=record,
        desc="sweep epochs")
    out = {"epochs": curves["epochs"], "flipped_fraction": flipped}
    for key in ("test_acc", "train_acc_noisy", "train_acc_clean", "val_acc_noisy"):
        out[key] = torch.stack(curves[key], 1).tolist()  # (R, E)
    return out


# --------------------------------------------------------------------------------------------
# the chapter's experiment
# --------------------------------------------------------------------------------------------
PROFILES: dict[str, dict] = {
    # 1,000 training images at 14x14 (196 inputs), one hidden layer of 512 ReLUs, 28 runs side by side.
    "quick": dict(resize=14, n_train=1000, n_val=500, n_test=1000, width=512, hidden_layers=1,
                  epochs=100, milestones=(70,), lr=0.02, batch_size=32, lambdas=(2.0, 4.0, 8.0),
                  noise_rates=(0.2, 0.4), seeds=(0, 1), dense_until=10, eval_every=5),
    # the scale: 784-512-512-10 on 10,000 images for 100 epochs, 54 runs side by side.
    "full": dict(resize=None, n_train=10_000, n_val=2_000, n_test=10_000, width=512, hidden_layers=2,
                 epochs=100, milestones=(70,), lr=0.02, batch_size=32, lambdas=(1.0, 2.0, 4.0, 8.0),
                 noise_rates=(0.2, 0.4), seeds=(0, 1, 2), dense_until=20, eval_every=1),
}


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


def result_rows(specs: Sequence[RunSpec], curves: dict) -> list[dict]:
    """The issue's JSON rows: one per run and method, early stopping read off each plain run.

    ``final_test_acc`` is the clean test accuracy after the last epoch (for ``early_stopping``: at the
    epoch of highest accuracy on the noisy validation split); ``best_test_acc`` the highest along the
    curve; ``train_acc_noisy`` the network's accuracy on its noisy training labels at that same epoch.
    """
    rows = []
    for r, s in enumerate(specs):
        test, train, val = curves["test_acc"][r], curves["train_acc_noisy"][r], curves["val_acc_noisy"][r]
        base = {"noise": s.noise, "lambda": s.lam, "seed": s.seed}
        rows.append({"method": s.method, **base, "final_test_acc": test[-1], "best_test_acc": max(test),
                     "train_acc_noisy": train[-1]})
        if s.method == "plain":
            stop = early_stopping_index(val)
            rows.append({"method": "early_stopping", **base, "final_test_acc": test[stop],
                         "best_test_acc": max(test), "train_acc_noisy": train[stop]})
    return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Medians over seeds per (method, noise, lambda): ``final``, ``best``, ``train_noisy``, ``seeds``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["noise"], row["lambda"]), []).append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    table = []
    for (method, noise, lam), members in sorted(groups.items(), key=lambda kv: (kv[0][1], order[kv[0][0]], kv[0][2])):
        table.append({"method": method, "noise": noise, "lambda": lam, "seeds": len(members),
                      "final": statistics.median(m["final_test_acc"] for m in members),
                      "best": statistics.median(m["best_test_acc"] for m in members),
                      "train_noisy": statistics.median(m["train_acc_noisy"] for m in members)})
    return table


def best_lambda(table: Sequence[dict], method: str, noise: float) -> dict:
    """The summary row of ``method`` at ``noise`` with the highest median final test accuracy."""
    candidates = [t for t in table if t["method"] == method and t["noise"] == noise]
    if not candidates:
        raise ValueError(f"no rows for method {method!r} at noise {noise}")
    return max(candidates, key=lambda t: t["final"])


def done_when(rows: Sequence[dict], noise: float = 0.4) -> dict:
    """The issue's criteria at ``noise`` from the rows (medians over seeds), each with its verdict."""
    table = summarize(rows)
    plain = best_lambda(table, "plain", noise)
    early = best_lambda(table, "early_stopping", noise)
    out = {"noise": noise, "plain_train_acc_noisy": plain["train_noisy"],
           "plain_drop_from_best": plain["best"] - plain["final"],
           "plain_final": plain["final"], "early_stopping_final": early["final"]}
    out["plain_memorises"] = out["plain_train_acc_noisy"] >= 0.95
    out["plain_loses_10_points"] = out["plain_drop_from_best"] >= 0.10
    for method in ("distance_to_init", "auxiliary"):
        best = best_lambda(table, method, noise)
        out[f"{method}_lambda"] = best["lambda"]
        out[f"{method}_final"] = best["final"]
        out[f"{method}_within_5_of_early_stopping"] = best["final"] >= early["final"] - 0.05
        out[f"{method}_10_above_plain"] = best["final"] >= plain["final"] + 0.10
    return out


def median_curve(curve_runs: Sequence[dict], key: str, method: str, noise: float,
                 lam: float | None = None) -> list[float]:
    """Median over seeds of ``key`` (e.g. ``"test_acc"``) along the epochs, for one method/noise/lambda.

    ``curve_runs`` is ``run(...)["curves"]["runs"]``; ``lam=None`` accepts any lambda (for ``plain``).
    """
    members = [c[key] for c in curve_runs if c["method"] == method and c["noise"] == noise
               and (lam is None or c["lambda"] == lam)]
    if not members:
        raise ValueError(f"no curves for method {method!r}, noise {noise}, lambda {lam}")
    return [statistics.median(values) for values in zip(*members)]


def lambda_by_validation(curve_runs: Sequence[dict], method: str, noise: float) -> float:
    """The lambda whose runs end with the highest median accuracy on the *noisy* validation split:
    a choice that needs no clean labels (the early-stopping split, used once at the end)."""
    lams = sorted({c["lambda"] for c in curve_runs if c["method"] == method and c["noise"] == noise})
    if not lams:
        raise ValueError(f"no curves for method {method!r} at noise {noise}")
    return max(lams, key=lambda l: median_curve(curve_runs, "val_acc_noisy", method, noise, l)[-1])


def summary_markdown(table: Sequence[dict]) -> str:
    """A Markdown table of :func:`summarize` rows (accuracies in percent)."""
    lines = ["| noise p | method | lambda | final test acc (%) | best test acc (%) | noisy-train acc (%) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        lam = "-" if t["method"] in ("plain", "early_stopping") else f"{t['lambda']:g}"
        lines.append(f"| {t['noise']:g} | {t['method']} | {lam} | {100 * t['final']:.1f} | {100 * t['best']:.1f} | "
                     f"{100 * t['train_noisy']:.1f} | {t['seeds']} |")
    return "\n".join(lines)


def run(profile: str, device: torch.device, progress: bool = True) -> dict:
    """``python -m utils.reproduce noisy_labels``: the whole sweep as one batched model.

    On a CPU the batched matrix products are small, so training uses one intra-op thread (a second
    thread mostly waits, and its spinning counts as CPU time); the previous setting is restored.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {tuple(PROFILES)}")
    cfg = PROFILES[profile]
    device = torch.device(device)
    X, y, X_val, y_val, X_test, y_test = load_splits(cfg["n_train"], cfg["n_val"], cfg["n_test"],
                                                     cfg["resize"], device)
    specs = sweep_specs(cfg["lambdas"], cfg["lambdas"], cfg["noise_rates"], cfg["seeds"])
    with torch_threads(1, device):  # small batched matrices: one thread is faster on a CPU
        curves = train_sweep(specs, X, y, X_val, y_val, X_test, y_test, width=cfg["width"],
                             hidden_layers=cfg["hidden_layers"], num_classes=10, epochs=cfg["epochs"],
                             lr=cfg["lr"], batch_size=cfg["batch_size"], milestones=cfg["milestones"],
                             dense_until=cfg["dense_until"], eval_every=cfg["eval_every"], progress=progress)
    rows = result_rows(specs, curves)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    config.update(in_dim=int(X[0].numel()), num_runs=len(specs), optimizer="momentum (0.9)", loss="squared")
    return {"runs": rows, "config": config,
            "curves": {"epochs": curves["epochs"],
                       "runs": [{"method": s.method, "lambda": s.lam, "noise": s.noise, "seed": s.seed,
                                 **{k: curves[k][r] for k in ("test_acc", "train_acc_noisy", "train_acc_clean",
                                                              "val_acc_noisy")}}
                                for r, s in enumerate(specs)]},
            "flipped_fraction": curves["flipped_fraction"],
            "done_when": done_when(rows, 0.4)}
