"""The sentences of "Can we trust the estimates?" that judge the adaptive estimators.

Every judgement (cheapest, quickest, tied, covered, gave up) is chosen here from the data of
:func:`~flatness.chapters.estimators.trace.adaptive_runs` and its
:func:`~flatness.chapters.estimators.trace.adaptive_summary`, so the page's prose cannot
disagree with its table.
"""

from __future__ import annotations

import re

import pandas as pd

from flatness.analysis import names
from flatness.chapters.estimators.trace import NOMINAL, Z, coverage_table
from flatness.hessian.stochastic import MIN_PROBES

#: wall-clock times closer than this (relative) are not told apart
TIME_TIE = 0.2
NAMES = {"trace": "trace", "frobenius": "Frobenius norm"}


def pct(x: float) -> str:
    """``0.01`` -> ``"1 %"`` (three significant digits)."""
    return f"{100 * x:.3g} %"


def _share(x: float) -> str:
    return f"{100 * x:.0f} %"


def listed(items) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def method(name: str) -> str:
    """An estimator as the page names it: ``"hutch++"`` -> ``"Hutch++"``; ``auto``, the
    argument that lets the package choose, stays code."""
    return "`auto`" if name == "auto" else names.display(name)


def _names(methods) -> str:
    return listed(method(m) for m in methods)


def _at_tight(summary: pd.DataFrame, measure: str) -> pd.DataFrame:
    return summary[(summary.measure == measure) & (summary.rtol == summary.rtol.min())]


def _cheapest(summary: pd.DataFrame, measure: str):
    """The methods that reached the tightest ``rtol`` in every run with the fewest HVPs (ties
    together; ``None`` if no method did), and all that reached it."""
    done = _at_tight(summary, measure)
    done = done[done.converged == 1]
    if done.empty:
        return None, done
    return done[done.hvps <= done.hvps.min() * (1 + 1e-9)], done


def cheapest_sentence(summary: pd.DataFrame, measure: str, max_probes: int) -> str:
    """Which methods reached the tightest ``rtol`` of ``summary`` in every run with the fewest
    HVPs (ties named together), against the others, and whether the clock agrees (times within
    :data:`TIME_TIE` of each other are not told apart)."""
    tight = summary.rtol.min()
    best, done = _cheapest(summary, measure)
    if best is None:
        rows = _at_tight(summary, measure)
        most = rows.loc[rows.converged.idxmax()]
        return (
            f"Asked for {pct(tight)}, no method reached it for the {NAMES[measure]} in every run "
            f"within {max_probes} probes; {method(most.method)} did most often "
            f"({_share(most.converged)} of runs)."
        )
    tie = " (tied)" if len(best) > 1 else ""
    text = (
        f"Asked for {pct(tight)}, the {NAMES[measure]} was cheapest with {_names(best.method)}"
        f"{tie}: {best.hvps.iloc[0]:.0f} HVPs on average"
    )
    if "ggn+hutchinson" in set(best.method):
        text += " (not counting the per-example products of the exact Gauss-Newton part)"
    others = done[~done.method.isin(best.method)]
    if len(others):
        text += f", against {others.hvps.min():.0f}"
        spread = f"{others.hvps.max():.0f}" != f"{others.hvps.min():.0f}"
        text += f" to {others.hvps.max():.0f}" if spread else ""
        text += f" for {_names(others.method)}"
    quick, mine = done.loc[done.seconds.idxmin()], best.seconds.min()
    if quick.method in set(best.method):
        who = "it" if len(best) == 1 else method(quick.method)
        text += f"; {who} was also the quickest ({quick.seconds:.2g} s)"
    elif mine <= (1 + TIME_TIE) * quick.seconds:
        text += (
            f"; by the clock it was within {_share(TIME_TIE)} of the quickest, {method(quick.method)} "
            f"({mine:.2g} s against {quick.seconds:.2g} s)"
        )
    else:
        text += (
            f"; by the clock {method(quick.method)} was quickest ({quick.seconds:.2g} s against "
            f"{mine:.2g} s)"
        )
    return text + "."


def _ran_as(text: str, n_seeds: int) -> str:
    """The ``ran as`` column in words: "hutch++ (7), hutchinson (3)" -> "Hutch++ on 7 of 10
    seeds and Hutchinson on 3 of 10 seeds"."""
    split = re.findall(r"([^,(]+?) \((\d+)\)", text)
    if not split:
        return method(text)
    return " and ".join(f"{method(m.strip())} on {n} of {n_seeds} seeds" for m, n in split)


def auto_clause(summary: pd.DataFrame, measure: str, n_seeds: int) -> str:
    """What ``method="auto"`` ran at the tightest ``rtol`` and its HVPs against the cheaper of
    the two forced choices (within 10 % counts as "about as many")."""
    rows = _at_tight(summary, measure).set_index("method")
    auto, fixed = rows.loc["auto"], rows.loc[["hutchinson", "hutch++"]]
    ratio, better = auto.hvps / fixed.hvps.min(), fixed.hvps.idxmin()
    if auto["ran as"] == better and 0.9 <= ratio <= 1.1:
        return (
            f"chose {method(better)} for the {NAMES[measure]}, the cheaper of the two forced "
            "choices, "
            "and spent about as many HVPs as forcing it"
        )
    if ratio > 1.1:
        how = f"{ratio:.2g} times the HVPs of"
    elif ratio < 0.9:
        how = f"fewer HVPs ({ratio:.2g} times) than"
    else:
        how = "about as many HVPs as"
    return (
        f"ran as {_ran_as(auto['ran as'], n_seeds)} for the {NAMES[measure]} and spent {how} "
        f"the better forced choice, {method(better)}"
    )


def _coverage_at_tight(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    cover = coverage_table(runs[runs.rtol == summary.rtol.min()], ["measure", "method"])
    cover["ok"] = cover.high >= NOMINAL
    return cover


def honesty_sentence(summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Whether each method's reported standard errors covered the truth as often as claimed
    (:data:`NOMINAL` at :data:`Z` errors), by the Clopper-Pearson interval of its coverage."""
    tight = summary.rtol.min()
    cover = _coverage_at_tight(summary, runs)
    if cover.ok.all():
        return (
            f"At {pct(tight)}, no method's coverage of the truth by {Z} reported standard errors "
            f"is below the claimed {100 * NOMINAL:.0f} % by its Clopper-Pearson interval, but with "
            f"{int(cover.runs.min())} runs a coverage as low as {_share(cover.low.min())} cannot "
            "be ruled out either."
        )
    bad = cover[~cover.ok]
    text = (
        f"At {pct(tight)}, the reported standard errors were too small for "
        + listed(
            f"{method(r.method)} on the {NAMES[r.measure]} ({r.covered} of {r.runs} covered, "
            "interval "
            f"{_share(r.low)} to {_share(r.high)})"
            for r in bad.itertuples()
        )
        + f": their coverage is below the claimed {100 * NOMINAL:.0f} %."
    )
    at_tight = summary[summary.rtol == tight].merge(bad[["measure", "method"]])
    if (at_tight.probes <= 1.5 * MIN_PROBES).all():
        text += (
            f" Each of these stopped after (nearly) the fewest random probes allowed, {MIN_PROBES}, "
            "whose spread, and so the standard error, is itself poorly known."
        )
    return text


def error_sentence(summary: pd.DataFrame) -> str:
    """Whether the mean |relative error| stayed below the requested ``rtol``, and the worst case."""
    ratio = summary["abs rel error"] / summary.rtol
    if (ratio <= 1).all():
        return (
            f"The mean |relative error| stayed below the requested `rtol` in all {len(summary)} "
            f"cases (at most {ratio.max():.2g} times it)."
        )
    worst = summary.loc[ratio.idxmax()]
    return (
        f"The mean |relative error| stayed below the requested `rtol` in {int((ratio <= 1).sum())} "
        f"of {len(summary)} cases; it was furthest above for {method(worst.method)} "
        f"({NAMES[worst.measure]}, `rtol` {pct(worst.rtol)}), at {ratio.max():.2g} times `rtol`."
    )


def gave_up_sentence(summary: pd.DataFrame, max_probes: int) -> str:
    """Which (method, measure, rtol) stopped at ``max_probes`` short of their ``rtol``."""
    missed = summary[summary.converged < 1]
    if missed.empty:
        return f"Every run reached its `rtol` within {max_probes} probes."
    return (
        f"Some runs stopped at {max_probes} probes short of their `rtol`, and said so "
        "(`converged=False`): "
        + "; ".join(
            f"{method(r.method)} for the {NAMES[r.measure]} at {pct(r.rtol)} in "
            f"{_share(1 - r.converged)} of runs"
            for r in missed.itertuples()
        )
        + "."
    )


def adaptive_sentences(summary: pd.DataFrame, runs: pd.DataFrame, max_probes: int) -> dict:
    """The page's glue keys for the adaptive estimators, each a Markdown sentence.

    ``summary`` is :func:`~flatness.chapters.estimators.trace.adaptive_summary` of ``runs``;
    ``max_probes`` the probe limit the runs were given.
    """
    n_seeds = runs.seed.nunique()
    return {
        "adaptive_cheapest_trace": cheapest_sentence(summary, "trace", max_probes),
        "adaptive_cheapest_frobenius": cheapest_sentence(summary, "frobenius", max_probes),
        "adaptive_auto": (
            f"At {pct(summary.rtol.min())}, `auto` {auto_clause(summary, 'trace', n_seeds)}; "
            f"it {auto_clause(summary, 'frobenius', n_seeds)}."
        ),
        "adaptive_honest": honesty_sentence(summary, runs),
        "adaptive_error": error_sentence(summary),
        "adaptive_gave_up": gave_up_sentence(summary, max_probes),
    }


def ours_vs_pyhessian(summary: pd.DataFrame, pyhessian: pd.DataFrame) -> str:
    """``flatness.hessian.trace`` (``auto``, tightest ``rtol``) against PyHessian's trace runs
    (:func:`~flatness.chapters.estimators.trace.pyhessian_trace_runs`): HVPs and mean error."""
    ours = _at_tight(summary, "trace").set_index("method").loc["auto"]
    err, hvps = float(pyhessian["rel error"].abs().mean()), float(pyhessian["probes used"].mean())
    closer = "closer to" if ours["abs rel error"] < err else "no closer to"
    return (
        f"Asked for {pct(summary.rtol.min())} instead, the book's `flatness.hessian.trace` spent "
        f"{ours.hvps:.0f} HVPs on average ({ours.hvps / hvps:.2g} times PyHessian's) and was "
        f"{closer} the truth: off by {100 * ours['abs rel error']:.2g} % on average, against "
        f"PyHessian's {100 * err:.2g} %."
    )


def trust_cheapest(summary: pd.DataFrame, max_probes: int) -> str:
    """The cheapest methods at the tightest ``rtol``, trace and Frobenius norm, in one sentence."""
    parts = []
    for measure in ("trace", "frobenius"):
        best, _ = _cheapest(summary, measure)
        if best is None:
            parts.append(f"none for the {NAMES[measure]} within {max_probes} probes")
        else:
            parts.append(
                f"{_names(best.method)} for the {NAMES[measure]}, {best.hvps.iloc[0]:.0f} HVPs "
                "on average"
            )
    return (
        f"Cheapest at {pct(summary.rtol.min())} among the methods that reached it in every run: "
        f"{parts[0]}; {parts[1]}."
    )


def trust_coverage(fixed: pd.DataFrame, summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Coverage of the fixed-budget methods (``fixed``, a
    :func:`~flatness.chapters.estimators.trace.coverage_table`) and the adaptive ones at the
    tightest ``rtol``: how many are clearly below :data:`NOMINAL`."""
    adaptive = _coverage_at_tight(summary, runs)
    fixed_low, adaptive_low = fixed[fixed.high < NOMINAL], adaptive[~adaptive.ok]
    if fixed_low.empty and adaptive_low.empty:
        low = min(fixed.low.min(), adaptive.low.min())
        return (
            f"No coverage was clearly below the claimed {100 * NOMINAL:.0f} %, but with "
            f"{runs.seed.nunique()} seeds per method a coverage as low as {_share(low)} cannot be "
            "ruled out either."
        )
    return (
        f"Coverage clearly below the claimed {100 * NOMINAL:.0f} % for {len(fixed_low)} "
        f"fixed-budget and {len(adaptive_low)} adaptive methods: their standard errors are too "
        "small."
    )


def slq_trust(z1: float, z2: float) -> str:
    """Advice on SLQ's density from how many of its own standard errors its trace (``z1``) and
    its Tr H^2 (``z2``) lie from the exact values."""
    told = (
        f"SLQ's trace is {z1:.1f} and its $\\operatorname{{Tr}} H^2$ {z2:.1f} standard errors "
        "from the exact values"
    )
    if max(z1, z2) <= Z:
        return told + "; read its density for the shape of the bulk and the outliers."
    return (
        told + f", more than the {Z} an honest standard error allows: read its density for the "
        "rough shape only, and its moments not beyond their order of magnitude."
    )


# -- the peers: PyHessian, hessian-eigenthings and curvlinops beside flatness -----------------
def _level(level: float) -> str:
    return f"{level:g}" if level < 0.01 else pct(level)


def reach_sentence(what: str, found, level: float) -> str:
    """Which tools (and methods) got ``what`` to a relative error of ``level`` in every seed on
    the fewest HVPs, from :func:`flatness.chapters.estimators.peers.reaches` (cheapest first):
    the fastest (ties together), the others in order, then those that never got there."""
    done = [r for r in found if r.reached]
    short = [r for r in found if not r.reached]
    head = f"{names.sentence(what)} to a relative error of {_level(level)} in every seed: "
    if not done:
        most = max(r.hvps for r in short)
        return head + f"no tool got there within {most} HVPs."
    best = [r for r in done if r.hvps == done[0].hvps]
    rest = done[len(best) :]
    tie = " (tied)" if len(best) > 1 else ""
    text = head + f"{listed(r.method for r in best)}{tie} needed the fewest HVPs, {best[0].hvps}"
    if rest:
        text += "; then " + ", ".join(f"{r.method} {r.hvps}" for r in rest)
    if short:
        text += (
            f"; {listed(r.method for r in short)} did not get there "
            f"(within {max(r.hvps for r in short)} HVPs)"
        )
    return text + "."


def peer_coverage_sentence(rows: pd.DataFrame) -> str:
    """Whose reported standard errors covered the truth as often as they claim, from
    :func:`flatness.chapters.estimators.peers.coverage_rows`; the tools that report none."""
    reporting = rows[rows.reports]
    label = lambda r: f"{r.tool} ({method(r.method)}, {NAMES[r.measure]})"  # noqa: E731
    ok = [label(r) for r in reporting.itertuples() if r.honest]
    low = [
        f"{label(r)}, {int(r.covered)} of {int(r.runs)}"
        for r in reporting.itertuples()
        if not r.honest
    ]
    silent = [t for t, g in rows.groupby("tool", sort=False) if not g.reports.any()]
    parts = []
    if ok:
        parts.append(
            f"the standard errors of {listed(ok)} covered the truth within {Z} of them as often "
            f"as an honest one would (the coverage's 95 % interval reaches {100 * NOMINAL:.0f} %)"
        )
    if low:
        parts.append(f"those of {listed(low)} covered it clearly less often")
    text = "; ".join(parts)
    text = names.sentence(text) + "." if text else "No tool reported a standard error."
    if silent:
        verb = "reports" if len(silent) == 1 else "report"
        text += f" {listed(silent)} {verb} none: nothing in their output says how far off it is."
    return text


def _kinds_of(runs: pd.DataFrame, tool: str, outcome: str, labels: dict) -> list[str]:
    rows = runs[(runs.tool == tool) & (runs.outcome == outcome)]
    return [labels[k] for k in rows.kind]


def misuse_sentences(runs: pd.DataFrame, labels: dict, tools) -> dict:
    """The page's sentences on :func:`flatness.chapters.estimators.peers.misuse_runs`: per
    tool, what it refused and what it got wrong without a word (``labels``: kind -> words;
    ``tools``: in the table's order); and which returned BatchNorm's eval-mode value for a
    model in train mode."""
    out = {}
    for i, tool in enumerate(tools):
        refused = _kinds_of(runs, tool, "refused", labels)
        wrong = _kinds_of(runs, tool, "silently wrong", labels)
        warned = _kinds_of(runs, tool, "wrong, with a warning", labels)
        parts = []
        if refused:
            parts.append(f"raised an error for {listed(refused)}")
        if wrong:
            parts.append(f"returned a wrong number without a warning for {listed(wrong)}")
        if warned:
            parts.append(f"returned a wrong number, with a warning, for {listed(warned)}")
        if not parts:
            parts.append("got every input right")
        out[f"misuse_{i}"] = f"{tool} {'; it '.join(parts)}."
    bn = runs[(runs.kind == "batchnorm") & runs["eval mode"].eq(True)]
    if len(bn):
        who = list(bn.tool)
        verb = "returns" if len(who) == 1 else "return"
        text = (
            f"For BatchNorm with the model in train mode, {listed(who)} {verb} the eval-mode "
            "value (running statistics), not the batch-statistics one"
        )
        asked = runs[runs.tool.str.startswith("flatness (")]
        if "flatness" in who and len(asked):
            right = asked.outcome.iloc[0] == "right"
            ours = runs[(runs.kind == "batchnorm") & (runs.tool == "flatness")]
            warns = bool(len(ours)) and ours.outcome.iloc[0] == "wrong, with a warning"
            text += (
                "; flatness takes the mode from its `bn_mode` argument, not from the model"
                + (", warns when that argument is left unset," if warns else ",")
                + f" and with `bn_mode='train'` {'gets it right' if right else 'is still off'}"
            )
        out["misuse_bn"] = text + "."
    else:
        out["misuse_bn"] = "No tool returned BatchNorm's eval-mode value for a model in train mode."
    return out


def trust_peers(top1, trace, misuse: pd.DataFrame, tools) -> str:
    """The peers in two sentences for "What to trust": which got the largest eigenvalue and
    the trace to their levels on the fewest HVPs (:func:`reach_sentence`'s lists), and how many
    of the misused inputs each tool answered with a wrong number and no warning."""

    def fastest(found) -> str:
        if not found or not found[0].reached:
            return "no tool got there"
        return listed(r.method for r in found if r.reached and r.hvps == found[0].hvps)

    kinds = misuse[misuse.kind != "control"].kind.nunique()
    counts = [
        f"{tool} {int(((misuse.tool == tool) & (misuse.outcome == 'silently wrong')).sum())}"
        for tool in tools
    ]
    return (
        f"the fewest HVPs to the largest eigenvalue: {fastest(top1)}; to the trace: "
        f"{fastest(trace)}. Wrong numbers without a warning, of the {kinds} inputs that define no "
        f"fixed mean-loss Hessian or are easy to get wrong: {listed(counts)}."
    )


def coinciding(estimates: pd.DataFrame, rtol: float = 1e-5) -> list[tuple[str, str, list]]:
    """(measure, method, tools) for the tools whose estimates by the same method agreed to
    ``rtol`` in every run (budget and seed) they share, at least two tools each."""
    found = []
    for (measure, name), group in estimates.groupby(["measure", "method"], sort=False):
        table = group.pivot_table(index=["budget", "seed"], columns="tool", values="rel error")
        tools = list(dict.fromkeys(group.tool))
        while len(tools) > 1:
            first, rest = tools[0], tools[1:]
            same = [
                t
                for t in rest
                if table[[first, t]].dropna().shape[0] > 0
                and ((table[first] + 1) - (table[t] + 1)).abs().max() <= rtol
            ]
            if same:
                found.append((measure, name, [first, *same]))
            tools = [t for t in rest if t not in same]
    return found


def coinciding_sentence(estimates: pd.DataFrame) -> str:
    """Which tools' estimates coincided run for run (:func:`coinciding`), and why that can be."""
    found = coinciding(estimates)
    if not found:
        return "No two tools returned the same estimates run for run."
    parts = [
        f"{listed(tools)} with {method(name)} on the {NAMES[measure]}"
        for measure, name, tools in found
    ]
    return (
        f"Some tools returned the same estimates run for run (to five digits): {'; '.join(parts)}. "
        "They draw the same random sign vectors from the same seed and take the same averages, "
        "so their curves and their counts coincide."
    )
