"""The comparisons the chapter judges again: each chapter's arms and their runs' measures,
and every measure's effect between the arms (the package's text says how)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from flatness import data as datasets
from flatness.analysis import names, stats
from flatness.chapters import adaptive, cnn, common, logreg, mlp, resnets
from flatness.chapters.measures.computed import COLUMNS, FAMILIES, RAW, run_measures
from flatness.errors import FlatnessError, RunMissing
from flatness.profiles import get_profile

#: the chapters whose comparisons this page judges again, in the book's order
CHAPTERS = ("logreg", "mlp", "cnn", "resnets", "adaptive")
TRAINING = {"mlp": mlp, "cnn": cnn, "resnets": resnets, "adaptive": adaptive}
VERDICTS = ("sharper", "flatter", "no clear difference", "cannot be judged")
_WORDS = dict(zip(stats.JUDGEMENTS, VERDICTS))


@dataclass(frozen=True)
class Comparison:
    """One comparison of a chapter: the measures of each run of its two arms, and whether
    the arm generalised better (the claim's second half)."""

    chapter: str
    profile: str
    claim: str
    setting: str
    arm: str
    baseline: str
    #: one row per run: ``side`` ("arm" or "baseline"), ``seed`` and the :data:`COLUMNS`
    runs: pd.DataFrame
    better: common.Half
    #: runs of the two arms that carry neither measures nor weights
    lacking: int
    at_minimum: bool

    #: the arms in a few words, for a figure's panel title
    short: str = ""

    @property
    def label(self) -> str:
        """The comparison in words: the setting, then the arms."""
        return f"{self.setting}: {self.short}"


def _frame(arm_runs, base_runs, data, device, profile) -> tuple[pd.DataFrame, int]:
    rows, lacking = [], 0
    for side, runs in (("arm", arm_runs), ("baseline", base_runs)):
        for r in runs:
            found = run_measures(r, data, profile=profile, device=device)
            if found is None:  # the raw measures are in every run's metrics; the others not
                lacking += 1
                found = {m: float(r.metrics.get(m, math.nan)) for m in RAW}
            rows.append({"side": side, "seed": r.config.seed} | found)
    return pd.DataFrame(rows, columns=["side", "seed", *COLUMNS]), lacking


def _logreg(profile, fetch, train_missing) -> tuple[list[Comparison], list[str]]:
    s = logreg.settings(profile)
    try:
        runs = logreg.sweep(s, **fetch, train_missing=train_missing)
    except RunMissing as err:
        return [], [_missing_note("logreg", profile, "softmax regression", len(err.configs))]
    data = datasets.load(s.dataset, data_root=fetch["data_root"], train_size=s.train_size)
    claim = logreg.claim(runs, data, device=fetch["device"])
    lo, hi = min(s.weight_decays), max(s.weight_decays)
    by = {wd: [r for r in runs if r.config.weight_decay == wd] for wd in (lo, hi)}
    frame, lacking = _frame(by[hi], by[lo], data, fetch["device"], profile)
    setting = f"softmax regression ({names.display(s.dataset)})"
    at_min = claim.sharper.outcome != "not at a minimum"
    short = f"weight decay {hi:g} vs {lo:g}"
    return [
        Comparison(
            "logreg",
            profile,
            "C3",
            setting,
            claim.arm,
            claim.baseline,
            frame,
            claim.better,
            lacking,
            at_min,
            short,
        )
    ], []


def _missing_note(chapter: str, profile: str, what: str, missing: int) -> str:
    return (
        f"{names.words(what)} (`{profile}` profile): {missing} run(s) neither published nor stored"
    )


def _training(chapter, profile, fetch, train_missing) -> tuple[list[Comparison], list[str]]:
    s = TRAINING[chapter].settings(profile)
    results = common.train(s, **fetch, train_missing=train_missing)
    out, notes = [], []
    for a, b in s.comparisons:
        if a not in results.runs or b not in results.runs:
            configs = s.run_configs()
            missing = sum(1 for c in configs[a] + configs[b] if c in results.missing)
            notes.append(_missing_note(chapter, profile, f"{a} vs {b}", missing))
            continue
        claim = common.judge_claim(results, a, b)
        config = results.runs[a][0].config
        width = "" if config.width == 1 else f" at width {config.width:g}"
        setting = names.words(f"{config.model}{width} ({names.display(config.dataset)})")
        base = results.runs[b][0].config
        short = (
            f"weight decay {config.weight_decay:g} vs {base.weight_decay:g}"
            if s.claim == "C3"
            else f"{a} vs {b}"
        )
        frame, lacking = _frame(
            results.runs[a], results.runs[b], results.data, fetch["device"], profile
        )
        at_min = claim.sharper.outcome != "not at a minimum"
        out.append(
            Comparison(
                chapter,
                profile,
                s.claim,
                setting,
                a,
                b,
                frame,
                claim.better,
                lacking,
                at_min,
                short,
            )
        )
    return out, notes


def comparisons(
    profile: str,
    *,
    profiles: Mapping[str, str] | None = None,
    data_root=None,
    device=None,
    progress: bool = False,
    train_missing: bool = True,
) -> tuple[list[Comparison], list[str]]:
    """Every comparison of :data:`CHAPTERS`, each at ``profiles[chapter]`` (default
    ``profile``), and a note for each whose runs are not at hand (with ``train_missing=False``).

    Raises:
        FlatnessError: an unknown profile or chapter name.
    """
    get_profile(profile)
    profiles = dict(profiles or {})
    for chapter, chosen in profiles.items():
        if chapter not in CHAPTERS and chapter not in ("theory", "rank", "predict"):
            raise FlatnessError(f"unknown chapter {chapter!r}; the valid ones are {CHAPTERS}")
        get_profile(chosen)
    fetch = dict(data_root=data_root, device=device, progress=progress)
    found, notes = _logreg(profiles.get("logreg", profile), fetch, train_missing)
    for chapter in TRAINING:
        more, why = _training(chapter, profiles.get(chapter, profile), fetch, train_missing)
        found += more
        notes += why
    return found, notes


def effects(found: list[Comparison]) -> pd.DataFrame:
    """One row per comparison and measure: ``comparison``, ``claim``, ``measure``, ``family``,
    ``interval`` (arm over baseline), ``verdict`` (:data:`VERDICTS`) and ``at_minimum``."""
    rows = []
    for c in found:
        a, b = c.runs[c.runs.side == "arm"], c.runs[c.runs.side == "baseline"]
        for m in COLUMNS:
            va, vb = a[m].dropna(), b[m].dropna()
            if len(va) == 0 or len(vb) == 0:
                iv = stats.Interval(math.nan, math.nan, math.nan, 1.0, "", (len(va), len(vb)))
                iv = dataclasses.replace(iv, reason="no values: cannot be judged")
            else:
                iv = common.effect(va, vb)
            rows.append(
                {
                    "comparison": c.label,
                    "label": c.label + ("" if c.at_minimum else " (not at a minimum)"),
                    "chapter": c.chapter,
                    "claim": c.claim,
                    "measure": m,
                    "family": FAMILIES[m],
                    "interval": iv,
                    "verdict": _WORDS[stats.judge(iv)]
                    if math.isfinite(iv.estimate)
                    else "cannot be judged",
                    "at_minimum": c.at_minimum,
                }
            )
    columns = ["comparison", "label", "chapter", "claim", "measure", "family", "interval"]
    return pd.DataFrame(rows, columns=[*columns, "verdict", "at_minimum"])


def table(judged: pd.DataFrame, claim: str) -> pd.DataFrame:
    """Measure x comparison of ``claim``: each cell the verdict and the ratio with its interval
    (a difference where a measure is not positive)."""
    part = judged[judged.claim == claim]
    if part.empty:
        return pd.DataFrame({"measure": [display(m) for m in COLUMNS]})
    cell = part.apply(lambda r: f"{r.verdict} {r.interval.short('.2g')}", axis=1)
    wide = (
        part.assign(cell=cell, measure=part.measure.map(display), comparison=part.label)
        .pivot(index="measure", columns="comparison", values="cell")
        .reindex(columns=list(dict.fromkeys(part.label)))
        .reindex([display(m) for m in COLUMNS])
    )
    wide.index.name = "measure"
    wide.columns.name = None
    return wide.reset_index()


def show_table(judged: pd.DataFrame, claim: str):
    """:func:`table` as the page shows it, or a sentence where no comparison of ``claim`` is
    at hand."""
    from IPython.display import Markdown

    if judged.empty or not (judged.claim == claim).any():
        return Markdown("No comparison of this kind is at hand at this scale.")
    return names.table(table(judged, claim), missing="no run at hand")


def display(measure: str) -> str:
    """A measure's plain name."""
    return NAMES.get(measure, names.display(measure))


#: plain names of the new measures (the raw ones are the book's)
NAMES = {
    "scaled_lambda_max": "λ_max ‖w‖²",
    "scaled_trace": "Tr H ‖w‖²",
    "adaptive_average": "adaptive sharpness, average (ρ = 0.1)",
    "adaptive_worst_l2": "adaptive sharpness, worst ℓ2 (ρ = 0.5)",
    "adaptive_worst_linf": "adaptive sharpness, worst ℓ∞ (ρ = 0.002)",
    "adaptive_trace": "Σ w_i² H_ii",
    "adaptive_lambda_max": "λ_max(D H D)",
    "relative_flatness": "relative flatness",
    "pac_bayes": "PAC-Bayes flatness 1/σ′²",
    "pac_bayes_magnitude": "PAC-Bayes flatness, magnitude-aware",
    "fisher_rao": "Fisher-Rao norm",
}


def summary(judged: pd.DataFrame) -> pd.DataFrame:
    """Per measure, over the weight-decay comparisons at a minimum: how many call the L2
    solution sharper, flatter, neither, or cannot be judged."""
    part = judged[(judged.claim == "C3") & judged.at_minimum]
    counts = (
        part.groupby("measure")
        .verdict.value_counts()
        .unstack(fill_value=0)
        .reindex(index=list(COLUMNS), columns=list(VERDICTS), fill_value=0)
    )
    counts.insert(0, "family", [FAMILIES[m] for m in counts.index])
    counts.index = [display(m) for m in counts.index]
    counts.index.name = "measure"
    return counts.reset_index()


def orbit_run(profile: str, *, profiles: Mapping[str, str] | None = None, data_root=None):
    """The network the orbit follows: the MLP chapter's baseline run (weight decay 0) of its
    first comparison, first seed, at that chapter's profile, with its data and the profile;
    ``(None, None, profile)`` where no such run with weights is at hand."""
    chosen = dict(profiles or {}).get("mlp", profile)
    s = mlp.settings(chosen)
    results = common.train(s, data_root=data_root, train_missing=False)
    for _, b in s.comparisons:
        for r in results.runs.get(b, []):
            if any(k.startswith("state.") for k in r.arrays):
                return r, results.data, chosen
    return None, None, chosen


def grid(profile: str) -> list:
    """The runs this chapter reads at ``profile``: those of every chapter in :data:`CHAPTERS`."""
    out = logreg.grid(profile)
    for module in TRAINING.values():
        out += module.grid(profile)
    return out
