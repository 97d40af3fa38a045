"""Models by name. Each builder takes the input dimension and the number of classes."""

from __future__ import annotations

from torch import nn

from flatness.errors import unknown

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def softmax_regression(input_dim: int, num_classes: int) -> nn.Linear:
    """Logistic (softmax) regression: logits ``z = W x + b``; the loss applies the softmax."""
    return nn.Linear(input_dim, num_classes)


def mlp(input_dim: int, num_classes: int, widths=(16,), activation: str = "tanh") -> nn.Sequential:
    """A fully connected network with the given hidden ``widths`` and ``activation``.

    >>> sum(p.numel() for p in mlp(64, 10, widths=(16,)).parameters())
    1210
    """
    if activation not in ACTIVATIONS:
        raise unknown("activation", activation, ACTIVATIONS)
    layers, width = [], input_dim
    for hidden in widths:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


MODELS = {"logreg": softmax_regression, "mlp": mlp}


def build(name: str, input_dim: int, num_classes: int) -> nn.Module:
    """The model called ``name``, or an error listing the valid ones."""
    if name not in MODELS:
        raise unknown("model", name, MODELS)
    return MODELS[name](input_dim, num_classes)
