"""Backbones for :class:`~plkit.models.ImageClassifier`: plkit's small CNN and ResNet, or torchvision's by name.

A backbone maps images to a feature vector and says how long it is in ``out_features``; the classifier
puts its own linear head on top, and ``return_embeddings=True`` returns the features.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["BACKBONES", "GridAvgPool2d", "SmallCNN", "SmallResNet", "build_backbone", "from_classifier", "grid_mean"]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _windows(size: int, grid: int) -> list[tuple[int, int]]:
    # The windows nn.AdaptiveAvgPool2d averages over: cell i covers [floor(i*size/grid), ceil((i+1)*size/grid)).
    return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]


def grid_mean(x: Tensor, grid: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, grid)`` computed from slices, whose backward is deterministic on CUDA.

    Example:
        >>> x = torch.randn(2, 4, 7, 7)
        >>> torch.allclose(grid_mean(x, 3), F.adaptive_avg_pool2d(x, 3), atol=1e-6)
        True
    """
    if grid == 1:
        return x.mean((-2, -1), keepdim=True)
    rows, cols = _windows(x.shape[-2], grid), _windows(x.shape[-1], grid)
    cells = [torch.stack([x[..., r0:r1, c0:c1].mean((-2, -1)) for c0, c1 in cols], -1) for r0, r1 in rows]
    return torch.stack(cells, -2)


class GridAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(grid)`` that also trains under ``Trainer(deterministic=True)`` on a GPU.

    PyTorch has no deterministic CUDA backward for adaptive average pooling and refuses it once deterministic
    algorithms are on; there, and in an ONNX export, this module averages the same windows from slices
    (:func:`grid_mean`), which costs a few more kernels. Everywhere else it is the adaptive pooling itself.

    Example:
        >>> GridAvgPool2d(3)(torch.zeros(2, 8, 7, 7)).shape
        torch.Size([2, 8, 3, 3])
    """

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        # torch.onnx's TorchScript-based exporter (the default before torch 2.9) cannot translate adaptive
        # pooling to a grid that does not divide the input (7x7 to 3x3); the slices it can.
        if torch.onnx.is_in_onnx_export() or (x.is_cuda and torch.are_deterministic_algorithms_enabled()):
            return grid_mean(x, self.grid)
        return F.adaptive_avg_pool2d(x, self.grid)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, each but the last followed by 2x2 max pooling, then a 3x3 average-pooled grid.

    With the default widths (32, 64, 128) on 28x28 images: 1,152 features, 93k parameters and about
    7.7M multiply-adds per image. Any input size works (the last pooling is adaptive).

    Args:
        in_channels: image channels.
        widths: output channels of each block.
        grid: side of the average-pooled grid the features are read from.

    Raises:
        ValueError: no widths, or a grid smaller than 1.

    Example:
        >>> cnn = SmallCNN(in_channels=1)
        >>> cnn(torch.zeros(2, 1, 28, 28)).shape, cnn.out_features
        (torch.Size([2, 1152]), 1152)
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128), grid: int = 3) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths=(): give at least one block width, e.g. (32, 64, 128)")
        if grid < 1:
            raise ValueError(f"grid={grid}: it must be >= 1")
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise([in_channels, *widths])):
            layers.append(_conv_bn_relu(c_in, c_out))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        # Average-pooling to a small grid keeps where things are (which Fashion-MNIST needs) at any input size.
        self.features = nn.Sequential(*layers, GridAvgPool2d(grid), nn.Flatten())
        self.out_features = widths[-1] * grid * grid

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, out_channels, stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet for 28x28 and 32x32 images: a 3x3 stem, three stages, global average pooling.

    ``blocks=(1, 1, 1)`` is a ResNet-8, ``(3, 3, 3)`` the ResNet-20 of He et al. (2016).

    Args:
        in_channels: image channels.
        width: channels of the first stage; the second and third have 2x and 4x as many.
        blocks: residual blocks in each stage.

    Example:
        >>> net = SmallResNet(in_channels=3, width=16)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, net.out_features
        (torch.Size([2, 64]), 64)
    """

    def __init__(self, in_channels: int = 1, width: int = 16, blocks: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        if len(blocks) != 3 or min(blocks) < 1:
            raise ValueError(f"blocks={tuple(blocks)}: give three positive counts, one per stage, e.g. (1, 1, 1)")
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, width)]
        channels = width
        for stage, count in enumerate(blocks):
            out = width * 2**stage
            for i in range(count):
                layers.append(_BasicBlock(channels, out, stride=2 if stage > 0 and i == 0 else 1))
                channels = out
        self.features = nn.Sequential(*layers, GridAvgPool2d(1), nn.Flatten())
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def from_classifier(model: nn.Module, in_channels: int | None = None) -> nn.Module:
    """Turn a classification network into a backbone: its last ``nn.Linear`` becomes ``nn.Identity``.

    Works for torchvision's ResNets, VGGs, MobileNets, EfficientNets, ConvNeXts, ViTs, RegNets and the
    like, whose final layer is a linear classifier.

    Args:
        model: the network; changed in place and returned, with ``out_features`` set.
        in_channels: if given, the first ``nn.Conv2d`` is replaced by a fresh one with this many input channels.

    Raises:
        ValueError: the network has no ``nn.Linear`` (e.g. SqueezeNet) or, with ``in_channels``, no ``nn.Conv2d``.
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer to replace by the classifier's head; pass a module that "
            "returns a feature vector and has an out_features attribute instead"
        )
    name, last = linears[-1]
    model.set_submodule(name, nn.Identity())
    if in_channels is not None:
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{type(model).__name__} has no nn.Conv2d whose input channels could be set")
        conv_name, conv = convs[0]
        if conv.in_channels != in_channels:
            model.set_submodule(
                conv_name,
                nn.Conv2d(
                    in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    conv.bias is not None,
                    conv.padding_mode,
                ),
            )
    model.out_features = last.in_features
    return model


#: plkit's own backbones, by the name ``ImageClassifier(backbone=...)`` takes.
BACKBONES = ("cnn", "resnet")


def build_backbone(name: str, in_channels: int, channels_last: bool = True, width: int | None = None) -> nn.Module:
    """A backbone by name: ``"cnn"``, ``"resnet"``, or any ``torchvision.models`` architecture (``"resnet18"``).

    torchvision architectures are built without pretrained weights, with their first convolution
    adapted to ``in_channels`` and their classifier removed.

    Args:
        name: the backbone's name.
        in_channels: image channels.
        channels_last: store the convolution weights channels-last. A convolution whose weight is
            channels-last runs channels-last (and so does everything after it) whatever the input's layout:
            the same numbers, often much faster on CPUs and recent GPUs.
        width: channels of the first block of plkit's backbones, doubled in each later one (``"cnn"``: 32,
            ``"resnet"``: 16 by default); torchvision architectures take none.

    Raises:
        ValueError: an unknown name, or a ``width`` for a torchvision architecture or below 1; the message
            lists plkit's names and how to list torchvision's.

    Example:
        >>> build_backbone("resnet", in_channels=1).out_features
        64
    """
    if width is not None and width < 1:
        raise ValueError(f"width={width}: it must be >= 1 (channels of the first block)")
    if name == "cnn":
        backbone: nn.Module = (
            SmallCNN(in_channels) if width is None else SmallCNN(in_channels, (width, 2 * width, 4 * width))
        )
    elif name == "resnet":
        backbone = SmallResNet(in_channels) if width is None else SmallResNet(in_channels, width)
    else:
        if width is not None:
            raise ValueError(
                f"width={width} applies to plkit's backbones ({', '.join(BACKBONES)}), not to torchvision's {name!r}: "
                "leave width unset, or pass the torchvision model built as you want it as an nn.Module"
            )
        import torchvision.models  # slow to import; only torchvision backbones need it

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"backbone={name!r} is neither one of plkit's ({', '.join(BACKBONES)}) nor a torchvision "
                "classification model: `python -c 'import torchvision; print(torchvision.models.list_models())'` "
                "lists those"
            )
        backbone = from_classifier(torchvision.models.get_model(name, weights=None), in_channels)
    return backbone.to(memory_format=torch.channels_last) if channels_last else backbone
