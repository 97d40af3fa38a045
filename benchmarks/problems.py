"""The benchmark problems: two briefly trained models, each in two data modes.

- the digits MLP 64-100-10 (tanh) on scikit-learn's digits (1,437 training images), 30
  full-batch SGD steps as the first bench trained it;
- a width-reduced VGG-style CNN with BatchNorm (23,538 parameters) on 64 generated 3x32x32
  inputs (32 with ``--quick``) whose labels come from a random linear teacher, trained to a
  training loss below ``CNN_LOSS``, its BatchNorm running statistics then set to the data's.

Both are put in eval mode (BatchNorm with running statistics) for every tool. Data modes:
``one batch`` (all examples as one tensor pair) and ``loader`` (a DataLoader of 8 batches,
``shuffle=False``); in eval mode both define the same operator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness import data as datasets
from flatness.models import mlp

ce = nn.functional.cross_entropy
LOADER_BATCHES = 8
#: the CNN trains until its training loss is below this
CNN_LOSS = 1e-2


def vgg_small(width: int = 8) -> nn.Sequential:
    """VGG-style: (conv-BN-ReLU) x2, pool, x2, pool, x2, pool, then a linear head; 3x32x32 in."""
    layers, channels = [], 3
    for out in (width, 2 * width, 4 * width):
        for _ in range(2):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 16, 10))


@dataclass
class Problem:
    """One trained model and its data; ``data(mode)`` gives the batch or the loader."""

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def loader_batch(self) -> int:
        return math.ceil(len(self.x) / LOADER_BATCHES)

    def data(self, mode: str):
        if mode == "one batch":
            return (self.x, self.y)
        dataset = TensorDataset(self.x, self.y)
        return DataLoader(dataset, batch_size=self.loader_batch, shuffle=False)

    def batches(self, mode: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same data as a plain list of (inputs, targets) batches."""
        if mode == "one batch":
            return [(self.x, self.y)]
        return list(zip(self.x.split(self.loader_batch), self.y.split(self.loader_batch)))


MODES = ("one batch", "loader")


def digits_mlp() -> Problem:
    torch.manual_seed(0)
    digits = datasets.load("digits")
    net = mlp(64, 10, widths=(100,))
    # a little training so the spectrum is a trained network's, not an initialisation's
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        ce(net(digits.x_train), digits.y_train).backward()
        opt.step()
    net.eval()
    return Problem("digits MLP", net, digits.x_train, digits.y_train)


def cnn(quick: bool) -> Problem:
    torch.manual_seed(0)
    n = 32 if quick else 64  # conv HVPs on 2 CPU cores: ~0.1 s (float32) to 0.5 s (float64) at 64
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    teacher = torch.randn(3 * 32 * 32, 10, generator=torch.Generator().manual_seed(3))
    y = (x.flatten(1) @ teacher).argmax(dim=1)  # labels a network can learn
    net = vgg_small()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    # trained to low loss, but not below ~1e-2: at a loss of 1e-4 the softmax's 1 - p cancels
    # in float32 and every float32 HVP is off by ~5e-4 relative, so a 1e-3 eigenvalue target
    # against the float64 truth would measure rounding, not the solvers (at 1e-2: ~3e-6)
    for _ in range(60):
        opt.zero_grad()
        loss = ce(net.train()(x), y)
        loss.backward()
        opt.step()
        if loss.item() < CNN_LOSS:
            break
    # running statistics lag the weights after a short training: set them to the data's own
    # (one cumulative pass), so that eval mode is the network just trained
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        net.train()(x)
    for m in norms:
        m.momentum = 0.1
    net.eval()
    return Problem("VGG-style CNN", net, x, y)


def problems(quick: bool) -> list[Problem]:
    return [digits_mlp(), cnn(quick)]
