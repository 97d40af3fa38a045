"""Every network the paper trained, by name.

Each builder is called as ``builder(input_shape, num_classes, *, width=1.0)`` with
``input_shape`` = (C, H, W), and returns an ``nn.Module`` taking float32 (N, C, H, W) batches to
(N, num_classes) logits. :func:`build` finds the builder by name.

Names (the counts are the paper's, at ``width=1``):

- ``logreg``: softmax regression; 7,850 parameters on MNIST (784 -> 10).
- ``mlp``: the small tanh MLP of the estimators chapter (one hidden layer of 16).
- ``mlp-10-100``, ``mlp-512-256``, ``mlp-5-200-50``: the authors' ReLU MLPs, 9,960, 535,818
  and 15,685 parameters on MNIST; ``...-tanh`` the same with tanh.
- ``lenet5``: LeNet-5 with ReLU and max-pooling (61,706 on MNIST).
- ``allcnn``: All-CNN-C (1,387,108 on CIFAR-100).
- ``preresnet-<depth>``: pre-activation ResNet; depth 6n+2 below 44 (basic blocks) or 9n+2 from
  44 (bottleneck), e.g. ``preresnet-110`` (1,169,972 on CIFAR-100).
- ``wrn-<depth>-<k>``: Wide ResNet, depth 6n+4, e.g. ``wrn-28-10`` (36.5 M on CIFAR-100).
- ``vgg16``, ``vgg16-bn``: the authors' CIFAR VGG-16 (15,291,300 on CIFAR-100), without and with
  BatchNorm.

:data:`MODELS` lists the depths the paper and its code use; :func:`build` also parses any other
valid ``preresnet-<depth>`` and ``wrn-<depth>-<k>``.

The width multiplier ``width`` multiplies every hidden width (convolution channels, hidden
units) and rounds half up to an integer >= 1; the input size and ``num_classes`` are never
scaled, and softmax regression, having no hidden width, ignores it.

Smaller images. The CIFAR networks run unchanged in parameter count on any (C, H, W) with
H, W >= 1, including the 1x8x8 scikit-learn digits and 1x28x28 MNIST, by these rules (each is
a no-op at 3x32x32, so the paper-size networks are the authors'):

- the map before the classifier is averaged globally (adaptive average pooling) where the
  authors average a fixed 8x8 (ResNets) or 6x6 (All-CNN) window or flatten a 1x1 map (VGG);
- a 2x2 max-pool that would take an axis below 1 is skipped on that axis (VGG);
- strided 3x3 convolutions pad, so they give ceil(n / 2) >= 1 positions (ResNets, All-CNN);
- All-CNN's unpadded 3x3 convolution is padded by 1 on an axis shorter than 3;
- LeNet-5 zero-pads images smaller than 32x32 to 32x32, centred, and average-pools a map
  larger than 5x5 to 5x5 before its classifier.

>>> parameter_count(build("logreg", (1, 28, 28), 10))
7850
>>> parameter_count(build("mlp-512-256", (1, 28, 28), 10))  # 785*512 + 513*256 + 257*10
535818
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from torch import nn

from flatness.errors import FlatnessError, unknown
from flatness.models.convnets import allcnn, lenet5, vgg16, vgg16_bn
from flatness.models.dense import ACTIVATIONS, mlp, softmax_regression
from flatness.models.resnets import (
    PRERESNET_DEPTHS,
    WRN_DEPTHS,
    preresnet,
    preresnet_blocks,
    wide_resnet,
    wrn_blocks,
)

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "build",
    "has_batchnorm",
    "mlp",
    "names",
    "parameter_count",
    "resolve",
    "softmax_regression",
]


def _authors_mlp(widths: tuple[int, ...], activation: str) -> Callable:
    return functools.partial(mlp, widths=widths, activation=activation)


MODELS: dict[str, Callable] = {
    "logreg": softmax_regression,
    "mlp": mlp,
    "mlp-10-100": _authors_mlp((10, 100), "relu"),
    "mlp-512-256": _authors_mlp((512, 256), "relu"),
    "mlp-5-200-50": _authors_mlp((5, 200, 50), "relu"),
    "mlp-10-100-tanh": _authors_mlp((10, 100), "tanh"),
    "mlp-512-256-tanh": _authors_mlp((512, 256), "tanh"),
    "mlp-5-200-50-tanh": _authors_mlp((5, 200, 50), "tanh"),
    "lenet5": lenet5,
    "allcnn": allcnn,
    "preresnet-20": functools.partial(preresnet, depth=20),
    "preresnet-56": functools.partial(preresnet, depth=56),
    "preresnet-110": functools.partial(preresnet, depth=110),
    "preresnet-164": functools.partial(preresnet, depth=164),
    "wrn-16-4": functools.partial(wide_resnet, depth=16, k=4),
    "wrn-28-10": functools.partial(wide_resnet, depth=28, k=10),
    "vgg16": vgg16,
    "vgg16-bn": vgg16_bn,
}


def names() -> tuple[str, ...]:
    """The names in :data:`MODELS`, in order (for command-line choices and error messages)."""
    return tuple(MODELS)


def resolve(name: object) -> Callable:
    """The builder for ``name``: an entry of :data:`MODELS`, or a parsed
    ``preresnet-<depth>`` or ``wrn-<depth>-<k>`` of a valid depth.

    Raises:
        FlatnessError: for an unknown name (listing :func:`names`) or a bad depth or k (stating
            the valid ones).
    """
    if isinstance(name, str) and name in MODELS:
        return MODELS[name]
    if isinstance(name, str) and name.startswith("preresnet-"):
        match = re.fullmatch(r"preresnet-(\d+)", name)
        if match is None:
            raise FlatnessError(f"model {name!r}: preresnet-<depth> needs depth {PRERESNET_DEPTHS}")
        depth = int(match[1])
        preresnet_blocks(depth)
        return functools.partial(preresnet, depth=depth)
    if isinstance(name, str) and name.startswith("wrn-"):
        match = re.fullmatch(r"wrn-(\d+)-(\d+)", name)
        if match is None:
            raise FlatnessError(
                f"model {name!r}: wrn-<depth>-<k> needs depth {WRN_DEPTHS} and widening "
                "factor k an integer >= 1, e.g. 'wrn-28-10'"
            )
        depth, k = int(match[1]), int(match[2])
        wrn_blocks(depth, k)
        return functools.partial(wide_resnet, depth=depth, k=k)
    raise unknown("model", name, names())


def build(name: str, input_shape, num_classes: int, *, width: float = 1.0) -> nn.Module:
    """The model called ``name`` for inputs of ``input_shape`` (C, H, W) and ``num_classes``
    classes, its hidden widths multiplied by ``width`` (1: the paper's size).

    ``logreg`` and the MLPs also take an int ``input_shape`` D, meaning flat (N, D) inputs.

    Raises:
        FlatnessError: for an unknown name (listing the valid ones), a bad depth, ``width``
            not a finite number > 0, ``num_classes`` not an integer >= 1, or an
            ``input_shape`` that is not (C, H, W) of integers >= 1 (or, for ``logreg`` and the
            MLPs, an integer >= 1).
    """
    return resolve(name)(input_shape, num_classes, width=width)


def parameter_count(model: nn.Module) -> int:
    """The number of trainable parameters (entries of tensors with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_batchnorm(model: nn.Module) -> bool:
    """Does ``model`` contain a BatchNorm layer (1d, 2d, 3d or synchronised)?"""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
