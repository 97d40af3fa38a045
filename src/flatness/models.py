"""Models by name. Each builder takes the input dimension and the number of classes."""

from __future__ import annotations

from torch import nn

from flatness.errors import unknown


def softmax_regression(input_dim: int, num_classes: int) -> nn.Linear:
    """Logistic (softmax) regression: logits ``z = W x + b``; the loss applies the softmax."""
    return nn.Linear(input_dim, num_classes)


MODELS = {"logreg": softmax_regression}


def build(name: str, input_dim: int, num_classes: int) -> nn.Module:
    """The model called ``name``, or an error listing the valid ones."""
    if name not in MODELS:
        raise unknown("model", name, MODELS)
    return MODELS[name](input_dim, num_classes)
