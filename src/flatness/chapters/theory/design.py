"""The theory chapter's design: its sizes for each profile and the sample its facts are measured on.

Every Hessian of the chapter is exact, so every size is small; :func:`log_range` spreads the
scale factors and L2 coefficients the settings give over a log scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from flatness import data as datasets
from flatness.analysis.stats import check_seeds
from flatness.errors import FlatnessError
from flatness.profiles import get_profile
from flatness.validation import as_int, check_choice


@dataclass(frozen=True)
class TheorySettings:
    """Sizes of the theory chapter; every Hessian is exact, so every size is small."""

    dataset: str
    #: training examples of the softmax-regression facts 2-4 (the data set's fixed subset)
    train_size: int
    #: the first this many of them for the MLP facts 1, 5 and 6 (dense Hessians cost N P^2)
    mlp_size: int
    #: hidden width of the one-hidden-layer ReLU MLP of facts 1, 5 and 6
    hidden: int
    #: full-batch Adam steps (at ``train_lr``) that train the MLP before its Hessian is taken
    train_steps: int
    seeds: tuple[int, ...]
    #: Adam's lr for those steps. On MNIST (inputs in [-1, 1]) 0.01 killed every ReLU of the
    #: 4-unit net for seeds 0 and 1 (loss 2.297 = ln 10); 1e-3 left 2, 2 and 4 units alive
    #: (losses 1.52, 1.53, 0.74) on the paper profile's 1,000 images
    train_lr: float = 0.01
    #: log10 range and count of the scale factors alpha (fact 3) and a (fact 6)
    alpha_log10_range: tuple[float, float] = (-1.0, 1.5)
    alpha_count: int = 11
    #: log10 range and count of the L2 coefficients gamma (fact 4)
    gamma_log10_range: tuple[float, float] = (-5.0, 0.0)
    gamma_count: int = 11
    #: BatchNorm input scales checked in fact 5
    bn_alphas: tuple[float, ...] = (0.1, 0.5, 2.0, 10.0)
    #: the first this many training examples are fact 3's (claim C2's) sample, whose L2 optimum
    #: must separate it for the loss to fall to zero along its ray; None: the whole sample.
    #: 10,000 MNIST images are not linearly separable (the theory page gives the share the
    #: smallest gamma's optimum misclassifies), while any labelling of at most d + 1 = 785
    #: points in general position is
    scaling_size: int | None = None

    def __post_init__(self):
        if self.mlp_size > self.train_size:
            raise FlatnessError(f"mlp_size {self.mlp_size} exceeds train_size {self.train_size}")

    def with_overrides(self, *, dataset=None, seeds=None, train_size=None, mlp_size=None):
        """Replace the fields a chapter's parameters may override; ``None`` keeps the profile's."""
        changes = {}
        if dataset is not None:
            changes["dataset"] = check_choice(
                "dataset", dataset, ("digits", "mnist", "fashion-mnist")
            )
        if seeds is not None:
            changes["seeds"] = check_seeds(seeds)
        if train_size is not None:
            changes["train_size"] = as_int("train_size", train_size, minimum=2)
        if mlp_size is not None:
            changes["mlp_size"] = as_int("mlp_size", mlp_size, minimum=2)
        return dataclasses.replace(self, **changes)


#: The chapter's settings for each profile (cpu: all 1,077 training digits, under a minute).
SETTINGS = {
    "smoke": TheorySettings(
        dataset="digits",
        train_size=100,
        mlp_size=60,
        hidden=6,
        train_steps=30,
        seeds=(0,),
        alpha_count=5,
        gamma_log10_range=(-3.0, 0.0),
        gamma_count=4,
        bn_alphas=(0.1, 3.0),
    ),
    "cpu": TheorySettings(
        dataset="digits", train_size=1077, mlp_size=400, hidden=8, train_steps=300, seeds=(0, 1, 2)
    ),
    # MNIST: softmax regression has 7,850 parameters and the MLP 3,190; wants a GPU
    "paper": TheorySettings(
        dataset="mnist",
        train_size=10_000,
        mlp_size=1000,
        hidden=4,
        train_steps=300,
        seeds=(0, 1, 2),
        train_lr=1e-3,
        gamma_count=9,
        scaling_size=500,
    ),
}


def settings(profile: str, **overrides) -> TheorySettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced.

    Raises:
        FlatnessError: an unknown profile or data set, duplicate seeds, or a size out of range.
    """
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def load(
    settings: TheorySettings, *, data_root=None, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training sample as float64 (N, d) inputs and int64 (N,) labels on ``device``."""
    d = datasets.load(settings.dataset, data_root=data_root, train_size=settings.train_size)
    return d.x_train.flatten(1).double().to(device), d.y_train.to(device)


def scaling_sample(
    settings: TheorySettings, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fact 3's (claim C2's) sample: the first :attr:`TheorySettings.scaling_size` examples."""
    n = len(y) if settings.scaling_size is None else min(settings.scaling_size, len(y))
    return x[:n], y[:n]


def log_range(bounds: tuple[float, float], count: int) -> np.ndarray:
    return np.logspace(bounds[0], bounds[1], count)
