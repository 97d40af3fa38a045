"""The trace and Frobenius part of the chapter "Can we trust the estimates?".

Hutchinson and Hutch++ on fixed HVP budgets (:func:`trace_runs`), the adaptive estimators asked
for a relative standard error (:func:`adaptive_runs`) and PyHessian's own trace, each against
the exact Hessian of :func:`flatness.chapters.estimators.problem`; and whether the standard
errors they report cover the truth as often as they claim (:class:`Coverage`). Every name here
is also served by :mod:`flatness.chapters.estimators`, which the chapter imports.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from flatness import hessian as H
from flatness.analysis.stats import Interval, binomial
from flatness.chapters.estimators.exact import Problem
from flatness.hessian.reference import pyhessian_engine

#: the chapter's loss (the same function as ``flatness.chapters.estimators.ce``)
ce = nn.functional.cross_entropy
#: a reported standard error s covers the truth when |estimate - truth| <= Z s: the two-sided
#: 95 % normal quantile, so that an honest s covers about 95 % of runs
Z = 1.96
NOMINAL = 0.95


@dataclass(frozen=True)
class Coverage:
    """How often ``estimate +- Z stderr`` covered the truth, with a Clopper-Pearson interval."""

    covered: int
    runs: int
    interval: Interval

    def sentence(self, what: str) -> str:
        """Says the interval, and whether it rules the nominal 95 % out, in words."""
        iv = self.interval
        told = (
            f"{what}: the truth lay within {Z} reported standard errors in {self.covered} of "
            f"{self.runs} runs (95 % Clopper-Pearson interval {100 * iv.low:.0f} % to "
            f"{100 * iv.high:.0f} %)"
        )
        if iv.high < NOMINAL:
            return told + f", fewer than the {100 * NOMINAL:.0f} % the intervals claim."
        if iv.low > NOMINAL:
            return (
                told + f", more than the {100 * NOMINAL:.0f} % they claim: the errors are too wide."
            )
        return (
            told + f"; consistent with the claimed {100 * NOMINAL:.0f} %, but {self.runs} runs "
            f"cannot tell it from a coverage of {100 * iv.low:.0f} %."
        )


def coverage(covered) -> Coverage:
    """A :class:`Coverage` from one boolean per run (at least one run)."""
    covered = [bool(c) for c in covered]
    return Coverage(sum(covered), len(covered), binomial(sum(covered), len(covered)))


#: the fixed-budget estimators compared HVP for HVP
FIXED_METHODS = ("hutchinson", "hutch++")
#: the methods each adaptive measure offers
ADAPTIVE_METHODS = {
    "trace": ("auto", "hutchinson", "hutch++", "ggn+hutchinson", "krylov"),
    "frobenius": ("auto", "hutchinson", "hutch++", "krylov"),
}


def _measures(p: Problem):
    return (("trace", H.trace, p.trace), ("frobenius", H.frobenius_norm, p.frobenius))


def _row(r, truth: float) -> dict:
    return {
        "hvps": r.hvps,
        "rel error": r.estimate / truth - 1,
        "rel stderr": r.stderr / abs(truth),
        "covered": abs(r.estimate - truth) <= Z * r.stderr,
    }


def trace_runs(p: Problem, budgets, seeds) -> pd.DataFrame:
    """Hutchinson and Hutch++ on each fixed budget of HVPs (Hutch++ from 3), once per seed,
    for the trace and the Frobenius norm: one row per run with ``measure``, ``method``,
    ``budget``, ``seed``, ``hvps``, ``rel error`` (signed), ``rel stderr`` (reported) and
    ``covered`` (truth within ``Z`` reported standard errors)."""
    rows = []
    for method in FIXED_METHODS:
        for budget in budgets:
            if method == "hutch++" and budget < 3:
                continue
            for measure, fn, truth in _measures(p):
                for s in seeds:
                    r = fn(p.model, ce, p.data, probes=budget, method=method, seed=s)
                    base = {"measure": measure, "method": method, "budget": budget, "seed": s}
                    rows.append(base | _row(r, truth))
    return pd.DataFrame(rows)


def coverage_table(runs: pd.DataFrame, by) -> pd.DataFrame:
    """Per group of ``by``: runs, runs covered and the coverage's Clopper-Pearson interval."""
    rows = []
    for key, group in runs.groupby(list(by), sort=False):
        c = coverage(group.covered)
        rows.append(
            dict(zip(by, key))
            | {"covered": c.covered, "runs": c.runs, "low": c.interval.low, "high": c.interval.high}
        )
    return pd.DataFrame(rows)


def adaptive_runs(
    p: Problem, rtols, seeds, *, max_probes: int = 1000, batch: int = 32
) -> pd.DataFrame:
    """Every adaptive method asked for each relative standard error ``rtol``, once per seed.

    One row per run: ``measure``, ``method``, ``rtol``, ``seed``, ``ran as`` (the estimator
    that ran), ``probes`` (random probes behind the standard error), ``hvps`` (sketches
    included; for ``ggn+hutchinson`` not counting the per-example products of its exact
    Gauss-Newton part), ``passes`` over the data, ``seconds`` (that part included),
    ``converged`` (reached ``rtol`` within ``max_probes``) and the columns of a fixed run
    (``rel error``, ``rel stderr``, ``covered``). Every method runs once on a tiny budget
    first, so that no timing includes a warm-up.
    """
    for measure, fn, _ in _measures(p):
        for method in ADAPTIVE_METHODS[measure]:
            # krylov takes no fixed budget: a loose rtol warms it up
            budget = {"rtol": 0.5} if method == "krylov" else {"probes": 4}
            fn(p.model, ce, p.data, method=method, **budget)
    rows = []
    for measure, fn, truth in _measures(p):
        for method in ADAPTIVE_METHODS[measure]:
            for rtol in rtols:
                for s in seeds:
                    with warnings.catch_warnings():
                        # the table counts the runs that stopped short (``converged``)
                        warnings.simplefilter("ignore", H.ConvergenceWarning)
                        r = fn(
                            p.model,
                            ce,
                            p.data,
                            rtol=rtol,
                            max_probes=max_probes,
                            batch=batch,
                            method=method,
                            seed=s,
                        )
                    base = {
                        "measure": measure,
                        "method": method,
                        "rtol": rtol,
                        "seed": s,
                        "ran as": r.method,
                        "probes": r.probes,
                        "passes": r.passes,
                        "seconds": r.seconds,
                        "converged": r.converged,
                    }
                    rows.append(base | _row(r, truth))
    return pd.DataFrame(rows)


def adaptive_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`adaptive_runs` per (measure, method, rtol): means over the seeds, the share that
    converged, the runs covered and which estimator ran (``ran as``, "name (runs)")."""
    rows = []
    for (measure, method, rtol), g in runs.groupby(["measure", "method", "rtol"], sort=False):
        ran = Counter(g["ran as"])
        rows.append(
            {
                "measure": measure,
                "method": method,
                "rtol": rtol,
                "ran as": ", ".join(
                    m if n == len(g) else f"{m} ({n})" for m, n in ran.most_common()
                ),
                "probes": g.probes.mean(),
                "hvps": g.hvps.mean(),
                "passes": g.passes.mean(),
                "seconds": g.seconds.mean(),
                "abs rel error": g["rel error"].abs().mean(),
                "rel stderr": g["rel stderr"].mean(),
                "converged": g.converged.mean(),
                "covered": int(g.covered.sum()),
                "runs": len(g),
            }
        )
    return pd.DataFrame(rows)


def pyhessian_trace_runs(
    p: Problem, seeds, *, tol: float = 1e-3, max_iter: int = 100
) -> pd.DataFrame:
    """PyHessian's early-stopping Hutchinson trace, as it ships (its defaults), once per seed."""
    rows = []
    for seed in seeds:
        with pyhessian_engine(p.model, ce, p.data, seed=seed) as engine:
            samples = engine.trace(maxIter=max_iter, tol=tol)
        estimate = float(np.mean(samples))
        rows.append(
            {
                "seed": seed,
                "probes used": len(samples),
                "estimate": estimate,
                "rel error": estimate / p.trace - 1,
            }
        )
    return pd.DataFrame(rows)
