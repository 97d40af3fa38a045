"""The design of "Is the Hessian low-rank?" (claim C6): the activations and candidate bounds it
compares, its sizes for each profile and the registered runs it reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flatness.chapters.common import parameter_changes
from flatness.profiles import get_profile
from flatness.training.config import RunConfig

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


#: N is chosen with N(K-1) >= P, so that the sample does not by itself cap the GGN's rank below
#: the largest rank a softmax net can have (P less the last hidden width + 1) and a rank below
#: that is a finding about the network. ``cpu``: 150 digits, hidden widths 5 and 50 (1,135
#: parameters, N(K-1) = 1,350); SLQ on mlp-512-256 at width 0.5 (50,826 parameters).
#: ``paper``: 1,200 MNIST images (N(K-1) = 10,800) and the authors' 784-10-100-10 (9,960
#: parameters, exact Hessian); SLQ on the full mlp-512-256. ``smoke`` stays tiny
#: (N(K-1) = 360 < P = 400); the page says the sample caps the GGN there.
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
        train_size=150,
        width=0.5,
        epochs=100,
        batch_size=25,
        lr=0.05,
        weight_decays=(0.0, 1e-2),
        seeds=(0, 1, 2),
    ),
    "paper": RankSettings(
        dataset="mnist",
        train_size=1200,
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
