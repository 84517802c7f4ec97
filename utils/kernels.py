"""The empirical neural tangent kernel of any model, by ``torch.func``: the book's one ``empirical_ntk``.

``Theta(x, z) = sum_params df(x)/dtheta df(z)/dtheta^T`` for a function ``f(params, x)`` in the
``torch.func`` shape (a batch of inputs in, outputs ``(n,)`` or ``(n, O)`` out), computed from per-example
Jacobians ``vmap(jacrev(...))`` in chunks under a memory budget.  :func:`module_ntk` wraps an
``nn.Module`` after checking that its output for one input depends on that input alone (no BatchNorm in
training mode or without running statistics, no active dropout).  Closed forms for particular networks are
:func:`utils.two_layer.two_layer_ntk` (finite two-layer network), :func:`utils.ntk_kernels.h_infinity`
(infinite width) and :func:`utils.cntk.cntk_pairs` (convolutional).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.func import functional_call, jacrev, vmap

DEFAULT_MEMORY_BUDGET = 2**30          # bytes the Jacobians of one chunk may take (1 GiB)
BATCH_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
JACOBIAN_OVERHEAD = 4      # peak bytes per Jacobian entry, in units of one entry (measured ~4 for MLPs)


def check_ntk_model(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model``'s output for one input depends on that input alone.

    The NTK is a kernel between single inputs; ``torch.func`` evaluates the model one example at a time.
    BatchNorm or dropout in training mode, and BatchNorm without running statistics, make the output of
    an example depend on the batch (or on random masks).
    """
    for name, mod in model.named_modules():
        label = f"{type(mod).__name__} ({name or 'the model'})"
        if isinstance(mod, BATCH_DEPENDENT):
            if mod.training:
                raise ValueError(f"{label} is in training mode, where it normalises with batch statistics; "
                                 "the NTK needs a per-example function: call model.eval() first")
            if mod.running_mean is None:
                raise ValueError(f"{label} has no running statistics (track_running_stats=False), so even in "
                                 "eval mode it normalises with the statistics of the batch; build it with "
                                 "track_running_stats=True and train or set its running mean and variance")
        if isinstance(mod, DROPOUT) and mod.training and mod.p > 0:
            raise ValueError(f"{label} is active (training mode, p = {mod.p}); the NTK of a random mask is not "
                             "defined: call model.eval() first (no dropout)")


def ntk_memory_bytes(params: nn.Module | dict[str, torch.Tensor], chunk: int, outputs: int = 1) -> int:
    """Estimated peak bytes of the Jacobians of ``chunk`` inputs: JACOBIAN_OVERHEAD x chunk x outputs x params.

    ``params``: a module (its trainable parameters) or the dictionary of tensors differentiated.
    """
    tensors = [p for p in params.parameters() if p.requires_grad] if isinstance(params, nn.Module) \
        else list(params.values())
    size = tensors[0].element_size()
    return JACOBIAN_OVERHEAD * chunk * outputs * sum(p.numel() for p in tensors) * size


def empirical_ntk(f: Callable[[dict, torch.Tensor], torch.Tensor], params: dict[str, torch.Tensor],
                  X: torch.Tensor, Z: torch.Tensor | None = None,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """The finite network's NTK, Theta(x, z) = sum_params df(x)/dtheta df(z)/dtheta^T, by ``torch.func``.

    Args:
        f: ``f(params, x)`` maps a batch ``x: (n, ...)`` to ``(n,)`` or ``(n, O)`` outputs, one example at a
            time (it is called with n = 1 under ``vmap``); e.g. ``functional_call(model, params, (x,))``.
        params: the tensors differentiated, ``{name: tensor}`` (the NTK sums over all of them).
        X: (n, ...) inputs; Z: (k, ...) inputs or None (Z = X).
        memory_budget: bytes the Jacobians of one chunk may take; inputs are processed in chunks of
            ``memory_budget // (2 ntk_memory_bytes(params, 1, O))`` examples (each chunk pair recomputes them).
    Returns:
        (n, k) for scalar outputs, (n, k, O, O) for O outputs.
    Raises:
        ValueError: no parameters, or a budget too small for the Jacobian of a single input (the message
            gives the estimate).
    """
    params = {k: v.detach() for k, v in params.items()}
    if not params:
        raise ValueError("the model has no trainable parameters, so its NTK is zero")
    with torch.no_grad():
        probe = f(params, X[:1])
    scalar = probe.dim() == 1
    outputs = 1 if scalar else probe.shape[1]
    per_input = ntk_memory_bytes(params, 1, outputs)
    if per_input > memory_budget:
        raise ValueError(f"the Jacobian of one input needs about {per_input / 2**20:.0f} MiB "
                         f"({outputs} outputs x {sum(v.numel() for v in params.values()):,} parameters), more "
                         f"than memory_budget = {memory_budget / 2**20:.0f} MiB; raise the budget")
    chunk = max(1, int(memory_budget // (2 * per_input)))   # two chunks' Jacobians alive at once

    def f_single(p: dict, x: torch.Tensor) -> torch.Tensor:
        return f(p, x[None])[0]

    jac = vmap(jacrev(f_single), in_dims=(None, 0))

    def jacobian(A: torch.Tensor) -> torch.Tensor:
        J = jac(params, A)
        return torch.cat([j.reshape(A.shape[0], outputs, -1) for j in J.values()], dim=2)   # (c, O, P)

    Z_ = X if Z is None else Z
    n, k = X.shape[0], Z_.shape[0]
    out = torch.empty(n, k, outputs, outputs, dtype=probe.dtype, device=X.device)
    for i in range(0, n, chunk):
        Ji = jacobian(X[i:i + chunk])
        for j in range(0, k, chunk):
            Jj = Ji if (Z is None and i == j) else jacobian(Z_[j:j + chunk])
            out[i:i + chunk, j:j + chunk] = torch.einsum("aop,bqp->aboq", Ji, Jj) if outputs > 1 else \
                (Ji[:, 0] @ Jj[:, 0].T)[:, :, None, None]
    return out[:, :, 0, 0] if scalar else out


def module_ntk(model: nn.Module, X: torch.Tensor, Z: torch.Tensor | None = None,
               memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """:func:`empirical_ntk` of an ``nn.Module`` with respect to its trainable parameters.

    Args and returns as :func:`empirical_ntk` (model maps (n, ...) to (n,) or (n, O)).
    Raises:
        ValueError: a batch-dependent model (see :func:`check_ntk_model`), no trainable parameters, or a
            budget too small for the Jacobian of a single input.
    """
    check_ntk_model(model)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    if not params:
        raise ValueError("the model has no trainable parameters, so its NTK is zero")

    def f(p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (x,))

    return empirical_ntk(f, params, X, Z, memory_budget)
