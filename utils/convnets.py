"""Convolutional networks for small images, each exposing its penultimate features.

* :class:`SmallCNN`: two conv blocks and a linear feature layer, for the CPU quick profile.
* :func:`vgg11` and :func:`resnet18`: the CIFAR-style (32x32 input) VGG-11 with batch norm and
  ResNet-18 used in the neural-collapse paper's protocol (Papyan, Han & Donoho, 2020), for a GPU.

Every network is parametrised by ``in_channels`` (1 for Fashion-MNIST, 3 for CIFAR) and
``num_classes`` K, ends in a linear layer ``self.classifier`` (weights ``W`` (K, d), bias ``b``),
and has ``penultimate(x) -> (N, d)``, the features fed to that classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _check(in_channels: int, num_classes: int) -> None:
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"need in_channels >= 1 and num_classes >= 2, got {in_channels}, {num_classes}")


class FeatureNet(nn.Module):
    """Base class: ``forward(x) = classifier(embed(x))``; subclasses define ``embed``."""

    classifier: nn.Linear

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, s, s) images -> (B, K) logits."""
        return self.classifier(self.embed(x))

    @torch.no_grad()
    def penultimate(self, x: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
        """(N, d) features fed to the classifier, computed in eval mode in chunks."""
        was_training = self.training
        self.eval()
        out = torch.cat([self.embed(x[s:s + chunk_size]) for s in range(0, x.shape[0], chunk_size)])
        self.train(was_training)
        return out

    @torch.no_grad()
    def features(self, x: torch.Tensor, chunk_size: int = 2048) -> list[torch.Tensor]:
        """``[penultimate features]`` (a one-element list, for symmetry with ``FeatureMLP.features``)."""
        return [self.penultimate(x, chunk_size)]


class SmallCNN(FeatureNet):
    """conv(32)-BN-ReLU-pool, conv(64)-BN-ReLU-pool, linear(width)-BN-ReLU, linear classifier.

    Args:
        in_channels: image channels; num_classes: K; width: penultimate dimension d;
        image_size: side length s of the (square) inputs.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 128,
                 image_size: int = 28, channels: tuple[int, int] = (32, 64)):
        super().__init__()
        _check(in_channels, num_classes)
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2))
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side * side, width),
                                  nn.BatchNorm1d(width), nn.ReLU())
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(FeatureNet):
    """VGG with batch norm for 32x32 inputs: conv stack -> (B, 512) -> linear classifier."""

    def __init__(self, cfg=_VGG11, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        _check(in_channels, num_classes)
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(FeatureNet):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool) for 32x32 inputs: -> (B, 512) -> classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        _check(in_channels, num_classes)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        c = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(c, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 128, image_size: int = 28,
              channels: tuple[int, int] = (32, 64)) -> SmallCNN:
    """The quick-profile CNN (see :class:`SmallCNN`)."""
    return SmallCNN(in_channels, num_classes, width, image_size, tuple(channels))


def vgg11(in_channels: int = 3, num_classes: int = 10) -> VGG:
    """VGG-11 with batch norm for 32x32 inputs; penultimate dimension 512."""
    return VGG(_VGG11, in_channels, num_classes)


def resnet18(in_channels: int = 3, num_classes: int = 10) -> ResNet18:
    """CIFAR-style ResNet-18 for 32x32 inputs; penultimate dimension 512."""
    return ResNet18(in_channels, num_classes)


ARCHITECTURES = {"small_cnn": small_cnn, "vgg11": vgg11, "resnet18": resnet18}


def build(name: str, in_channels: int, num_classes: int, **kwargs) -> FeatureNet:
    """Build an architecture by name (``small_cnn``, ``vgg11`` or ``resnet18``)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](in_channels=in_channels, num_classes=num_classes, **kwargs)


def cost_per_image(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates and activation elements of one forward pass of one image.

    Args:
        model: any network built from ``nn.Conv2d``/``nn.Linear``/other leaf modules.
        input_shape: (C, s, s) or (d,) of one example.
    Returns:
        ``{"macs": forward multiply-accumulates of the Conv2d and Linear layers,
        "activations": elements output by all leaf modules (what backward keeps),
        "largest": the largest single leaf output, "parameters": parameter count}``.
        The pass runs on the ``meta`` device (no memory, no arithmetic), on a copy of the model.
    """
    import copy
    net = copy.deepcopy(model).to("meta").eval()
    totals = {"macs": 0, "activations": 0, "largest": 0}

    def hook(module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        n = output[0].numel()  # one image
        totals["activations"] += n
        totals["largest"] = max(totals["largest"], n)
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            totals["macs"] += n * k
        elif isinstance(module, nn.Linear):
            totals["macs"] += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net(torch.zeros((1, *input_shape), device="meta"))
    finally:
        for h in handles:
            h.remove()
    totals["parameters"] = sum(p.numel() for p in model.parameters())
    return totals
