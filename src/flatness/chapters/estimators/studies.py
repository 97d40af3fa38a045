"""The chapter's studies of the estimators, each done once and kept in the results store.

Each function runs one of the chapter's studies (the same functions the chapter would call)
through :func:`flatness.results.computations.cached`, keyed by the profile, the settings, the
trained run and the sample the exact Hessian was taken on, and the source of the chapter's
modules and of the whole Hessian engine, whose estimators are what is measured: editing any
estimator redoes every study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pandas as pd

from flatness.chapters.estimators import eigenvalues, trace
from flatness.chapters.estimators.design import Settings
from flatness.chapters.estimators.exact import Problem
from flatness.results.computations import cached, data_hash, package_modules

#: the chapter's modules and every module of the Hessian engine
CODE = (
    "flatness.chapters.estimators.design",
    "flatness.chapters.estimators.exact",
    "flatness.chapters.estimators.eigenvalues",
    "flatness.chapters.estimators.trace",
    "flatness.chapters.estimators.peers",
    *package_modules("flatness.hessian"),
)


def _stored(name: str, profile: str, p: Problem, s: Settings, compute: Callable, **extra):
    inputs = {
        "profile": profile,
        "settings": dataclasses.asdict(s),
        "run": p.run.key,
        "sample": data_hash(*p.data),
        **extra,
    }
    return cached(f"estimators.{name}", inputs, compute, code=CODE)


def eigenvalue_runs(profile: str, p: Problem, s: Settings) -> pd.DataFrame:
    """:func:`~flatness.chapters.estimators.eigenvalues.eigenvalue_runs` at the settings'."""
    run = lambda: eigenvalues.eigenvalue_runs(p, s.budgets, s.top_k, s.seeds)
    return _stored("eigenvalue_runs", profile, p, s, run)


def trace_runs(profile: str, p: Problem, s: Settings) -> pd.DataFrame:
    """:func:`~flatness.chapters.estimators.trace.trace_runs` at the settings' budgets."""
    return _stored("trace_runs", profile, p, s, lambda: trace.trace_runs(p, s.budgets, s.seeds))


def adaptive_runs(profile: str, p: Problem, s: Settings) -> pd.DataFrame:
    """:func:`~flatness.chapters.estimators.trace.adaptive_runs` at the settings' rtols."""
    run = lambda: trace.adaptive_runs(p, s.rtols, s.seeds, max_probes=s.max_probes)
    return _stored("adaptive_runs", profile, p, s, run)


def pyhessian_trace_runs(profile: str, p: Problem, s: Settings) -> pd.DataFrame:
    """:func:`~flatness.chapters.estimators.trace.pyhessian_trace_runs` over the seeds."""
    run = lambda: trace.pyhessian_trace_runs(p, s.seeds)
    return _stored("pyhessian_trace_runs", profile, p, s, run)


def peer_runs(profile: str, p: Problem, s: Settings, *, ours_eigen, ours_estimates):
    """The peers' eigenvalue and estimate runs beside flatness's own (the chapter's
    ``peers.eigen_runs`` and ``peers.estimate_runs``), and their misuse cases."""
    from flatness.chapters.estimators import peers  # the only importer of the peer tools

    def run():
        eigen = peers.eigen_runs(p, s.budgets, s.top_k, s.seeds, ours=ours_eigen)
        estimates = peers.estimate_runs(p, s.budgets, s.seeds, ours=ours_estimates)
        misuse = peers.misuse_runs(p, batch_size=s.batch_size)
        return eigen, estimates, misuse

    return _stored("peer_runs", profile, p, s, run)
