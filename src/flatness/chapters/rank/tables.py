"""The exact-rank tables and verdicts of the chapter "Is the Hessian low-rank?" (claim C6).

From the exact spectra of :func:`flatness.chapters.rank.spectra`: ranks at each tolerance beside
the four candidate bounds (:func:`rank_table`), their summary over seeds, the cases where each
bound fails, the code-chosen sentences the chapter prints (:func:`findings`,
:func:`ggn_findings`, :func:`deficiency`, :func:`slq_reach`, :func:`verdict`) and its tables in
words (:func:`rank_grid`, :func:`bound_table`, :func:`failure_table`, :func:`check_table`,
:func:`slq_mass_table`, :func:`slq_bound_table`). Every name here is also served by
:mod:`flatness.chapters.rank`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from flatness.chapters.rank.design import BOUND_NAMES, BOUNDS, RankSettings
from flatness.chapters.rank.exact import Spectrum, ranks
from flatness.chapters.rank.judgement import Judgement, vacuity
from flatness.chapters.rank.networks import Architecture, bounds, data_rank, initial_model

#: the activations as a reader names the networks
NETWORKS = {"linear": "linear", "tanh": "tanh", "relu": "ReLU"}
_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _number(value: float) -> str:
    """10⁻⁴ for a power of ten, else the shortest decimal."""
    exponent = round(math.log10(value)) if value > 0 else None
    if exponent is not None and math.isclose(value, 10.0**exponent, rel_tol=1e-9):
        return "10" + str(exponent).translate(_SUPERSCRIPTS)
    return f"{value:g}"


def tolerance_name(label: str) -> str:
    """A tolerance label of :func:`~flatness.chapters.rank.exact.ranks` in words: "rel 1e-06"
    is "10⁻⁶ max|λ|" (relative), "abs 0.0001" is "10⁻⁴ (absolute)"."""
    kind, value = label.split()
    return _number(float(value)) + (" max|λ|" if kind == "rel" else " (absolute)")


def rank_table(results: list[Spectrum], s: RankSettings, data) -> pd.DataFrame:
    """One row per spectrum and tolerance: ranks of H and GGN, P, the largest rank possible
    (:attr:`~flatness.chapters.rank.networks.Architecture.ceiling`), each bound and whether the
    Hessian's rank obeys it (``holds_<bound>``, ``ggn_holds_<bound>``)."""
    arch = Architecture.of(initial_model(s, "linear", 0, data))
    bound = bounds(arch, len(data.y_train), data_rank(data.x_train))
    rows = []
    for r in results:
        h, g = ranks(r.hessian, s.rtols, s.atol), ranks(r.ggn, s.rtols, s.atol)
        for tol in h:
            row = {
                "activation": r.activation,
                "state": r.state,
                "weight_decay": r.weight_decay,
                "seed": r.seed,
                "tolerance": tol,
                "rank": h[tol],
                "ggn_rank": g[tol],
                "parameters": arch.parameters,
                "ceiling": arch.ceiling,
                "train_loss": r.train_loss,
            }
            for b, v in bound.items():
                row[b] = v
                row[f"holds_{b}"] = h[tol] <= v
                row[f"ggn_holds_{b}"] = g[tol] <= v
            rows.append(row)
    return pd.DataFrame(rows)


CASE = ["activation", "state", "weight_decay", "tolerance"]


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per net, state, weight decay and tolerance: rank mean, sd, min and max over seeds, and
    per bound "holds" (every seed) or "fails" (some seed)."""
    t = table.fillna({"weight_decay": -1.0})  # initial models have no weight decay
    grouped = t.groupby(CASE, sort=False)
    out = grouped["rank"].agg(["mean", "std", "min", "max"]).add_prefix("rank_")
    out["ggn_rank_mean"] = grouped["ggn_rank"].mean()
    out["seeds"] = grouped.size()
    for b in BOUNDS:
        out[b] = grouped[b].first()
        out[f"{b}_verdict"] = np.where(grouped[f"holds_{b}"].all(), "holds", "fails")
    out = out.reset_index()
    out["weight_decay"] = out["weight_decay"].where(out["weight_decay"] >= 0)
    return out


def failures(table: pd.DataFrame, *, ggn: bool = False) -> pd.DataFrame:
    """Per bound and tolerance: cases (net, state, weight decay, seed) where it fails, out of all."""
    prefix = "ggn_holds_" if ggn else "holds_"
    rows = []
    for (tol, b), group in [
        ((t, b), table[table.tolerance == t]) for t in table.tolerance.unique() for b in BOUNDS
    ]:
        failed = group[~group[prefix + b]]
        rows.append(
            {
                "tolerance": tol,
                "bound": b,
                "failed": len(failed),
                "cases": len(group),
                "where": _where(failed, group),
            }
        )
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> str:
    """Code-chosen sentences: which bound holds for the Hessian at which tolerance, and where
    each one fails (naming the nets, so a failing random ReLU net is said as such)."""
    fails = failures(table)
    ceiling = int(table.ceiling.iloc[0])
    lines = []
    for b in BOUNDS:
        rows = fails[fails.bound == b]
        held = [tolerance_name(t) for t in rows[rows.failed == 0].tolerance]
        broke = rows[rows.failed > 0]
        name = BOUND_NAMES[b]
        value = int(table[b].iloc[0])
        if broke.empty and vacuity(value, ceiling) == "vacuous":
            lines.append(
                f"- **{name}** = {value:,} cannot fail here: no network's rank can exceed "
                f"{ceiling:,}."
            )
            continue
        if broke.empty:
            nearly = vacuity(value, ceiling)
            note = f" ({value:,} of at most {ceiling:,}: {nearly})" if nearly else ""
            lines.append(f"- **{name}** holds in every case at every tolerance{note}.")
            continue
        failed = table[~table[f"holds_{b}"]]
        where = _where(failed, table)
        held_text = (
            f"it holds at {_listed(held)}" if held else "at every tolerance it fails in some case"
        )
        lines.append(
            f"- **{name}** fails in {len(failed)} of {len(table)} cases ({where}); {held_text}."
        )
    return "\n".join(lines)


def _where(failed: pd.DataFrame, table: pd.DataFrame) -> str:
    """The networks and states of ``failed``, or "every network and state" where that is all
    of ``table``'s."""

    def nets(frame):
        return sorted({f"{NETWORKS[a]} ({st})" for a, st in zip(frame.activation, frame.state)})

    found = nets(failed)
    every = nets(table)
    return "every network and state" if len(every) > 1 and found == every else ", ".join(found)


def ggn_findings(table: pd.DataFrame, tolerance: str) -> str:
    """Whether the theorems hold for the GGN (as they must) and whether the deep-linear formula
    is the linear net's exact GGN rank, per state, at ``tolerance``."""
    t = table[table.tolerance == tolerance]
    ggn_ok = bool(t.ggn_holds_examples.all())
    trivial = int(t.examples.iloc[0]) >= int(t.ceiling.iloc[0])
    lin = t[t.activation == "linear"]
    fan_ok = bool(lin.ggn_holds_fan_in.all())
    equal = [
        f"{int((g.ggn_rank == g.deep_linear).sum())} of {len(g)} {state} cases"
        for state, g in lin.groupby("state")
    ]
    return (
        f"At tolerance {tolerance_name(tolerance)} the GGN's rank is at most N(K-1) in "
        + ("every case, as it must be" if ggn_ok else "not every case: a numerical problem")
        + (" (and trivially: N(K-1) is at least the ceiling)" if trivial and ggn_ok else "")
        + "; for the linear net it is at most (K-1) x fan-ins in "
        + ("every case" if fan_ok else "not every case, which the theorem forbids")
        + f", and it equals the deep-linear formula in {' and '.join(equal)}."
    )


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def deficiency(table: pd.DataFrame) -> str:
    """What "rank-deficient" can mean here: rank < P holds by construction (the ceiling), how
    often the rank is below the ceiling, and whether the sample size N(K-1) (the ``examples``
    bound) already forces the GGN below it."""
    p, ceiling = int(table.parameters.iloc[0]), int(table.ceiling.iloc[0])
    limit = int(table.examples.iloc[0])
    below = table["rank"] < table.ceiling
    text = (
        "Shifting all of an example's logits by one amount changes no probability, so every "
        f"network's Hessian has at least {p - ceiling:,} zero eigenvalues: its rank is at most "
        f"{ceiling:,} of P = {p:,}, and a rank below P is guaranteed, not found. "
        f"The rank is below that ceiling in {int(below.sum())} of {len(below)} cases "
        f"({100 * below.mean():.0f} %)."
    )
    if limit < ceiling:
        return text + (
            f" The sample forces part of this: the GGN's rank is at most N(K-1) = {limit:,}, "
            "below the ceiling, whatever the network; only the residual term can lift the "
            "Hessian's rank above it."
        )
    return text + (
        f" The sample does not force it: N(K-1) = {limit:,} is at least the ceiling, so a rank "
        "below the ceiling is a property of the networks, not of too few examples."
    )


def verdict(table: pd.DataFrame, judgements: dict[str, Judgement]) -> str:
    """The verdict on claim C6: :func:`deficiency`, each bound's judgement from every test
    (:func:`~flatness.chapters.rank.judgement.judge`, the lines the verdict page prints too),
    and which bounds fail for the random ReLU networks."""
    relu_initial = table[(table.activation == "relu") & (table.state == "initial")]
    relu_fail = [BOUND_NAMES[b] for b in BOUNDS if not relu_initial[f"holds_{b}"].all()]
    lines = [deficiency(table), ""]
    lines += [f"- {j.sentence()}" for j in judgements.values()]
    if relu_fail:
        many = "fails" if len(relu_fail) == 1 else "each fail"
        lines += ["", f"For the random (initial) ReLU networks {_listed(relu_fail)} {many} for "
                  "some seed and tolerance."]  # fmt: skip
    elif len(relu_initial):
        lines += ["", "For the random (initial) ReLU networks every candidate bound holds."]
    return "\n".join(lines)


def slq_reach(cases: pd.DataFrame) -> str:
    """What SLQ's bracket can decide: a bound can be shown to *hold* only where the bracket's
    lower end, less two standard errors, is above 0, which the sentence counts."""
    floor = cases.low - 2 * cases.low_se.fillna(0)
    reach = int((floor > 0).sum())
    if reach == 0:
        return (
            f"In all {len(cases)} SLQ cases the bracket's lower end is {cases.low.max():.3f} or "
            "less, within two standard errors of 0: SLQ can show a bound failing (its predicted "
            "zero fraction above the bracket) but never holding, and a bound it does not show "
            "failing is undecided, not confirmed."
        )
    return (
        f"In {reach} of {len(cases)} SLQ cases the bracket's lower end is clear of 0, so there a "
        "bound predicting less near-zero mass can be shown to hold; elsewhere SLQ can only show a "
        "bound failing."
    )


def check_sentence(check: pd.DataFrame) -> str:
    """How far SLQ's Gauss rule is from the exact near-zero fraction in
    :func:`~flatness.chapters.rank.slq.slq_check`, and whether it stays inside the bracket."""
    worst = check.loc[check.error.abs().idxmax()]
    outside = int(((check.slq < check.low) | (check.slq > check.high)).sum())
    text = (
        f"the Gauss rule alone is off by up to {abs(worst.error):.2f} (at tolerance "
        f"{tolerance_name(worst.tolerance)})"
    )
    if outside:
        return (
            text + f" and falls outside the bracket in {outside} of {len(check)} cases: with a few "
            "dozen Lanczos steps a Ritz value near zero can land on either side of a tolerance "
            "that small"
        )
    return text + ", inside the bracket in every case"


def tolerance_span(results: list[Spectrum], rtols) -> str:
    """The decades the relative tolerances span against those of the exact spectra (the median
    over spectra of log10 of the largest over the smallest nonzero |eigenvalue|)."""
    tol = float(np.log10(max(rtols) / min(rtols)))
    spans = []
    for r in results:
        mags = r.hessian.abs().double()
        mags = mags[mags > 0]
        spans.append(math.log10((mags.max() / mags.min()).item()))
    spec = float(np.median(spans))
    if spec > tol:
        return (
            f"The tolerances span {tol:.0f} decades of spectra that span {spec:.0f} (median over "
            'the exact spectra), so "the rank" is a statement about a tolerance.'
        )
    return (
        f"The tolerances span {tol:.0f} decades, at least as many as the spectra ({spec:.0f}, median "
        'over the exact spectra); still, "the rank" is a statement about a tolerance.'
    )


def _decay(w: float) -> str:
    return "—" if np.isnan(w) else f"{w:g}"


def _cases(frame: pd.DataFrame) -> dict:
    """The identifying columns of a case in words: network (if any), state, weight decay."""
    out = {}
    if "activation" in frame:
        out["network"] = [NETWORKS[a] for a in frame.activation]
    return out | {
        "state": list(frame.state),
        "weight decay": [_decay(w) for w in frame.weight_decay],
    }


def rank_grid(table: pd.DataFrame, column: str = "rank") -> pd.DataFrame:
    """The exact ranks for reading: one row per network, state and weight decay, one column
    per tolerance, each cell the range over seeds (one number where the seeds agree);
    ``column``: ``"rank"`` for the Hessian, ``"ggn_rank"`` for the GGN."""
    t = table.fillna({"weight_decay": -1.0})
    keys = ["activation", "state", "weight_decay"]
    cells = t.groupby([*keys, "tolerance"], sort=False)[column].agg(["min", "max"])

    def cell(r):
        low, high = int(r["min"]), int(r["max"])
        return f"{low}" if low == high else f"{low}–{high}"

    grid = cells.apply(cell, axis=1).unstack("tolerance")
    grid = grid.reindex(t[keys].drop_duplicates().itertuples(index=False)).reset_index()
    grid["weight_decay"] = grid["weight_decay"].where(grid["weight_decay"] >= 0)
    shown = pd.DataFrame(_cases(grid))
    for tol in t.tolerance.unique():
        shown[tolerance_name(tol)] = grid[tol].to_numpy()
    return shown


def bound_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per bound: its value on these networks, its share of P and whether it can fail
    there (:func:`~flatness.chapters.rank.judgement.vacuity`)."""
    p, ceiling = int(table.parameters.iloc[0]), int(table.ceiling.iloc[0])
    words = {"vacuous": "no (vacuous)", "nearly vacuous": "barely (nearly vacuous)", "": "yes"}
    return pd.DataFrame(
        [
            {
                "bound": BOUND_NAMES[b],
                "value": f"{int(table[b].iloc[0]):,}",
                "share of P": f"{100 * int(table[b].iloc[0]) / p:.1f} %",
                "can it fail?": words[vacuity(int(table[b].iloc[0]), ceiling)],
            }
            for b in BOUNDS
        ]
    )


def failure_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per tolerance, one column per bound: in how many cases (network, state, weight
    decay, seed) the Hessian's rank exceeds the bound."""
    fails = failures(table)
    rows = []
    for tol in table.tolerance.unique():
        here = fails[fails.tolerance == tol].set_index("bound")
        rows.append(
            {"tolerance": tolerance_name(tol)}
            | {BOUND_NAMES[b]: f"{here.failed[b]} of {here.cases[b]}" for b in BOUNDS}
        )
    return pd.DataFrame(rows)


def check_table(check: pd.DataFrame) -> pd.DataFrame:
    """:func:`~flatness.chapters.rank.slq.slq_check` for reading: the exact near-zero fraction
    beside SLQ's bracket and Gauss rule."""
    return pd.DataFrame(
        {
            "network": [NETWORKS[a] for a in check.activation],
            "|λ| ≤": [tolerance_name(t) for t in check.tolerance],
            "exact fraction": [f"{v:.3f}" for v in check.exact],
            "SLQ bracket": [f"{lo:.3f} to {hi:.3f}" for lo, hi in zip(check.low, check.high)],
            "Gauss rule ± s.e.": [
                f"{v:.3f} ± {se:.3f}" if np.isfinite(se) else f"{v:.3f} (one probe: no s.e.)"
                for v, se in zip(check.slq, check.slq_se)
            ],
            "exact inside bracket": ["yes" if b else "no" for b in check.bracketed],
        }
    )


def slq_mass_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """:func:`~flatness.chapters.rank.slq.slq_verdicts`' near-zero mass for reading: per
    state, weight decay and tolerance, the bracket and the Gauss rule (means over seeds, the
    Gauss rule's standard deviation over seeds)."""
    return pd.DataFrame(
        _cases(verdicts)
        | {
            "|λ| ≤": [tolerance_name(t) for t in verdicts.tolerance],
            "SLQ bracket": [f"{lo:.3f} to {hi:.3f}" for lo, hi in zip(verdicts.low, verdicts.high)],
            "Gauss rule ± sd": [
                f"{v:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{v:.3f} (one seed: no sd)"
                for v, sd in zip(verdicts.slq, verdicts.slq_sd)
            ],
        }
    )


def slq_bound_table(cases: pd.DataFrame) -> pd.DataFrame:
    """One row per bound on the larger network: its value, the near-zero mass it predicts,
    and in how many SLQ cases (state, weight decay, seed, tolerance) it fails, holds or is
    undecided (:func:`~flatness.chapters.rank.slq.judge_case`)."""
    p = cases.attrs["parameters"]
    rows = []
    for b in BOUNDS:
        value = cases.attrs["bounds"][b]
        counts = cases[b].value_counts()
        rows.append(
            {
                "bound": BOUND_NAMES[b],
                "value": f"{value:,}",
                "share of P": f"{100 * value / p:.1f} %",
                "predicted near-zero mass ≥": f"{float(cases[f'predicted_{b}'].iloc[0]):.3f}",
            }
            | {
                word: f"{int(counts.get(word, 0))} of {len(cases)}"
                for word in ("fails", "holds", "undecided")
            }
        )
    return pd.DataFrame(rows)
