"""Shared pieces of the model builders: argument checks, scaled widths, and the parameter-free
layers that let the CIFAR networks run on smaller images (see :mod:`flatness.models`)."""

from __future__ import annotations

import math
import numbers
import operator

import torch
from torch import nn

from flatness.errors import FlatnessError


def check_width(width: object) -> float:
    """``width`` as a float, or FlatnessError unless it is a finite number > 0."""
    if (
        not isinstance(width, numbers.Real)
        or isinstance(width, bool)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise FlatnessError(
            f"width must be a finite number > 0 (it multiplies every hidden width; "
            f"1 is the paper's size); got {width!r}"
        )
    return float(width)


def scaled(hidden: int, width: float) -> int:
    """A hidden width multiplied by ``width``, rounded half up, at least 1.

    >>> scaled(16, 0.25), scaled(6, 0.25), scaled(6, 0.125), scaled(512, 1.0)
    (4, 2, 1, 512)
    """
    return max(1, math.floor(hidden * width + 0.5))


def _positive_int(value: object) -> int | None:
    """``value`` as an int if it is an integer >= 1 (numpy integers too), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = operator.index(value)
    except TypeError:
        return None
    return number if number >= 1 else None


def check_classes(num_classes: object) -> int:
    """``num_classes`` as an int, or FlatnessError unless it is an integer >= 1."""
    number = _positive_int(num_classes)
    if number is None:
        raise FlatnessError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    return number


def vector_size(input_shape: object) -> int:
    """The length D of the flattened input: an int D, or the product of a shape such as (C, H, W).

    Raises:
        FlatnessError: unless ``input_shape`` is an integer >= 1 or a non-empty tuple of them.
    """
    flat = _positive_int(input_shape)
    if flat is not None:
        return flat
    dims = [_positive_int(d) for d in input_shape] if isinstance(input_shape, tuple | list) else []
    if not dims or None in dims:
        raise FlatnessError(
            f"input_shape must be an integer D >= 1 or a tuple of integers >= 1 such as "
            f"(C, H, W); got {input_shape!r}"
        )
    return math.prod(dims)


def image_shape(input_shape: object, model: str) -> tuple[int, int, int]:
    """``input_shape`` as (C, H, W) for a convolutional ``model``.

    Raises:
        FlatnessError: unless it is three integers >= 1 (a flat size D is refused: only
            ``logreg`` and the MLPs take vectors).
    """
    dims = [_positive_int(d) for d in input_shape] if isinstance(input_shape, tuple | list) else []
    if len(dims) != 3 or None in dims:
        flat = " (a flat size is taken only by 'logreg' and the MLPs)"
        raise FlatnessError(
            f"input_shape for {model!r} must be (C, H, W) with C, H, W integers >= 1; "
            f"got {input_shape!r}" + (flat if _positive_int(input_shape) is not None else "")
        )
    return tuple(dims)


def halving_pool(size: tuple[int, int]) -> tuple[nn.Module, tuple[int, int]]:
    """A 2x2 max-pool (stride 2) for a feature map of ``size`` (H, W), and the size after it.

    An axis shorter than 2 is not pooled (kernel 1 there), so the map never drops below 1x1;
    when neither axis can be halved the pool is an ``nn.Identity``.
    """
    kernel = tuple(2 if n >= 2 else 1 for n in size)
    after = tuple(n // k for n, k in zip(size, kernel))
    if kernel == (1, 1):
        return nn.Identity(), after
    return nn.MaxPool2d(kernel_size=kernel, stride=kernel), after


class SamePad(nn.Module):
    """Zero padding as TensorFlow's ``padding="same"`` for a following convolution.

    The output of the convolution has ceil(n / stride) positions on an axis of n; when the
    padding needed is odd the extra zero goes after (bottom, right), as in TensorFlow. A separate
    layer (not the convolution's own ``padding``) so that the convolution sees its true input.
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n in (x.shape[-1], x.shape[-2]):  # F.pad lists the last axis first
            total = max((math.ceil(n / self.stride) - 1) * self.stride + self.kernel_size - n, 0)
            pads += [total // 2, total - total // 2]
        return nn.functional.pad(x, pads)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def he_normal_(model: nn.Module) -> None:
    """The authors' convolution initialisation (from pytorch-classification): weights drawn from
    N(0, 2 / (k_h k_w C_out)), biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
