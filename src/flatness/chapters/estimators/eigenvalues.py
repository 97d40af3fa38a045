"""The eigenvalue part of "Can we trust the estimates?": Lanczos against PyHessian's power
iteration, HVP for HVP and over several random starts, on the top eigenvalues of the exact
problem (:mod:`flatness.chapters.estimators.exact`), and the exact spectral density that
SLQ's is compared with.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from flatness import hessian as H
from flatness.chapters.estimators.exact import Problem, ce
from flatness.errors import FlatnessError
from flatness.hessian.reference import pyhessian_engine

#: Lanczos stops early only once every Ritz residual is this small relative to its value, at
#: float64 round-off, so that both methods spend the budget they are given
LANCZOS_TOL = 1e-14


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
        # a block of n throughout (not the default's widening one): n HVPs per step, so a
        # budget is a number of steps, as it is iterations for power iteration
        run = H.top_eigenvalues(
            p.model, ce, p.data, k=n, tol=LANCZOS_TOL, seed=seed, max_steps=budget // n, block=n
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
