"""Norms of a network's weights: the cheap baselines every generalisation measure must beat.

Jiang et al. (2020, "Fantastic Generalization Measures") score each sharpness measure beside
norms that need no Hessian. Two of theirs are here (the plain weight norm is
:func:`flatness.hessian.weight_norm`):

- :func:`distance_from_init`, ``||w - w_0||``, over every parameter;
- :func:`path_norm`, the l2 path norm of Neyshabur et al. (2015): the square root of the sum,
  over every path from an input (or a bias) to an output, of the product of the squared
  weights along it. It is one forward pass of the network with every parameter squared, on
  an input of ones (each path's product arrives at its output, and sums there). For a
  network of linear maps and ReLUs this is exact: squared weights and a positive input keep
  every unit active. Max-pooling then picks one path where the definition sums them all; that
  is the measure Jiang et al. compute for their convolutional networks, and it is kept so.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
>>> with torch.no_grad():
...     _ = net[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
...     _ = net[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
>>> path_norm(net, (2,)) ** 2  # paths: 1*1 + 1*4 + 1*0 + 1*9
14.0
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from flatness.errors import FlatnessError

#: Layers through which a forward pass of squared weights on ones sums the paths (or, for
#: max-pooling, takes one of them, as Jiang et al. do).
PATH_LAYERS = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.ZeroPad2d,
    nn.Identity,
    nn.Dropout,
)


def initial_weights(model: nn.Module) -> list[torch.Tensor]:
    """Copies of ``model``'s parameters, to measure the distance travelled from them later."""
    return [p.detach().clone() for p in model.parameters()]


def distance_from_init(model: nn.Module, initial: list[torch.Tensor]) -> float:
    """``||w - w_0||`` over every parameter, in float64.

    Raises:
        FlatnessError: ``initial`` does not hold one tensor of the same shape per parameter.
    """
    params = list(model.parameters())
    if len(params) != len(initial) or any(
        p.shape != q.shape for p, q in zip(params, initial, strict=False)
    ):
        raise FlatnessError(
            f"the initial weights hold {len(initial)} tensors, not one per parameter of the "
            f"network ({len(params)}); take them with initial_weights(model) before training"
        )
    with torch.no_grad():
        total = sum(
            ((p.double() - q.to(p.device).double()) ** 2).sum()
            for p, q in zip(params, initial, strict=True)
        )
    return math.sqrt(float(total))


def path_norm(model: nn.Module, input_shape) -> float:
    """The l2 path norm of ``model``, a network of linear, convolutional, ReLU and pooling
    layers, taking inputs of shape ``input_shape`` (without the batch axis).

    Raises:
        FlatnessError: the network has another kind of layer (tanh, BatchNorm ...), through
            which squared weights do not sum paths; the layers allowed are named.
    """
    leaves = [m for m in model.modules() if not list(m.children())]
    other = sorted({type(m).__name__ for m in leaves if not isinstance(m, PATH_LAYERS)})
    if other:
        allowed = ", ".join(t.__name__ for t in PATH_LAYERS)
        raise FlatnessError(
            f"the path norm is defined here for networks of {allowed}; this one also has "
            f"{', '.join(other)}"
        )
    squared = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in squared.parameters():
            p.pow_(2)
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        out = squared(torch.ones(1, *tuple(input_shape), dtype=torch.float64, device=device))
    return math.sqrt(float(out.sum()))
