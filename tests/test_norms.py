"""The norm baselines against path enumeration by hand, invariances and a flattened vector."""

import itertools
import math

import pytest
import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.models import norms


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _paths_by_hand(net) -> float:
    """Every path from an input or a bias to an output, its squared weights multiplied."""
    layers = [m for m in net if isinstance(m, nn.Linear)]
    w = [layer.weight.detach().double() for layer in layers]
    b = [layer.bias.detach().double() for layer in layers]
    total = 0.0
    # a path from input i: through one unit of every layer
    for i in range(w[0].shape[1]):
        for units in itertools.product(*(range(m.shape[0]) for m in w)):
            p = w[0][units[0], i] ** 2
            for k in range(1, len(w)):
                p = p * w[k][units[k], units[k - 1]] ** 2
            total += float(p)
    # a path from the bias of unit j of layer k: through one unit of every later layer
    for k in range(len(w)):
        for units in itertools.product(*(range(m.shape[0]) for m in w[k:])):
            p = b[k][units[0]] ** 2
            for m in range(1, len(units)):
                p = p * w[k + m][units[m], units[m - 1]] ** 2
            total += float(p)
    return math.sqrt(total)


def test_the_path_norm_sums_every_path_counted_by_hand():
    net = _mlp()
    assert norms.path_norm(net, (3,)) == pytest.approx(_paths_by_hand(net), rel=1e-12)


def test_the_path_norm_ignores_a_rescaling_that_leaves_the_function_unchanged():
    net = _mlp(1)
    before = norms.path_norm(net, (3,))
    with torch.no_grad():  # Dinh et al.'s rescaling through a ReLU: alpha in, 1/alpha out
        net[0].weight.mul_(7.0)
        net[0].bias.mul_(7.0)
        net[2].weight.div_(7.0)
    # the float32 weights round once when scaled: a relative change of order 1e-7 at most
    assert norms.path_norm(net, (3,)) == pytest.approx(before, rel=1e-6)
    assert norms.path_norm(net, (3,)) != pytest.approx(norms.path_norm(_mlp(2), (3,)))


def test_the_path_norm_refuses_a_layer_it_cannot_sum_paths_through():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(FlatnessError, match="Tanh"):
        norms.path_norm(net, (3,))


def test_the_distance_from_initialisation_is_the_norm_of_the_flattened_difference():
    net = _mlp()
    start = norms.initial_weights(net)
    flat = nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    moved = nn.utils.parameters_to_vector(net.parameters()).detach()
    assert norms.distance_from_init(net, start) == pytest.approx(
        float((moved - flat).norm()), rel=1e-6
    )
    with pytest.raises(FlatnessError, match="one per parameter"):
        norms.distance_from_init(net, start[:-1])
