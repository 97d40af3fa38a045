"""The chapter's sentences, each chosen from the verdicts or the orbit's values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from flatness.chapters.measures.comparisons import Comparison, display
from flatness.chapters.measures.computed import COLUMNS, FAMILIES


def _listing(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


#: what a measure says of the L2 solution over the comparisons it could judge
STANCES = {
    "sharper": "sharper in every comparison that could be judged",
    "sharper or unclear": "sharper or no clear difference, never flatter",
    "mixed": "sharper in some comparisons, flatter in others",
    "flatter or unclear": "flatter or no clear difference, never sharper",
    "flatter": "flatter in every comparison that could be judged",
    "unclear": "no clear difference in any comparison",
    "cannot be judged": "cannot be judged in any comparison",
}


def stance(sharper: int, flatter: int, unclear: int) -> str:
    """A key of :data:`STANCES` from a measure's counts of verdicts.

    >>> stance(3, 0, 0), stance(2, 0, 1), stance(1, 1, 0), stance(0, 0, 2), stance(0, 0, 0)
    ('sharper', 'sharper or unclear', 'mixed', 'unclear', 'cannot be judged')
    """
    if sharper + flatter + unclear == 0:
        return "cannot be judged"
    if sharper and flatter:
        return "mixed"
    if sharper:
        return "sharper" if not unclear else "sharper or unclear"
    if flatter:
        return "flatter" if not unclear else "flatter or unclear"
    return "unclear"


def stances(judged: pd.DataFrame, claim: str = "C3") -> dict[str, str]:
    """Each measure's :func:`stance` over the comparisons of ``claim`` at a minimum."""
    part = judged[(judged.claim == claim) & judged.at_minimum]
    out = {}
    for m in COLUMNS:
        v = part[part.measure == m].verdict
        out[m] = stance(
            int((v == "sharper").sum()),
            int((v == "flatter").sum()),
            int((v == "no clear difference").sum()),
        )
    return out


def sentences(judged: pd.DataFrame, found: list[Comparison]) -> dict:
    """The page's judging sentences, chosen from the verdicts."""
    c3 = [c for c in found if c.claim == "C3" and c.at_minimum]
    c5 = [c for c in found if c.claim == "C5"]
    facts = {}
    if not c3:
        facts["headline_md"] = (
            "No weight-decay comparison at a minimum is at hand at this scale, so no measure "
            "can be judged against the paper's critique here."
        )
    else:
        better = [c for c in c3 if c.better.outcome == "reproduced"]
        worse = [c for c in c3 if c.better.outcome == "opposite"]
        rest = len(c3) - len(better) - len(worse)
        lead = (
            f"Of the {len(c3)} weight-decay comparisons at a minimum, weight decay clearly "
            f"generalised better in {len(better)}"
            + (f" and clearly worse in {len(worse)}" if worse else "")
            + (f"; in {rest} the test sets could not tell" if rest else "")
            + ". What each measure says of the L2 solution over those comparisons:\n"
        )
        by = stances(judged, "C3")
        for key in STANCES:
            chosen = [display(m) for m in COLUMNS if by[m] == key]
            if chosen:
                lead += f"\n- **{STANCES[key]}**: {_listing(chosen)};"
        lead = lead.removesuffix(";") + "."
        facts["headline_md"] = lead
    at_min = [c for c in c5 if c.at_minimum]
    if not c5:
        facts["optimisers_md"] = "No optimiser comparison is at hand at this scale."
    elif not at_min:
        facts["optimisers_md"] = (
            f"None of the {len(c5)} optimiser comparisons ended at a minimum at this scale, so "
            "their effects are shown for the record and judge nothing."
        )
    else:
        by = stances(judged, "C5")
        sharper = [display(m) for m in COLUMNS if by[m] == "sharper"]
        facts["optimisers_md"] = (
            f"{len(at_min)} of the {len(c5)} optimiser comparisons ended at a minimum; in all of "
            f"them {_listing(sharper)} call the optimiser's solution sharper than SGD's."
            if sharper
            else f"{len(at_min)} of the {len(c5)} optimiser comparisons ended at a minimum; no "
            "measure calls the optimiser's solution sharper than SGD's in all of them."
        )
    short = [c for c in found if c.lacking]
    facts["lacking_md"] = (
        "Runs that carry neither weights nor recorded measures (published before runs recorded "
        "them, under a smaller limit on published weights) have only the raw measures here: "
        + "; ".join(f"{c.label}, {c.lacking} of {len(c.runs)} runs" for c in short)
        + "."
        if short
        else "Every run of these comparisons carries its measures or its weights."
    )
    return facts


# ---------------------------------------------------------------------------------------------
# Dinh et al.'s rescaling orbit


#: a measure stays put along the orbit when it moves by less than 1 % (log of 1.01)
STILL = math.log(1.01)


def orbit_spread(frame: pd.DataFrame) -> dict:
    """Each measure's largest ``|log(value / value at a = 1)|`` along the orbit (measures
    without a positive value at ``a = 1`` left out)."""
    base = frame[np.isclose(frame.scale, 1.0)].iloc[0]
    return {
        m: float(np.max(np.abs(np.log(frame[m] / base[m]))))
        for m in COLUMNS
        if base[m] > 0 and (frame[m] > 0).all()
    }


def orbit_facts(frame: pd.DataFrame | None) -> dict:
    """Which measures stay within 1 % of their value along the orbit, and which moves most."""
    if frame is None:
        return {
            "orbit_md": "No run of the MLP chapter with its weights is at hand at this scale, "
            "so the orbit is not drawn.",
            "orbit_moving": 0,
            "orbit_still": 0,
        }
    spread = orbit_spread(frame)
    still = [display(m) for m in COLUMNS if m in spread and spread[m] < STILL]
    moving = sorted((m for m in spread if spread[m] >= STILL), key=spread.get)
    one = len(still) == 1
    text = (
        f"Along the orbit, {_listing(still) if still else 'no measure'} "
        f"{'stays' if one or not still else 'stay'} within 1 % of "
        f"{'its' if one or not still else 'their'} value at a = 1"
    )
    if moving:
        top = moving[-1]
        text += f", while {display(top)} changes by a factor of up to {math.exp(spread[top]):.3g}"
    text += ", although the network computes the same function throughout."
    return {"orbit_md": text, "orbit_moving": len(moving), "orbit_still": len(still)}


def family_verdicts(judged: pd.DataFrame, found: list[Comparison]) -> pd.DataFrame:
    """One row per measure family: its verdicts pooled over its measures and the weight-decay
    comparisons at a minimum, and what they say of the L2 solution (:data:`STANCES`); the
    verdict page's rows beyond the paper."""
    part = judged[(judged.claim == "C3") & judged.at_minimum]
    used = sorted({c.profile for c in found if c.claim == "C3" and c.at_minimum})
    rows = []
    for family in dict.fromkeys(FAMILIES.values()):
        members = [m for m in COLUMNS if FAMILIES[m] == family]
        v = part[part.measure.isin(members)].verdict
        counts = {k: int((v == k).sum()) for k in ("sharper", "flatter", "no clear difference")}
        rows.append(
            {
                "family": family,
                "the L2 solution is": STANCES[stance(*counts.values())],
                **counts,
                "comparisons": part.comparison.nunique(),
                "profile": ", ".join(used),
                "measures": ", ".join(display(m) for m in members),
            }
        )
    return pd.DataFrame(rows)


def build_facts(found: list[Comparison], notes: list[str]) -> dict:
    """The build box's sentences: at which profile each chapter's comparisons were judged,
    and the comparisons whose runs are not at hand."""
    by: dict[str, list[str]] = {}
    for c in found:
        by.setdefault(c.profile, [])
        if c.chapter not in by[c.profile]:
            by[c.profile].append(c.chapter)
    from flatness.chapters.verdicts import TITLES

    scale = "; ".join(
        f"`{p}`: {', '.join(f'“{TITLES[c]}”' for c in chapters)}" for p, chapters in by.items()
    )
    return {
        "scale_md": f"Comparisons judged, by profile and chapter: {scale}." if found else "",
        "notes_md": (
            "Not judged, their runs being neither published nor stored: " + "; ".join(notes) + "."
            if notes
            else ""
        ),
    }
