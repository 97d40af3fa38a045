"""The design of the logistic-regression chapter: its sizes, weight decays and seeds for each
profile, the runs they make, and the sample and scales of the page's own exact Hessians.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from flatness import data as datasets
from flatness.chapters.common import parameter_changes
from flatness.profiles import get_profile
from flatness.training.config import RunConfig
from flatness.training.recipes import LOGREG_TRAINING, LOGREG_WEIGHT_DECAYS

MEASURES = ("lambda_max", "trace", "frobenius")
FINAL_COLUMNS = ("test_acc", "val_acc", "train_loss", "weight_norm", *MEASURES)


@dataclass(frozen=True)
class LogregSettings:
    """Sizes for the logistic-regression chapter; training follows :data:`recipes.LOGREG_TRAINING`."""

    dataset: str
    epochs: int
    batch_size: int
    lr: float
    weight_decays: tuple[float, ...]
    seeds: tuple[int, ...]
    train_size: int | None = None
    hessian_every: int = 1
    #: log10 range and count of the scale factors alpha applied to a trained W
    alpha_log10_range: tuple[float, float] = (-1.0, 1.5)
    alpha_count: int = 21
    pyhessian_max_iter: int = 100
    pyhessian_tol: float = 1e-3
    #: the page's own exact Hessians (scaling, class blocks, PyHessian's check) use the first
    #: this many training examples (None: all); the runs' measures always use all of them
    analysis_examples: int | None = None
    #: seeds whose runs PyHessian is checked on (None: every seed)
    pyhessian_seeds: tuple[int, ...] | None = None

    def run_configs(self, model: str = "logreg") -> list[RunConfig]:
        """One run of ``model`` per (weight decay, seed), weight decay varying slowest."""
        return [
            RunConfig(
                model=model,
                dataset=self.dataset,
                weight_decay=wd,
                seed=seed,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                train_size=self.train_size,
                hessian_every=self.hessian_every,
            )
            for wd in self.weight_decays
            for seed in self.seeds
        ]

    def with_overrides(self, *, dataset=None, seeds=None, weight_decays=None, epochs=None):
        """Replace the fields a chapter's parameters may override; ``None`` keeps the profile's."""
        changes = parameter_changes(
            dataset=dataset, seeds=seeds, weight_decays=weight_decays, epochs=epochs
        )
        return dataclasses.replace(self, **changes)


def _settings(profile: str, **chapter) -> LogregSettings:
    training = {k: v for k, v in LOGREG_TRAINING[profile].items()}
    return LogregSettings(**training, **chapter)


#: The chapter's settings for each profile.
SETTINGS = {
    "smoke": _settings(
        "smoke", weight_decays=(0.0, 1e-2), seeds=(0, 1), alpha_count=5, pyhessian_max_iter=20
    ),
    "cpu": _settings("cpu", weight_decays=LOGREG_WEIGHT_DECAYS, seeds=(0, 1, 2)),
    # a dense 7,850 x 7,850 Hessian with its eigenvalues takes about a minute on a laptop: the
    # page's own exact Hessians use 5,000 of MNIST's 55,000 training images, at 7 scales
    "paper": _settings(
        "paper",
        weight_decays=LOGREG_WEIGHT_DECAYS,
        seeds=(0, 1, 2),
        alpha_count=7,
        analysis_examples=5000,
        pyhessian_seeds=(0,),
    ),
}


def settings(profile: str, **overrides) -> LogregSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced.

    Raises:
        FlatnessError: an unknown profile or data set, duplicate seeds, or a value out of range.
    """
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def grid(profile: str) -> list[RunConfig]:
    """The runs this chapter's figures read at ``profile`` (:class:`~flatness.training.config.RunConfig`)."""
    return settings(profile).run_configs()


def analysis_data(data: datasets.Dataset, settings: LogregSettings) -> datasets.Dataset:
    """``data`` with its training split cut to ``settings.analysis_examples`` (if set)."""
    n = settings.analysis_examples
    if n is None or n >= len(data.y_train):
        return data
    return dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])


def analysis_sentence(settings: LogregSettings, data: datasets.Dataset) -> str:
    """What the page's own exact Hessians are computed on, in words."""
    n = len(analysis_data(data, settings).y_train)
    if n == len(data.y_train):
        return f"all {n:,} training examples"
    return f"the first {n:,} of the {len(data.y_train):,} training examples"


def alphas(settings: LogregSettings) -> np.ndarray:
    lo, hi = settings.alpha_log10_range
    return np.logspace(lo, hi, settings.alpha_count)
