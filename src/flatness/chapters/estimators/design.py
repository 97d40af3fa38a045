"""The design of "Can we trust the estimates?": its sizes, budgets and seeds for each profile, and
the one stored run whose exact Hessian every estimator is measured against.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flatness import data as datasets
from flatness.analysis.stats import check_seeds
from flatness.errors import FlatnessError
from flatness.profiles import get_profile
from flatness.training.config import RunConfig
from flatness.validation import as_int, as_rtol, as_tuple, check_choice


def _budgets(name: str, value) -> tuple[int, ...]:
    budgets = as_tuple(name, value, lambda n, v: as_int(n, v, minimum=1))
    if list(budgets) != sorted(set(budgets)):
        raise FlatnessError(f"{name} must be strictly increasing, got {list(budgets)}")
    return budgets


@dataclass(frozen=True)
class Settings:
    """Sizes for the chapter checking the Hessian estimators against exact answers.

    Raises FlatnessError (from :func:`settings`) for an unknown data set, duplicate seeds, budgets
    that do not increase, a ``top_k`` above the largest budget or an ``rtol`` outside (0, 1).
    """

    dataset: str
    epochs: int
    #: HVP budgets at which the estimators are compared, every method on the same grid
    budgets: tuple[int, ...]
    #: one random start (probes, start vector) per seed
    seeds: tuple[int, ...]
    slq_steps: int
    slq_probes: int
    train_size: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 0.0
    top_k: int = 5
    #: relative standard errors at which the adaptive trace and Frobenius estimators stop
    rtols: tuple[float, ...] = (0.1, 0.03, 0.01)
    #: the adaptive estimators give up (``converged=False``) after this many random probes
    max_probes: int = 1000

    def with_overrides(self, *, dataset=None, seeds=None, rtols=None, budgets=None, top_k=None):
        """Replace the fields a chapter's parameters may override; ``None`` keeps the profile's."""
        changes = {}
        if dataset is not None:
            changes["dataset"] = check_choice("dataset", dataset, datasets.DATASETS)
        if seeds is not None:
            changes["seeds"] = check_seeds(seeds)
        if rtols is not None:
            changes["rtols"] = as_tuple("rtols", rtols, as_rtol)
        if budgets is not None:
            changes["budgets"] = _budgets("budgets", budgets)
        if top_k is not None:
            changes["top_k"] = as_int("top_k", top_k, minimum=1)
        out = dataclasses.replace(self, **changes)
        if out.top_k > max(out.budgets):
            raise FlatnessError(
                f"top_k={out.top_k} needs a budget of at least {out.top_k} HVPs (one per "
                f"eigenvalue), but the largest budget is {max(out.budgets)}"
            )
        return out


#: The chapter's settings for each profile. ``paper``: the MLP 784-16-10 (12,730 parameters)
#: on 5,000 MNIST images, still an exact Hessian.
SETTINGS = {
    "smoke": Settings(
        dataset="digits",
        train_size=200,
        epochs=2,
        budgets=(3, 6, 12),
        seeds=(0, 1),
        slq_steps=8,
        slq_probes=2,
        top_k=3,
        rtols=(0.1, 0.03),
        max_probes=256,
    ),
    "cpu": Settings(
        dataset="digits",
        epochs=30,
        budgets=(5, 10, 20, 40, 80, 160),
        seeds=tuple(range(10)),
        slq_steps=80,
        slq_probes=8,
    ),
    "paper": Settings(
        dataset="mnist",
        train_size=5000,
        epochs=30,
        budgets=(5, 10, 20, 40, 80, 160, 320),
        seeds=tuple(range(20)),
        slq_steps=100,
        slq_probes=10,
    ),
}


def settings(profile: str, **overrides) -> Settings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced.

    Raises:
        FlatnessError: an unknown profile or data set, duplicate seeds, or a value out of range.
    """
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def run_config(settings: Settings) -> RunConfig:
    """The chapter's one stored run: the MLP whose exact Hessian the estimators are tested on."""
    return RunConfig(
        model="mlp",
        dataset=settings.dataset,
        weight_decay=settings.weight_decay,
        seed=0,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        train_size=settings.train_size,
        hessian_every=0,  # the chapter computes the exact Hessian itself
    )


def grid(profile: str) -> list[RunConfig]:
    """The runs this chapter reads at ``profile``."""
    return [run_config(settings(profile))]
