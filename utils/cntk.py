"""The convolutional neural tangent kernel (CNTK) of a ReLU ConvNet, exactly, and the empirical NTK.

Arora, Du, Hu, Li, Salakhutdinov & Wang (NeurIPS 2019, "On exact computation with an infinitely
wide neural net") give the closed-form recursion below; Li, Wang, Yu, Du, Hu, Salakhutdinov &
Arora (2019, "Enhanced convolutional neural tangent kernels") show that global average pooling
(GAP) turns it into a translation-augmented kernel.  The network (NTK parametrisation, no bias)
on images ``x: (C_0, H, W)`` with ``P = H W`` pixels and 3x3 patches (``q^2 = 9``):

    z^(1) = W^(1) * x / sqrt(9 C_0),   g^(h) = sqrt(2) ReLU(z^(h)),   z^(h+1) = W^(h+1) * g^(h) / sqrt(9 C_h),
    vanilla: f(x) = <v, g^(L)> / sqrt(C_L P)        GAP: f(x) = sum_c v_c mean_p g^(L)_{c,p} / sqrt(C_L)

with every weight N(0, 1), stride 1 and zero (or circular) padding.  For an image pair the kernel
is carried as (P, P') tensors over pixel pairs:

    Sigma^(1)_{pp'} = 1/9 sum_delta <x_{p+delta}, x'_{p'+delta}> / C_0         (same offset delta in both)
    K^(h) = sqrt(a b) (sin t + (pi - t) cos t) / pi,   Kdot^(h) = (pi - t) / pi,   cos t = Sigma^(h) / sqrt(a b)
    Sigma^(h+1) = 1/9 sum_delta K^(h)_{p+delta, p'+delta},   Theta^(1) = Sigma^(1),
    Theta^(h+1) = Sigma^(h+1) + 1/9 sum_delta (Theta^(h) Kdot^(h))_{p+delta, p'+delta},

where ``a_p = Sigma^(h)(x, x)_{pp}``, ``b_{p'} = Sigma^(h)(x', x')_{p'p'}`` (the arc-cosine formulas
of the ReLU with c_sigma = 2).  With ``M = K^(L) + Theta^(L) Kdot^(L)`` the network's NTK is the mean
of M over the diagonal p = p' (vanilla) or over all pixel pairs (GAP).  With circular padding the
GAP kernel equals the vanilla kernel averaged over all P cyclic translations of one input
(:func:`translation_averaged`): pooling is data augmentation by translations, built into the kernel.

This module also holds :class:`ConvNet` (the finite network above) and :func:`empirical_ntk`, the
finite-width NTK of any ``torch.nn.Module`` by ``torch.func``, which refuses models whose kernel is
not a per-example function (BatchNorm in training mode, active dropout) and computes in chunks
under a memory budget.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

PADDINGS = ("zeros", "circular")
DEFAULT_MEMORY_BUDGET = 2**30          # bytes for the pair tensors of one block (1 GiB)
TEMPORARIES = 8                        # (B, P, P) tensors alive at once in the recursion


def _check_images(X: torch.Tensor, name: str = "X") -> None:
    if X.dim() != 4:
        raise ValueError(f"{name} must be a batch of images (n, C, H, W), got shape {tuple(X.shape)}")


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _pair_patch_sum(S: torch.Tensor, padding: str) -> torch.Tensor:
    """(1/9) sum over the 3x3 offsets delta of S[.., p + delta, p' + delta].  S: (B, H, W, H, W)."""
    H, W = S.shape[1], S.shape[2]
    out = torch.zeros_like(S)
    if padding == "zeros":
        Sp = F.pad(S, (1, 1, 1, 1, 1, 1, 1, 1))
        for di in range(3):
            for dj in range(3):
                out += Sp[:, di:di + H, dj:dj + W, di:di + H, dj:dj + W]
    else:
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                out += torch.roll(S, shifts=(-di, -dj, -di, -dj), dims=(1, 2, 3, 4))
    return out / 9.0


def _diag_patch_sum(v: torch.Tensor, padding: str) -> torch.Tensor:
    """(1/9) sum over the 3x3 offsets of v[.., p + delta].  v: (n, H, W) pixel variances."""
    if padding == "zeros":
        return F.avg_pool2d(v[:, None], 3, stride=1, padding=1, count_include_pad=True)[:, 0]
    return F.avg_pool2d(F.pad(v[:, None], (1, 1, 1, 1), mode="circular"), 3, stride=1)[:, 0]


def patches(X: torch.Tensor, padding: str) -> torch.Tensor:
    """The 3x3 patches of ``X: (n, C, H, W)`` (zero or circular padding) as (n, P, 9 C).

    Sigma^(1)_{pp'} = <patch_p(x), patch_p'(x')> / (9 C): the first layer as one matrix product.
    """
    if padding == "circular":
        U = F.unfold(F.pad(X, (1, 1, 1, 1), mode="circular"), 3)
    else:
        U = F.unfold(X, 3, padding=1)
    return U.transpose(1, 2)


def relu_arccos(S: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ReLU's arc-cosine kernels (c_sigma = 2) for covariance S and variances a (rows), b (columns).

    For (u, v) Gaussian with E u^2 = a, E v^2 = b, E uv = S:
        K    = 2 E[ReLU(u) ReLU(v)] = sqrt(ab) (sin t + (pi - t) cos t) / pi,
        Kdot = 2 E[1{u > 0} 1{v > 0}] = (pi - t) / pi,     with cos t = S / sqrt(ab).
    Shapes broadcast (e.g. S: (B, H, W, H, W), a: (B, H, W, 1, 1), b: (B, 1, 1, H, W)).  Where a or b is
    0 (an all-zero patch) K = 0 and Kdot = 1/2 (the limit of independent inputs).
    """
    norm = torch.sqrt(a * b)
    rho = torch.where(norm > 0, S / norm.clamp_min(1e-300), torch.zeros_like(S)).clamp_(-1.0, 1.0)
    theta = torch.arccos(rho)
    K = norm * (torch.sqrt(1 - rho * rho) + (math.pi - theta) * rho) / math.pi
    Kdot = (math.pi - theta) / math.pi
    return K, Kdot


def pair_block_bytes(pairs: int, height: int, width: int, dtype: torch.dtype = torch.float64) -> int:
    """Bytes of the recursion's temporaries for ``pairs`` image pairs of size height x width."""
    return TEMPORARIES * pairs * (height * width) ** 2 * torch.empty((), dtype=dtype).element_size()


def cntk_pairs(X: torch.Tensor, Z: torch.Tensor, depth: int, padding: str = "zeros"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact CNTK of every pair (X[i], Z[j]) of two small batches, without and with GAP.

    Args:
        X: (n, C, H, W), Z: (k, C, H, W) images (same C, H, W); depth: number L >= 1 of 3x3 conv layers;
        padding: ``"zeros"`` or ``"circular"``.
    Returns:
        (vanilla, gap): two (n, k) tensors in X's dtype.  Memory: about ``pair_block_bytes(n * k, H, W)``.
    """
    _check_images(X), _check_images(Z, "Z")
    _check_padding(padding)
    if depth < 1:
        raise ValueError(f"depth (number of convolutional layers) must be at least 1, got {depth}")
    if X.shape[1:] != Z.shape[1:]:
        raise ValueError(f"X and Z must have the same (C, H, W), got {tuple(X.shape[1:])} and {tuple(Z.shape[1:])}")
    n, C, H, W = X.shape
    k = Z.shape[0]
    Ux, Uz = patches(X, padding), patches(Z, padding)                      # (n, P, 9C), (k, P, 9C)
    Sigma = torch.einsum("ipd,jqd->ijpq", Ux, Uz).reshape(n * k, H, W, H, W) / (9 * C)
    a = Ux.square().sum(2).reshape(n, H, W) / (9 * C)                       # Sigma(x, x)_pp
    b = Uz.square().sum(2).reshape(k, H, W) / (9 * C)
    Theta = Sigma
    for h in range(1, depth + 1):
        A = a[:, None, :, :, None, None].expand(n, k, H, W, 1, 1).reshape(n * k, H, W, 1, 1)
        Bv = b[None, :, None, None, :, :].expand(n, k, 1, 1, H, W).reshape(n * k, 1, 1, H, W)
        K, Kdot = relu_arccos(Sigma, A, Bv)
        if h == depth:
            break
        Sigma = _pair_patch_sum(K, padding)
        Theta = Sigma + _pair_patch_sum(Theta * Kdot, padding)
        a, b = _diag_patch_sum(a, padding), _diag_patch_sum(b, padding)    # K(x, x)_pp = Sigma(x, x)_pp
    M = (K + Theta * Kdot).reshape(n * k, H * W, H * W)
    vanilla = M.diagonal(dim1=1, dim2=2).mean(-1).reshape(n, k)
    gap = M.mean((1, 2)).reshape(n, k)
    return vanilla, gap


def cntk_matrix(X: torch.Tensor, Z: torch.Tensor | None = None, depth: int = 1, padding: str = "zeros",
                memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: Callable | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """CNTK Gram matrices between ``X: (n, C, H, W)`` and ``Z: (k, C, H, W)`` (Z = X when None), in blocks.

    The pairs are processed in square-ish blocks whose temporaries fit in ``memory_budget`` bytes; with
    Z = None only the blocks on and above the diagonal are computed and mirrored.
    Returns (vanilla, gap), each (n, k) in X's dtype.  ``progress(done, total)`` is called per block.
    Raises ValueError when a single pair does not fit in the budget (the message gives the need).
    """
    _check_images(X)
    symmetric = Z is None
    Z = X if Z is None else Z
    _check_images(Z, "Z")
    n, k = X.shape[0], Z.shape[0]
    H, W = X.shape[2], X.shape[3]
    per_pair = pair_block_bytes(1, H, W, X.dtype)
    if per_pair > memory_budget:
        raise ValueError(f"one image pair needs about {per_pair / 2**20:.0f} MiB of temporaries "
                         f"({H}x{W} pixels), more than memory_budget = {memory_budget / 2**20:.0f} MiB; "
                         "raise the budget or use smaller images")
    side = max(1, int(math.sqrt(memory_budget // per_pair)))
    vanilla = torch.empty(n, k, dtype=X.dtype, device=X.device)
    gap = torch.empty_like(vanilla)
    blocks = [(i, j) for i in range(0, n, side) for j in range(0, k, side) if not symmetric or j >= i]
    for count, (i, j) in enumerate(blocks):
        v, g = cntk_pairs(X[i:i + side], Z[j:j + side], depth, padding)
        vanilla[i:i + side, j:j + side], gap[i:i + side, j:j + side] = v, g
        if symmetric and j > i:
            vanilla[j:j + side, i:i + side], gap[j:j + side, i:i + side] = v.T, g.T
        if progress is not None:
            progress(count + 1, len(blocks))
    return vanilla, gap


def translation_averaged(kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Mean over all cyclic translations tau of Z of kernel(X, tau Z): the translation-augmented kernel.

    kernel: maps (n, C, H, W), (k, C, H, W) to (n, k).  Returns (n, k).  Li et al. (2019): for the
    circularly padded CNTK this equals the GAP kernel (the test checks it).
    """
    H, W = Z.shape[2], Z.shape[3]
    total = 0
    for s in range(H):
        for t in range(W):
            total = total + kernel(X, torch.roll(Z, shifts=(s, t), dims=(2, 3)))
    return total / (H * W)


# ----------------------------------------------------------------------------- finite network

class ConvNet(nn.Module):
    """The finite ReLU ConvNet whose NTK tends to the CNTK above as ``channels`` grows.

    ``depth`` 3x3 conv layers of ``channels`` channels (stride 1, no bias), NTK parametrisation
    (weights N(0, 1), scaled by 1/sqrt(fan-in) in the forward pass), then a linear read-out of the
    flattened features (``pooling="none"``) or of their global average (``pooling="gap"``).
    Input (n, C_0, H, W); output (n,).
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], channels: int, depth: int = 1,
                 pooling: str = "none", padding: str = "zeros", seed: int = 0):
        super().__init__()
        if pooling not in ("none", "gap"):
            raise ValueError(f"pooling must be 'none' or 'gap', got {pooling!r}")
        _check_padding(padding)
        g = torch.Generator().manual_seed(seed)
        sizes = [in_channels] + [channels] * depth
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(c_out, c_in, 3, 3, generator=g))
                                        for c_in, c_out in zip(sizes[:-1], sizes[1:]))
        P = image_size[0] * image_size[1]
        self.readout = nn.Parameter(torch.randn(channels if pooling == "gap" else channels * P, generator=g))
        self.pooling, self.padding, self.pixels = pooling, padding, P

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x
        for w in self.weights:
            if self.padding == "circular":
                z = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="circular"), w)
            else:
                z = F.conv2d(g, w, padding=1)
            g = math.sqrt(2.0) * torch.relu(z / math.sqrt(9 * w.shape[1]))
        if self.pooling == "gap":
            return g.mean((2, 3)) @ self.readout / math.sqrt(g.shape[1])
        return g.flatten(1) @ self.readout / math.sqrt(self.readout.shape[0])


# ----------------------------------------------------------------------------- empirical NTK

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


def ntk_memory_bytes(model: nn.Module, chunk: int, outputs: int = 1) -> int:
    """Estimated peak bytes of the Jacobians of ``chunk`` inputs: JACOBIAN_OVERHEAD x chunk x outputs x params."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = next(model.parameters()).element_size()
    return JACOBIAN_OVERHEAD * chunk * outputs * params * size


def empirical_ntk(model: nn.Module, X: torch.Tensor, Z: torch.Tensor | None = None,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """The finite network's NTK, Theta(x, z) = sum_params df(x)/dtheta df(z)/dtheta^T, by ``torch.func``.

    Args:
        model: a module mapping (n, ...) inputs to (n,) or (n, O) outputs, evaluated per example.
        X: (n, ...) inputs; Z: (k, ...) inputs or None (Z = X).
        memory_budget: bytes the Jacobians of one chunk may take; inputs are processed in chunks of
            ``memory_budget // ntk_memory_bytes(model, 1, O)`` examples (each chunk pair recomputes them).
    Returns:
        (n, k) for scalar outputs, (n, k, O, O) for O outputs.
    Raises:
        ValueError: a batch-dependent model (see :func:`check_ntk_model`), or a budget too small for the
            Jacobian of a single input (the message gives the estimate).
    """
    check_ntk_model(model)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters, so its NTK is zero")
    with torch.no_grad():
        probe = model(X[:1])
    scalar = probe.dim() == 1
    outputs = 1 if scalar else probe.shape[1]
    per_input = ntk_memory_bytes(model, 1, outputs)
    if per_input > memory_budget:
        raise ValueError(f"the Jacobian of one input needs about {per_input / 2**20:.0f} MiB "
                         f"({outputs} outputs x {sum(v.numel() for v in params.values()):,} parameters), more "
                         f"than memory_budget = {memory_budget / 2**20:.0f} MiB; raise the budget")
    chunk = max(1, int(memory_budget // (2 * per_input)))   # two chunks' Jacobians alive at once

    def f_single(p: dict, x: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x[None],))
        return out[0]

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


# ----------------------------------------------------------------------------- data and regression

def place_in_frame(X: torch.Tensor, frame: int, shift: str = "centre", seed: int = 0) -> torch.Tensor:
    """Paste each image of ``X: (n, C, s, s)`` into a ``frame`` x ``frame`` canvas of zeros.

    shift: ``"centre"`` (every image in the middle) or ``"random"`` (a seeded uniform offset per image,
    the whole image always inside the frame).  Returns (n, C, frame, frame).
    """
    n, C, s, _ = X.shape
    if frame < s:
        raise ValueError(f"frame ({frame}) must be at least the image size ({s})")
    if shift not in ("centre", "random"):
        raise ValueError(f"shift must be 'centre' or 'random', got {shift!r}")
    out = torch.zeros(n, C, frame, frame, dtype=X.dtype, device=X.device)
    if shift == "centre":
        offsets = torch.full((n, 2), (frame - s) // 2)
    else:
        offsets = torch.randint(0, frame - s + 1, (n, 2), generator=torch.Generator().manual_seed(seed))
    for i, (r, c) in enumerate(offsets.tolist()):
        out[i, :, r:r + s, c:c + s] = X[i]
    return out


def kernel_regression_error(K_train: torch.Tensor, K_test: torch.Tensor, y: torch.Tensor, y_test: torch.Tensor,
                            classes: int, ridge: float = 1e-6) -> float:
    """Test error of kernel regression on one-hot targets (Arora et al., 2019, Section 5).

    K_train: (n, n), K_test: (k, n), y: (n,), y_test: (k,) integer labels.  Solves
    (K + ridge * mean(diag K) I) alpha = onehot(y) - 1/classes and predicts argmax K_test alpha.
    """
    K = K_train.double()
    Y = F.one_hot(y.long(), classes).double() - 1.0 / classes
    reg = ridge * K.diagonal().mean()
    alpha = torch.linalg.solve(K + reg * torch.eye(len(K), dtype=K.dtype, device=K.device), Y)
    pred = (K_test.double() @ alpha).argmax(1)
    return float((pred != y_test.to(pred.device)).double().mean())
