"""The chapter "Can we trust the estimates?": every estimator against the exact Hessian.

A small MLP on real data is trained (and cached) once; its exact Hessian gives the truth that
Lanczos, PyHessian's power iteration, Hutchinson, Hutch++ (on a fixed budget and stopping at a
requested precision), SLQ and PyHessian's trace are measured against, HVP for HVP and over
several random starts (the profile's seeds).

Its parts: :mod:`~flatness.chapters.estimators.design` (sizes, budgets and seeds per profile),
:mod:`~flatness.chapters.estimators.exact` (the trained MLP and its exact Hessian),
:mod:`~flatness.chapters.estimators.eigenvalues` (Lanczos against power iteration, the exact
density), :mod:`~flatness.chapters.estimators.trace` (trace, Frobenius norm and the coverage
of reported standard errors) and :mod:`~flatness.chapters.estimators.prose` (the sentences
that judge them, chosen from the data). Every name of the first four is served from here.
:mod:`~flatness.chapters.estimators.peers` puts PyHessian, hessian-eigenthings and curvlinops
beside flatness; the chapter imports it as a module (it alone imports the last two).
"""

from flatness.chapters.estimators.design import (
    SETTINGS,
    Settings,
    grid,
    run_config,
    settings,
)
from flatness.chapters.estimators.eigenvalues import (
    EIGEN_METHODS,
    LANCZOS_TOL,
    Reach,
    compare_reach,
    eigenvalue_runs,
    exact_density,
    hvps_to_reach,
    lanczos_run,
    power_run,
    shared_budgets,
    spread,
)
from flatness.chapters.estimators.exact import (
    Problem,
    architecture,
    ce,
    problem,
)
from flatness.chapters.estimators.trace import (
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

__all__ = [
    "ADAPTIVE_METHODS",
    "Coverage",
    "EIGEN_METHODS",
    "FIXED_METHODS",
    "LANCZOS_TOL",
    "NOMINAL",
    "Problem",
    "Reach",
    "SETTINGS",
    "Settings",
    "Z",
    "adaptive_runs",
    "adaptive_summary",
    "architecture",
    "ce",
    "compare_reach",
    "coverage",
    "coverage_table",
    "eigenvalue_runs",
    "exact_density",
    "grid",
    "hvps_to_reach",
    "lanczos_run",
    "power_run",
    "problem",
    "pyhessian_trace_runs",
    "run_config",
    "settings",
    "shared_budgets",
    "spread",
    "trace_runs",
]
