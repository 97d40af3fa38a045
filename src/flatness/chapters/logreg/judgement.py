"""Claim C3 for softmax regression, judged from the chapter's runs: weight decay against the
smallest, measure ratios and test-accuracy differences with their intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flatness import data as datasets
from flatness.analysis import plotting, stats
from flatness.chapters import common
from flatness.chapters.logreg.design import (
    MEASURES,
)
from flatness.chapters.logreg.runs import best_weight_decay, final_table
from flatness.results.entries import Run


def claim(runs: list[Run], data: datasets.Dataset, *, device=None, resamples: int = 2000):
    """Claim C3 for softmax regression, as a :class:`~flatness.chapters.common.Claim`.

    *Sharper*: the largest weight decay against the smallest (the baseline, normally 0), each
    measure's ratio with Welch's t interval over seeds. *Generalises better*: the weight decay
    with the best mean **validation** accuracy (the test set never chooses it) against the
    baseline, in test accuracy, with a bootstrap over seeds and, paired, over test examples.
    Both halves are "not at a minimum" when a run they compare ended above
    :data:`~flatness.chapters.common.MINIMUM_LOSS_SHARE` ln K training loss.
    """
    table = final_table(runs)
    lo, hi = table.weight_decay.min(), table.weight_decay.max()
    best = best_weight_decay(runs)

    def arm(wd):
        return f"weight decay {wd:g}"

    ratios = {
        m: common.effect(table[table.weight_decay == hi][m], table[table.weight_decay == lo][m])
        for m in MEASURES
    }

    def correct(wd):
        return np.stack(
            [common.correct(r, data, device) for r in runs if r.config.weight_decay == wd]
        )

    acc = stats.paired_bootstrap(correct(best), correct(lo), resamples=resamples)
    sharper = common.sharper_half(ratios, arm(hi), arm(lo), common.C3_REFERENCE)
    better = common.better_half(
        acc, f"{arm(best)} (best on validation data)", arm(lo), common.C3_REFERENCE
    )
    # like every training chapter's: only low-loss solutions are evidence for or against C3
    share = common.MINIMUM_LOSS_SHARE
    far = [
        r
        for r in runs
        if r.config.weight_decay in (lo, hi, best) and not common.at_minimum(r, share)
    ]
    if far:
        sharper = common.not_at_minimum(sharper, far, share, first=True)
        better = common.not_at_minimum(better, far, share, first=False)
    return common.Claim(
        "C3",
        f"softmax regression on {runs[0].config.dataset}",
        arm(hi),
        arm(lo),
        sharper,
        better,
        common.combine(sharper, better),
    )


def effects(runs: list[Run], data: datasets.Dataset, *, device=None, resamples: int = 2000):
    """Every weight decay against the smallest: measure ratios and test-accuracy differences.

    Returns:
        ``(ratios, accuracy)``: frames for :func:`flatness.analysis.plotting.forest`, with the same
        intervals the verdict uses (Welch t on logs; paired bootstrap over seeds and examples).
    """
    table = final_table(runs)
    lo = table.weight_decay.min()
    base = table[table.weight_decay == lo]
    base_correct = np.stack(
        [common.correct(r, data, device) for r in runs if r.config.weight_decay == lo]
    )
    ratio_rows, acc_rows = [], []
    for wd in sorted(table.weight_decay.unique()):
        if wd == lo:
            continue
        arm = table[table.weight_decay == wd]
        for m in MEASURES:
            ratio_rows.append(
                {
                    "row": f"wd {wd:g}: {plotting.name(m)}",
                    "interval": stats.ratio(arm[m], base[m]),
                    "group": m,
                }
            )
        correct = np.stack(
            [common.correct(r, data, device) for r in runs if r.config.weight_decay == wd]
        )
        iv = stats.paired_bootstrap(correct, base_correct, resamples=resamples)
        acc_rows.append({"row": f"wd {wd:g}", "interval": iv})
    return pd.DataFrame(ratio_rows), pd.DataFrame(acc_rows)
