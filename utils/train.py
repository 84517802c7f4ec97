"""Training on device-resident tensors: a seeded batch iterator and :func:`fit`.

Datasets the size of (Fashion-)MNIST fit in device memory, so a batch is an index
slice of a tensor that already lives there; there is no per-sample ``DataLoader``.
On a CUDA device with static shapes, the training step is captured in a CUDA graph
and replayed, which removes the Python and kernel-launch overhead per step.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checks import check_choice, check_positive_int, check_repeats, env_flag

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

OPTIMIZERS = ("sgd", "momentum", "adam")


def progress_bar(iterable, desc: str = "", enabled: bool = True, **kwargs):
    """A ``tqdm.auto`` bar over ``iterable``; off when ``enabled`` is False or ``$TQDM_DISABLE`` is true
    (``1/true/yes/on``; ``0/false/no/off`` or unset keep the bar; the book build sets it, so no
    progress-bar residue reaches the website). Another value raises ValueError naming the variable."""
    disable = (not enabled) or env_flag("TQDM_DISABLE")
    return tqdm(iterable, desc=desc, disable=disable, leave=False, **kwargs)


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  shuffle: bool = True, repeats: torch.Tensor | None = None,
                  device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Yield index tensors covering one epoch.

    Args:
        n: number of examples.
        batch_size: examples per batch; the last batch may be smaller.
        generator: CPU generator for the seeded permutation.
        shuffle: permute the pool each epoch.
        repeats: (n,) non-negative integers, how often each example appears per epoch
            (oversampling); None means once each.
        device: where the yielded indices live.
    Raises:
        ValueError: ``batch_size < 1``, ``n < 1``, repeats of the wrong shape, negative, non-integer
            or all zero (an epoch with nothing to train on).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    n = check_positive_int(n, "n (the number of examples)")
    pool = torch.arange(n)
    if repeats is not None:
        pool = pool.repeat_interleave(check_repeats(repeats, n))
    if shuffle:
        pool = pool[torch.randperm(len(pool), generator=generator)]
    pool = pool.to(device)
    for start in range(0, len(pool), batch_size):
        yield pool[start:start + batch_size]


def make_optimizer(params: Sequence[torch.Tensor], name: str, lr: float,
                   weight_decay: float = 0.0, capturable: bool = False) -> torch.optim.Optimizer:
    """``sgd`` (plain), ``momentum`` (SGD with momentum 0.9) or ``adam``.

    ``capturable=True`` keeps Adam's step counter on the device so its step can be captured in a
    CUDA graph (SGD's step needs nothing special)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=capturable)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


@dataclass
class History:
    """Per-epoch training record. ``extra`` holds whatever ``callback`` returned each epoch."""

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": self.loss, "accuracy": self.accuracy, "lr": self.lr,
                "extra": self.extra}


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(outputs: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy. outputs: (B, K) logits; targets: (B,) labels; idx: (B,) example indices."""
    return F.cross_entropy(outputs, targets)


def _correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions (classification) as a 0-d tensor; 0 where not applicable."""
    if outputs.dim() == 2 and targets.dim() == 1 and outputs.shape[0] == targets.shape[0]:
        return (outputs.argmax(1) == targets).sum()
    if outputs.dim() == 3 and targets.dim() == 1:  # (R, B, K): R models trained side by side
        return (outputs.argmax(-1) == targets).sum() / outputs.shape[0]
    if outputs.dim() == 3 and targets.dim() == 2 and targets.shape == outputs.shape[1::-1]:
        # (R, B, K) outputs and (B, R) labels: each of the R models has its own labels for the batch
        return (outputs.argmax(-1) == targets.T).sum() / outputs.shape[0]
    return torch.zeros((), device=outputs.device)


def _check_fit_arguments(model, X, y, epochs, optimizer, lr, weight_decay, batch_size, loss_fn, repeats) -> None:
    """The argument checks at the head of :func:`fit` (see its Raises section)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, t in (("X", X), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor on the training device, got {type(t).__name__}; "
                            f"convert it with torch.as_tensor({name})")
    if X.dim() == 0 or y.dim() == 0 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0] if X.dim() else 0} examples but y has "
                         f"{y.shape[0] if y.dim() else 0}: pass one target per example")
    if X.shape[0] == 0:
        raise ValueError("X and y are empty: there is nothing to train on")
    if X.device != y.device:
        raise ValueError(f"X is on {X.device} but y is on {y.device}; move both to the model's device")
    if isinstance(epochs, bool) or not float(epochs).is_integer() or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    check_positive_int(batch_size, "batch_size")
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a non-negative finite number, got {weight_decay!r}")
    if repeats is not None:
        check_repeats(repeats, X.shape[0])
    if loss_fn is cross_entropy_loss:
        if y.is_floating_point() or y.dim() != 1:
            raise TypeError(f"the default cross-entropy loss needs integer class labels y of shape (N,), got "
                            f"dtype {y.dtype} and shape {tuple(y.shape)} (float targets would be read as class "
                            "probabilities); pass y.long(), or a loss_fn for other targets")
        if int(y.min()) < 0:
            raise ValueError(f"class labels must be non-negative, got {int(y.min())}")


def fit(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, optimizer: str = "sgd",
        lr: float = 0.1, weight_decay: float = 0.0, milestones: Sequence[int] = (),
        gamma: float = 0.1, batch_size: int = 128, seed: int = 0, progress: bool = True,
        loss_fn: LossFn = cross_entropy_loss,
        penalty: Callable[[nn.Module], torch.Tensor] | None = None,
        penalty_grad: Callable[[nn.Module], None] | None = None,
        extra_params: Sequence[torch.Tensor] = (),
        repeats: torch.Tensor | None = None,
        callback: Callable[[int, nn.Module], dict | None] | None = None,
        cuda_graph: bool | None = None, desc: str = "epochs",
        checkpoint: "Checkpoint | None" = None, checkpoint_key: str = "fit") -> History:
    """Train ``model`` on device-resident ``(X, y)`` and return the per-epoch history.

    Args:
        model: maps a batch ``X[idx]`` to outputs, e.g. (B, K) logits.
        X: (N, ...) inputs; y: (N, ...) targets, both on the model's device.
        epochs: number of passes over the (oversampled) data.
        optimizer: ``"sgd"``, ``"momentum"`` (0.9) or ``"adam"``.
        lr, weight_decay: optimiser settings; ``milestones`` are epochs at which lr is multiplied by ``gamma``.
        batch_size: examples per step.
        seed: seeds the shuffling (the model's initialisation is the caller's: seed before building it).
        progress: show a ``tqdm.auto`` bar over epochs.
        loss_fn: ``loss_fn(outputs, targets, idx) -> scalar``; ``idx`` are the batch's example indices.
        penalty: optional ``penalty(model) -> scalar`` added to every step's loss (e.g. distance to init).
        penalty_grad: optional ``penalty_grad(model)`` that adds the gradient of a penalty known in
            closed form to the parameters' ``.grad`` in place, after the backward pass and before the
            step (the same update as ``penalty=``, without differentiating it: for distance to init
            on many stacked runs this saves a zero-filled full-size gradient per parameter and step).
            Its value is not part of the reported loss.
        extra_params: trainable tensors outside the model (e.g. per-example offsets) to optimise too.
        repeats: (N,) integer repeats per example per epoch (oversampling), or None.
        callback: ``callback(epoch, model)`` after each epoch (model in eval mode); a returned dict
            is stored in ``history.extra``.
        cuda_graph: capture the step in a CUDA graph (default: on for CUDA devices).
        checkpoint, checkpoint_key: a :class:`utils.checkpoint.Checkpoint`; the training state
            (model, optimiser, scheduler, shuffling generator, history, epoch) is saved under
            ``checkpoint_key`` at the end of an epoch once ``checkpoint.every_seconds`` have passed,
            and a saved state is resumed from (the ``paper`` profile's long runs).
    Returns:
        :class:`History` with one entry per epoch (mean training loss, training accuracy, lr).
    Raises:
        FloatingPointError: when an epoch's loss is not finite (names the epoch).
        ValueError: for an unknown optimizer, mismatched or empty ``X``/``y``, ``epochs < 0``,
            ``batch_size < 1``, a non-positive or non-finite ``lr``, negative ``weight_decay``,
            ``repeats`` that are not (N,) non-negative integers or are all zero (nothing to train on),
            ``X``/``y`` on different devices, or (with the default cross-entropy) negative labels.
        TypeError: non-tensor ``X``/``y``; float labels with the default cross-entropy (which would
            read them as class probabilities).
    """
    _check_fit_arguments(model, X, y, epochs, optimizer, lr, weight_decay, batch_size, loss_fn, repeats)
    device = X.device
    use_graph = (device.type == "cuda") if cuda_graph is None else (cuda_graph and device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    opt = make_optimizer(params, optimizer, lr, weight_decay, capturable=use_graph)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    generator = torch.Generator().manual_seed(seed)
    history = History()
    first_epoch = 1
    state = checkpoint.restore(checkpoint_key, model, opt) if checkpoint is not None else None
    if state is not None:
        sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        for p, saved in zip(extra_params, state.get("extra_params", [])):
            p.data.copy_(saved)
        history = History(**state["history"])
        first_epoch = state["epoch"] + 1

    def step(xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        opt.zero_grad(set_to_none=False)
        out = model(xb)
        loss = loss_fn(out, yb, idx)
        if penalty is not None:
            loss = loss + penalty(model)
        loss.backward()
        if penalty_grad is not None:
            with torch.no_grad():
                penalty_grad(model)
        opt.step()
        return loss.detach(), _correct(out.detach(), yb)

    graphed = _GraphedStep(step, X, y, batch_size) if use_graph else None
    bar = progress_bar(range(first_epoch, epochs + 1), desc=desc, enabled=progress)
    for epoch in bar:
        model.train()
        total_loss = torch.zeros((), device=device, dtype=torch.float64)
        total_correct = torch.zeros((), device=device, dtype=torch.float64)
        count = 0
        for idx in batch_indices(X.shape[0], batch_size, generator, repeats=repeats, device=device):
            if graphed is not None and len(idx) == batch_size:
                loss, correct = graphed(idx, current_lr=opt.param_groups[0]["lr"])
            else:
                loss, correct = step(X[idx], y[idx], idx)
            total_loss += loss * len(idx)
            total_correct += correct
            count += len(idx)
        mean_loss = (total_loss / max(count, 1)).item()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"non-finite training loss ({mean_loss}) at epoch {epoch}; "
                                     "lower the learning rate or check the inputs")
        history.epoch.append(epoch)
        history.loss.append(mean_loss)
        history.accuracy.append((total_correct / max(count, 1)).item())
        history.lr.append(opt.param_groups[0]["lr"])
        sched.step()
        if callback is not None:
            model.eval()
            with torch.no_grad():
                record = callback(epoch, model)
            history.extra.append(record or {})
        bar.set_postfix(loss=f"{mean_loss:.3g}", acc=f"{history.accuracy[-1]:.3f}")
        if checkpoint is not None and epoch < epochs and checkpoint.due(checkpoint_key):
            checkpoint.save_state(checkpoint_key, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": generator.get_state(), "history": history.as_dict(), "epoch": epoch,
                "extra_params": [p.detach().clone() for p in extra_params]})
    model.eval()
    return history


class _GraphedStep:
    """A training step captured in a CUDA graph for full batches (one graph per learning rate).

    Inputs are copied into static buffers before each replay; the optimiser's state is
    created by eager warm-up steps before capture, as CUDA graphs require.
    """

    def __init__(self, step, X: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.step, self.X, self.y = step, X, y
        self.static_idx = torch.zeros(batch_size, dtype=torch.long, device=X.device)
        self.graphs: dict[float, tuple] = {}
        self.warm = 0

    def __call__(self, idx: torch.Tensor, current_lr: float):
        if self.warm < 3:  # eager warm-up on a side stream
            self.warm += 1
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                out = self.step(self.X[idx], self.y[idx], idx)
            torch.cuda.current_stream().wait_stream(s)
            return out
        if current_lr not in self.graphs:
            self.static_idx.copy_(idx)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                xb, yb = self.X[self.static_idx], self.y[self.static_idx]
                outputs = self.step(xb, yb, self.static_idx)
            self.graphs[current_lr] = (graph, outputs)  # capture records the step without running it
        graph, outputs = self.graphs[current_lr]
        self.static_idx.copy_(idx)
        graph.replay()
        return tuple(o.clone() for o in outputs)


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk_size: int = 8192) -> float:
    """Fraction of correct argmax predictions of ``model`` on (X, y), evaluated in chunks."""
    model.eval()
    correct = 0
    for start in range(0, X.shape[0], chunk_size):
        correct += (model(X[start:start + chunk_size]).argmax(-1) == y[start:start + chunk_size]).sum().item()
    return correct / max(X.shape[0], 1)
