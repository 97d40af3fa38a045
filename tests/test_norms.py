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
    with pytest.raises(FlatnessError, match="one tensor per parameter"):
        norms.distance_from_init(net, start[:-1])


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d(1), nn.AvgPool2d(2)])
def test_average_pooling_counts_its_squared_weights_as_the_same_linear_map_does(pool):
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
    pooled = nn.Sequential(conv, pool, nn.Flatten())
    linear = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        linear.weight.fill_(0.5)  # the same function on the 4 flattened pixels
    same = nn.Sequential(nn.Flatten(), linear)
    x = torch.randn(3, 1, 2, 2)
    torch.testing.assert_close(pooled(x), same(x))
    assert norms.path_norm(pooled, (1, 2, 2)) == pytest.approx(norms.path_norm(same, (1, 2, 2)))
    assert norms.path_norm(same, (1, 2, 2)) == pytest.approx(1.0)


def test_uneven_adaptive_windows_are_weighted_by_their_own_size():
    # 3 positions into 2 windows: PyTorch's windows are {0, 1} and {1, 2}, two each
    net = nn.Sequential(nn.AdaptiveAvgPool2d((1, 2)), nn.Flatten())
    # paths: each output is a mean of 2 inputs: 2 paths of weight (1/2)^2 per output
    assert norms.path_norm(net, (1, 1, 3)) ** 2 == pytest.approx(2 * 2 * 0.25)


def test_the_papers_convolutional_networks_have_a_path_norm():
    from flatness import models

    for name in ("lenet5", "allcnn"):
        net = models.build(name, (1, 28, 28), 10, width=0.25)
        assert norms.path_norm(net, (1, 28, 28)) > 0


def test_bad_shapes_devices_and_initial_weights_get_one_clear_message():
    net = _mlp()
    assert norms.path_norm(net, 3) == norms.path_norm(net, (3,))
    with pytest.raises(FlatnessError, match=r"inputs of shape \(4,\)"):
        norms.path_norm(net, (4,))
    with torch.device("meta"):
        ghost = _mlp()
    with pytest.raises(FlatnessError, match="meta device"):
        norms.path_norm(ghost, (3,))
    with pytest.raises(FlatnessError, match="meta device"):
        norms.distance_from_init(ghost, [])
    with pytest.raises(FlatnessError, match="list of one tensor per parameter"):
        norms.distance_from_init(net, net.state_dict())
