"""The exact-rank tables and verdicts of the chapter "Is the Hessian low-rank?" (claim C6).

From the exact spectra of :func:`flatness.chapters.rank.spectra`: ranks at each tolerance beside
the four candidate bounds (:func:`rank_table`), their summary over seeds, the cases where each
bound fails, and the code-chosen sentences the chapter prints (:func:`findings`,
:func:`ggn_findings`, :func:`large_findings`, :func:`verdict`). Every name here is also served
by :mod:`flatness.chapters.rank`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from flatness.chapters.rank.design import BOUND_NAMES, BOUNDS, RankSettings
from flatness.chapters.rank.exact import Spectrum, ranks
from flatness.chapters.rank.networks import Architecture, bounds, data_rank, initial_model


def rank_table(results: list[Spectrum], s: RankSettings, data) -> pd.DataFrame:
    """One row per spectrum and tolerance: ranks of H and GGN, P, each bound and whether the
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
        nets = sorted({f"{a} ({st})" for a, st in zip(failed.activation, failed.state)})
        rows.append(
            {
                "tolerance": tol,
                "bound": b,
                "failed": len(failed),
                "cases": len(group),
                "where": ", ".join(nets),
            }
        )
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> str:
    """Code-chosen sentences: which bound holds for the Hessian at which tolerance, and where
    each one fails (naming the nets, so a failing random ReLU net is said as such)."""
    fails = failures(table)
    lines = []
    for b in BOUNDS:
        rows = fails[fails.bound == b]
        held = rows[rows.failed == 0].tolerance.tolist()
        broke = rows[rows.failed > 0]
        name = BOUND_NAMES[b]
        if broke.empty:
            lines.append(f"- **{name}** holds in every case at every tolerance.")
            continue
        parts = [
            f"at {r.tolerance} in {r.failed} of {r.cases} cases ({r.where})"
            for r in broke.itertuples()
        ]
        held_text = f"; it holds at {', '.join(held)}" if held else "; it holds at no tolerance"
        lines.append(f"- **{name}** fails {'; '.join(parts)}{held_text}.")
    return "\n".join(lines)


def ggn_findings(table: pd.DataFrame, tolerance: str) -> str:
    """Whether the theorems hold for the GGN (as they must) and whether the deep-linear formula
    is the linear net's exact GGN rank, per state, at ``tolerance``."""
    t = table[table.tolerance == tolerance]
    ggn_ok = bool(t.ggn_holds_examples.all())
    lin = t[t.activation == "linear"]
    fan_ok = bool(lin.ggn_holds_fan_in.all())
    equal = [
        f"{int((g.ggn_rank == g.deep_linear).sum())} of {len(g)} {state} cases"
        for state, g in lin.groupby("state")
    ]
    return (
        f"At tolerance {tolerance} the GGN's rank is at most N(K-1) in "
        + ("every case, as it must be" if ggn_ok else "not every case: a numerical problem")
        + "; for the linear net it is at most (K-1) x fan-ins in "
        + ("every case" if fan_ok else "not every case, which the theorem forbids")
        + f", and it equals the deep-linear formula in {' and '.join(equal)}."
    )


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def large_findings(verdicts: pd.DataFrame) -> str:
    """How often each bound holds, fails or is undecided on the larger network, from
    :func:`~flatness.chapters.rank.slq.slq_verdicts` (one row per state, weight decay and
    tolerance)."""
    parts = []
    for b in BOUNDS:
        counts = verdicts[b].value_counts()
        parts.append(f"{BOUND_NAMES[b]} " + ", ".join(f"{k} in {n}" for k, n in counts.items()))
    return f"Over the {len(verdicts)} rows (state, weight decay, tolerance): {'; '.join(parts)}."


def verdict(table: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """The verdict on claim C6 from the exact :func:`rank_table` and the larger network's
    :func:`~flatness.chapters.rank.slq.slq_verdicts`: how often the Hessian is rank-deficient,
    which bounds hold everywhere or fail everywhere, which fail for random ReLU networks, and
    which SLQ's bracket shows failing on the larger network."""
    fails = failures(table)
    relu_initial = table[(table.activation == "relu") & (table.state == "initial")]
    relu_fail = [BOUND_NAMES[b] for b in BOUNDS if not relu_initial[f"holds_{b}"].all()]
    per_bound = {b: fails[fails.bound == b] for b in BOUNDS}
    always = [BOUND_NAMES[b] for b, f in per_bound.items() if f.failed.sum() == 0]
    never = [BOUND_NAMES[b] for b, f in per_bound.items() if (f.failed == f.cases).all()]
    low_rank = (table["rank"] < table["parameters"]).mean()

    def verb(items, one, many):
        return one if len(items) == 1 else many

    text = f"The Hessian is rank-deficient in {100 * low_rank:.0f} % of the cases measured. "
    if always:
        text += (
            f"Only {_listed(always)} {verb(always, 'holds', 'hold')} in every case and at every "
            "tolerance. "
        )
    else:
        text += "No candidate bound holds in every case and at every tolerance. "
    if never:
        text += f"The {_listed(never)} {verb(never, 'fails', 'each fail')} in every case. "
    if relu_fail:
        text += (
            f"For the random (initial) ReLU networks {_listed(relu_fail)} "
            f"{verb(relu_fail, 'fails', 'each fail')} for some seed and tolerance."
        )
    else:
        text += "For the random (initial) ReLU networks every candidate bound holds."
    large_fail = [BOUND_NAMES[b] for b in BOUNDS if (verdicts[b] == "fails").any()]
    if large_fail:
        text += (
            f" On the larger network SLQ's bracket shows {_listed(large_fail)} failing in at "
            "least one state and tolerance."
        )
    else:
        text += " On the larger network SLQ's bracket shows no bound failing."
    return text


def check_sentence(check: pd.DataFrame) -> str:
    """How far SLQ's Gauss rule is from the exact near-zero fraction in
    :func:`~flatness.chapters.rank.slq.slq_check`, and whether it stays inside the bracket."""
    worst = check.loc[check.error.abs().idxmax()]
    outside = int(((check.slq < check.low) | (check.slq > check.high)).sum())
    text = f"the Gauss rule alone is off by up to {abs(worst.error):.2f} (at tolerance {worst.tolerance})"
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
