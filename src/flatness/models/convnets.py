"""Plain convolutional networks: LeNet-5, All-CNN-C and VGG-16 (with or without BatchNorm).

Each takes (N, C, H, W) float inputs and returns (N, num_classes) logits; how each runs on
images smaller than 32x32 is stated in its class and in :mod:`flatness.models`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from flatness.models.layers import (
    SamePad,
    check_classes,
    check_width,
    halving_pool,
    he_normal_,
    image_shape,
    scaled,
)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) in its common PyTorch CIFAR/MNIST form: conv 6@5x5, ReLU,
    max-pool 2, conv 16@5x5, ReLU, max-pool 2, FC 120, ReLU, FC 84, ReLU, FC classes.

    ReLU and max-pooling (not the 1998 scaled tanh and trainable sub-sampling) as in the
    PyTorch CIFAR-10 tutorial; the authors' code has no LeNet. Images smaller than 32x32 are
    zero-padded, centred, to 32x32 as LeCun et al. padded 28x28 MNIST (on 28x28 this equals the
    usual ``padding=2`` of the first convolution); the 5x5 map that 32x32 gives then feeds the
    classifier, and larger images are average-pooled to 5x5 first. The count is thus the same
    for every image size: 61,706 on MNIST (1x28x28, 10 classes), 69,656 on CIFAR-100.
    """

    def __init__(self, input_shape, num_classes: int, *, width: float = 1.0):
        super().__init__()
        width = check_width(width)
        channels, h, w = image_shape(input_shape, "lenet5")
        num_classes = check_classes(num_classes)
        c1, c2, f1, f2 = (scaled(n, width) for n in (6, 16, 120, 84))
        ph, pw = max(32 - h, 0), max(32 - w, 0)
        self.features = nn.Sequential(
            nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)),
            nn.Conv2d(channels, c1, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * 25, f1),
            nn.ReLU(),
            nn.Linear(f1, f2),
            nn.ReLU(),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AllCNN(nn.Sequential):
    """All-CNN-C (Springenberg et al. 2015, Table 2), as the authors train it on CIFAR-100
    (GadamX ``curvature/models/all_cnn.py``, from DeepOBS).

    Dropout 0.2 on the input; conv3x3 96, 96, 96 stride 2; dropout 0.5; conv3x3 192, 192,
    192 stride 2; dropout 0.5; conv3x3 192 (no padding), conv1x1 192, conv1x1 classes; ReLU
    after every convolution, the last included (as the paper's table and the authors' code
    have it); global average pooling. Convolutions carry biases, padded as TensorFlow's
    ``"same"`` (the authors' ``tfconv2d``); weights Xavier-normal and biases 0.1 as theirs.

    1,387,108 parameters on CIFAR-100 (3x32x32, 100 classes). The 3x3 convolution without
    padding sees 8x8 at 32x32 (and gives the 6x6 map that the authors average over); an axis
    shorter than 3 there is padded by 1 instead, so that 8x8 inputs work.
    """

    def __init__(self, input_shape, num_classes: int, *, width: float = 1.0):
        width = check_width(width)
        channels, h, w = image_shape(input_shape, "allcnn")
        num_classes = check_classes(num_classes)
        a, b = scaled(96, width), scaled(192, width)
        size = (math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2))
        valid = tuple(0 if n >= 3 else 1 for n in size)
        layers = [("dropout1", nn.Dropout(0.2))]
        convs = [(1, channels, a, 1), (2, a, a, 1), (3, a, a, 2)]
        convs += [(4, a, b, 1), (5, b, b, 1), (6, b, b, 2)]
        for k, c_in, c_out, stride in convs:
            if stride > 1:
                layers.append((f"pad{k}", SamePad(3, stride)))
            padding = 1 if stride == 1 else 0  # "same" for stride 1 is symmetric
            layers.append((f"conv{k}", nn.Conv2d(c_in, c_out, 3, stride, padding)))
            layers.append((f"relu{k}", nn.ReLU()))
            if k == 3:
                layers.append(("dropout2", nn.Dropout(0.5)))
        layers += [
            ("dropout3", nn.Dropout(0.5)),
            ("conv7", nn.Conv2d(b, b, 3, padding=valid)),
            ("relu7", nn.ReLU()),
            ("conv8", nn.Conv2d(b, b, 1)),
            ("relu8", nn.ReLU()),
            ("conv9", nn.Conv2d(b, num_classes, 1)),
            ("relu9", nn.ReLU()),
            ("mean", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
        ]
        super().__init__(OrderedDict(layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0.1)


#: VGG-16's convolution widths, "M" a 2x2 max-pool (configuration D of Simonyan & Zisserman)
VGG16_LAYERS = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG16(nn.Module):
    """VGG-16 for CIFAR as the authors define it (GadamX ``curvature/models/vgg.py``, after
    torchvision): 13 conv3x3 layers (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M;
    biases, ReLU, and BatchNorm after each convolution when ``batch_norm``), then
    Dropout 0.5, FC 512, ReLU, Dropout 0.5, FC 512, ReLU, FC classes. Convolution weights
    N(0, 2 / (9 C_out)) and biases zero, as theirs.

    15,291,300 parameters on CIFAR-100 without BatchNorm, 15,299,748 with. At 32x32 the five
    pools leave a 1x1 map; on smaller images a pool that would go below 1x1 is skipped (per
    axis), and the map is average-pooled to 1x1 before the classifier (a no-op at 32x32).
    """

    def __init__(self, input_shape, num_classes: int, *, width: float = 1.0, batch_norm=False):
        super().__init__()
        width = check_width(width)
        c_in, h, w = image_shape(input_shape, "vgg16-bn" if batch_norm else "vgg16")
        num_classes = check_classes(num_classes)
        layers, size = [], (h, w)
        for v in VGG16_LAYERS:
            if v == "M":
                pool, size = halving_pool(size)
                layers.append(pool)
                continue
            c_out = scaled(v, width)
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            layers += [nn.BatchNorm2d(c_out), nn.ReLU()] if batch_norm else [nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(c_in, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        he_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def lenet5(input_shape, num_classes: int, *, width: float = 1.0) -> LeNet5:
    """:class:`LeNet5` for images of ``input_shape`` (C, H, W); ``width`` scales 6, 16, 120, 84.

    >>> sum(p.numel() for p in lenet5((1, 28, 28), 10).parameters())
    61706
    """
    return LeNet5(input_shape, num_classes, width=width)


def allcnn(input_shape, num_classes: int, *, width: float = 1.0) -> AllCNN:
    """:class:`AllCNN` (All-CNN-C) for images of ``input_shape``; ``width`` scales 96 and 192."""
    return AllCNN(input_shape, num_classes, width=width)


def vgg16(input_shape, num_classes: int, *, width: float = 1.0) -> VGG16:
    """:class:`VGG16` without BatchNorm; ``width`` scales every convolution and the FC 512s."""
    return VGG16(input_shape, num_classes, width=width)


def vgg16_bn(input_shape, num_classes: int, *, width: float = 1.0) -> VGG16:
    """:class:`VGG16` with BatchNorm after every convolution (the authors' ``VGG16BN``)."""
    return VGG16(input_shape, num_classes, width=width, batch_norm=True)
