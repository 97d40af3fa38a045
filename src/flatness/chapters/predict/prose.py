"""Every sentence of the chapter that judges, chosen from the scores' intervals.

A statistic is *above zero* when its whole 95 % interval is, *below zero* when its whole
interval is, else *not distinguishable from zero*. One measure *beats* another on a statistic
only when their intervals do not overlap: with two seeds per cell the intervals are narrow,
and a bare difference of estimates is no evidence.
"""

from __future__ import annotations

import math

import pandas as pd

from flatness.analysis import names
from flatness.chapters.measures.comparisons import display
from flatness.chapters.predict.claims import Pair
from flatness.chapters.predict.design import HYPER_NAMES, HYPERS, RULES
from flatness.chapters.predict.table import BASELINES, STATISTICS, Collected, strongest


def _fmt(r, stat: str, fmt: str = "+.2f") -> str:
    est, low, high = r[stat], r[f"{stat}_low"], r[f"{stat}_high"]
    if not math.isfinite(low) or low == high:
        return f"{est:{fmt}}"
    return f"{est:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def sign(r, stat: str) -> str:
    """``"above zero"``, ``"below zero"`` or ``"not distinguishable from zero"``."""
    low, high = r[f"{stat}_low"], r[f"{stat}_high"]
    if math.isfinite(low) and low > 0:
        return "above zero"
    if math.isfinite(high) and high < 0:
        return "below zero"
    if not math.isfinite(low) and r[stat] != 0:  # every resample agreed: the point is exact
        return "above zero" if r[stat] > 0 else "below zero"
    return "not distinguishable from zero"


def beats(a, b, stat: str) -> bool:
    """Whether ``a``'s interval lies wholly above ``b``'s."""
    low = a[f"{stat}_low"] if math.isfinite(a[f"{stat}_low"]) else a[stat]
    high = b[f"{stat}_high"] if math.isfinite(b[f"{stat}_high"]) else b[stat]
    return low > high


def score_table(scores: pd.DataFrame, grid: str, rule: str = "budget") -> pd.DataFrame:
    """The page's table for one grid and rule: a row per measure, a column per statistic,
    each ``estimate [low, high]``; the conditioning set that gave the conditional score."""
    part = scores[(scores.grid == grid) & (scores.rule == rule)]
    rows = []
    for _, r in part.iterrows():
        row = {"measure": display(r.measure), "family": r.family}
        for stat, name in STATISTICS.items():
            row[name] = _fmt(r, stat, "+.2f" if stat in ("tau", "Psi") else ".2f")
        row["conditioned on"] = (
            ", ".join(HYPER_NAMES[h] for h in r.condition.split(", ") if h) or "nothing"
        )
        rows.append(row)
    return pd.DataFrame(rows)


def runs_display(frame: pd.DataFrame) -> pd.DataFrame:
    """A table of runs (grid, levels, seed, key ...) in words: the hyperparameters' names, the
    optimisers' and the levels' (low, middle, high)."""
    out = frame.copy()
    for h in HYPERS:
        if h == "optimiser":
            out[h] = out[h].map(names.display)
        else:
            out[h] = out[h].map(lambda v: ("low", "middle", "high")[int(v)] if int(v) < 3 else v)
    return out.rename(columns=HYPER_NAMES)


def facts(collected: Collected, scores: pd.DataFrame, pairs: list[Pair]) -> dict[str, str]:
    """The page's glued Markdown: what was run, and every judging sentence."""
    return (
        _runs(collected)
        | _headline(scores)
        | _psi(scores, collected.frame)
        | _rules(scores, collected)
        | _claims(pairs)
    )


def _runs(c: Collected) -> dict[str, str]:
    f = c.frame[c.frame.rule == "budget"]
    parts = []
    for d in c.designs:
        here = f[f.grid == d.name]
        full = len(d.configs())
        parts.append(
            f"the {d.name} grid ({names.display(d.model)}, {len(d.seeds)} seeds, {full} runs; "
            f"{len(here)} at hand)"
        )
    out = {"grids_md": "; ".join(parts) + "."}
    never = c.never_reached
    if len(never):
        counts = never.groupby(["grid", "optimiser"]).size()
        listed = ", ".join(
            f"{n} {names.display(o)} runs of the {g} grid" for (g, o), n in counts.items()
        )
        out["never_md"] = (
            f"{len(never)} runs never reached a training cross-entropy of "
            f"{RULES['loss'].split()[-1]} within the budget ({listed}). Under that rule they "
            "have no stopping point; they are left out of its statistics, and each is listed "
            "below."
        )
    else:
        out["never_md"] = "Every run reached the stopping loss within the budget."
    out["missing_md"] = (
        f"{len(c.missing)} runs of the grids are neither published nor stored and are left out "
        "(train them with `python -m flatness sweep predict`)."
        if c.missing
        else ""
    )
    left = c.left_out
    out["failed_md"] = (
        f"{len(left)} runs failed to train or learnt nothing and are in no statistic, table or "
        f"pair ({len(c.failed)} failed, {len(c.collapsed)} ended at about the loss of "
        "predicting every class alike); they are listed under the grids."
        if len(left)
        else ""
    )
    return out


def _headline(scores: pd.DataFrame) -> dict[str, str]:
    part = scores[scores.rule == "budget"]
    sentences = []
    for grid, here in part.groupby("grid", sort=False):
        here = here.set_index("measure")
        best = here["cmi"].idxmax()
        baselines = here.loc[[m for m in BASELINES if m in here.index]]
        top_base = baselines["cmi"].idxmax() if len(baselines) else None
        lam = here.loc["lambda_max"] if "lambda_max" in here.index else None
        s = [f"On the {grid} grid, the largest conditional score is {display(best)}'s, "
             f"{_fmt(here.loc[best], 'cmi', '.2f')}"]  # fmt: skip
        if top_base is not None and best not in BASELINES:
            if beats(here.loc[best], here.loc[top_base], "cmi"):
                s.append(f"above the best norm baseline ({display(top_base)}, "
                         f"{_fmt(here.loc[top_base], 'cmi', '.2f')})")  # fmt: skip
            else:
                s.append(f"not clearly above the best norm baseline ({display(top_base)}, "
                         f"{_fmt(here.loc[top_base], 'cmi', '.2f')})")  # fmt: skip
        sentence = ", ".join(s) + "."
        if lam is not None:
            sentence += (
                f" The paper's λ_max has Kendall τ {_fmt(lam, 'tau')} with the gap, "
                f"{sign(lam, 'tau')}, and a conditional score of {_fmt(lam, 'cmi', '.2f')}."
            )
        good = [m for m in here.index if sign(here.loc[m], "tau") == "above zero"]
        wrong = [m for m in here.index if sign(here.loc[m], "tau") == "below zero"]
        sentence += (
            f" {len(good)} of {len(here)} measures rank the gaps in the right order more often "
            f"than not (τ above zero) and {len(wrong)} in the wrong order (τ below zero)."
        )
        robust = here["robust"]
        every = (robust == 1).all()
        settled = every and (here["robust_low"] == 1).all()
        sentence += (
            " Every measure orders some coupled pair wrongly"
            + (" in every resample" if settled else "")
            + ": the robust sign-error is 1 for all."
            if every
            else f" The smallest robust sign-error is {display(robust.idxmin())}'s, "
            f"{_fmt(here.loc[robust.idxmin()], 'robust', '.2f')}."
        )
        sentences.append(sentence)
    return {"headline_md": "\n".join(sentences) if sentences else "No grid has runs at hand."}


def _psi(scores: pd.DataFrame, frame: pd.DataFrame) -> dict[str, str]:
    part = scores[scores.rule == "budget"]
    runs = frame[(frame.rule == "budget") & frame.reached]
    lines = []
    for grid, here in part.groupby("grid", sort=False):
        here = here.set_index("measure")
        largest = {m: max(HYPERS, key=lambda h: abs(here.loc[m, f"psi.{h}"])) for m in here.index}
        counts = pd.Series(largest).value_counts()
        most = ", ".join(f"{HYPER_NAMES[h]} for {n}" for h, n in counts.items())
        line = (
            f"On the {grid} grid, the hyperparameter whose changes a measure orders most "
            f"consistently (the largest |ψ|) is {most} measures."
        )
        adaptive = [m for m in here.index if m.startswith("adaptive_")]
        grid_runs = runs[runs.grid == grid]
        if adaptive and len(grid_runs):
            by_lr = [m for m in adaptive if strongest(grid_runs, m) == "lr"]
            line += (
                f" The learning rate explains most of the spread over the grid of "
                f"{len(by_lr)} of the {len(adaptive)} adaptive measures"
                + (f" ({', '.join(map(display, by_lr))})" if by_lr else "")
                + (
                    ", as Andriushchenko et al. found adaptive sharpness to track the learning "
                    "rate."
                    if 2 * len(by_lr) > len(adaptive)
                    else "; Andriushchenko et al. found adaptive sharpness to track it, and "
                    "here most adaptive measures do not."
                )
            )
        lines.append(line)
    return {"psi_md": "\n".join(lines)}


def _rules(scores: pd.DataFrame, c: Collected) -> dict[str, str]:
    if set(scores.rule) != set(RULES):
        return {"rules_md": "Only one stopping rule has runs at hand."}
    lines = []
    for grid, here in scores.groupby("grid", sort=False):
        budget = here[here.rule == "budget"].set_index("measure")
        loss = here[here.rule == "loss"].set_index("measure")
        common = [m for m in budget.index if m in loss.index]
        flipped = [m for m in common if {sign(budget.loc[m], "tau"), sign(loss.loc[m], "tau")}
                   == {"above zero", "below zero"}]  # fmt: skip
        changed = [m for m in common if sign(budget.loc[m], "tau") != sign(loss.loc[m], "tau")]
        line = (
            f"On the {grid} grid, {len(changed)} of {len(common)} measures change the side of "
            "zero their τ is judged on between the two rules"
        )
        line += (
            f", and {len(flipped)} {'flips' if len(flipped) == 1 else 'flip'} from one side to "
            f"the other ({', '.join(map(display, flipped))})."
            if flipped
            else ", and none flips from one side to the other."
        )
        lines.append(line)
    return {"rules_md": "\n".join(lines)}


def _claims(pairs: list[Pair]) -> dict[str, str]:
    if not pairs:
        return {"claims_md": "No pair of the grids has all its runs at hand."}
    lines = []
    frame = pd.DataFrame(
        [
            {
                "claim": p.claim,
                "grid": p.grid,
                "sharper": p.judged.sharper.outcome,
                "better": p.judged.better.outcome,
            }
            for p in pairs
        ]  # fmt: skip
    )
    for (claim, grid), here in frame.groupby(["claim", "grid"], sort=False):
        what = "weight decay against none" if claim == "C3" else "Gadam against SGD"
        sharper = ", ".join(f"{n} {o}" for o, n in here.sharper.value_counts().items())
        better = ", ".join(f"{n} {o}" for o, n in here.better.value_counts().items())
        lines.append(
            f"- {claim} ({what}), {grid} grid, {len(here)} pairs: *sharper* {sharper}; "
            f"*generalises better* {better}."
        )
    return {"claims_md": "\n".join(lines)}


#: Andriushchenko et al.'s (2023) Kendall tau between adaptive sharpness and test loss on
#: diagonal linear networks, as the later literature quotes it
ANCHOR_TAU = -0.68


def anchor_facts(anchor) -> dict[str, str]:
    """The anchor's sentences: our tau beside theirs, judged by sign and by size."""
    ours = anchor.tau_adaptive
    same = math.copysign(1, ours) == math.copysign(1, ANCHOR_TAU) and ours != 0
    size = (
        "stronger" if abs(ours) > abs(ANCHOR_TAU) + 0.1
        else "weaker" if abs(ours) < abs(ANCHOR_TAU) - 0.1
        else "about as strong"
    )  # fmt: skip
    verdict = (
        f"The sign is reproduced: the sharper networks generalise better. In size ours is {size}"
        f" ({ours:+.2f} against {ANCHOR_TAU:+.2f})."
        if same
        else f"The sign is not reproduced: ours is {ours:+.2f} against {ANCHOR_TAU:+.2f}."
    )
    excluded = len(anchor.excluded)
    return {
        "anchor_md": (
            f"Of {anchor.kept + excluded} networks, {anchor.kept} reached the training loss "
            f"{anchor.settings.get('target_loss', 1e-5):g}"
            + (f" and {excluded} did not (left out)" if excluded else "")
            + f". Kendall τ between worst-case adaptive sharpness and the test loss is "
            f"{ours:+.2f} (theirs about {ANCHOR_TAU:+.2f}); for λ_max it is "
            f"{anchor.tau_lambda_max:+.2f} and for the trace {anchor.tau_trace:+.2f}. {verdict}"
        )
    }
