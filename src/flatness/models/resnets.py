"""Residual networks for CIFAR: pre-activation ResNets and Wide ResNets.

Both follow the authors' definitions (GadamX ``curvature/models/preresnet.py``, ported from
bearpaw/pytorch-classification, and ``wide_resnet.py``, ported from meliketoy/wide-resnet.pytorch).
Their strided 3x3 convolutions (padding 1) give ceil(n / 2) positions, so every image size from
1x1 up runs; the final map (8x8 at 32x32) is averaged globally, as the authors' 8x8 average
pool does at 32x32.
"""

from __future__ import annotations

import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.models.layers import check_classes, check_width, he_normal_, image_shape, scaled

#: the valid depths, for error messages
PRERESNET_DEPTHS = (
    "6n+2 below 44 with basic blocks (8, 14, 20, 26, 32, 38) or 9n+2 from 44 with bottleneck "
    "blocks (47, 56, 65, ..., 110, ..., 164, ...)"
)
WRN_DEPTHS = "6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...)"


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN, ReLU, conv3x3 (stride), BN, ReLU,
    conv3x3, plus the input (through a 1x1 strided convolution when the shape changes).
    Convolutions without biases."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + (x if self.downsample is None else self.downsample(x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN, ReLU, conv1x1 (planes), BN, ReLU, conv3x3 (planes,
    stride), BN, ReLU, conv1x1 (4 planes), plus the input (1x1 strided convolution when the shape
    changes). Convolutions without biases."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


def preresnet_blocks(depth: object) -> tuple[type[nn.Module], int]:
    """The block type and blocks per stage for a PreResNet of ``depth``, by the authors' rule:
    bottleneck blocks with (depth - 2) / 9 per stage from depth 44, basic blocks with
    (depth - 2) / 6 below.

    >>> [(block.__name__, n) for block, n in map(preresnet_blocks, (20, 110))]
    [('PreActBlock', 3), ('PreActBottleneck', 12)]

    Raises:
        FlatnessError: for any other depth, naming the valid ones.
    """
    if isinstance(depth, int) and not isinstance(depth, bool):
        if depth >= 44 and (depth - 2) % 9 == 0:
            return PreActBottleneck, (depth - 2) // 9
        if 8 <= depth < 44 and (depth - 2) % 6 == 0:
            return PreActBlock, (depth - 2) // 6
    raise FlatnessError(f"preresnet depth must be {PRERESNET_DEPTHS}; got {depth!r}")


class PreResNet(nn.Module):
    """Pre-activation ResNet for CIFAR (He et al. 2016, "Identity mappings in deep residual
    networks") as the authors define it: conv3x3 16 (no bias); three stages of n blocks with
    16, 32, 64 planes (x4 outputs for bottlenecks), the second and third starting with
    stride 2; BN, ReLU, global average pool, FC classes. Block type and n from the depth by
    :func:`preresnet_blocks`. Convolution weights N(0, 2 / (k^2 C_out)), as theirs.

    1,169,972 parameters for depth 110 on CIFAR-100 (3x32x32, 100 classes).
    """

    def __init__(self, input_shape, num_classes: int, *, depth: int = 110, width: float = 1.0):
        super().__init__()
        width = check_width(width)
        block, n = preresnet_blocks(depth)
        channels = image_shape(input_shape, f"preresnet-{depth}")[0]
        num_classes = check_classes(num_classes)
        c = scaled(16, width)
        self.conv1 = nn.Conv2d(channels, c, 3, padding=1, bias=False)
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            planes = scaled(planes, width)
            blocks = []
            for i in range(n):
                blocks.append(block(c, planes, stride if i == 0 else 1))
                c = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        he_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.avgpool(self.relu(self.bn(x))).flatten(1))


class WideBlock(nn.Module):
    """Wide ResNet block as the authors' (meliketoy) code has it: BN, ReLU, conv3x3, BN, ReLU,
    conv3x3 (stride), plus the input (a 1x1 strided convolution when the shape changes);
    convolutions with biases, no dropout (the authors' dropout rate is 0)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1)
        self.relu = nn.ReLU()
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


def wrn_blocks(depth: object, k: object) -> int:
    """Blocks per stage of WRN-``depth``-``k``: (depth - 4) / 6.

    Raises:
        FlatnessError: unless depth is 6n+4 with n >= 1 and k an integer >= 1.
    """
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (depth, k))
    if not ok or depth < 10 or (depth - 4) % 6 or k < 1:
        raise FlatnessError(
            f"wrn-<depth>-<k> needs depth {WRN_DEPTHS} and widening factor k an integer >= 1; "
            f"got depth {depth!r}, k {k!r}"
        )
    return (depth - 4) // 6


class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016) as the authors define it:
    conv3x3 16; three stages of (depth - 4) / 6 :class:`WideBlock` with 16k, 32k, 64k channels,
    the second and third starting with stride 2; BN, ReLU, global average pool, FC classes.
    PyTorch's default initialisation (the authors' ``conv_init`` is never applied), and
    momentum 0.9 on the final BN's running statistics, as theirs.

    36,546,980 parameters for WRN-28-10 on CIFAR-100 (with the convolution biases the authors
    keep; the paper rounds to 36.5 M).
    """

    def __init__(self, input_shape, num_classes: int, *, depth=28, k=10, width: float = 1.0):
        super().__init__()
        width = check_width(width)
        n = wrn_blocks(depth, k)
        channels = image_shape(input_shape, f"wrn-{depth}-{k}")[0]
        num_classes = check_classes(num_classes)
        c = scaled(16, width)
        self.conv1 = nn.Conv2d(channels, c, 3, padding=1)
        stages = []
        for planes, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
            planes = scaled(planes, width)
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(c, planes, stride if i == 0 else 1))
                c = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn1 = nn.BatchNorm2d(c, momentum=0.9)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.linear(self.avgpool(self.relu(self.bn1(x))).flatten(1))


def preresnet(input_shape, num_classes: int, *, depth: int = 110, width: float = 1.0):
    """:class:`PreResNet` of ``depth``; ``width`` scales 16, 32, 64 (and so the x4 outputs)."""
    return PreResNet(input_shape, num_classes, depth=depth, width=width)


def wide_resnet(input_shape, num_classes: int, *, depth: int = 28, k: int = 10, width=1.0):
    """:class:`WideResNet` WRN-``depth``-``k``; ``width`` scales 16, 16k, 32k, 64k."""
    return WideResNet(input_shape, num_classes, depth=depth, k=k, width=width)
