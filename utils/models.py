"""Networks trained in the book, each able to return its intermediate features."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def _block(d_in: int, d_out: int, batchnorm: bool, nonlinear: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, d_out)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(d_out))
    if nonlinear:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FeatureMLP(nn.Module):
    """The MLP of the equi-separation paper (He & Su, 2023).

    ``input block -> layer_num hidden blocks -> linear classifier``; each block is
    Linear + BatchNorm + ReLU of width ``width``.  The depth (number of linear layers)
    is ``layer_num + 2``.  ``batchnorm=False`` or ``nonlinear=False`` give the
    negative controls.

    Args:
        in_dim: input dimension d0 (images are flattened).
        width: hidden width w.
        layer_num: number L of hidden blocks after the input block.
        num_classes: K.
    """

    def __init__(self, in_dim: int, width: int, layer_num: int, num_classes: int,
                 batchnorm: bool = True, nonlinear: bool = True):
        super().__init__()
        if min(in_dim, width, num_classes) < 1 or layer_num < 0:
            raise ValueError(f"need positive in_dim, width, num_classes and layer_num >= 0, got "
                             f"{in_dim}, {width}, {num_classes}, {layer_num}")
        self.blocks = nn.ModuleList(
            [_block(in_dim, width, batchnorm, nonlinear)]
            + [_block(width, width, batchnorm, nonlinear) for _ in range(layer_num)])
        self.classifier = nn.Linear(width, num_classes)

    @property
    def depth(self) -> int:
        """Number of linear layers, classifier included."""
        return len(self.blocks) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...) inputs -> (B, K) logits."""
        h = x.flatten(1)
        for block in self.blocks:
            h = block(h)
        return self.classifier(h)

    @torch.no_grad()
    def features(self, x: torch.Tensor, chunk_size: int = 8192) -> list[torch.Tensor]:
        """Features after every block, input included, computed in eval mode in chunks.

        Args:
            x: (N, ...) inputs.
        Returns:
            ``L + 2`` tensors: ``[(N, d0) flattened input, (N, w) after block 1, ..., after block L+1]``.
        """
        was_training = self.training
        self.eval()
        chunks: list[list[torch.Tensor]] = []
        for start in range(0, x.shape[0], chunk_size):
            h = x[start:start + chunk_size].flatten(1)
            outs = [h]
            for block in self.blocks:
                h = block(h)
                outs.append(h)
            chunks.append(outs)
        self.train(was_training)
        return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]

    @torch.no_grad()
    def penultimate(self, x: torch.Tensor, chunk_size: int = 8192) -> torch.Tensor:
        """(N, w) features fed to the classifier."""
        return self.features(x, chunk_size)[-1]


# ---------------------------------------------------------------------------------------------
# R networks of one architecture as one computation
# ---------------------------------------------------------------------------------------------
INIT_SCHEMES = ("torch", "he", "he_hidden")


class BatchedMLP(nn.Module):
    """``R`` MLPs of the same architecture, stored stacked and run as one computation.

    Model ``r`` is ``input block -> layer_num hidden blocks -> linear classifier`` exactly as
    :class:`FeatureMLP` (each block ``Linear [-> BatchNorm] [-> ReLU]``, width ``width``), with
    its own parameters: the weights of linear layer ``j`` are ``weights[j]`` of shape
    ``(R, d_in, d_out)`` and are applied with one batched matrix product
    (``torch.baddbmm``/``torch.bmm``), so ``R`` small networks cost one launch per layer.
    BatchNorm is computed per model (statistics over each model's own batch, running
    statistics per model).  :func:`utils.batched.fit_many` trains it; the book uses it for
    the equi-separation protocol (27 networks) and it is built to serve the minority-collapse
    and noisy-label chapters as well.

    Options for those chapters:

    * ``init="torch"``: PyTorch's default ``nn.Linear`` initialisation; with ``seeds`` given,
      model ``r`` gets *exactly* the parameters of ``FeatureMLP(...)`` built after
      ``torch.manual_seed(seeds[r])`` (the equivalence test relies on it).
    * ``init="he"``: He-uniform weights ``U(-sqrt(6/fan_in), sqrt(6/fan_in))`` and zero biases
      (the equi-separation no-BatchNorm control), drawn from a generator seeded with ``seeds[r]``.
    * ``init="he_hidden"``: the same for the hidden layers, but the classifier drawn as PyTorch does,
      ``U(-1/sqrt(width), 1/sqrt(width))`` (the minority-collapse chapter).
    * ``classifier_bias=False``: a classifier without bias (``W h``), as in minority collapse.
    * ``batchnorm=False`` / ``nonlinear=False``: the no-BatchNorm and linear controls.

    Args:
        runs: number R of models.
        in_dim: input dimension d0 (inputs are flattened); width: hidden width w;
        layer_num: hidden blocks after the input block (depth = layer_num + 2); num_classes: K.
        seeds: R integers for the initialisation (default ``0..R-1``).
    Shapes:
        ``forward(x)``: x ``(N, ...)`` (the same inputs for every model) or ``(R, N, ...)``
        (per-model inputs, e.g. per-model batches) -> ``(R, N, K)`` logits.
    """

    def __init__(self, runs: int, in_dim: int, width: int, layer_num: int, num_classes: int,
                 batchnorm: bool = True, nonlinear: bool = True, init: str = "torch",
                 classifier_bias: bool = True, seeds=None, eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        if runs < 1 or min(in_dim, width, num_classes) < 1 or layer_num < 0:
            raise ValueError(f"need runs >= 1, positive in_dim, width, num_classes and layer_num >= 0, got "
                             f"{runs}, {in_dim}, {width}, {num_classes}, {layer_num}")
        if init not in INIT_SCHEMES:
            raise ValueError(f"unknown init {init!r}; choose one of {INIT_SCHEMES}")
        seeds = list(range(runs)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != runs:
            raise ValueError(f"need {runs} seeds, got {len(seeds)}")
        self.runs, self.width, self.layer_num, self.num_classes = runs, width, layer_num, num_classes
        self.batchnorm, self.nonlinear, self.classifier_bias = batchnorm, nonlinear, classifier_bias
        self.eps, self.bn_momentum = eps, bn_momentum
        dims = [in_dim] + [width] * (layer_num + 1) + [num_classes]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(runs, a, b)) for a, b in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(runs, 1, b)) for b in dims[1:-1]]
                                       + ([nn.Parameter(torch.zeros(runs, 1, num_classes))] if classifier_bias else []))
        n_blocks = layer_num + 1
        if batchnorm:
            self.bn_weight = nn.ParameterList([nn.Parameter(torch.ones(runs, width)) for _ in range(n_blocks)])
            self.bn_bias = nn.ParameterList([nn.Parameter(torch.zeros(runs, width)) for _ in range(n_blocks)])
            for j in range(n_blocks):
                self.register_buffer(f"running_mean{j}", torch.zeros(runs, width))
                self.register_buffer(f"running_var{j}", torch.ones(runs, width))
        self.reset_parameters(seeds, init)

    @property
    def depth(self) -> int:
        """Number of linear layers per model, classifier included."""
        return self.layer_num + 2

    @torch.no_grad()
    def reset_parameters(self, seeds, init: str = "torch") -> None:
        """Draw every model's parameters (see the class docstring for the two schemes)."""
        for r, seed in enumerate(seeds):
            if init == "torch":
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    ref = FeatureMLP(self.weights[0].shape[1], self.width, self.layer_num, self.num_classes,
                                     batchnorm=self.batchnorm, nonlinear=self.nonlinear)
                self.load_model_(r, ref)
            else:
                g = torch.Generator().manual_seed(seed)
                for j, W in enumerate(self.weights):
                    last = j == len(self.weights) - 1
                    bound = 1.0 / math.sqrt(W.shape[1]) if (init == "he_hidden" and last) else math.sqrt(6.0 / W.shape[1])
                    W[r].copy_(torch.rand(W.shape[1:], generator=g) * 2 * bound - bound)
                for b in self.biases:
                    b[r].zero_()

    @torch.no_grad()
    def load_model_(self, r: int, model: FeatureMLP) -> None:
        """Copy a :class:`FeatureMLP`'s parameters (and BatchNorm statistics) into model ``r``."""
        linears = [blk[0] for blk in model.blocks] + [model.classifier]
        for j, lin in enumerate(linears):
            self.weights[j][r].copy_(lin.weight.T)
            if j < len(self.biases):
                self.biases[j][r, 0].copy_(lin.bias)
        if self.batchnorm:
            for j, blk in enumerate(model.blocks):
                bn = blk[1]
                self.bn_weight[j][r].copy_(bn.weight)
                self.bn_bias[j][r].copy_(bn.bias)
                getattr(self, f"running_mean{j}")[r].copy_(bn.running_mean)
                getattr(self, f"running_var{j}")[r].copy_(bn.running_var)

    @torch.no_grad()
    def to_model(self, r: int) -> FeatureMLP:
        """Model ``r`` as a stand-alone :class:`FeatureMLP` (classifier bias required)."""
        if not self.classifier_bias:
            raise ValueError("FeatureMLP has a classifier bias; this BatchedMLP has none")
        m = FeatureMLP(self.weights[0].shape[1], self.width, self.layer_num, self.num_classes,
                       batchnorm=self.batchnorm, nonlinear=self.nonlinear).to(self.weights[0].device)
        linears = [blk[0] for blk in m.blocks] + [m.classifier]
        for j, lin in enumerate(linears):
            lin.weight.copy_(self.weights[j][r].T)
            lin.bias.copy_(self.biases[j][r, 0])
        if self.batchnorm:
            for j, blk in enumerate(m.blocks):
                blk[1].weight.copy_(self.bn_weight[j][r])
                blk[1].bias.copy_(self.bn_bias[j][r])
                blk[1].running_mean.copy_(getattr(self, f"running_mean{j}")[r])
                blk[1].running_var.copy_(getattr(self, f"running_var{j}")[r])
        return m

    def _bn(self, h: torch.Tensor, j: int, batch_stats: bool) -> torch.Tensor:
        """Per-model BatchNorm of h: (R, N, w). The R*w channels are normalised independently, so
        one ``F.batch_norm`` call on (N, R*w) is exactly R separate BatchNorm1d layers."""
        R, N, w = h.shape
        flat = h.transpose(0, 1).reshape(N, R * w)
        rm, rv = getattr(self, f"running_mean{j}"), getattr(self, f"running_var{j}")
        update = batch_stats and self.training
        out = torch.nn.functional.batch_norm(
            flat, rm.view(-1) if (update or not batch_stats) else None,
            rv.view(-1) if (update or not batch_stats) else None,
            self.bn_weight[j].reshape(-1), self.bn_bias[j].reshape(-1),
            training=batch_stats, momentum=self.bn_momentum, eps=self.eps)
        return out.view(N, R, w).transpose(0, 1)

    def _flat_input(self, x: torch.Tensor) -> torch.Tensor:
        """(R, N, d0) per-model inputs pass through; (N, ...) shared inputs are flattened and
        broadcast to every model."""
        d0 = self.weights[0].shape[1]
        if x.dim() == 3 and x.shape[0] == self.runs and x.shape[2] == d0:
            return x
        h = x.reshape(x.shape[0], -1)
        if h.shape[1] != d0:
            raise ValueError(f"inputs have {h.shape[1]} features per example, the models expect {d0}; "
                             f"pass (N, ...) shared inputs or (R={self.runs}, N, {d0}) per-model inputs")
        return h.unsqueeze(0).expand(self.runs, -1, -1)

    def _blocks(self, x: torch.Tensor, batch_stats: bool, keep: bool):
        h = self._flat_input(x)
        outs = [h] if keep else None
        for j in range(self.layer_num + 1):
            h = torch.baddbmm(self.biases[j], h, self.weights[j])
            if self.batchnorm:
                h = self._bn(h, j, batch_stats)
            if self.nonlinear:
                h = torch.relu(h)
            if keep:
                outs.append(h)
        return h, outs

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """(R, N, w) penultimate features -> (R, N, K) logits."""
        if self.classifier_bias:
            return torch.baddbmm(self.biases[-1], h, self.weights[-1])
        return torch.bmm(h, self.weights[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, ...) shared or (R, N, ...) per-model inputs -> (R, N, K) logits (BatchNorm uses
        batch statistics in training mode and running statistics in eval mode)."""
        h, _ = self._blocks(x, self.training, keep=False)
        return self.classify(h)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, ...) shared or (R, N, ...) per-model inputs -> (R, N, w) features feeding the classifier
        (BatchNorm as in :meth:`forward`)."""
        return self._blocks(x, self.training, keep=False)[0]

    @torch.no_grad()
    def features(self, x: torch.Tensor, bn: str = "running", chunk_size: int = 8192) -> list[torch.Tensor]:
        """Features after every block, input included: ``L + 2`` tensors ``(R, N, d)``
        (``[flattened input, block 1, ..., block L+1]``; block L+1 feeds the classifier).

        ``bn="running"``: BatchNorm with running statistics (eval mode, in chunks);
        ``bn="batch"``: BatchNorm with the statistics of ``x`` itself, all of it at once (what the
        equi-separation paper's code does: it never calls ``eval()`` before measuring).
        Running statistics are never updated here.
        """
        if bn not in ("running", "batch"):
            raise ValueError(f"bn must be 'running' or 'batch', got {bn!r}")
        was = self.training
        self.eval()
        try:
            if bn == "batch":
                return self._blocks(x, batch_stats=True, keep=True)[1]
            h = self._flat_input(x)
            parts = [self._blocks(h[:, s:s + chunk_size], batch_stats=False, keep=True)[1]
                     for s in range(0, h.shape[1], chunk_size)]
            return [torch.cat([p[i] for p in parts], dim=1) for i in range(len(parts[0]))]
        finally:
            self.train(was)


# ---------------------------------------------------------------------------------------------
# Convolutional and residual networks measured block by block (equi-separation, Section "CNNs")
# ---------------------------------------------------------------------------------------------
class _BlockNet(nn.Module):
    """Base: ``blocks`` (a ModuleList) then ``flatten -> classifier``; features block by block."""

    blocks: nn.ModuleList
    classifier: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, s, s) images -> (B, K) logits."""
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.flatten(1))

    @torch.no_grad()
    def features(self, x: torch.Tensor, bn: str = "running", chunk_size: int = 2000) -> list[torch.Tensor]:
        """Flattened features ``[(N, C*s*s) input, (N, d_1) after block 1, ...]`` (input included).

        ``bn="running"``: eval mode, in chunks; ``bn="batch"``: BatchNorm with the statistics of all
        of ``x`` at once (as the equi-separation paper's code, which never calls ``eval()``), on a
        copy so that the running statistics stay untouched.
        """
        if bn not in ("running", "batch"):
            raise ValueError(f"bn must be 'running' or 'batch', got {bn!r}")
        was = self.training
        if bn == "batch":
            import copy
            net = copy.deepcopy(self).train()
            chunks = [x]
        else:
            net = self.eval()
            chunks = [x[s:s + chunk_size] for s in range(0, x.shape[0], chunk_size)]
        outs: list[list[torch.Tensor]] = []
        for h in chunks:
            row = [h.flatten(1)]
            for block in net.blocks:
                h = block(h)
                row.append(h.flatten(1))
            outs.append(row)
        self.train(was)
        return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]


class BlockCNN(_BlockNet):
    """A plain convolutional network: ``num_blocks`` blocks ``conv3x3 -> BatchNorm -> ReLU``
    (``channels`` channels; a 2x2 max-pool ends the blocks listed in ``pool_after``), then a
    linear classifier on the flattened last block.  The equi-separation paper's CNNs (VGG,
    AlexNet) are larger; this keeps their block structure at a CPU-friendly size.

    Args:
        in_channels, num_classes: image channels and K; image_size: side s of the inputs.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: int = 16,
                 num_blocks: int = 4, image_size: int = 28, pool_after: tuple[int, ...] = (0, 1)):
        super().__init__()
        if num_blocks < 1 or channels < 1:
            raise ValueError(f"need num_blocks >= 1 and channels >= 1, got {num_blocks}, {channels}")
        blocks, c, s = [], in_channels, image_size
        for i in range(num_blocks):
            layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
                s //= 2
            blocks.append(nn.Sequential(*layers))
            c = channels
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(c * s * s, num_classes)


class _ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` at constant channels (a ResNet basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class BlockResNet(_BlockNet):
    """A residual network in the style of the equi-separation paper's ``GResNet`` (one stage of
    basic blocks of ``channels`` channels, classifier on the flattened output): a stem
    ``conv3x3 -> BatchNorm -> ReLU [-> max-pool]`` then ``num_blocks`` residual blocks; each
    residual block is one "layer" of the law (the paper's block-wise measurement)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: int = 8,
                 num_blocks: int = 4, image_size: int = 28, pool: bool = True):
        super().__init__()
        stem: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU()]
        s = image_size
        if pool:
            stem.append(nn.MaxPool2d(2))
            s //= 2
        self.blocks = nn.ModuleList([nn.Sequential(*stem)] + [_ResidualBlock(channels) for _ in range(num_blocks)])
        self.classifier = nn.Linear(channels * s * s, num_classes)
