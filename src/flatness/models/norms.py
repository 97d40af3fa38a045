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
  every unit active. Average pooling is a linear map with fixed weights 1/r (r the pooled
  window's size), and those weights are squared too. Max-pooling picks one path where the
  definition sums them all; that is the measure Jiang et al. compute for their convolutional
  networks, and it is kept so.

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
from flatness.models.layers import SamePad

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
    SamePad,
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
    _check_values(params)
    initial = list(initial) if isinstance(initial, (list, tuple)) else None
    if (
        initial is None
        or len(params) != len(initial)
        or any(
            not torch.is_tensor(q) or p.shape != q.shape
            for p, q in zip(params, initial, strict=False)
        )
    ):
        raise FlatnessError(
            f"the initial weights must be a list of one tensor per parameter of the network "
            f"({len(params)}, in the order of model.parameters()); take them with "
            "initial_weights(model) before training"
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
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    _check_values(list(model.parameters()))
    leaves = [m for m in model.modules() if not list(m.children())]
    other = sorted({type(m).__name__ for m in leaves if not isinstance(m, PATH_LAYERS)})
    if other:
        allowed = ", ".join(t.__name__ for t in PATH_LAYERS)
        raise FlatnessError(
            f"the path norm is defined here for networks of {allowed}; this one also has "
            f"{', '.join(other)}"
        )
    squared = copy.deepcopy(model).double().eval()
    for m in squared.modules():
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            m.register_forward_hook(_square_pooling)
    with torch.no_grad():
        for p in squared.parameters():
            p.pow_(2)
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        try:
            out = squared(torch.ones(1, *shape, dtype=torch.float64, device=device))
        except RuntimeError as err:
            raise FlatnessError(
                f"the network does not take inputs of shape {shape}: "
                f"{str(err).splitlines()[0]}; give input_shape without the batch axis, as "
                "(channels, height, width) or (features,)"
            ) from None
    return math.sqrt(float(out.sum()))


def _check_values(params: list[torch.Tensor]) -> None:
    if any(p.device.type == "meta" for p in params):
        raise FlatnessError(
            "the network is on the meta device and has no weights to measure; build it on "
            "the CPU or a GPU"
        )


def _window_sizes(n: int, out: int) -> torch.Tensor:
    """How many inputs each of ``out`` adaptive-pooling windows over ``n`` positions holds
    (PyTorch's windows: from floor(i n / out) to ceil((i + 1) n / out))."""
    i = torch.arange(out)
    return (torch.div((i + 1) * n + out - 1, out, rounding_mode="floor")
            - torch.div(i * n, out, rounding_mode="floor"))  # fmt: skip


def _square_pooling(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Average pooling weighs each input 1/r; squared, 1/r^2: the mean times another 1/r."""
    if isinstance(module, nn.AvgPool2d):
        if module.divisor_override:
            return output / module.divisor_override
        k = module.kernel_size
        kh, kw = (k, k) if isinstance(k, int) else k
        return output / (kh * kw)
    h, w = inputs[0].shape[-2:]
    oh, ow = output.shape[-2:]
    r = _window_sizes(h, oh)[:, None] * _window_sizes(w, ow)[None, :]
    return output / r.to(output)
