"""Training many networks of one architecture as one computation: :func:`fit_many`.

The book's experiments train the same small network again and again: several seeds, several
learning rates, several optimisers.  Each such network is too small to keep a processor busy,
so training them one after another mostly pays per-step overhead.  :func:`fit_many` trains
``R`` of them at once on a stacked model (:class:`utils.models.BatchedMLP`, weights
``(R, d_in, d_out)``): one batched matrix product per layer, per-model BatchNorm, and a
per-model optimiser step written with tensors of per-model hyper-parameters.

Every model keeps what it would have had alone with :func:`utils.train.fit`:

* its own batch order, from its own seed (``seeds[r]`` seeds a CPU generator whose
  ``randperm`` per epoch is exactly :func:`utils.train.batch_indices`'s);
* its own optimiser (``"sgd"``, ``"momentum"`` with 0.9, ``"adam"``; they may be mixed), learning
  rate, weight decay and learning-rate milestones (multiplied by ``gamma`` at each, like
  ``MultiStepLR``);
* its own history (:class:`utils.train.History`).

The update formulas follow ``torch.optim.SGD`` and ``torch.optim.Adam`` operation by operation,
so sequential :func:`utils.train.fit` runs and one :func:`fit_many` run of the same models (same
initialisation, same seeds) agree to float32 rounding (``tests/unit/test_batched.py``).
Shapes are static except for the last, smaller batch of an epoch; nothing here is captured in a
CUDA graph (on a GPU the batching alone removes most of the per-step overhead).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .train import OPTIMIZERS, History, progress_bar

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
MOMENTUM = 0.9


def _per_model(value, runs: int, name: str) -> list:
    """A scalar broadcast to ``runs`` entries, or a sequence of exactly ``runs`` entries."""
    if isinstance(value, (str, int, float)):
        return [value] * runs
    value = list(value)
    if len(value) != runs:
        raise ValueError(f"{name} needs one entry per model ({runs}), got {len(value)}")
    return value


def _per_model_milestones(milestones, runs: int) -> list[tuple[int, ...]]:
    """``()``/``(200, 400)`` for every model, or one tuple per model."""
    milestones = list(milestones)
    if milestones and all(isinstance(m, (list, tuple)) for m in milestones):
        if len(milestones) != runs:
            raise ValueError(f"per-model milestones need {runs} tuples, got {len(milestones)}")
        return [tuple(int(e) for e in m) for m in milestones]
    return [tuple(int(e) for e in milestones)] * runs


class BatchedOptimizer:
    """Per-model SGD / SGD with momentum / Adam on stacked parameters (leading dimension R).

    Args:
        params: tensors whose first dimension indexes the R models.
        kinds: R names from ``("sgd", "momentum", "adam")``.
        lrs, weight_decays: R floats (the learning rates may be changed with :meth:`set_lrs`).
    """

    def __init__(self, params: Sequence[torch.Tensor], kinds: Sequence[str], lrs: Sequence[float],
                 weight_decays: Sequence[float]):
        bad = sorted(set(kinds) - set(OPTIMIZERS))
        if bad:
            raise ValueError(f"unknown optimizer {bad}; choose from {OPTIMIZERS}")
        self.params = list(params)
        runs = len(kinds)
        if any(p.shape[0] != runs for p in self.params):
            raise ValueError("every parameter must have the number of models as its first dimension")
        device = self.params[0].device
        self.kinds = list(kinds)
        self.adam = torch.tensor([k == "adam" for k in kinds], device=device)
        self.any_adam, self.any_sgd = bool(self.adam.any()), bool((~self.adam).any())
        self.any_momentum = any(k == "momentum" for k in kinds)
        self.momentum = torch.tensor([MOMENTUM if k == "momentum" else 0.0 for k in kinds], device=device)
        self.wd = torch.tensor([float(w) for w in weight_decays], device=device)
        self.lrs = [float(v) for v in lrs]
        self.step_count = 0
        self.state: dict[str, list[torch.Tensor]] = {
            "buf": [torch.zeros_like(p) for p in self.params] if self.any_momentum or (self.any_sgd and self.any_adam) else [],
            "exp_avg": [torch.zeros_like(p) for p in self.params] if self.any_adam else [],
            "exp_avg_sq": [torch.zeros_like(p) for p in self.params] if self.any_adam else []}

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.lrs = [float(v) for v in lrs]

    @staticmethod
    def _view(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        """One update of every model (as ``torch.optim.SGD``/``Adam`` would do for each alone)."""
        self.step_count += 1
        device = self.params[0].device
        lr = torch.tensor(self.lrs, device=device)
        if self.any_adam:
            b1, b2 = ADAM_BETAS
            bc1, bc2 = 1 - b1 ** self.step_count, 1 - b2 ** self.step_count
            neg_step = torch.tensor([-(v / bc1) for v in self.lrs], device=device)
            bc2_sqrt = math.sqrt(bc2)
        neg_lr = -lr
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.addcmul_(self._view(self.wd, p), p)    # grad + weight_decay * param
            if not self.any_adam:                               # SGD family only: update in place
                if self.any_momentum:
                    buf = self.state["buf"][i]
                    buf.mul_(self._view(self.momentum, p)).add_(g)   # momentum 0: buf = grad
                    g = buf
                p.addcmul_(g, self._view(neg_lr, p))
                continue
            m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
            new_sgd = None
            if self.any_sgd:
                buf = self.state["buf"][i]
                buf.mul_(self._view(self.momentum, p)).add_(g)
                new_sgd = p + self._view(neg_lr, p) * buf
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(ADAM_EPS)
            step = (self._view(neg_step, p) * m).div_(denom)
            if new_sgd is None:
                p.add_(step)
            else:
                p.copy_(torch.where(self._view(self.adam, p), p + step, new_sgd))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "lrs": list(self.lrs),
                "state": {k: [t.detach().clone() for t in v] for k, v in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.step_count, self.lrs = sd["step_count"], list(sd["lrs"])
        for k, tensors in sd["state"].items():
            for t, saved in zip(self.state[k], tensors):
                t.copy_(saved)


def per_model_batches(n: int, batch_size: int, generators: Sequence[torch.Generator],
                      device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """One epoch of per-model batches: a list of (R, B) index tensors (the last B may be smaller).
    Row r is exactly what :func:`utils.train.batch_indices` yields for a generator in the same state."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    perms = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
    return [perms[:, s:s + batch_size] for s in range(0, n, batch_size)]


def fit_many(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int,
             optimizer: str | Sequence[str] = "sgd", lr: float | Sequence[float] = 0.1,
             weight_decay: float | Sequence[float] = 0.0, milestones: Sequence = (),
             gamma: float = 0.1, batch_size: int = 128, seeds: Sequence[int] | None = None,
             callback: Callable[[int, nn.Module], list | dict | None] | None = None,
             progress: bool = True, desc: str = "epochs",
             checkpoint: "Checkpoint | None" = None, checkpoint_key: str = "fit_many") -> list[History]:
    """Train the R models of ``model`` (e.g. :class:`utils.models.BatchedMLP`) side by side.

    Args:
        model: maps per-model inputs (R, B, d0) to (R, B, K) logits; has an attribute ``runs`` = R.
        X: (N, ...) inputs and y: (N,) labels, shared by all models, on the model's device.
        epochs: passes over the data.
        optimizer, lr, weight_decay: one value for all models or one per model.
        milestones: epochs at which a model's lr is multiplied by ``gamma`` (one tuple for all,
            or one tuple per model).
        batch_size: examples per step; seeds: R batch-order seeds (default ``0..R-1``).
        callback: ``callback(epoch, model)`` after each epoch (eval mode, no grad), returning a
            dict (stored for every model), a list of R dicts, or None.
        checkpoint, checkpoint_key: as in :func:`utils.train.fit`: the state (models, optimiser,
            generators, histories, epoch) is saved at most every ``checkpoint.every_seconds`` and
            resumed from.
    Returns:
        R :class:`utils.train.History` objects (per-model mean loss, accuracy and lr per epoch).
    Raises:
        ValueError: mismatched X/y, wrong number of per-model settings, unknown optimizer.
        FloatingPointError: a model's epoch loss is not finite (names the model and epoch).
    """
    runs = int(model.runs)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} examples but y has {y.shape[0]}")
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    kinds = _per_model(optimizer, runs, "optimizer")
    lr0 = [float(v) for v in _per_model(lr, runs, "lr")]
    wds = [float(v) for v in _per_model(weight_decay, runs, "weight_decay")]
    ms = _per_model_milestones(milestones, runs)
    seeds = list(range(runs)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != runs:
        raise ValueError(f"seeds needs one entry per model ({runs}), got {len(seeds)}")
    device = X.device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = BatchedOptimizer(params, kinds, lr0, wds)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    histories = [History() for _ in range(runs)]
    first_epoch = 1
    state = checkpoint.restore(checkpoint_key, model, opt) if checkpoint is not None else None
    if state is not None:
        for g, s in zip(generators, state["generators"]):
            g.set_state(s)
        histories = [History(**h) for h in state["histories"]]
        first_epoch = state["epoch"] + 1
    Xf = X.reshape(X.shape[0], -1)
    n = X.shape[0]

    bar = progress_bar(range(first_epoch, epochs + 1), desc=desc, enabled=progress)
    for epoch in bar:
        lrs = [l0 * gamma ** sum(1 for m in mr if m <= epoch - 1) for l0, mr in zip(lr0, ms)]
        opt.set_lrs(lrs)
        model.train()
        total_loss = torch.zeros(runs, device=device, dtype=torch.float64)
        total_correct = torch.zeros(runs, device=device, dtype=torch.float64)
        for idx in per_model_batches(n, batch_size, generators, device):
            xb, yb = Xf[idx], y[idx]                           # (R, B, d0), (R, B)
            opt.zero_grad()
            out = model(xb)                                    # (R, B, K)
            losses = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1),
                                     reduction="none").view(runs, -1).mean(1)
            losses.sum().backward()
            opt.step()
            total_loss += losses.detach() * idx.shape[1]
            total_correct += (out.detach().argmax(-1) == yb).sum(1)
        mean_loss = (total_loss / n).tolist()
        acc = (total_correct / n).tolist()
        bad = [r for r, v in enumerate(mean_loss) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite training loss for models {bad} at epoch {epoch}; "
                                     "lower their learning rates or check the inputs")
        records = None
        if callback is not None:
            model.eval()
            with torch.no_grad():
                records = callback(epoch, model)
        for r, h in enumerate(histories):
            h.epoch.append(epoch)
            h.loss.append(mean_loss[r])
            h.accuracy.append(acc[r])
            h.lr.append(lrs[r])
            if callback is not None:
                h.extra.append((records[r] if isinstance(records, list) else records) or {})
        bar.set_postfix(loss=f"{max(mean_loss):.3g}", acc=f"{min(acc):.3f}")
        if checkpoint is not None and epoch < epochs and checkpoint.due(checkpoint_key):
            checkpoint.save_state(checkpoint_key, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "generators": [g.get_state() for g in generators],
                "histories": [h.as_dict() for h in histories], "epoch": epoch})
    model.eval()
    return histories


@torch.no_grad()
def accuracy_many(model: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk_size: int = 8192) -> list[float]:
    """Per-model fraction of correct argmax predictions (eval mode) on shared (X, y)."""
    model.eval()
    correct = torch.zeros(int(model.runs), dtype=torch.float64, device=X.device)
    for s in range(0, X.shape[0], chunk_size):
        correct += (model(X[s:s + chunk_size]).argmax(-1) == y[s:s + chunk_size]).sum(1)
    return (correct / max(X.shape[0], 1)).tolist()
