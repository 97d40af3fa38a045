"""The chapter's figures: the ratios of every measure in every comparison, and the measures
along the rescaling orbit."""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from flatness.analysis import plotting
from flatness.chapters.measures.comparisons import Comparison, display
from flatness.chapters.measures.computed import COLUMNS, FAMILIES
from flatness.chapters.measures.prose import STILL, orbit_spread


def figure(judged: pd.DataFrame, found: list[Comparison], claim: str):
    """The ratios with their intervals in the comparisons of ``claim`` ("C3" or "C5"): one
    panel per comparison, one row per measure, colour by family; right of the dashed line the
    arm is sharper. A measure whose effect is a difference (a value not positive) or has no
    value is left out of its panel."""
    found = [c for c in found if c.claim == claim]
    if not found:
        return None
    families = list(dict.fromkeys(FAMILIES.values()))
    colours = dict(zip(families, plotting.colours(len(families))))
    ncols = len(found) if len(found) <= 4 else 3
    nrows = math.ceil(len(found) / ncols)
    rows = len(COLUMNS)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(plotting.WIDTH, nrows * (0.2 * rows + 1.3) + 0.8),
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    for ax, c in zip(axes.flat, found):
        part = judged[judged.comparison == c.label]
        for _, r in part.iterrows():
            iv, y = r.interval, rows - 1 - COLUMNS.index(r.measure)
            colour = colours[r.family]
            if iv.null != 1.0 or not math.isfinite(iv.estimate):
                continue
            if iv.judgeable:
                ax.plot([iv.low, iv.high], [y, y], color=colour, lw=1.6)
                ax.plot(iv.estimate, y, "o", color=colour, ms=3.5)
            else:
                ax.plot(iv.estimate, y, "x", color=colour, ms=5)
        ax.axvline(1.0, color="0.3", lw=0.9, ls="--")
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        ax.set_xlim(min(low, 0.5), max(high, 2.0))  # at least a factor of 2 either way
        ax.xaxis.set_major_locator(mticker.LogLocator(numticks=4))
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        title = f"{textwrap.fill(c.setting, 26)}\n{c.short}"
        if not c.at_minimum:
            title += "\n(not at a minimum)"
        ax.set_title(title, fontsize="x-small")
        ax.tick_params(axis="x", labelsize="x-small")
    for ax in axes.flat[len(found) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_yticks(range(rows), [display(m) for m in COLUMNS][::-1], fontsize="small")
        ax.set_ylim(-0.6, rows - 0.4)
    for ax in axes[-1]:
        ax.set_xlabel("ratio, arm / baseline", fontsize="small")
    handles = [plt.Line2D([], [], color=colours[f], marker="o", lw=1.6) for f in families]
    plotting.legend_below(fig, handles, families)
    return fig


def orbit_figure(frame: pd.DataFrame):
    """Each measure over its value at ``a = 1`` along the orbit: on the left those that move
    (log scale), on the right those that stay within 1 % of it (:func:`orbit_spread`)."""
    base = frame[np.isclose(frame.scale, 1.0)].iloc[0]
    spread = orbit_spread(frame)
    moving = [m for m in COLUMNS if spread.get(m, 0.0) >= STILL]
    still = [m for m in COLUMNS if m in spread and spread[m] < STILL]
    families = list(dict.fromkeys(FAMILIES.values()))
    colours = dict(zip(families, plotting.colours(len(families))))
    fig, axes = plt.subplots(1, 2, figsize=(plotting.WIDTH, 4.6), layout="constrained")
    handles, labels = [], []
    for ax, chosen, title in (
        (axes[0], moving, "measures that change"),
        (axes[1], still, "measures within 1 % of their value at a = 1"),
    ):
        for k, m in enumerate(chosen):
            (line,) = ax.plot(
                frame.scale,
                frame[m] / base[m],
                marker="os^Dv<>"[k % 7],
                ms=4,
                color=colours[FAMILIES[m]],
                ls=("-", "--", ":")[k % 3],
            )
            handles.append(line)
            labels.append(display(m))
        ax.set_xscale("log")
        ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("rescaling a")
    axes[0].set_yscale("log")
    axes[1].set_ylim(0.98, 1.02)
    axes[0].set_ylabel("value / value at a = 1")
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig
