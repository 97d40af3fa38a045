"""The grids' runs as one table, a row per run and stopping rule, and every measure's scores.

A row holds the run's grid, its hyperparameter levels (0 = low; the optimiser by name), its
seed, the stopping rule, whether the run reached the rule's stopping point, the gap (training
accuracy minus test accuracy, as the competition scores it) and every measure: the norm
baselines, the raw Hessian measures and the measures of :mod:`flatness.measures.suite`. Under
the fixed budget they are the run's final ones; under the loss rule, its snapshot's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flatness.analysis import ranking
from flatness.chapters.measures.computed import FAMILIES as MEASURE_FAMILIES
from flatness.chapters.measures.computed import RAW
from flatness.chapters.predict.design import HYPERS, RULES, Design, designs
from flatness.errors import FlatnessError, RunMissing
from flatness.measures import suite
from flatness.results import published
from flatness.results.computations import cached
from flatness.results.entries import Run
from flatness.results.runs import load_or_run
from flatness.training.config import RunConfig

#: the cheap baselines Jiang et al. score beside sharpness
BASELINES = ("weight_norm", "distance_from_init", "path_norm")
COLUMNS = BASELINES + RAW + suite.MEASURES
FAMILIES = {m: "norm baseline" for m in BASELINES} | MEASURE_FAMILIES
#: the statistics of each score, as the table names them
STATISTICS = {
    "tau": "Kendall τ",
    "Psi": "granulated Ψ",
    "cmi": "conditional MI",
    "robust": "robust sign-error",
    "mean": "mean sign-error",
}
#: the bootstrap draws of the page's intervals
DRAWS = 400


@dataclass(frozen=True)
class Collected:
    """The grids' runs at one profile: ``frame`` (see the module), the runs neither published
    nor stored (``missing``), those whose training failed, with why (``failed``), and those
    that learnt nothing, with what their loss says (``collapsed``): the last two are in no
    statistic, table or pair."""

    profile: str
    frame: pd.DataFrame
    designs: tuple[Design, ...]
    missing: tuple[RunConfig, ...]
    failed: tuple[tuple[RunConfig, str], ...]
    #: the runs at hand, by key
    runs: dict[str, Run]
    collapsed: tuple[tuple[RunConfig, str], ...] = ()

    @property
    def left_out(self) -> pd.DataFrame:
        """The runs that failed or learnt nothing: grid, levels, seed, key and why."""
        rows = []
        for config, why in (*self.failed, *self.collapsed):
            design = next(d for d in self.designs if d.model == config.model)
            cell = design.cell(config)
            rows.append({"grid": design.name, **cell, "seed": config.seed,
                         "key": config.key(), "why": why})  # fmt: skip
        return pd.DataFrame(rows, columns=["grid", *HYPERS, "seed", "key", "why"])

    @property
    def never_reached(self) -> pd.DataFrame:
        """The runs that never reached the stopping loss within the budget."""
        f = self.frame
        return f[(f["rule"] == "loss") & ~f["reached"]]


def collect(
    profile: str,
    *,
    data_root=None,
    store=None,
    device=None,
    progress: bool = False,
    train_missing: bool = True,
) -> Collected:
    """Every run of the chapter's grids at ``profile``: published, stored, or (with
    ``train_missing``) trained now."""
    rows, missing, failed, runs, collapsed = [], [], [], {}, []
    found = designs(profile)
    for design in found:
        for config in design.configs():
            try:
                run = load_or_run(
                    config,
                    store=store,
                    data_root=data_root,
                    device=device,
                    progress=progress,
                    train_missing=train_missing,
                )
            except RunMissing:
                missing.append(config)
                continue
            except FlatnessError as err:  # a run that failed (diverged) is listed, not hidden
                failed.append((config, str(err).splitlines()[0]))
                continue
            if published.collapsed(run):
                collapsed.append((config, published.collapse_reason(run)))
                continue
            rows += _rows(design, config, run.metrics)
            runs[config.key()] = run
    frame = pd.DataFrame(rows, columns=_frame_columns())
    return Collected(profile, frame, found, tuple(missing), tuple(failed), runs, tuple(collapsed))


def _frame_columns() -> list[str]:
    return [
        "grid", *HYPERS, "seed", "key", "rule", "reached", "epoch",
        "train_loss", "train_acc", "test_acc", "gap", *COLUMNS,
    ]  # fmt: skip


def _rows(design: Design, config: RunConfig, metrics: dict) -> list[dict]:
    base = {"grid": design.name, **design.cell(config), "seed": config.seed, "key": config.key()}
    out = []
    for rule in RULES:
        prefix = "" if rule == "budget" else "snapshot."
        epoch = config.epochs if rule == "budget" else metrics.get("snapshot.epoch")
        reached = epoch is not None
        row = base | {"rule": rule, "reached": reached, "epoch": epoch if reached else math.nan}
        for name in ("train_loss", "train_acc", "test_acc", *COLUMNS):
            value = metrics.get(prefix + name) if reached else None
            row[name] = math.nan if value is None else float(value)
        row["gap"] = row["train_acc"] - row["test_acc"]
        out.append(row)
    return out


def noise_threshold(frame: pd.DataFrame, test_examples: int = 10_000) -> float:
    """The smallest difference in gap between two cells that the test set can tell from its
    own noise: 1.96 standard errors of a difference of two cell means, each a mean over the
    cell's seeds of a binomial test error at the grid's mean error."""
    if frame.empty:
        return 0.0
    error = float(1 - frame["test_acc"].mean())
    seeds = max(int(frame.groupby(["grid", *HYPERS]).size().max()), 1)
    return 1.96 * math.sqrt(2 * error * (1 - error) / (test_examples * seeds))


def scores(
    collected: Collected, *, test_examples: int = 10_000, draws: int = DRAWS
) -> pd.DataFrame:
    """Every measure's statistics on every grid under both stopping rules, each with its 95 %
    bootstrap interval over seeds: one row per (grid, rule, measure). Computed once, kept
    as a computation of the results store."""
    frame = collected.frame
    digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
    # the cpu and paper profiles read one grid (real data at a laptop's scale): its scores
    # are the paper profile's, published with its runs
    profile = "smoke" if collected.profile == "smoke" else "paper"
    inputs = {"profile": profile, "runs": digest, "draws": draws, "test": test_examples}
    return cached(
        "predict.scores",
        inputs,
        lambda: _scores(frame, test_examples, draws),
        code=("flatness.analysis.ranking", "flatness.chapters.predict.design"),
    )


def _scores(frame: pd.DataFrame, test_examples: int, draws: int) -> pd.DataFrame:
    rows = []
    for (grid, rule), part in frame.groupby(["grid", "rule"], sort=False):
        part = part[part["reached"]]
        if part.empty:
            continue
        threshold = noise_threshold(part, test_examples)
        try:
            table = ranking.Grid(part, HYPERS)
        except FlatnessError:  # e.g. the runs that reached the loss share one learning rate
            continue
        for measure in COLUMNS:
            if not np.isfinite(part[measure]).all():
                continue  # undefined for this grid's network (the path norm of a tanh net)
            r = table.rank(measure, seed=0, draws=draws, threshold=threshold)
            row = {"grid": grid, "rule": rule, "measure": measure, "family": FAMILIES[measure]}
            named = {"tau": r.tau, "Psi": r.big_psi, "cmi": r.cmi, "robust": r.sign_error,
                     "mean": r.mean_sign_error}  # fmt: skip
            named |= {f"psi.{h}": iv for h, iv in r.psi.items()}
            for name, iv in named.items():
                row |= {name: iv.estimate, f"{name}_low": iv.low, f"{name}_high": iv.high}
            row |= {
                "condition": ", ".join(r.condition),
                "environments": r.environments,
                "cells": r.cells,
                "full": r.full,
                "seeds": r.seeds,
                "threshold": threshold,
            }
            rows.append(row)
    return pd.DataFrame(rows)


def strongest(frame: pd.DataFrame, measure: str) -> str:
    """The hyperparameter whose levels explain most of the spread of ``measure``'s logarithm
    over the grid (the between-level share of the variance, eta squared)."""
    values = np.log(frame[measure].where(frame[measure] > 0))
    if values.isna().all():
        values = frame[measure]
    total = float(((values - values.mean()) ** 2).sum())
    shares = {}
    for h in HYPERS:
        means = values.groupby(frame[h]).transform("mean")
        shares[h] = float(((means - values.mean()) ** 2).sum()) / total if total else 0.0
    return max(shares, key=shares.get)
