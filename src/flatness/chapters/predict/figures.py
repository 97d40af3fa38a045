"""The chapter's figures: every measure's statistics with their intervals, psi per
hyperparameter, a measure against the gap, and the two stopping rules side by side."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from flatness.analysis import plotting
from flatness.chapters.measures.comparisons import display
from flatness.chapters.predict.design import HYPER_NAMES, HYPERS, RULES
from flatness.chapters.predict.table import COLUMNS, FAMILIES, STATISTICS, strongest


def _family_colours() -> dict:
    families = list(dict.fromkeys(FAMILIES[m] for m in COLUMNS))
    return dict(zip(families, plotting.colours(len(families)), strict=True))


def _order(scores: pd.DataFrame) -> list[str]:
    return [m for m in COLUMNS if m in set(scores.measure)]


def statistics(scores: pd.DataFrame, rule: str = "budget", stats=("tau", "Psi", "cmi")):
    """One row of panels per grid, one panel per statistic: each measure's value (dot) and
    its 95 % bootstrap interval over seeds (line), coloured by family."""
    part = scores[scores.rule == rule]
    if part.empty:
        return None
    grids = list(dict.fromkeys(part.grid))
    measures = _order(part)
    colours = _family_colours()
    fig, axes = plt.subplots(
        len(grids),
        len(stats),
        figsize=(plotting.WIDTH, len(grids) * (0.19 * len(measures) + 1.0) + 0.6),
        sharey=True,
        squeeze=False,
    )
    for row, grid in zip(axes, grids, strict=True):
        here = part[part.grid == grid].set_index("measure")
        for ax, stat in zip(row, stats, strict=True):
            for y, m in enumerate(reversed(measures)):
                if m not in here.index:
                    continue
                r, colour = here.loc[m], colours[FAMILIES[m]]
                if math.isfinite(r[f"{stat}_low"]) and r[f"{stat}_low"] < r[f"{stat}_high"]:
                    ax.plot([r[f"{stat}_low"], r[f"{stat}_high"]], [y, y], color=colour, lw=1.6)
                ax.plot(r[stat], y, "o", color=colour, ms=3.5)
            ax.axvline(0.0, color="0.3", lw=0.9, ls="--")
            # the grid's name once per row, so that the titles fit the column
            ax.set_title(f"{grid}: {STATISTICS[stat]}" if ax is row[0] else STATISTICS[stat])
            if stat != "cmi":
                ax.set_xlim(-1.05, 1.05)
            else:
                ax.set_xlim(left=0)
            ax.set_yticks(range(len(measures)), [display(m) for m in reversed(measures)])
    handles = [plt.Line2D([], [], color=c, marker="o", lw=1.6) for c in colours.values()]
    plotting.legend_below(fig, handles, list(colours), title="family")
    return fig


def psi(scores: pd.DataFrame, rule: str = "budget"):
    """psi_i of every measure (rows) and hyperparameter (columns), one heatmap per grid:
    +1 where a measure orders the gaps rightly whenever that hyperparameter alone changes."""
    part = scores[scores.rule == rule]
    if part.empty:
        return None
    grids = list(dict.fromkeys(part.grid))
    measures = _order(part)
    fig, axes = plt.subplots(
        1,
        len(grids),
        figsize=(plotting.WIDTH, 0.22 * len(measures) + 1.6),
        sharey=True,
        squeeze=False,
    )
    for ax, grid in zip(axes[0], grids, strict=True):
        here = part[part.grid == grid].set_index("measure").reindex(measures)
        matrix = here[[f"psi.{h}" for h in HYPERS]]
        matrix.columns = [HYPER_NAMES[h] for h in HYPERS]
        matrix.index = [display(m) for m in measures]
        sns.heatmap(
            matrix,
            ax=ax,
            vmin=-1,
            vmax=1,
            cmap="vlag",
            annot=True,
            fmt=".2f",
            annot_kws={"size": 7},
            cbar=ax is axes[0][-1],
        )
        ax.set_title(f"{grid}: ψ per hyperparameter")
        ax.tick_params(axis="x", rotation=30)
    return fig


def scatter_measures(scores: pd.DataFrame) -> list[str]:
    """The scatter's two measures: the paper's lambda_max, and the measure with the largest
    conditional score on the first grid under the fixed budget (the trace where that is
    lambda_max itself, or where no grid has scores)."""
    budget = scores[scores.rule == "budget"]
    if budget.empty:
        return ["lambda_max", "trace"]
    first = budget[budget.grid == budget.grid.iloc[0]].set_index("measure")
    best = first["cmi"].idxmax()
    return ["lambda_max", best if best != "lambda_max" else "trace"]


def scatter(frame: pd.DataFrame, measures, rule: str = "budget"):
    """Each grid's cells (means over seeds): a measure against the gap, one panel per grid and
    measure, coloured by the level of the hyperparameter that moves the measure most."""
    part = frame[(frame.rule == rule) & frame.reached]
    if part.empty:
        return None
    grids = list(dict.fromkeys(part.grid))
    fig, axes = plt.subplots(
        len(grids),
        len(measures),
        figsize=(plotting.WIDTH, 2.6 * len(grids) + 0.4),
        squeeze=False,
    )
    for row, grid in zip(axes, grids, strict=True):
        here = part[part.grid == grid]
        cells = here.groupby(list(HYPERS), as_index=False)[[*measures, "gap"]].mean()
        for ax, m in zip(row, measures, strict=True):
            hue = strongest(here, m)
            levels = sorted(cells[hue].unique(), key=str)
            for colour, level in zip(plotting.colours(len(levels)), levels, strict=True):
                pick = cells[cells[hue] == level]
                ax.scatter(pick[m], 100 * pick["gap"], s=12, color=colour, label=_level(hue, level))
            if (cells[m] > 0).all():
                ax.set_xscale("log")
            ax.set_xlabel(display(m))
            ax.set_ylabel("gap (points)")
            ax.set_title(f"{grid}: coloured by {HYPER_NAMES[hue]}")
            ax.legend(fontsize=7, title=HYPER_NAMES[hue], title_fontsize=7, loc="best")
    return fig


def _level(hyper: str, level) -> str:
    if hyper == "optimiser":
        return {"sgd": "SGD", "adam": "Adam", "gadam": "Gadam"}.get(level, str(level))
    return ("low", "middle", "high")[int(level)] if int(level) < 3 else str(level)


def rules(scores: pd.DataFrame, stat: str = "tau"):
    """Each measure's statistic under the two stopping rules, side by side, one panel per
    grid: the fixed budget (circles) and the training loss (squares)."""
    if scores.empty:
        return None
    grids = list(dict.fromkeys(scores.grid))
    measures = _order(scores)
    fig, axes = plt.subplots(
        1,
        len(grids),
        figsize=(plotting.WIDTH, 0.22 * len(measures) + 1.4),
        sharey=True,
        squeeze=False,
    )
    marks = dict(zip(RULES, ("o", "s"), strict=True))
    colours = dict(zip(RULES, plotting.colours(2), strict=True))
    for ax, grid in zip(axes[0], grids, strict=True):
        for rule, offset in zip(RULES, (0.15, -0.15), strict=True):
            here = scores[(scores.grid == grid) & (scores.rule == rule)].set_index("measure")
            for y, m in enumerate(reversed(measures)):
                if m not in here.index:
                    continue
                r = here.loc[m]
                if math.isfinite(r[f"{stat}_low"]):
                    ax.plot([r[f"{stat}_low"], r[f"{stat}_high"]], [y + offset] * 2,
                            color=colours[rule], lw=1.4)  # fmt: skip
                ax.plot(r[stat], y + offset, marks[rule], color=colours[rule], ms=3.5)
        ax.axvline(0.0, color="0.3", lw=0.9, ls="--")
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(f"{grid}: {STATISTICS[stat]}")
        ax.set_yticks(range(len(measures)), [display(m) for m in reversed(measures)])
    handles = [plt.Line2D([], [], color=colours[r], marker=marks[r], lw=1.4) for r in RULES]
    plotting.legend_below(fig, handles, [RULES[r] for r in RULES], title="stopping rule")
    return fig


def anchor_figure(found):
    """The diagonal linear networks: worst-case adaptive sharpness and lambda_max against the
    test loss, one point per network, coloured by the initialisation scale."""
    fig, axes = plt.subplots(1, 2, figsize=(plotting.WIDTH, 2.9))
    for ax, values, name in zip(
        axes,
        (found.adaptive_worst_l2, found.lambda_max),
        ("adaptive sharpness, worst ℓ2 (ρ = 0.5)", "λ_max"),
        strict=True,
    ):
        points = ax.scatter(values, found.test_loss, c=np.log10(found.alpha), s=14, cmap="viridis")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("test loss")
    fig.colorbar(points, ax=axes, label="log10 initialisation scale α")
    return fig
