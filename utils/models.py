"""Networks trained in the book, each able to return its intermediate features."""
from __future__ import annotations

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
