"""Networks on flattened inputs: softmax regression and fully connected MLPs.

Both take an image batch (N, C, H, W), a flat batch (N, D) or one vector (D,); images are
flattened from dimension 1. The authors' MNIST models (GadamX ``curvature/models/MLP.py`` and
``logistic_regression.py``) are these with ReLU: 784-10-100-10, 784-512-256-10 and
784-5-200-50-10, and 784 -> 10 for logistic regression.
"""

from __future__ import annotations

import torch
from torch import nn

from flatness.errors import unknown
from flatness.models.layers import check_classes, check_width, scaled, vector_size

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) if x.dim() > 2 else x


class SoftmaxRegression(nn.Linear):
    """Softmax (multinomial logistic) regression: logits ``z = W x + b`` with ``x`` the
    flattened input; the loss applies the softmax.

    An ``nn.Linear`` (parameters ``weight`` (K, D) and ``bias`` (K,)) whose forward first
    flattens (N, C, H, W) inputs to (N, D); flat (N, D) inputs pass unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_flat(x))


def softmax_regression(input_shape, num_classes: int, *, width: float = 1.0) -> SoftmaxRegression:
    """Softmax regression from ``input_shape`` (an int D, or a shape such as (C, H, W)) to
    ``num_classes`` logits. It has no hidden width: ``width`` is checked and then ignored.

    (D + 1) K parameters: 7,850 on MNIST, as the paper counts.

    >>> softmax_regression((1, 28, 28), 10).weight.shape
    torch.Size([10, 784])
    >>> sum(p.numel() for p in softmax_regression((1, 28, 28), 10).parameters())
    7850

    Raises:
        FlatnessError: for a bad ``input_shape``, ``num_classes`` or ``width``.
    """
    check_width(width)
    return SoftmaxRegression(vector_size(input_shape), check_classes(num_classes))


class MLP(nn.Sequential):
    """A fully connected network: ``Linear, activation, ..., Linear``, indexed as an
    ``nn.Sequential`` (parameters ``0.weight``, ``0.bias``, ``2.weight``, ...); its forward first
    flattens (N, C, H, W) inputs to (N, D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_flat(x))


def mlp(
    input_shape, num_classes: int, widths=(16,), activation: str = "tanh", *, width: float = 1.0
) -> MLP:
    """An MLP from ``input_shape`` (an int D or a shape such as (C, H, W)) through hidden layers
    of ``widths`` (each multiplied by ``width``, rounded half up, at least 1) with
    ``activation`` after each, to ``num_classes`` logits.

    sum over layers of (fan_in + 1) fan_out parameters: with widths (10, 100) on MNIST,
    785*10 + 11*100 + 101*10 = 9,960 (the paper's count).

    >>> sum(p.numel() for p in mlp(64, 10, widths=(16,)).parameters())
    1210
    >>> sum(p.numel() for p in mlp((1, 28, 28), 10, widths=(10, 100)).parameters())
    9960

    Raises:
        FlatnessError: for an unknown ``activation`` (names the valid ones), or a bad
            ``input_shape``, ``num_classes`` or ``width``.
    """
    if activation not in ACTIVATIONS:
        raise unknown("activation", activation, ACTIVATIONS)
    width = check_width(width)
    layers, fan_in = [], vector_size(input_shape)
    for hidden in widths:
        fan_out = scaled(hidden, width)
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        fan_in = fan_out
    return MLP(*layers, nn.Linear(fan_in, check_classes(num_classes)))
