"""The nets of "Is the Hessian low-rank?" and the rank bounds their architectures give.

The tanh and ReLU networks are the registered ``mlp-10-100-tanh`` and ``mlp-10-100`` at a width
multiplier; no registered model is linear, so the linear twin is built here (:func:`linear_mlp`)
and trained by :func:`train_linear`, a plain loop with the same optimiser and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flatness import models
from flatness.chapters.rank.design import REGISTERED, RankSettings
from flatness.errors import FlatnessError
from flatness.models.dense import MLP
from flatness.results.runs import load_or_run
from flatness.training.loop import learning_rate, load_model, make_optimiser

ce = nn.functional.cross_entropy


@dataclass(frozen=True)
class Architecture:
    """A fully connected net: ``inputs`` -> ``hidden`` widths -> ``classes``, biases everywhere."""

    inputs: int
    hidden: tuple[int, ...]
    classes: int

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.inputs, *self.hidden, self.classes)

    @property
    def parameters(self) -> int:
        """P = sum over layers of (fan-in + 1) x fan-out."""
        w = self.widths
        return sum((a + 1) * b for a, b in zip(w[:-1], w[1:]))

    @property
    def ceiling(self) -> int:
        """The largest rank the Hessian (or GGN) of a softmax cross-entropy can have on this net:
        P less n_{L-1} + 1. Moving the last layer's weights and bias by ``1 u^T`` and ``1 c``
        adds u^T h + c to every logit of an example alike, which no probability sees, so the
        loss is flat along those n_{L-1} + 1 directions at every weight and each is a null
        vector of the Hessian."""
        return self.parameters - (self.widths[-2] + 1)

    @classmethod
    def of(cls, model: nn.Module) -> Architecture:
        """Read from the model's ``nn.Linear`` layers, in order (each must feed the next)."""
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not layers or any(a.out_features != b.in_features for a, b in zip(layers, layers[1:])):
            raise FlatnessError("Architecture.of needs a chain of nn.Linear layers")
        return cls(
            layers[0].in_features,
            tuple(m.out_features for m in layers[:-1]),
            layers[-1].out_features,
        )


def bounds(arch: Architecture, examples: int, data_rank: int) -> dict[str, int]:
    """The four candidate bounds on the Hessian rank of a net with ``arch`` (K classes, layer
    widths n_0 = inputs, n_1 ... n_{L-1} hidden, n_L = K) on N = ``examples`` inputs whose
    centred matrix has rank r = ``data_rank``:

    - ``examples``: N (K - 1). Each example's logit Hessian diag(p) - p p^T has rank K - 1, so
      the GGN J^T H_z J has at most this rank (any net).
    - ``fan_in``: (K - 1) sum_l (n_{l-1} + 1), the layers' input widths with the bias. For a
      linear net, d z / d W_l = A_l (x) h~_{l-1}^T with A_l the same for every example, so the
      GGN's layer-l part has rank at most (K - 1)(n_{l-1} + 1); for softmax regression
      (L = 1) it is the exact rank (d + 1)(K - 1).
    - ``neurons``: K (n_1 + ... + n_{L-1} + K), (hidden neurons + outputs) x classes: the
      paper's "constant x neurons x classes" with constant 1 (its exact statement is lost).
    - ``deep_linear``: q (r + K - 1 - q) + (K - 1), q = min(r, n_1, ..., n_{L-1}, K - 1): the
      dimension of the affine maps z = W x + b with rank W <= q, seen by the softmax (logits
      up to a common shift). It is the rank of a linear net's GGN at generic weights (checked
      in ``tests/test_rank.py``), Singh, Bachmann and Hofmann's (2021, arXiv:2106.16225)
      outer-product rank q (r + K - q) of bias-free nets under the squared loss with K -> K - 1
      (softmax) plus K - 1 for the output bias. L = 1 gives (r + 1)(K - 1).

    Raises:
        FlatnessError: ``examples`` or ``data_rank`` below 1.
    """
    if examples < 1 or data_rank < 1:
        raise FlatnessError(f"need examples >= 1 and data_rank >= 1, got {examples}, {data_rank}")
    k, w = arch.classes, arch.widths
    q = min(data_rank, *arch.hidden, k - 1)
    return {
        "examples": examples * (k - 1),
        "fan_in": (k - 1) * sum(n + 1 for n in w[:-1]),
        "neurons": k * (sum(arch.hidden) + k),
        "deep_linear": q * (data_rank + k - 1 - q) + (k - 1),
    }


def data_rank(x: torch.Tensor) -> int:
    """The rank of the centred (N, D) inputs (float64, numpy's default tolerance): the
    dimension of the affine span of the examples."""
    flat = x.flatten(1).double()
    return int(torch.linalg.matrix_rank(flat - flat.mean(dim=0)).item())


def linear_mlp(inputs: int, hidden, classes: int) -> MLP:
    """The linear twin of :func:`flatness.models.mlp`: the same Linear layers (so the same
    initial weights for a seed), with the identity between them."""
    layers, fan_in = [], inputs
    for width in hidden:
        layers += [nn.Linear(fan_in, width), nn.Identity()]
        fan_in = width
    return MLP(*layers, nn.Linear(fan_in, classes))


def initial_model(s: RankSettings, activation: str, seed: int, data) -> nn.Module:
    """The net of ``activation`` as training initialises it (``torch.manual_seed(seed)``)."""
    torch.manual_seed(seed)
    net = models.build(REGISTERED["relu"], data.input_shape, data.num_classes, width=s.width)
    if activation == "linear":
        arch = Architecture.of(net)
        torch.manual_seed(seed)
        return linear_mlp(arch.inputs, arch.hidden, arch.classes)
    torch.manual_seed(seed)
    return models.build(REGISTERED[activation], data.input_shape, data.num_classes, width=s.width)


def train_linear(s: RankSettings, weight_decay: float, seed: int, data) -> nn.Module:
    """Train the linear twin with the registered runs' optimiser, schedule and batch order
    (SGD, momentum 0.9, coupled L2, the linear schedule), in a plain loop."""
    cfg = s.run_config("relu", weight_decay, seed)
    model = initial_model(s, "linear", seed, data)
    optimiser = make_optimiser(cfg, model.parameters())
    order = torch.Generator().manual_seed(seed)
    for epoch in range(cfg.epochs):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        for batch in torch.randperm(len(data.y_train), generator=order).split(cfg.batch_size):
            optimiser.zero_grad()
            ce(model(data.x_train[batch]), data.y_train[batch]).backward()
            optimiser.step()
    return model


def trained_model(
    s, activation, weight_decay, seed, data, *, store=None, data_root=None, train_missing=True
):
    if activation == "linear":
        return train_linear(s, weight_decay, seed, data)
    cfg = s.run_config(activation, weight_decay, seed)
    run = load_or_run(
        cfg, store=store, data_root=data_root, device="cpu", train_missing=train_missing
    )
    return load_model(cfg, run.arrays, data.input_shape, data.num_classes)
