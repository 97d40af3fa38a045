"""C3 and C5 on the grids: every pair of cells that differs only in weight decay, or only in
SGD against Gadam, judged by the book's claim machinery (:func:`flatness.chapters.common.judge_claim`):
the Hessian measures' ratios with Welch's interval over seeds, the test-accuracy gain with a
bootstrap over seeds and, paired, over the 10,000 test images.

- C3: the high weight decay against none, at every setting of the other hyperparameters.
- C5: Gadam against SGD, each at its own weight-decay level of the same rank, at every
  learning-rate rank and size.

Each grid gives the verdict page one pair for each claim, the *headline* pair (the paper's
decay, 5e-4 coupled or 0.25 decoupled, at the middle learning rate and size), and the chapter
counts the outcomes over all pairs. They are judged under the fixed budget, as the paper
trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch

from flatness.analysis import names
from flatness.chapters import common
from flatness.chapters.predict.design import OPTIMISER_NAMES, Design
from flatness.chapters.predict.table import Collected
from flatness.results.entries import Run


def is_headline(claim: str, levels: dict, design: Design) -> bool:
    """The grid's headline pair of ``claim``: the highest weight decay (the paper's), at the
    middle learning rate and size, SGD's for C3."""
    middle = design.levels // 2
    top = len(design.weight_decay["sgd"]) - 1
    return (
        levels["lr"] == middle
        and levels["size"] == middle
        and levels["weight_decay"] in (-1, top)
        and (claim == "C5" or levels["optimiser"] == "sgd")
    )


@dataclass(frozen=True)
class Pair:
    """One judged pair: which claim, which grid, the setting in words, the judged claim, and
    whether it is the grid's headline pair."""

    claim: str
    grid: str
    setting: str
    judged: common.Claim
    headline: bool
    #: the setting in a few words: what the two arms share, then how they differ
    short: str = ""


def _label(design: Design, opt: str, wd: float, lr: float, size) -> str:
    what = "width" if design.size_field == "width" else "batch"
    return f"{OPTIMISER_NAMES[opt]}, lr {lr:g}, {what} {size:g}, wd {wd:g}"


def pairs(collected: Collected) -> list[Pair]:
    """Every C3 and C5 pair of every grid whose runs are all at hand, judged."""
    out, runs = [], collected.runs
    for design in collected.designs:
        for claim, arm, base, levels in _comparisons(design):
            a = [runs.get(c.key()) for c in arm]
            b = [runs.get(c.key()) for c in base]
            if any(r is None for r in a + b):
                continue
            out.append(_judge(collected.profile, design, claim, a, b, levels))
    return out


def _comparisons(design: Design):
    """(claim, arm configs, baseline configs, levels) of every pair in ``design``."""
    ranks = range(design.levels)
    for opt in design.optimisers:
        for lr, size in ((i, j) for i in ranks for j in ranks):
            decay = design.weight_decay[opt]
            arm = [design.config(opt, decay[-1], design.lr[opt][lr], design.sizes[size], s)
                   for s in design.seeds]  # fmt: skip
            base = [design.config(opt, decay[0], design.lr[opt][lr], design.sizes[size], s)
                    for s in design.seeds]  # fmt: skip
            yield "C3", arm, base, {"optimiser": opt, "lr": lr, "size": size, "weight_decay": -1}
    if not {"sgd", "gadam"} <= set(design.optimisers):
        return
    for wd in range(1, len(design.weight_decay["sgd"])):
        for lr, size in ((i, j) for i in ranks for j in ranks):
            arm = [design.config("gadam", design.weight_decay["gadam"][wd], design.lr["gadam"][lr],
                                 design.sizes[size], s) for s in design.seeds]  # fmt: skip
            base = [design.config("sgd", design.weight_decay["sgd"][wd], design.lr["sgd"][lr],
                                  design.sizes[size], s) for s in design.seeds]  # fmt: skip
            yield (
                "C5",
                arm,
                base,
                {"optimiser": "gadam", "lr": lr, "size": size, "weight_decay": wd},
            )


def _judge(profile: str, design: Design, claim: str, a: list[Run], b: list[Run], levels) -> Pair:
    ca, cb = a[0].config, b[0].config
    opt_a = "gadam" if ca.averaging else ca.optimiser
    size = getattr(ca, design.size_field)
    label_a = _label(design, opt_a, ca.weight_decay, ca.lr, size)
    opt_b = "gadam" if cb.averaging else cb.optimiser
    label_b = _label(design, opt_b, cb.weight_decay, cb.lr, getattr(cb, design.size_field))
    settings = common.TrainingSettings(
        profile=profile,
        dataset=ca.dataset,
        seeds=tuple(r.config.seed for r in a),
        arms=(common.Arm(label_a, ca.model), common.Arm(label_b, cb.model)),
        comparisons=((label_a, label_b),),
        claim=claim,
        reference=common.C3_REFERENCE if claim == "C3" else common.C5_REFERENCE,
    )
    results = common.Results(settings, {label_a: a, label_b: b}, None, torch.device("cpu"))
    judged = common.judge_claim(results, label_a, label_b)
    headline = is_headline(claim, levels, design)
    what = "width" if design.size_field == "width" else "batch"
    if claim == "C3":
        short = (f"{OPTIMISER_NAMES[opt_a]}, lr {ca.lr:g}, {what} {size:g}: "
                 f"wd {ca.weight_decay:g} vs {cb.weight_decay:g}")  # fmt: skip
    else:
        short = (f"{what} {size:g}: Gadam (lr {ca.lr:g}, wd {ca.weight_decay:g}) vs "
                 f"SGD (lr {cb.lr:g}, wd {cb.weight_decay:g})")  # fmt: skip
    setting = f"{design.name} grid: {label_a} vs {label_b}"
    judged = dataclasses.replace(judged, setting=setting)
    return Pair(claim, design.name, setting, judged, headline, short)


def counts(found: list[Pair]) -> pd.DataFrame:
    """How many pairs of each claim and grid reached each outcome, per half."""
    rows = []
    for p in found:
        for half in (p.judged.sharper, p.judged.better):
            rows.append({"claim": p.claim, "grid": p.grid, "half": half.name,
                         "outcome": half.outcome})  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=["claim", "grid", "half"])
    frame = pd.DataFrame(rows)
    table = frame.groupby(["claim", "grid", "half", "outcome"]).size().unstack(fill_value=0)
    return table.reset_index()


def dataset_words(collected: Collected) -> str:
    """The grids' data set as the page names it."""
    return names.display(collected.designs[0].shared["dataset"])
