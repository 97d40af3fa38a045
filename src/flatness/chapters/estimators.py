"""The chapter "Can we trust the estimates?": every estimator against the exact Hessian.

A small MLP on real data is trained (and cached) once; its exact Hessian gives the truth that
Lanczos, Hutchinson, Hutch++ (on a fixed budget and stopping at a requested precision), SLQ
and PyHessian are measured against, HVP for HVP.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from flatness import data as datasets
from flatness import hessian as H
from flatness.config import RunConfig, as_rtol, as_tuple, check_choice, get_profile
from flatness.hessian.reference import pyhessian_engine
from flatness.stats import check_seeds
from flatness.store import Run, load_or_run
from flatness.train import default_device, load_model

ce = nn.functional.cross_entropy


@dataclass(frozen=True)
class EstimatorSettings:
    """Sizes for the chapter checking the Hessian estimators against exact answers."""

    dataset: str
    epochs: int
    #: HVP budgets at which the estimators are compared
    budgets: tuple[int, ...]
    #: one randomised estimate per seed
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

    def with_overrides(self, *, dataset=None, seeds=None, rtols=None):
        """Replace the data set, the seeds of the randomised estimators or the ``rtols``."""
        changes = {}
        if dataset is not None:
            changes["dataset"] = check_choice("dataset", dataset, datasets.DATASETS)
        if seeds is not None:
            changes["seeds"] = check_seeds(seeds)
        if rtols is not None:
            changes["rtols"] = as_tuple("rtols", rtols, as_rtol)
        return dataclasses.replace(self, **changes)


#: The chapter's settings for each profile. ``paper``: the MLP 784-16-10 (12,730 parameters)
#: on 5,000 MNIST images, still an exact Hessian.
SETTINGS = {
    "smoke": EstimatorSettings(
        dataset="digits",
        train_size=200,
        epochs=2,
        budgets=(3, 6, 12),
        seeds=(0, 1),
        slq_steps=8,
        slq_probes=2,
        rtols=(0.1, 0.03),
        max_probes=256,
    ),
    "cpu": EstimatorSettings(
        dataset="digits",
        epochs=30,
        budgets=(3, 6, 12, 24, 48, 96, 192),
        seeds=tuple(range(10)),
        slq_steps=80,
        slq_probes=8,
    ),
    "paper": EstimatorSettings(
        dataset="mnist",
        train_size=5000,
        epochs=30,
        budgets=(3, 6, 12, 24, 48, 96, 192, 384),
        seeds=tuple(range(20)),
        slq_steps=100,
        slq_probes=10,
    ),
}


def settings(profile: str, **overrides) -> EstimatorSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced."""
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


def problem(settings: EstimatorSettings, *, data_root=None, device=None, progress=False) -> Problem:
    """Train (or load) the MLP and compute its exact data-loss Hessian in float64."""
    device = device if device is not None else default_device()
    config = RunConfig(
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
    run = load_or_run(config, data_root=data_root, device=device, progress=progress)
    data = datasets.load(settings.dataset, data_root=data_root, train_size=settings.train_size)
    model = load_model(config, run.arrays, data.input_shape, data.num_classes).to(device)
    batch = (data.x_train.to(device), data.y_train.to(device))
    exact = H.exact_hessian(model, ce, batch, max_params=20_000)
    return Problem(run, model, batch, exact, torch.linalg.eigvalsh(exact).cpu())


def eigenvalue_convergence(p: Problem, budgets, k: int = 5, *, seed: int = 0) -> pd.DataFrame:
    """Relative error of the top-1 and the worst of the top-k eigenvalues against HVPs.

    Lanczos: one run per column, its Ritz values after each block step. The top-1 run has a
    single vector (``k=1``); the top-k run a block of k, so row j (from 0) of its history has
    cost ``(j + 1) k`` products. PyHessian's power iteration runs with ``tol=0`` (so it never
    stops early) for each budget; its top-k runs ``budget`` iterations per eigenvalue, k x
    budget HVPs in all. Each row fills one of the columns ``top-1`` and ``top-{k}``.
    """
    truth = p.eigenvalues.flip(0)[:k].double()
    columns = dict.fromkeys(((1, "top-1"), (k, f"top-{k}")))  # one column when k == 1
    rows = []
    for n, column in columns:
        run = H.top_eigenvalues(
            p.model, ce, p.data, k=n, tol=1e-12, seed=seed, max_steps=max(budgets)
        )
        for j, values in enumerate(run.history):
            rel = ((values - truth[:n]).abs() / truth[:n].abs()).max().item()  # NaN until n
            rows.append({"method": "Lanczos", "hvps": (j + 1) * n, column: rel})
    for budget in budgets:
        for top_n, column in columns:
            with pyhessian_engine(p.model, ce, p.data, seed=seed) as engine:
                values, _ = engine.eigenvalues(maxIter=budget, tol=0.0, top_n=top_n)
            values = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
            rel = ((values - truth[:top_n]).abs() / truth[:top_n].abs()).max().item()
            rows.append(
                {"method": "PyHessian power iteration", "hvps": budget * top_n, column: rel}
            )
    return pd.DataFrame(rows)


#: the fixed-budget estimators compared HVP for HVP
FIXED_METHODS = ("hutchinson", "hutch++")
#: the methods each adaptive measure offers
ADAPTIVE_METHODS = {
    "trace": ("auto", "hutchinson", "hutch++", "ggn+hutchinson"),
    "frobenius": ("auto", "hutchinson", "hutch++"),
}


def _measures(p: Problem):
    return (("trace", H.trace, p.trace), ("frobenius", H.frobenius_norm, p.frobenius))


def trace_convergence(p: Problem, budgets, seeds) -> pd.DataFrame:
    """Mean |relative error| and mean reported relative standard error of Hutchinson and
    Hutch++ at each fixed budget of HVPs, for the trace and the Frobenius norm."""
    rows = []
    for method in FIXED_METHODS:
        for budget in budgets:
            if method == "hutch++" and budget < 3:
                continue
            for measure, fn, truth in _measures(p):
                runs = [
                    fn(p.model, ce, p.data, probes=budget, method=method, seed=s) for s in seeds
                ]
                rows.append(
                    {
                        "measure": measure,
                        "method": method,
                        "hvps": budget,
                        "abs rel error": np.mean([abs(r.estimate / truth - 1) for r in runs]),
                        "rel stderr": np.mean([r.stderr / abs(truth) for r in runs]),
                        "within 3 s.e.": np.mean(
                            [abs(r.estimate - truth) <= 3 * r.stderr for r in runs]
                        ),
                    }
                )
    return pd.DataFrame(rows)


def adaptive_runs(
    p: Problem, rtols, seeds, *, max_probes: int = 1000, batch: int = 32
) -> pd.DataFrame:
    """Every adaptive method asked for each relative standard error ``rtol``, once per seed.

    One row per (measure, method, rtol), with means over the seeds of the random probes behind
    the standard error, of the HVPs spent (sketches included; for
    ``ggn+hutchinson`` not counting the per-example products of its exact Gauss-Newton
    part), the passes over the data, the seconds (that part included), the |relative error|
    against the exact value and the reported relative standard error; the fractions of runs
    that ``converged`` (reached ``rtol`` within ``max_probes``) and whose truth lies within
    three reported standard errors; and which estimator ran (``ran as``, "name (runs)").
    Every method runs once on a tiny budget first, so that no timing includes a warm-up.
    """
    for measure, fn, _ in _measures(p):
        for method in ADAPTIVE_METHODS[measure]:
            fn(p.model, ce, p.data, probes=4, method=method)
    rows = []
    for measure, fn, truth in _measures(p):
        for method in ADAPTIVE_METHODS[measure]:
            for rtol in rtols:
                runs = [
                    fn(
                        p.model,
                        ce,
                        p.data,
                        rtol=rtol,
                        max_probes=max_probes,
                        batch=batch,
                        method=method,
                        seed=s,
                    )
                    for s in seeds
                ]
                ran = Counter(r.method for r in runs)
                rows.append(
                    {
                        "measure": measure,
                        "method": method,
                        "rtol": rtol,
                        "ran as": ", ".join(
                            m if n == len(runs) else f"{m} ({n})" for m, n in ran.most_common()
                        ),
                        "probes": np.mean([r.probes for r in runs]),
                        "hvps": np.mean([r.hvps for r in runs]),
                        "passes": np.mean([r.passes for r in runs]),
                        "seconds": np.mean([r.seconds for r in runs]),
                        "abs rel error": np.mean([abs(r.estimate / truth - 1) for r in runs]),
                        "rel stderr": np.mean([r.stderr / abs(truth) for r in runs]),
                        "converged": np.mean([r.converged for r in runs]),
                        "within 3 s.e.": np.mean(
                            [abs(r.estimate - truth) <= 3 * r.stderr for r in runs]
                        ),
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


def exact_density(eigenvalues: torch.Tensor, grid, sigma: float) -> np.ndarray:
    """The exact eigenvalues smoothed by the same Gaussian kernel SLQ's density uses."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    diff = grid[:, None] - eigenvalues.double()[None]
    kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return kernel.mean(dim=1).numpy()
