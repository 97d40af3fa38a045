"""The tables of "Can we trust the estimates?" as the page shows them.

Each takes the frames of :mod:`~flatness.chapters.estimators.trace` and returns a pandas
Styler whose headers and names come from :mod:`flatness.analysis.names`, with units in the
headers, no index, and a reason wherever a value is missing. The adaptive estimators' results
are two tables, cost and accuracy, each narrow enough for the text column.
"""

from __future__ import annotations

import pandas as pd

from flatness.analysis import names
from flatness.chapters.estimators.trace import Z

#: why SLQ's largest eigenvalue has no standard error
NO_STDERR = "not a mean over probes"
#: why a moment has none
ONE_PROBE = "one probe"


def percent(x: float, digits: int = 3) -> str:
    """``0.0123`` -> ``"1.23 %"``."""
    return f"{100 * x:.{digits}g} %"


def coverage(cover: pd.DataFrame):
    """:func:`~flatness.chapters.estimators.trace.coverage_table` by measure and method."""
    shown = pd.DataFrame(
        {
            "measure": cover.measure,
            "method": cover.method,
            "runs covered": [f"{c} of {n}" for c, n in zip(cover.covered, cover.runs)],
            "95 % interval of the coverage": [
                f"{100 * lo:.0f} % to {100 * hi:.0f} %" for lo, hi in zip(cover.low, cover.high)
            ],
        }
    )
    return names.table(shown)


def _ran(method: str, ran_as: str) -> str:
    """The method, and for ``auto`` the estimator it ran (a forced method runs as itself)."""
    name = names.display(method)
    return f"{name}: {names.words(ran_as)}" if method == "auto" else name


def _adaptive(summary: pd.DataFrame, ran: bool) -> pd.DataFrame:
    methods = (
        {"method (auto: what ran)": [_ran(m, r) for m, r in zip(summary.method, summary["ran as"])]}
        if ran
        else {"method": summary.method}
    )
    return pd.DataFrame(
        {"measure": summary.measure}
        | methods
        | {"requested rel. s.e. (rtol)": [percent(r) for r in summary.rtol]}
    )


def adaptive_cost(summary: pd.DataFrame):
    """What each adaptive method spent, means over the seeds, from
    :func:`~flatness.chapters.estimators.trace.adaptive_summary`; for ``auto``, the estimator
    it ran (with the number of seeds in brackets where the seeds disagreed)."""
    shown = _adaptive(summary, ran=True).assign(
        **{
            "random probes": [f"{p:.0f}" for p in summary.probes],
            "HVPs": [f"{h:.0f}" for h in summary.hvps],
            "seconds": [f"{s:.2g}" for s in summary.seconds],
        }
    )
    return names.table(shown)


def adaptive_accuracy(summary: pd.DataFrame):
    """How close each adaptive method came (means over the seeds), how many runs reached their
    ``rtol`` and how many intervals of :data:`Z` standard errors held the truth."""
    shown = _adaptive(summary, ran=False).assign(
        **{
            "mean |rel. error|": [percent(e, 2) for e in summary["abs rel error"]],
            "reported rel. s.e.": [percent(s, 2) for s in summary["rel stderr"]],
            "converged": [
                f"{round(c * n)} of {n}" for c, n in zip(summary.converged, summary.runs)
            ],
            f"covered (±{Z} s.e.)": [f"{c} of {n}" for c, n in zip(summary.covered, summary.runs)],
        }
    )
    return names.table(shown)


def pyhessian_trace(runs: pd.DataFrame):
    """:func:`~flatness.chapters.estimators.trace.pyhessian_trace_runs`, one row per seed."""
    return names.table(
        runs,
        formats={"estimate": "{:.4g}", "rel error": lambda e: f"{100 * e:+.1f} %"},
        columns={"estimate": "trace estimate", "rel error": "relative error"},
    )


def slq_moments(exact_trace: float, exact_trace2: float, exact_top: float, density):
    """SLQ's first two moments (with their standard errors) and its largest node against the
    exact trace, Tr H² and largest eigenvalue: ``(frame, styler)``, the frame in numbers."""
    m1, se1 = density.moment(1)
    m2, se2 = density.moment(2)
    frame = pd.DataFrame(
        {
            "quantity": ["Tr H", "Tr H²", "largest eigenvalue"],
            "exact": [exact_trace, exact_trace2, exact_top],
            "SLQ": [m1, m2, float(density.nodes.max())],
            "SLQ standard error": [se1, se2, None],
        }
    )
    frame["relative error"] = frame["SLQ"] / frame["exact"] - 1
    styler = names.table(
        frame,
        formats={
            "exact": "{:.4g}",
            "SLQ": "{:.4g}",
            "SLQ standard error": "{:.2g}",
            "relative error": lambda e: f"{100 * e:+.2f} %",
        },
        missing={"SLQ standard error": [ONE_PROBE, ONE_PROBE, NO_STDERR]},
    )
    return frame, styler


def peer_coverage(rows: pd.DataFrame):
    """:func:`~flatness.chapters.estimators.peers.coverage_rows`: per measure and estimator,
    how often ``estimate +- Z stderr`` covered the truth at its largest budget, with the 95 %
    interval of that coverage, or that it reports no standard error; cells may wrap."""
    none = "none reported"
    shown = pd.DataFrame(
        {
            "measure": rows.measure,
            "estimator": [f"{t}: {names.display(m)}" for t, m in zip(rows.tool, rows.method)],
            "runs covered": [
                f"{c:.0f} of {n:.0f}" if r else None
                for c, n, r in zip(rows.covered, rows.runs, rows.reports)
            ],
            "95 % interval of the coverage": [
                f"{100 * lo:.0f} % to {100 * hi:.0f} %" if r else None
                for lo, hi, r in zip(rows.low, rows.high, rows.reports)
            ],
        }
    )
    styler = names.table(
        shown,
        missing={"runs covered": none, "95 % interval of the coverage": none},
        columns={"runs covered": f"runs covered (±{Z} s.e.)"},
    )
    return styler.set_table_attributes('class="wrap"')


def _outcome_cell(row) -> str:
    """One cell of the misuse table: the outcome and, in brackets, what it was."""
    if row.outcome == "refused":
        return f"refused ({row.error.split(':')[0]})"
    if row.outcome == "right":
        return "right"
    if row["eval mode"] is True:
        how = "eval mode"
    else:
        truth = row.truth
        worst = max(range(len(truth)), key=lambda i: abs(row["values"][i] / truth[i] - 1))
        ratio = row["values"][worst] / truth[worst]
        if 0.5 <= ratio <= 2:
            how = f"{100 * (ratio - 1):+.2g} %"
        else:
            how = f"×{ratio:,.0f}" if ratio >= 100 else f"×{ratio:.3g}"
    return f"{row.outcome} ({how})"


def misuse(runs: pd.DataFrame, labels: dict, tools):
    """:func:`~flatness.chapters.estimators.peers.misuse_runs` as kinds (rows, named by
    ``labels``) against ``tools`` (columns): each cell the outcome, with the error raised,
    how far off or "eval mode" in brackets."""
    runs = runs[runs.tool.isin(tools)]
    cells = {(r.kind, r.tool): _outcome_cell(r) for _, r in runs.iterrows()}
    kinds = list(dict.fromkeys(runs.kind))
    shown = pd.DataFrame(
        {"input": [labels[k] for k in kinds]}
        | {tool: [cells[(k, tool)] for k in kinds] for tool in tools}
    )
    return names.table(shown).set_table_attributes('class="wrap"')
