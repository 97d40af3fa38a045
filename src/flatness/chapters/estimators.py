"""The chapter "Can we trust the estimates?": every estimator against the exact Hessian.

A small MLP on real data is trained (and cached) once; its exact Hessian gives the truth that
Lanczos, PyHessian's power iteration, Hutchinson, Hutch++ (on a fixed budget and stopping at a
requested precision), SLQ and PyHessian's trace are measured against, HVP for HVP and over
several random starts (the profile's seeds).

This module holds the settings, the exact problem and the eigenvalue comparison; the trace,
Frobenius and coverage part lives in :mod:`flatness.chapters.estimators_trace`, whose names are
served from here too.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from flatness import data as datasets
from flatness import hessian as H
from flatness.chapters.estimators_trace import (  # noqa: F401  (re-exported: trace and coverage)
    ADAPTIVE_METHODS,
    FIXED_METHODS,
    NOMINAL,
    Coverage,
    Z,
    adaptive_runs,
    adaptive_summary,
    coverage,
    coverage_table,
    pyhessian_trace_runs,
    trace_runs,
)
from flatness.config import RunConfig, as_int, as_rtol, as_tuple, check_choice, get_profile
from flatness.errors import FlatnessError
from flatness.hessian.reference import pyhessian_engine
from flatness.stats import check_seeds
from flatness.store import Run, load_or_run
from flatness.train import default_device, load_model

ce = nn.functional.cross_entropy
#: Lanczos stops early only once every Ritz residual is this small relative to its value, at
#: float64 round-off, so that both methods spend the budget they are given
LANCZOS_TOL = 1e-14


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


@dataclass(frozen=True)
class Problem:
    """A trained model, its data and its exact Hessian."""

    run: Run
    model: nn.Module
    data: tuple[torch.Tensor, torch.Tensor]
    hessian: torch.Tensor
    eigenvalues: torch.Tensor

    @property
    def trace(self) -> float:
        return self.eigenvalues.sum().item()

    @property
    def frobenius(self) -> float:
        return self.eigenvalues.square().sum().sqrt().item()


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


def problem(
    settings: Settings, *, data_root=None, device=None, progress=False, train_missing=True
) -> Problem:
    """Train (or load) the MLP and compute its exact data-loss Hessian in float64."""
    device = device if device is not None else default_device()
    config = run_config(settings)
    run = load_or_run(
        config,
        data_root=data_root,
        device=device,
        progress=progress,
        train_missing=train_missing,
    )
    data = datasets.load(settings.dataset, data_root=data_root, train_size=settings.train_size)
    model = load_model(config, run.arrays, data.input_shape, data.num_classes).to(device)
    batch = (data.x_train.to(device), data.y_train.to(device))
    exact = H.exact_hessian(model, ce, batch, max_params=20_000)
    return Problem(run, model, batch, exact, torch.linalg.eigvalsh(exact).cpu())


def architecture(model: nn.Module) -> str:
    """``"an MLP 64-16-10 with Tanh"``: the layer sizes and activations of a Linear stack."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    sizes = [linear[0].in_features] + [m.out_features for m in linear]
    acts = sorted(
        {type(m).__name__ for m in model.modules() if not list(m.children())} - {"Linear"}
    )
    return f"an MLP {'-'.join(map(str, sizes))} with {', '.join(acts) or 'no'} activations"


def shared_budgets(budgets, n: int) -> tuple[int, ...]:
    """The HVP budgets at which both eigenvalue methods run for the top ``n``.

    Block Lanczos with a block of ``n`` and PyHessian's power iteration with deflation both
    spend HVPs in multiples of ``n`` (n per block step; the same number of iterations for each
    of n eigenvalues), so each budget is rounded down to a multiple of ``n``; budgets below
    ``n`` are dropped. Raises FlatnessError when none is left.
    """
    out = tuple(sorted({b // n * n for b in budgets if b >= n}))
    if not out:
        raise FlatnessError(f"no budget of at least {n} HVPs among {list(budgets)}")
    return out


def _rel_error(values, truth) -> float:
    values = torch.as_tensor(values, dtype=torch.float64)
    return ((values - truth).abs() / truth.abs()).max().item()


def lanczos_run(p: Problem, n: int, budget: int, *, seed: int) -> tuple[float, int]:
    """Block Lanczos (a block of ``n``) for the top ``n`` on ``budget`` HVPs: the largest
    relative error of the ``n`` Ritz values and the HVPs its operator counted."""
    truth = p.eigenvalues.flip(0)[:n].double()
    with warnings.catch_warnings():
        # a fixed budget, as power iteration gets: the error against the truth is the result
        warnings.simplefilter("ignore", H.ConvergenceWarning)
        run = H.top_eigenvalues(
            p.model, ce, p.data, k=n, tol=LANCZOS_TOL, seed=seed, max_steps=budget // n
        )
    return _rel_error(run.eigenvalues.cpu(), truth), run.hvps


def power_run(p: Problem, n: int, budget: int, *, seed: int) -> tuple[float, int]:
    """PyHessian's power iteration with deflation for the top ``n`` on ``budget`` HVPs.

    With ``tol=0`` its stopping test (relative change below tol) never fires, so each of the n
    eigenvalues runs exactly ``maxIter = budget // n`` iterations of one HVP each (pyhessian 0.1,
    ``hessian.eigenvalues``); the count returned is that number.
    """
    truth = p.eigenvalues.flip(0)[:n].double()
    with pyhessian_engine(p.model, ce, p.data, seed=seed) as engine:
        values, _ = engine.eigenvalues(maxIter=budget // n, tol=0.0, top_n=n)
    return _rel_error(sorted(values, reverse=True), truth), budget // n * n


EIGEN_METHODS = {"Lanczos": lanczos_run, "power iteration (PyHessian)": power_run}


def eigenvalue_runs(p: Problem, budgets, k: int, seeds) -> pd.DataFrame:
    """Every method, for the top 1 and the top ``k``, at every budget of
    :func:`shared_budgets` and every seed (the random start vectors).

    One row per run: ``method``, ``eigenvalues`` ("top-1" or "top-k"), ``seed``, ``budget``,
    ``hvps`` (spent, at most the budget) and ``rel error`` (the largest of the n eigenvalues).
    """
    rows = []
    for n in dict.fromkeys((1, k)):
        for budget in shared_budgets(budgets, n):
            for method, run in EIGEN_METHODS.items():
                for seed in seeds:
                    rel, hvps = run(p, n, budget, seed=seed)
                    rows.append(
                        {
                            "method": method,
                            "eigenvalues": f"top-{n}",
                            "seed": seed,
                            "budget": budget,
                            "hvps": hvps,
                            "rel error": rel,
                        }
                    )
    return pd.DataFrame(rows)


def spread(runs: pd.DataFrame, by, column: str = "rel error") -> pd.DataFrame:
    """Median, minimum and maximum of ``column`` over the seeds, per group of ``by``."""
    stats = runs.groupby(list(by), sort=False)[column].agg(["median", "min", "max"])
    return stats.reset_index()


@dataclass(frozen=True)
class Reach:
    """How many HVPs a method needed until every seed's error was at most ``level``."""

    method: str
    level: float
    reached: bool
    #: the most any seed spent at the first budget where all were within ``level``; if none
    #: was, the most any seed spent at the largest budget tried
    hvps: int

    def phrase(self) -> str:
        return f"{self.hvps} HVPs" if self.reached else f"not reached within {self.hvps} HVPs"


def hvps_to_reach(runs: pd.DataFrame, method: str, eigenvalues: str, level: float) -> Reach:
    """The :class:`Reach` of ``method`` for ``eigenvalues`` in :func:`eigenvalue_runs`' rows."""
    rows = runs[(runs.method == method) & (runs.eigenvalues == eigenvalues)]
    worst = rows.groupby("budget")["rel error"].max()
    hit = worst[worst <= level]
    budget = int(hit.index.min()) if len(hit) else int(worst.index.max())
    spent = int(rows[rows.budget == budget].hvps.max())
    return Reach(method, level, bool(len(hit)), spent)


def compare_reach(a: Reach, b: Reach) -> str:
    """Which of two :class:`Reach` got there on fewer HVPs, in words."""
    if a.reached and b.reached:
        if a.hvps == b.hvps:
            return f"{a.method} and {b.method} needed the same number of HVPs"
        fast, slow = (a, b) if a.hvps < b.hvps else (b, a)
        return (
            f"{fast.method} needed {slow.hvps / fast.hvps:.2g} times fewer HVPs than {slow.method}"
        )
    if a.reached or b.reached:
        done, not_done = (a, b) if a.reached else (b, a)
        return f"only {done.method} got there ({not_done.method}: {not_done.phrase()})"
    return f"neither got there ({a.method}: {a.phrase()}; {b.method}: {b.phrase()})"


def exact_density(eigenvalues: torch.Tensor, grid, sigma: float) -> np.ndarray:
    """The exact eigenvalues smoothed by the same Gaussian kernel SLQ's density uses."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    diff = grid[:, None] - eigenvalues.double()[None]
    kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return kernel.mean(dim=1).numpy()
