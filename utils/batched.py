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

    The parameters are re-seated as views of one flat buffer, and so are their gradients
    (autograd accumulates into them in place), so a step is a few operations over that buffer,
    with per-element vectors of each model's learning rate, weight decay and momentum, instead of
    about ten small operations per stacked parameter tensor (a depth-20 batched MLP has 86).
    Adam's moment updates and its normalised direction come from ``torch._fused_adam_`` (one pass,
    learning rate 1, into a scratch buffer) and each model's learning rate multiplies the result.
    The arithmetic is ``torch.optim.SGD``'s and ``torch.optim.Adam``'s (L2 weight decay added to
    the gradient), up to float rounding.

    Args:
        params: tensors whose first dimension indexes the R models (leaf parameters; their
            ``.data`` and ``.grad`` become views of the flat buffers).
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
        lrs, wds = [float(v) for v in lrs], [float(v) for v in weight_decays]
        if len(lrs) != runs or len(wds) != runs:
            raise ValueError(f"need {runs} learning rates and weight decays, got {len(lrs)} and {len(wds)}")
        device, dtype = self.params[0].device, self.params[0].dtype
        self.kinds = list(kinds)
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.flat_grad = torch.zeros_like(self.flat)
        owner, offset = [], 0
        for p in self.params:
            n = p.numel()
            p.data = self.flat[offset:offset + n].view_as(p)
            p.grad = self.flat_grad[offset:offset + n].view_as(p)
            owner.append(torch.arange(runs, device=device).repeat_interleave(n // runs))
            offset += n
        self.owner = torch.cat(owner)                         # (P,) the model of every element
        self._per_element = lambda values: torch.tensor(values, device=device, dtype=dtype)[self.owner]
        self.adam = [k == "adam" for k in kinds]
        self.any_adam, self.any_sgd = any(self.adam), not all(self.adam)
        momenta = [MOMENTUM if k == "momentum" else 0.0 for k in kinds]
        self.any_momentum = any(m > 0 for m in momenta)
        self.momentum = self._uniform_or_vector(momenta)
        self.wd = self._uniform_or_vector(wds)
        self.lrs: list[float] = []
        self.set_lrs(lrs)
        self.step_count = 0
        self.state: dict[str, torch.Tensor] = {}
        if self.any_momentum:
            self.state["buf"] = torch.zeros_like(self.flat)
        if self.any_adam:
            self.state["exp_avg"] = torch.zeros_like(self.flat)
            self.state["exp_avg_sq"] = torch.zeros_like(self.flat)
            self._direction = torch.zeros_like(self.flat)
            self._step = torch.zeros((), device=device, dtype=dtype)   # the fused kernel's step count
            self._fused = hasattr(torch, "_fused_adam_") and device.type in ("cpu", "cuda")

    def _uniform_or_vector(self, values: list[float]) -> float | torch.Tensor:
        """A float when every model has the same value (a cheaper scalar operation), else (P,) per element."""
        return values[0] if len(set(values)) == 1 else self._per_element(values)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        """Set every model's learning rate. In a group that mixes Adam and SGD-family models, the
        SGD step's coefficient is zero on the Adam models' elements and the Adam step's on the others."""
        lrs = [float(v) for v in lrs]
        if lrs != self.lrs:
            self.lrs = lrs
            self.neg_lr_sgd = self._uniform_or_vector([0.0 if a else -v for a, v in zip(self.adam, lrs)])
            self.lr_adam = self._uniform_or_vector([v if a else 0.0 for a, v in zip(self.adam, lrs)])

    @staticmethod
    def _axpy(target: torch.Tensor, coef: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """target += coef * x, coef a float or a per-element vector."""
        return target.add_(x, alpha=coef) if isinstance(coef, float) else target.addcmul_(coef, x)

    def _adam_direction(self, g: torch.Tensor) -> torch.Tensor:
        """Update the moments and return ``-m_hat / (sqrt(v_hat) + eps)`` (Adam's step at lr 1)."""
        m, v, d = self.state["exp_avg"], self.state["exp_avg_sq"], self._direction
        b1, b2 = ADAM_BETAS
        if self._fused:
            try:
                d.zero_()
                self._step.fill_(self.step_count)
                torch._fused_adam_([d], [g], [m], [v], [], [self._step], lr=1.0, beta1=b1, beta2=b2,
                                   weight_decay=0.0, eps=ADAM_EPS, amsgrad=False, maximize=False)
                return d
            except (RuntimeError, NotImplementedError):   # a device or build without the kernel
                self._fused = False                          # (it fails at dispatch, before writing)
        bc1, bc2 = 1 - b1 ** self.step_count, 1 - b2 ** self.step_count
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = v.sqrt().div_(math.sqrt(bc2)).add_(ADAM_EPS)
        return torch.div(m, denom, out=d).div_(-bc1)

    @torch.no_grad()
    def step(self) -> None:
        """One update of every model (as ``torch.optim.SGD``/``Adam`` would do for each alone)."""
        self.step_count += 1
        p, g = self.flat, self.flat_grad
        if not (isinstance(self.wd, float) and self.wd == 0.0):
            self._axpy(g, self.wd, p)                         # grad + weight_decay * param
        if self.any_sgd:
            d = self.state["buf"].mul_(self.momentum).add_(g) if self.any_momentum else g   # momentum 0: grad
            self._axpy(p, self.neg_lr_sgd, d)
        if self.any_adam:                                     # the direction does not depend on p
            self._axpy(p, self.lr_adam, self._adam_direction(g))

    def zero_grad(self) -> None:
        """Zero the flat gradient (the parameters' ``.grad`` stay views of it)."""
        self.flat_grad.zero_()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "lrs": list(self.lrs),
                "state": {k: v.detach().clone() for k, v in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.step_count = sd["step_count"]
        self.set_lrs(sd["lrs"])
        for k, saved in sd["state"].items():
            if k not in self.state:                           # older checkpoints kept an unused buffer
                continue
            if isinstance(saved, (list, tuple)):              # older checkpoints: one tensor per parameter
                saved = torch.cat([t.reshape(-1) for t in saved])
            self.state[k].copy_(saved)


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
