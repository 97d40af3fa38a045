"""The chapter "Is the Hessian low-rank?" (claim C6): exact ranks against candidate bounds.

Small MLPs (identity, tanh and ReLU activations, the same widths) get their dense float64
Hessian of the mean cross-entropy data loss at initialisation and after training, with and
without L2; its numerical rank is compared with four candidate bounds (:func:`bounds`). The
Gauss-Newton part (GGN) is measured beside it, because that is where the bounds are theorems.
A network too large for a dense Hessian gets stochastic Lanczos quadrature (SLQ) instead, whose
near-zero mass is first checked against the exact one on a small network.

The tanh and ReLU networks are the registered ``mlp-10-100-tanh`` and ``mlp-10-100`` at a width
multiplier; no registered model is linear, so the linear twin is built here (:func:`linear_mlp`)
and trained by :func:`train_linear`, a plain loop with the same optimiser and schedule.

This module holds the settings, the nets and their exact spectra; the tables and verdicts built
from them live in :mod:`flatness.chapters.rank_tables` and the SLQ part in
:mod:`flatness.chapters.rank_slq`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from flatness import hessian, models
from flatness.config import (
    RunConfig,
    get_profile,
    parameter_changes,
)
from flatness.errors import FlatnessError, RunMissing
from flatness.models.dense import MLP
from flatness.store import load_or_run
from flatness.train import learning_rate, load_model, make_optimiser

ce = nn.functional.cross_entropy
ACTIVATIONS = ("linear", "tanh", "relu")
#: the registered model of each non-linear activation (the authors' 784-10-100-10 family)
REGISTERED = {"tanh": "mlp-10-100-tanh", "relu": "mlp-10-100"}
BOUNDS = ("examples", "fan_in", "neurons", "deep_linear")
BOUND_NAMES = {
    "examples": "N(K-1)",
    "fan_in": "(K-1) x fan-ins",
    "neurons": "neurons x K",
    "deep_linear": "deep-linear formula",
}


@dataclass(frozen=True)
class RankSettings:
    """Sizes for the rank chapter: nets, training, tolerances and the SLQ network."""

    dataset: str
    #: training examples: every run trains on them and every Hessian averages over them (N)
    train_size: int
    #: width multiplier of the 10-100 family of hidden widths
    width: float
    epochs: int
    batch_size: int
    lr: float
    weight_decays: tuple[float, ...]
    seeds: tuple[int, ...]
    #: ranks count |lambda| > rtol * max |lambda| ...
    rtols: tuple[float, ...] = (1e-4, 1e-6, 1e-8)
    #: ... and |lambda| > atol, the authors' count of eigenvalues below 1e-4 (paper notes sec. 3)
    atol: float = 1e-4
    slq_model: str = "mlp-512-256"
    slq_width: float = 0.5
    slq_steps: int = 50
    slq_probes: int = 4

    def run_config(self, activation: str, weight_decay: float, seed: int, *, large=False):
        """The stored run of a registered network (``large``: the SLQ network)."""
        return RunConfig(
            model=self.slq_model if large else REGISTERED[activation],
            width=self.slq_width if large else self.width,
            dataset=self.dataset,
            weight_decay=weight_decay,
            seed=seed,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            train_size=self.train_size,
            hessian_every=0,
        )

    def with_overrides(self, *, dataset=None, seeds=None, weight_decays=None, epochs=None):
        """Replace the fields a chapter's parameters may override; ``None`` keeps the profile's."""
        changes = parameter_changes(
            dataset=dataset, seeds=seeds, weight_decays=weight_decays, epochs=epochs
        )
        return dataclasses.replace(self, **changes)


#: ``cpu``: 100 digits, hidden widths 5 and 50 (1,135 parameters), so N(K-1) = 900 < P; SLQ on
#: mlp-512-256 at width 0.5 (50,826 parameters). ``paper`` runs SLQ on the full mlp-512-256.
#: ``paper``: 500 MNIST images and the authors' 784-10-100-10 (9,960 parameters, exact Hessian).
SETTINGS = {
    "smoke": RankSettings(
        dataset="digits",
        train_size=40,
        width=0.2,
        epochs=3,
        batch_size=20,
        lr=0.05,
        weight_decays=(0.0, 1e-2),
        seeds=(0, 1),
        slq_width=0.1,
        slq_steps=20,
        slq_probes=2,
    ),
    "cpu": RankSettings(
        dataset="digits",
        train_size=100,
        width=0.5,
        epochs=100,
        batch_size=25,
        lr=0.05,
        weight_decays=(0.0, 1e-2),
        seeds=(0, 1, 2),
    ),
    "paper": RankSettings(
        dataset="mnist",
        train_size=500,
        width=1.0,
        epochs=300,
        batch_size=128,
        lr=0.05,
        weight_decays=(0.0, 5e-4),
        seeds=(0, 1, 2),
        slq_width=1.0,
        slq_steps=100,
        slq_probes=8,
    ),
}


def settings(profile: str, **overrides) -> RankSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced.

    Raises:
        FlatnessError: an unknown profile or data set, duplicate seeds, or a value out of range.
    """
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


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


def ranks(eigenvalues: torch.Tensor, rtols, atol: float) -> dict[str, int]:
    """Eigenvalues counted as non-zero: ``|lambda| > rtol * max |lambda|`` for each relative
    tolerance (labelled ``"rel <rtol>"``) and ``|lambda| > atol`` (``"abs <atol>"``)."""
    mags = eigenvalues.abs()
    scale = mags.max().item()
    out = {f"rel {t:g}": int((mags > t * scale).sum()) for t in rtols}
    return out | {f"abs {atol:g}": int((mags > atol).sum())}


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


def small_grid(profile: str) -> list[RunConfig]:
    """The tanh and ReLU nets whose exact spectra the chapter computes (the linear twins train
    inside the chapter)."""
    s = settings(profile)
    return [
        s.run_config(a, wd, seed)
        for a in ACTIVATIONS
        if a != "linear"
        for seed in s.seeds
        for wd in s.weight_decays
    ]


def grid(profile: str) -> list[RunConfig]:
    """The stored runs this chapter reads at ``profile``: :func:`small_grid` and the large ReLU
    net of the SLQ check."""
    s = settings(profile)
    large = [
        s.run_config("relu", wd, seed, large=True) for seed in s.seeds for wd in s.weight_decays
    ]
    return small_grid(profile) + large


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


@dataclass(frozen=True)
class Spectrum:
    """The exact Hessian and GGN eigenvalues (float64, ascending) of one net in one state."""

    activation: str
    state: str
    weight_decay: float
    seed: int
    hessian: torch.Tensor
    ggn: torch.Tensor
    train_loss: float


def spectrum(model, data, activation, state, weight_decay, seed) -> Spectrum:
    x, y = data.x_train, data.y_train
    h = hessian.exact_hessian(model, ce, (x, y))
    g = hessian.exact_hessian(model, ce, (x, y), curvature="ggn")
    with torch.no_grad():
        loss = ce(model(x), y).item()
    eig = torch.linalg.eigvalsh
    return Spectrum(activation, state, weight_decay, seed, eig(h), eig(g), loss)


def spectra(
    s: RankSettings, data, *, store=None, data_root=None, train_missing=True
) -> list[Spectrum]:
    """Every net at initialisation (weight decay NaN) and trained with each weight decay
    (:class:`~flatness.errors.RunMissing` for a missing run with ``train_missing=False``)."""
    fetch = dict(store=store, data_root=data_root, train_missing=train_missing)
    trained, missing = {}, []
    for activation in ACTIVATIONS:  # every lookup first: all missing runs are named at once
        for seed in s.seeds:
            for wd in s.weight_decays:
                if activation == "linear":
                    continue
                try:
                    trained[activation, wd, seed] = trained_model(
                        s, activation, wd, seed, data, **fetch
                    )
                except RunMissing as err:
                    missing += err.configs
    if missing:
        raise RunMissing(missing)
    out = []
    for activation in ACTIVATIONS:
        for seed in s.seeds:
            model = initial_model(s, activation, seed, data)
            out.append(spectrum(model, data, activation, "initial", math.nan, seed))
            for wd in s.weight_decays:
                model = trained.get((activation, wd, seed))
                if model is None:  # the linear twin trains here
                    model = trained_model(s, activation, wd, seed, data, **fetch)
                out.append(spectrum(model, data, activation, "trained", wd, seed))
    return out


#: names defined in the chapter's other modules, served from here so the chapter has one namespace
