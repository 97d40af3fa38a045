"""The networks of flatness.models: parameter counts against the paper's numbers and against
counts worked out here by formula, forward and backward passes on every input size, the
paper-size feature maps, the compatibility of the old names, and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flatness import models
from flatness.errors import FlatnessError
from flatness.models.layers import SamePad

MNIST, CIFAR = ((1, 28, 28), 10), ((3, 32, 32), 100)
VECTOR = ("logreg", "mlp", "mlp-10-100", "mlp-512-256", "mlp-5-200-50")
VECTOR += tuple(n + "-tanh" for n in VECTOR[2:])
LARGE = ("wrn-28-10", "vgg16", "vgg16-bn")  # counted, not run, at full size


def paper_input(name):
    return MNIST if name in VECTOR else CIFAR


def s(n, width):
    """A hidden width scaled as the module documents: half up, at least 1."""
    return max(1, math.floor(n * width + 0.5))


# -- counts by formula, independent of the code ---------------------------------------------


def dense_count(sizes):
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def preresnet_count(depth, c_in, classes, width=1.0):
    bottleneck = depth >= 44
    n = (depth - 2) // (9 if bottleneck else 6)
    c = s(16, width)
    total = conv(c_in, c, 3, bias=False)
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        p = s(planes, width)
        out = 4 * p if bottleneck else p
        for i in range(n):
            if bottleneck:
                total += 2 * c + c * p + 2 * p + 9 * p * p + 2 * p + p * out
            else:
                total += 2 * c + 9 * c * p + 2 * p + 9 * p * out
            if c != out or (i == 0 and stride == 2):
                total += c * out  # 1x1 projection shortcut, no bias
            c = out
    return total + 2 * c + (c + 1) * classes


def wrn_count(depth, k, c_in, classes, width=1.0):
    n = (depth - 4) // 6
    c = s(16, width)
    total = conv(c_in, c, 3)
    for planes, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        p = s(planes, width)
        for i in range(n):
            total += 2 * c + conv(c, p, 3) + 2 * p + conv(p, p, 3)
            if c != p or (i == 0 and stride == 2):
                total += conv(c, p, 1)  # 1x1 projection shortcut, with bias
            c = p
    return total + 2 * c + (c + 1) * classes


def vgg_count(c_in, classes, width=1.0, bn=False):
    total = 0
    for v in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512):
        total += conv(c_in, s(v, width), 3) + (2 * s(v, width) if bn else 0)
        c_in = s(v, width)
    return total + dense_count([c_in, s(512, width), s(512, width), classes])


def allcnn_count(c_in, classes, width=1.0):
    a, b = s(96, width), s(192, width)
    convs = [(c_in, a, 3), (a, a, 3), (a, a, 3), (a, b, 3), (b, b, 3), (b, b, 3), (b, b, 3)]
    return sum(conv(*c) for c in convs) + conv(b, b, 1) + conv(b, classes, 1)


def lenet_count(c_in, classes, width=1.0):
    c1, c2, f1, f2 = s(6, width), s(16, width), s(120, width), s(84, width)
    return conv(c_in, c1, 5) + conv(c1, c2, 5) + dense_count([25 * c2, f1, f2, classes])


PAPER = {  # the paper's counts (paper-notes section 4) and the classic LeNet-5's
    "logreg": 7_850,
    "mlp-10-100": 9_960,
    "mlp-512-256": 535_818,
    "mlp-5-200-50": 15_685,
    "mlp-10-100-tanh": 9_960,
    "mlp-512-256-tanh": 535_818,
    "mlp-5-200-50-tanh": 15_685,
    "allcnn": 1_387_108,
    "preresnet-110": 1_169_972,
    "wrn-28-10": 36_546_980,
    "vgg16": 15_291_300,
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_counts(name):
    assert models.parameter_count(models.build(name, *paper_input(name))) == PAPER[name]


def test_wrn_28_10_is_the_papers_36_5_million():
    assert abs(PAPER["wrn-28-10"] / 36.5e6 - 1) < 0.005
    assert wrn_count(28, 10, 3, 100) == PAPER["wrn-28-10"]


def test_formulas_reproduce_the_papers_counts():
    assert dense_count([784, 10]) == PAPER["logreg"]
    assert dense_count([784, 512, 256, 10]) == PAPER["mlp-512-256"]
    assert allcnn_count(3, 100) == PAPER["allcnn"]
    assert preresnet_count(110, 3, 100) == PAPER["preresnet-110"]
    assert vgg_count(3, 100) == PAPER["vgg16"]
    assert lenet_count(1, 10) == 61_706  # LeNet-5 with full C3 connections on MNIST


@pytest.mark.parametrize(
    "name, shape, classes, width, expected",
    [
        ("mlp", (1, 28, 28), 10, 1.0, dense_count([784, 16, 10])),
        ("mlp-512-256", (1, 28, 28), 10, 0.5, dense_count([784, 256, 128, 10])),
        ("mlp-5-200-50-tanh", (1, 8, 8), 10, 0.25, dense_count([64, 1, 50, 13, 10])),
        ("lenet5", (1, 28, 28), 10, 1.0, 61_706),
        ("lenet5", (1, 8, 8), 10, 0.25, lenet_count(1, 10, 0.25)),
        ("lenet5", (3, 32, 32), 100, 1.0, lenet_count(3, 100)),
        ("allcnn", (1, 8, 8), 10, 0.5, allcnn_count(1, 10, 0.5)),
        ("preresnet-20", (3, 32, 32), 100, 1.0, preresnet_count(20, 3, 100)),
        ("preresnet-20", (3, 32, 32), 10, 0.5, preresnet_count(20, 3, 10, 0.5)),
        ("preresnet-56", (3, 32, 32), 100, 1.0, preresnet_count(56, 3, 100)),
        ("preresnet-164", (3, 32, 32), 100, 1.0, preresnet_count(164, 3, 100)),
        ("preresnet-164", (1, 28, 28), 10, 0.125, preresnet_count(164, 1, 10, 0.125)),
        ("preresnet-38", (1, 8, 8), 10, 0.25, preresnet_count(38, 1, 10, 0.25)),
        ("wrn-16-4", (3, 32, 32), 100, 1.0, wrn_count(16, 4, 3, 100)),
        ("wrn-10-1", (1, 8, 8), 10, 1.0, wrn_count(10, 1, 1, 10)),
        ("wrn-28-10", (1, 8, 8), 10, 0.125, wrn_count(28, 10, 1, 10, 0.125)),
        ("vgg16", (3, 32, 32), 10, 0.25, vgg_count(3, 10, 0.25)),
        ("vgg16-bn", (3, 32, 32), 100, 1.0, vgg_count(3, 100, bn=True)),
        ("vgg16-bn", (1, 8, 8), 10, 0.125, vgg_count(1, 10, 0.125, bn=True)),
    ],
)
def test_counts_by_formula(name, shape, classes, width, expected):
    model = models.build(name, shape, classes, width=width)
    assert models.parameter_count(model) == expected


def test_width_rounds_half_up_with_a_floor_of_one():
    # 6 * 0.25 = 1.5 -> 2, 16 * 0.25 = 4, 120 * 0.25 = 30, 84 * 0.25 = 21
    net = models.build("lenet5", (1, 8, 8), 10, width=0.25)
    widths = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    widths += [m.out_features for m in net.modules() if isinstance(m, nn.Linear)]
    assert widths == [2, 4, 30, 21, 10]
    net = models.build("mlp-5-200-50", 64, 10, width=0.01)
    assert [m.out_features for m in net[0::2]] == [1, 2, 1, 10]  # 0.05 -> 1, 2.0, 0.5 -> 1
    assert models.parameter_count(models.build("logreg", (1, 28, 28), 10, width=0.25)) == 7_850


# -- forward and backward passes -------------------------------------------------------------


@pytest.mark.parametrize("name", models.names())
def test_builds_at_paper_size(name):
    torch.manual_seed(0)
    shape, classes = paper_input(name)
    model = models.build(name, shape, classes)
    assert models.parameter_count(model) > 0
    if name in LARGE:
        return
    logits = model.eval()(torch.randn(2, *shape))
    assert logits.shape == (2, classes) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)], ids=str)
@pytest.mark.parametrize("name", models.names())
def test_small_width_forward_and_backward(name, shape):
    torch.manual_seed(0)
    model = models.build(name, shape, 10, width=0.125).train()
    logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.tensor([3, 7])).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    assert sum(g.square().sum() for g in grads.values()) > 0


def map_entering(model, layer, x):
    """The shape of the tensor that ``layer`` receives in ``model(x)``."""
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    model.eval()(x)
    handle.remove()
    return tuple(seen[0][2:])


def test_adaptations_are_no_ops_at_paper_size():
    """At 3x32x32 the global pools see the authors' windows: 8x8 (ResNets), 6x6 (All-CNN),
    1x1 (VGG); LeNet-5 sees 5x5 before its classifier on 28x28 and 32x32 alike."""
    x = torch.randn(1, 3, 32, 32)
    for name in ("preresnet-20", "preresnet-56", "wrn-16-4"):
        net = models.build(name, (3, 32, 32), 10, width=0.125)
        assert map_entering(net, net.avgpool, x) == (8, 8), name
    net = models.build("allcnn", (3, 32, 32), 10, width=0.125)
    assert map_entering(net, net.mean, x) == (6, 6)
    assert net.conv7.padding == (0, 0)
    net = models.build("vgg16", (3, 32, 32), 10, width=0.125)
    assert map_entering(net, net.pool, x) == (1, 1)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 5
    for shape in ((1, 28, 28), (3, 32, 32)):
        net = models.build("lenet5", shape, 10)
        assert map_entering(net, net.features[-1], torch.randn(1, *shape)) == (5, 5)


def test_small_images_skip_pools_that_would_leave_nothing():
    net = models.build("vgg16", (1, 8, 8), 10, width=0.125)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3  # 8 -> 4 -> 2 -> 1
    assert sum(isinstance(m, nn.Identity) for m in net.features) == 2
    net = models.build("vgg16", (1, 28, 28), 10, width=0.125)  # 28 -> 14 -> 7 -> 3 -> 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 4
    assert models.build("allcnn", (1, 8, 8), 10).conv7.padding == (1, 1)  # 8 -> 4 -> 2


def test_same_padding_puts_the_odd_zero_after():
    padded = SamePad(3, 2)(torch.ones(1, 1, 4, 4))  # needs (2 - 1) * 2 + 3 - 4 = 1
    assert padded.shape == (1, 1, 5, 5)
    assert padded[0, 0, :4, :4].eq(1).all() and padded[0, 0, 4].eq(0).all()
    assert padded[0, 0, :, 4].eq(0).all()
    padded = SamePad(3, 2)(torch.ones(1, 1, 7, 7))  # needs 3 * 2 + 3 - 7 = 2
    assert padded.shape == (1, 1, 9, 9) and padded[0, 0, 1:8, 1:8].eq(1).all()
    assert padded.sum() == 49


def test_has_batchnorm():
    for name in models.names():
        expected = name.startswith(("preresnet", "wrn")) or name == "vgg16-bn"
        model = models.build(name, paper_input(name)[0], 10, width=0.125)
        assert models.has_batchnorm(model) == expected, name


def test_parameter_count_skips_frozen_parameters():
    model = models.build("logreg", (1, 28, 28), 10)
    model.bias.requires_grad_(False)
    assert models.parameter_count(model) == 7_840


# -- compatibility with the old models module ------------------------------------------------


def test_softmax_regression_is_a_linear_layer_on_flat_or_image_inputs():
    model = models.build("logreg", (1, 28, 28), 10)
    assert isinstance(model, nn.Linear) and model.in_features == 784
    assert [n for n, _ in model.named_parameters()] == ["weight", "bias"]
    assert model.weight.shape == (10, 784) and model.bias.shape == (10,)
    x = torch.randn(3, 1, 28, 28)
    expected = x.reshape(3, 784) @ model.weight.T + model.bias
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x.reshape(3, 784)), expected)
    assert models.softmax_regression(64, 10).in_features == 64


def test_mlp_keeps_its_sequential_names_default_and_behaviour():
    model = models.build("mlp", 64, 10)
    assert isinstance(model, nn.Sequential)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert isinstance(model[1], nn.Tanh) and model[0].out_features == 16
    assert models.parameter_count(model) == 1210
    x = torch.randn(4, 1, 8, 8)
    expected = model[2](torch.tanh(model[0](x.reshape(4, 64))))
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x.reshape(4, 64)), expected)
    relu = models.mlp(6, 4, widths=(8, 5), activation="relu")
    assert [type(m) for m in relu] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert isinstance(models.build("mlp-10-100", 784, 10)[1], nn.ReLU)
    assert isinstance(models.build("mlp-10-100-tanh", 784, 10)[3], nn.Tanh)
    assert models.ACTIVATIONS == {"tanh": nn.Tanh, "relu": nn.ReLU}


def test_names_and_registry():
    required = {"logreg", "mlp", "lenet5", "allcnn", "vgg16", "vgg16-bn", "wrn-28-10", "wrn-16-4"}
    required |= {f"preresnet-{d}" for d in (20, 56, 110, 164)}
    assert required <= set(models.names()) and models.names() == tuple(models.MODELS)
    net = models.build("preresnet-38", (3, 32, 32), 10, width=0.125)
    assert [len(net.layer1), type(net.layer1[0]).__name__] == [6, "PreActBlock"]  # (38 - 2) / 6


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: models.build("resnet", (3, 32, 32), 10), ["unknown model", "'wrn-28-10'"]),
        (lambda: models.build(None, (3, 32, 32), 10), ["unknown model", "'logreg'"]),
        (lambda: models.build("vgg16", (3, 32, 32), 10, width=0), ["width", "> 0"]),
        (lambda: models.build("mlp", 64, 10, width=-1), ["width", "> 0"]),
        (lambda: models.build("mlp", 64, 10, width=math.nan), ["width", "finite"]),
        (lambda: models.build("logreg", 64, 10, width=math.inf), ["width", "finite"]),
        (lambda: models.build("lenet5", (1, 8, 8), 10, width="1"), ["width", "> 0"]),
        (lambda: models.build("preresnet-21", (3, 32, 32), 10), ["6n+2", "9n+2", "110"]),
        (lambda: models.build("preresnet-44", (3, 32, 32), 10), ["6n+2", "9n+2"]),
        (lambda: models.build("preresnet-2", (3, 32, 32), 10), ["6n+2", "got 2"]),
        (lambda: models.build("preresnet-x", (3, 32, 32), 10), ["6n+2", "9n+2"]),
        (lambda: models.build("wrn-27-10", (3, 32, 32), 10), ["6n+4", "k"]),
        (lambda: models.build("wrn-4-10", (3, 32, 32), 10), ["6n+4", "n >= 1"]),
        (lambda: models.build("wrn-28-0", (3, 32, 32), 10), ["6n+4", "integer >= 1"]),
        (lambda: models.build("wrn-28", (3, 32, 32), 10), ["wrn-<depth>-<k>", "6n+4"]),
        (lambda: models.build("allcnn", 3072, 100), ["(C, H, W)", "flat size"]),
        (lambda: models.build("vgg16", (32, 32), 10), ["(C, H, W)", "integers >= 1"]),
        (lambda: models.build("lenet5", (1, 0, 28), 10), ["(C, H, W)", "integers >= 1"]),
        (lambda: models.build("mlp", (1, -28, 28), 10), ["input_shape", "integer"]),
        (lambda: models.build("logreg", 0, 10), ["input_shape", "D >= 1"]),
        (lambda: models.build("mlp", 64, 0), ["num_classes", ">= 1"]),
        (lambda: models.mlp(64, 10, activation="gelu"), ["unknown activation", "'relu'"]),
    ],
)
def test_bad_input_names_the_valid_choices(call, words):
    with pytest.raises(FlatnessError) as err:
        call()
    assert all(w in str(err.value) for w in words), str(err.value)
