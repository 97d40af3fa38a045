"""The book's one house style (seaborn, a colour-blind-safe palette) and its shared figures.

Chapters call :func:`style` once, then these helpers; each returns the matplotlib figure.
Figures are sized for the book's text column (about 7 inches wide) at 110 dpi, so that
labels stay readable without zooming. Measures that span decades get log axes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from flatness.analysis import names
from flatness.analysis.stats import Interval

#: Column width of the book in inches; every figure is at most this wide.
WIDTH = 7.2
PALETTE = "colorblind"
#: How measures are written on axes (mathtext) and in tables (plain text): the book's one
#: display-name table, :mod:`flatness.analysis.names`.
LABELS = names.TEX
NAMES = names.NAMES


def style() -> None:
    """Apply the house style: seaborn's whitegrid, the colour-blind palette, 110 dpi."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.85)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "figure.figsize": (WIDTH, 3.2),
            "axes.titlesize": 10,
            "legend.fontsize": 8,
            "legend.title_fontsize": 8,
        }
    )


def colours(n: int) -> list:
    """``n`` colours of the house palette."""
    return sns.color_palette(PALETTE, n)


def label(column: str) -> str:
    return names.tex(column)


def name(column: str) -> str:
    return names.display(column)


def curves(history: pd.DataFrame, columns, *, hue: str, hue_order=None, logy=True, ncols: int = 4):
    """One panel per column against epoch, one line per ``hue`` value (mean over seeds, band
    = 95 % t interval of the mean over seeds, seaborn's ``errorbar=("ci", 95)`` is a bootstrap:
    here the seeds are few, so the band is the seeds' min-max range, which the caption says)."""
    columns = [c for c in columns if c in history and history[c].notna().any()]
    ncols = min(ncols, len(columns))
    nrows = int(np.ceil(len(columns) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(WIDTH, 2.4 * nrows + 0.4), sharex=True, squeeze=False
    )
    order = hue_order if hue_order is not None else sorted(history[hue].unique())
    cols = colours(len(order))
    for ax, column in zip(axes.flat, columns):
        for value, colour in zip(order, cols):
            sub = history[history[hue] == value].dropna(subset=[column])
            if sub.empty:
                continue
            per_epoch = sub.groupby("epoch")[column]
            mean = per_epoch.mean()
            ax.plot(mean.index, mean.values, color=colour, label=str(value), marker=".", ms=3)
            ax.fill_between(
                mean.index, per_epoch.min(), per_epoch.max(), color=colour, alpha=0.2, lw=0
            )
        if logy:
            ax.set_yscale("log")
        ax.set_title(label(column))
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    axes.flat[0].legend(title=name(hue), frameon=True)
    fig.tight_layout()
    return fig


def forest(
    effects: pd.DataFrame, *, xlabel: str, log: bool = True, null: float | None = None, ax=None
):
    """Effects with their intervals, one row each: columns ``row`` (label), ``interval``
    (an :class:`~flatness.analysis.stats.Interval`) and optionally ``group`` (colour). Draws on ``ax``
    when given (for a figure of several panels), else on a new figure."""
    rows = effects.reset_index(drop=True)
    groups = list(dict.fromkeys(rows["group"])) if "group" in rows else [None]
    cols = dict(zip(groups, colours(len(groups))))
    if ax is None:
        fig, ax = plt.subplots(figsize=(WIDTH, 0.32 * len(rows) + 1.0))
    else:
        fig = ax.figure
    for i, r in rows.iterrows():
        iv: Interval = r["interval"]
        colour = cols[r["group"] if "group" in rows else None]
        y = len(rows) - 1 - i
        if iv.judgeable:
            ax.plot([iv.low, iv.high], [y, y], color=colour, lw=2)
            ax.plot(iv.estimate, y, "o", color=colour)
        else:
            ax.plot(iv.estimate, y, "x", color=colour, ms=7)
    ax.set_yticks(range(len(rows)), list(rows["row"])[::-1])
    ref = null if null is not None else (1.0 if log else 0.0)
    ax.axvline(ref, color="0.3", lw=0.9, ls="--")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    if groups != [None]:
        handles = [plt.Line2D([], [], color=c, marker="o", lw=2) for c in cols.values()]
        ax.legend(handles, [str(g) for g in cols], fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def forest_pair(top: pd.DataFrame, bottom: pd.DataFrame, *, top_label: str, bottom_label: str):
    """Two forest plots in one figure: ratios (log axis) above, differences (linear) below."""
    fig, (a, b) = plt.subplots(
        2,
        1,
        figsize=(WIDTH, 0.3 * (len(top) + len(bottom)) + 2.0),
        gridspec_kw={"height_ratios": [max(len(top), 1), max(len(bottom), 1)]},
    )
    forest(top, xlabel=top_label, ax=a)
    forest(bottom, xlabel=bottom_label, log=False, ax=b)
    return fig


def scatter(final: pd.DataFrame, x_columns, y: str, *, hue: str, logx: bool = True):
    """``y`` (e.g. test accuracy) against each of ``x_columns``, one point per run."""
    x_columns = [c for c in x_columns if c in final and final[c].notna().any()]
    fig, axes = plt.subplots(1, len(x_columns), figsize=(WIDTH, 2.8), sharey=True, squeeze=False)
    for i, (ax, column) in enumerate(zip(axes.flat, x_columns)):
        sns.scatterplot(data=final, x=column, y=y, hue=hue, style=hue, ax=ax, s=40, legend=i == 0)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(label(column))
        ax.set_ylabel(label(y))
    if axes.flat[0].get_legend() is not None:
        axes.flat[0].legend(title=name(hue), fontsize=7)
    fig.tight_layout()
    return fig


def scaling(frame: pd.DataFrame, *, xlabel: str = r"scale $\alpha$", mark: float | None = None):
    """Training loss, the three measures and the trace bound against the scale alpha (log-log),
    from the columns ``alpha``, ``train_loss``, ``lambda_max``, ``trace``, ``frobenius`` and
    ``bound`` of :func:`flatness.chapters.theory.scaling`; a grey line at ``mark``."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.75, 3.4))
    ax.plot(frame.alpha, frame.train_loss, "k-", label="training loss $L$")
    for column, marker in (("lambda_max", "o"), ("trace", "s"), ("frobenius", "^")):
        ax.plot(frame.alpha, frame[column], marker=marker, ms=3, label=label(column))
    ax.plot(frame.alpha, frame.bound, "k--", lw=0.8, label=r"$2L\max_i\|\tilde x_i\|^2$")
    if mark is not None:
        ax.axvline(mark, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))  # the lines span the box
    fig.tight_layout()
    return fig


def densities(panels: list[tuple[str, np.ndarray, np.ndarray, float]], *, ncols: int = 3):
    """Spectral densities: each panel ``(title, grid, density, weight_norm)`` is plotted raw
    (eigenvalue axis) and its weight norm written in the corner."""
    ncols = min(ncols, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 2.3 * nrows + 0.3), squeeze=False)
    for ax, (title, grid, density, norm) in zip(axes.flat, panels):
        ax.plot(grid, density, lw=1.2)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.text(0.97, 0.92, f"‖w‖ = {norm:.3g}", transform=ax.transAxes, ha="right", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def bn_modes(final: pd.DataFrame, *, hue: str):
    """Each measure in BatchNorm train mode against eval mode, one point per run, log-log."""
    pairs = [(m, f"{m}_bn_train") for m in ("lambda_max", "trace", "frobenius")]
    pairs = [(a, b) for a, b in pairs if a in final and b in final]
    fig, axes = plt.subplots(1, len(pairs), figsize=(WIDTH, 2.8), squeeze=False)
    for i, (ax, (a, b)) in enumerate(zip(axes.flat, pairs)):
        sns.scatterplot(data=final, x=a, y=b, hue=hue, style=hue, ax=ax, s=40, legend=i == 0)
        lo = min(final[a].min(), final[b].min())
        hi = max(final[a].max(), final[b].max())
        ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{label(a)}, eval mode")
        ax.set_ylabel(f"{label(a)}, train mode")
    if axes.flat[0].get_legend() is not None:
        axes.flat[0].legend(title=name(hue), fontsize=7)
    fig.tight_layout()
    return fig


def in_points(effects: pd.DataFrame) -> pd.DataFrame:
    """Accuracy-difference intervals (fractions) rescaled to percentage points."""
    import dataclasses

    out = effects.copy()
    out["interval"] = [
        dataclasses.replace(iv, estimate=100 * iv.estimate, low=100 * iv.low, high=100 * iv.high)
        for iv in out["interval"]
    ]
    return out


def heatmaps(matrices, *, titles, block: int | None = None):
    """log10 |entry| of square matrices side by side, one colour scale, block lines every
    ``block`` rows and columns."""
    mats = [np.log10(np.abs(m) + 1e-12) for m in matrices]
    hi = max(m.max() for m in mats)
    lo = max(hi - 8, min(m.min() for m in mats))
    fig, axes = plt.subplots(1, len(mats), figsize=(WIDTH, WIDTH / len(mats) * 0.9), squeeze=False)
    for ax, m, title in zip(axes.flat, mats, titles):
        im = ax.imshow(m, vmin=lo, vmax=hi, cmap="mako_r", interpolation="nearest")
        if block:
            for edge in range(block, len(m), block):
                ax.axhline(edge - 0.5, color="w", lw=0.4)
                ax.axvline(edge - 0.5, color="w", lw=0.4)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label="log10 |H_ij|")
    return fig


def spectra(found, *, scaled: bool, ncols: int = 3):
    """One panel per model; a smoothed density per run, against lambda or lambda ||w||^2.

    ``found``: :class:`flatness.chapters.spectra.Spectrum` objects. The legend gives each run's
    weight norm, so no density is shown without it.
    """
    models = list(dict.fromkeys(s.model for s in found))
    ncols = min(ncols, len(models))
    nrows = int(np.ceil(len(models) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 2.2 * nrows + 0.4), squeeze=False)
    for ax, model in zip(axes.flat, models):
        group = [s for s in found if s.model == model]
        for s, colour in zip(group, colours(len(group))):
            factor = s.weight_norm**2 if scaled else 1.0
            nodes = s.nodes * factor
            lo, hi = nodes.min(), nodes.max()
            pad = 0.05 * (hi - lo) if hi > lo else 1.0
            grid = np.linspace(lo - pad, hi + pad, 400)
            sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(hi), 1.0)) if hi > lo else 1.0
            scaled_spectrum = type(s)(
                s.chapter, s.model, s.arm, s.weight_norm, nodes, s.weights, s.source, s.key
            )
            ax.plot(
                grid,
                scaled_spectrum.density(grid, sigma) + 1e-12,
                color=colour,
                lw=1.1,
                label=f"{s.arm} (‖w‖ {s.weight_norm:.3g})",
            )
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6 * ax.get_ylim()[1])
        ax.set_title(model)
        ax.set_xlabel(r"$\lambda \|w\|^2$" if scaled else r"$\lambda$")
        ax.legend(fontsize=6.5)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
