"""The book's one house style (seaborn, a colour-blind-safe palette) and its shared figures.

Chapters call :func:`style` once, then these helpers; each returns the matplotlib figure.
Figures are SVG, sized for the book's text column (about 7 inches, some 700 pixels wide), with
fonts of :data:`FONT` points, about 13 pixels there, and legends outside the axes. Measures that
span decades get log axes, accuracies linear ones; few measurements are drawn as points.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import scale as mscale
from matplotlib import ticker

from flatness.analysis import names
from flatness.analysis.stats import Interval

#: Column width of the book in inches; every figure is at most this wide.
WIDTH = 6.7
PALETTE = "colorblind"
#: Font size in points; at the column width a point is about 1.3 pixels.
FONT = 10
#: A series measured at fewer epochs than this is drawn as points, not as a line.
FEW = 5
#: How measures are written on axes (mathtext) and in tables (plain text): the book's one
#: display-name table, :mod:`flatness.analysis.names`.
LABELS = names.TEX
NAMES = names.NAMES


def style() -> None:
    """Apply the house style: seaborn's whitegrid, the colour-blind palette, fonts readable at
    the column width, constrained layout (room for legends outside the axes) and SVG figures in
    notebooks, sharp at any zoom."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update(
        {
            "figure.figsize": (WIDTH, 3.2),
            "figure.constrained_layout.use": True,
            "font.size": FONT,
            "axes.titlesize": FONT,
            "axes.labelsize": FONT,
            "xtick.labelsize": FONT - 1,
            "ytick.labelsize": FONT - 1,
            "legend.fontsize": FONT - 1,
            "legend.title_fontsize": FONT - 1,
            "figure.dpi": 110,
            "savefig.dpi": 220,  # where a PNG is asked for, twice the screen's pixels
            "svg.hashsalt": "flatness",  # the same figure gives the same SVG
        }
    )
    mscale.register_scale(HouseLogScale)
    _svg_in_notebooks()


#: A log axis spanning fewer decades than this is ticked between its powers of ten too, in
#: plain numbers; one spanning more, at powers of ten.
SHORT_DECADES = 3


def _decades(low: float, high: float) -> float:
    low, high = sorted((low, high))
    return float(np.log10(high / low)) if low > 0 else np.inf


class _LogTicks(ticker.LogLocator):
    """Ticks of a short log axis: a few plain values under a decade (a measure that moves by
    20 % has no power of ten in view), 1, 2 and 5 or 1 and 3 times powers of ten up to
    :data:`SHORT_DECADES`; matplotlib's powers of ten beyond."""

    def tick_values(self, vmin, vmax):
        span = _decades(vmin, vmax)
        if span < 1:
            ticks = ticker.MaxNLocator(4, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
            return ticks[ticks > 0]
        if span < SHORT_DECADES:
            subs = (1.0, 2.0, 5.0) if span < 1.5 else (1.0, 3.0)
            return ticker.LogLocator(self._base, subs=subs).tick_values(vmin, vmax)
        return super().tick_values(vmin, vmax)


class _LogLabels(ticker.LogFormatterSciNotation):
    """Plain numbers (0.35, 60) on a short log axis (:class:`_LogTicks`), where powers of ten
    would read 3.5 x 10^-1; powers of ten on a long one."""

    def __call__(self, x, pos=None):
        if _decades(*self.axis.get_view_interval()) < SHORT_DECADES:
            return f"{x:.4g}"
        return super().__call__(x, pos)


class HouseLogScale(mscale.LogScale):
    """matplotlib's log scale with readable ticks on short ranges (:class:`_LogTicks`) and
    no labels on minor ticks; :func:`style` registers it as ``"log"``, so every
    ``set_yscale("log")`` of the book gets it."""

    name = "log"

    def __init__(self, *, base=10, subs=None, nonpositive="clip"):
        super().__init__(base=base, subs=subs, nonpositive=nonpositive)

    def set_default_locators_and_formatters(self, axis):
        super().set_default_locators_and_formatters(axis)
        axis.set_major_locator(_LogTicks(self.base))
        axis.set_major_formatter(_LogLabels(self.base))
        axis.set_minor_formatter(ticker.NullFormatter())


def _svg_in_notebooks() -> None:
    """Make the notebook's inline backend emit SVG (myst-nb prefers it to PNG); nothing outside
    IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is None:
        return
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("svg")


def colours(n: int) -> list:
    """``n`` colours of the house palette."""
    return sns.color_palette(PALETTE, n)


def label(column: str) -> str:
    return names.tex(column)


def name(column: str) -> str:
    return names.display(column)


def linear(column: str) -> bool:
    """Whether ``column`` gets a linear axis: accuracies are shares between 0 and 1; losses and
    measures, which span decades, get log axes."""
    return column.endswith("_acc") or "accuracy" in column


def _axis(ax, column: str, *, log: bool, which: str = "y") -> None:
    """Label ``ax``'s ``which`` axis with ``column`` and give it the scale its kind wants
    (:func:`linear`): accuracies in per cent on a linear axis, the rest on a log one if ``log``."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_label_text(label(column))
    if linear(column):
        axis.set_major_formatter(ticker.PercentFormatter(1.0))
    elif log:
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")


def legend_below(fig, handles, labels, *, title: str | None = None):
    """One legend for the whole figure, under its panels (outside every axes: constrained
    layout makes room), in as many columns as fit the column width."""
    labels = [names.words(t) for t in labels]
    longest = max((len(t) for t in labels), default=1)
    fits = int(WIDTH * 72 / (0.6 * (FONT - 1) * longest + 40))  # points per entry, roughly
    columns = max(1, min(len(labels), fits))
    return fig.legend(
        handles, labels, title=title, loc="outside lower center", ncols=columns, frameon=False
    )


def legend_right(fig, handles, labels, *, title: str | None = None):
    """One legend right of the figure's panels (outside every axes)."""
    labels = [names.words(t) for t in labels]
    return fig.legend(handles, labels, title=title, loc="outside right upper", frameon=False)


def legend_outside(fig, *, where: str = "below", title: str | None = None):
    """Gather the legend entries of every axes of ``fig`` (an axes' legend, seaborn's
    included, else its labelled artists; a label shared by panels once) into one legend
    ``where`` ("below" or "right") the panels, outside them; the axes' own legends go.
    The title is ``title``, else the first axes legend's."""
    entries, found = {}, None
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            found = found or legend.get_title().get_text()
            pairs = zip(legend.legend_handles, [t.get_text() for t in legend.get_texts()])
            legend.remove()
        else:
            pairs = zip(*ax.get_legend_handles_labels())
        for handle, text in pairs:
            entries.setdefault(text, handle)
    if not entries:
        return None
    place = legend_right if where == "right" else legend_below
    return place(fig, list(entries.values()), list(entries), title=title or found or None)


def curves(history: pd.DataFrame, columns, *, hue: str, hue_order=None, logy=True, ncols: int = 4):
    """One panel per column against epoch, one series per ``hue`` value: the mean over seeds and
    the seeds' minimum to maximum. A series measured at fewer than :data:`FEW` epochs is drawn as
    points with error bars (a line between two measurements would invent the epochs between);
    longer series as a line with a band. Accuracies get linear axes in per cent, the rest log
    axes when ``logy`` (:func:`linear`)."""
    columns = [c for c in columns if c in history and history[c].notna().any()]
    ncols = min(ncols, len(columns))
    nrows = int(np.ceil(len(columns) / ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(WIDTH, 2.3 * nrows + 0.6),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    order = hue_order if hue_order is not None else sorted(history[hue].unique())
    cols = colours(len(order))
    for ax, column in zip(axes.flat, columns):
        # the spacing of this measure's epochs: points of one epoch sit side by side in it
        epochs = np.sort(history.dropna(subset=[column])["epoch"].unique())
        step = float(np.diff(epochs).min()) if len(epochs) > 1 else 1.0
        for k, (value, colour) in enumerate(zip(order, cols)):
            sub = history[history[hue] == value].dropna(subset=[column])
            if sub.empty:
                continue
            per_epoch = sub.groupby("epoch")[column]
            mean, low, high = per_epoch.mean(), per_epoch.min(), per_epoch.max()
            if len(mean) < FEW:
                # side by side, so that error bars of the same epoch do not hide each other
                shift = (k - (len(order) - 1) / 2) * 0.3 * step / max(len(order), 1)
                ax.errorbar(
                    mean.index + shift,
                    mean.values,
                    yerr=[mean.values - low.values, high.values - mean.values],
                    fmt="o",
                    color=colour,
                    ms=5,
                    capsize=3,
                    lw=1.2,
                )
            else:
                ax.plot(mean.index, mean.values, color=colour, lw=1.4)
                ax.fill_between(mean.index, low, high, color=colour, alpha=0.2, lw=0)
        _axis(ax, column, log=logy)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
        # the panel above an empty slot is the last of its column: it shows its epochs
        above = axes.flat[list(axes.flat).index(ax) - ncols]
        above.xaxis.set_tick_params(labelbottom=True)
    handles = [plt.Line2D([], [], color=c, marker="o", ms=5, lw=1.4) for c in cols[: len(order)]]
    legend_below(fig, handles, [_value(v) for v in order], title=name(hue))
    return fig


def _value(v) -> str:
    """A legend entry for a value: 0.0005 and 0, not 0.0005 and 0.0."""
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def forest(
    effects: pd.DataFrame,
    *,
    xlabel: str,
    log: bool = True,
    null: float | None = None,
    ax=None,
    palette: dict | None = None,
):
    """Effects with their intervals, one row each: columns ``row`` (label), ``interval``
    (an :class:`~flatness.analysis.stats.Interval`) and optionally ``group`` (colour). On a new
    figure, with the legend of the groups under it; on ``ax`` when given (a panel of a larger
    figure, whose legend and ``palette``, group to colour, are the caller's)."""
    rows = effects.reset_index(drop=True)
    cols = palette if palette is not None else _group_colours([rows])
    new = ax is None
    if new:
        fig, ax = plt.subplots(figsize=(WIDTH, _rows_height([rows]) + 1.4), layout="constrained")
    else:
        fig = ax.figure
    for i, r in rows.iterrows():
        iv: Interval = r["interval"]
        colour = cols.get(r["group"] if "group" in rows else None, "C0")
        y = len(rows) - 1 - i
        if iv.judgeable:
            ax.plot([iv.low, iv.high], [y, y], color=colour, lw=2)
            ax.plot(iv.estimate, y, "o", color=colour)
        else:
            ax.plot(iv.estimate, y, "x", color=colour, ms=7)
    ax.set_yticks(range(len(rows)), [_wrap(r) for r in rows["row"]][::-1])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ref = null if null is not None else (1.0 if log else 0.0)
    ax.axvline(ref, color="0.3", lw=0.9, ls="--")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    if new and None not in cols:
        legend_below(fig, *_group_legend(cols))
    return fig


#: Row labels of a forest plot wrap at this many characters: the intervals keep at least
#: half of the column.
ROW_CHARACTERS = 42


def _wrap(text) -> str:
    return textwrap.fill(str(text), ROW_CHARACTERS, break_on_hyphens=False)


def _rows_height(frames) -> float:
    """Inches for the rows of forest plots, each as tall as its wrapped label."""
    lines = [_wrap(r).count("\n") + 1 for f in frames for r in f["row"]]
    return sum(0.12 + 0.17 * n for n in lines)


def _group_colours(frames) -> dict:
    """One house colour per group of the frames' ``group`` columns, in order of appearance
    (``{None: colour}`` where no frame has groups)."""
    groups = [g for f in frames if "group" in f for g in f["group"]]
    groups = list(dict.fromkeys(groups)) or [None]
    return dict(zip(groups, colours(len(groups))))


def _group_legend(cols: dict) -> tuple[list, list]:
    handles = [plt.Line2D([], [], color=c, marker="o", lw=2) for c in cols.values()]
    return handles, [str(g) for g in cols]


def forest_pair(top: pd.DataFrame, bottom: pd.DataFrame, *, top_label: str, bottom_label: str):
    """Two forest plots in one figure: ratios (log axis) above, differences (linear) below, one
    colour per group in both and one legend under them."""
    fig, (a, b) = plt.subplots(
        2,
        1,
        figsize=(WIDTH, _rows_height([top, bottom]) + 2.6),
        gridspec_kw={"height_ratios": [max(_rows_height([f]), 0.3) for f in (top, bottom)]},
        layout="constrained",
    )
    cols = _group_colours([top, bottom])
    forest(top, xlabel=top_label, ax=a, palette=cols)
    forest(bottom, xlabel=bottom_label, log=False, ax=b, palette=cols)
    if None not in cols:
        legend_below(fig, *_group_legend(cols))
    return fig


def scatter(final: pd.DataFrame, x_columns, y: str, *, hue: str, logx: bool = True):
    """``y`` (e.g. test accuracy) against each of ``x_columns``, one point per run; the legend
    under the panels."""
    x_columns = [c for c in x_columns if c in final and final[c].notna().any()]
    fig, axes = plt.subplots(
        1, len(x_columns), figsize=(WIDTH, 3.2), sharey=True, squeeze=False, layout="constrained"
    )
    for i, (ax, column) in enumerate(zip(axes.flat, x_columns)):
        sns.scatterplot(data=final, x=column, y=y, hue=hue, style=hue, ax=ax, s=45, legend=i == 0)
        _axis(ax, column, log=logx, which="x")
        _axis(ax, y, log=False)
    legend_outside(fig, title=name(hue))
    return fig


def scaling(frame: pd.DataFrame, *, xlabel: str = r"scale $\alpha$", mark: float | None = None):
    """Training loss, the three measures and the trace bound against the scale alpha (log-log),
    from the columns ``alpha``, ``train_loss``, ``lambda_max``, ``trace``, ``frobenius`` and
    ``bound`` of :func:`flatness.chapters.theory.scaling`; a grey line at ``mark``."""
    fig, ax = plt.subplots(figsize=(WIDTH, 3.4), layout="constrained")
    ax.plot(frame.alpha, frame.train_loss, "k-", label="training loss $L$")
    for column, marker in (("lambda_max", "o"), ("trace", "s"), ("frobenius", "^")):
        ax.plot(frame.alpha, frame[column], marker=marker, ms=4, label=label(column))
    ax.plot(frame.alpha, frame.bound, "k--", lw=0.9, label=r"$2L\max_i\|\tilde x_i\|^2$")
    if mark is not None:
        ax.axvline(mark, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss, measure")
    legend_outside(fig, where="right")
    return fig


def bn_modes(final: pd.DataFrame, *, hue: str):
    """Each measure in BatchNorm train mode against eval mode, one point per run, log-log; the
    legend under the panels."""
    pairs = [(m, f"{m}_bn_train") for m in ("lambda_max", "trace", "frobenius")]
    pairs = [(a, b) for a, b in pairs if a in final and b in final]
    fig, axes = plt.subplots(
        1, len(pairs), figsize=(WIDTH, 3.0), squeeze=False, layout="constrained"
    )
    for i, (ax, (a, b)) in enumerate(zip(axes.flat, pairs)):
        sns.scatterplot(data=final, x=a, y=b, hue=hue, style=hue, ax=ax, s=45, legend=i == 0)
        lo = min(final[a].min(), final[b].min())
        hi = max(final[a].max(), final[b].max())
        ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{label(a)}, eval mode")
        ax.set_ylabel(f"{label(a)}, train mode")
    legend_outside(fig, title=name(hue))
    return fig


def heatmaps(matrices, *, titles, block: int | None = None):
    """log10 |entry| of square matrices side by side, one colour scale, block lines every
    ``block`` rows and columns."""
    mats = [np.log10(np.abs(m) + 1e-12) for m in matrices]
    hi = max(m.max() for m in mats)
    lo = max(hi - 8, min(m.min() for m in mats))
    fig, axes = plt.subplots(
        1, len(mats), figsize=(WIDTH, WIDTH / len(mats) * 0.85), squeeze=False, layout="constrained"
    )
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
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label=r"$\log_{10} |H_{ij}|$")
    return fig


#: :func:`spectra`'s axis is linear up to the magnitude under which this share of the
#: spectrum's weight lies, and no less than :data:`DEPTH` x the largest magnitude.
LINEAR_SHARE = 0.05
#: The most orders of magnitude below the largest |eigenvalue| that :func:`spectra` resolves.
DEPTH = 1e-6


def spectrum_bins(values: np.ndarray, weights: np.ndarray | None = None, *, per_decade: int = 5):
    """Bin edges and the linear threshold for eigenvalues ``values`` (with ``weights``, default
    equal) on a symmetric-log axis: equal widths on the axis, linear within the threshold
    (:data:`LINEAR_SHARE`, :data:`DEPTH`), logarithmic beyond, to the largest magnitude.

    A Hessian's spectrum is mostly a bulk near 0 with a few outliers orders of magnitude
    larger; on a linear axis the bulk is one spike at 0 and the outliers' bins are invisible."""
    values = np.asarray(values, dtype=float)
    weights = np.full(len(values), 1.0) if weights is None else np.asarray(weights, dtype=float)
    magnitude = np.abs(values)
    top = float(magnitude.max()) if len(values) and magnitude.max() > 0 else 1.0
    order = np.argsort(magnitude)
    cumulative = np.cumsum(weights[order]) / max(weights.sum(), 1e-300)
    low = magnitude[order][min(np.searchsorted(cumulative, LINEAR_SHARE), len(values) - 1)]
    threshold = max(float(low), DEPTH * top)
    decades = max(np.log10(top / threshold), 1.0)
    outer = np.geomspace(
        threshold, threshold * 10.0**decades, int(np.ceil(decades * per_decade)) + 1
    )
    inner = np.linspace(-threshold, threshold, 5)
    negative = -outer[::-1] if values.min() < -threshold else np.array([])
    edges = np.concatenate([negative[:-1], inner, outer[1:]])
    return edges, threshold


def _symlog_ticks(edges: np.ndarray, threshold: float) -> list[float]:
    """0 and powers of ten from ten times ``threshold`` to the ends of ``edges``, at least a
    fifth of the axis' decades apart (and at most four a side), so that the labels of a
    half-column panel do not collide."""
    two_sided = edges[0] < -threshold
    reach = max(abs(edges[0]), abs(edges[-1]))
    axis_decades = np.log10(reach / threshold) * (2 if two_sided else 1)
    first = int(np.ceil(np.log10(threshold) + 1))  # a decade clear of 0's label
    last = int(np.floor(np.log10(reach)))
    decades = list(range(last, first - 1, -1))
    step = max(int(np.ceil(axis_decades / 5)), int(np.ceil(len(decades) / 4)), 1)
    decades = decades[::step]
    ticks = [0.0] + [10.0**k for k in decades if 10.0**k <= edges[-1]]
    ticks += [-(10.0**k) for k in decades if -(10.0**k) >= edges[0]]
    return sorted(ticks)


def spectra(found, *, scaled: bool, ncols: int = 2):
    """One panel per model, one histogram per run: the share of the spectrum (eigenvalues,
    or SLQ weights) in each bin against lambda, or lambda ||w||^2 if ``scaled``, on a
    symmetric-log axis (:func:`spectrum_bins`), linear in the grey band; log share axis.

    ``found``: :class:`flatness.chapters.spectra.Spectrum` objects. Each panel's legend, under
    it, gives each run's weight norm, so no spectrum is shown without it.
    """
    models = list(dict.fromkeys(s.model for s in found))
    ncols = min(ncols, len(models))
    nrows = int(np.ceil(len(models) / ncols))
    fig = plt.figure(figsize=(WIDTH, 2.9 * nrows), layout="constrained")
    panels = np.atleast_1d(fig.subfigures(nrows, ncols, squeeze=False).ravel())
    for sub, model in zip(panels, models):
        group = [s for s in found if s.model == model]
        ax = sub.subplots()
        nodes = [s.nodes * (s.weight_norm**2 if scaled else 1.0) for s in group]
        edges, threshold = spectrum_bins(
            np.concatenate(nodes), np.concatenate([s.weights for s in group])
        )
        shares = [np.histogram(v, bins=edges, weights=s.weights)[0] for s, v in zip(group, nodes)]
        smallest = min(float(h[h > 0].min()) for h in shares)
        handles, labels = [], []
        for s, share, colour in zip(group, shares, colours(len(group))):
            # empty bins drawn below the axis, so that each step falls out of view there
            ax.stairs(
                np.where(share > 0, share, smallest / 10),
                edges,
                color=colour,
                lw=1.3,
                baseline=None,
            )
            handles.append(plt.Line2D([], [], color=colour, lw=1.5))
            labels.append(f"{s.arm}: ‖w‖ = {s.weight_norm:.3g} ({s.source})")
        ax.axvspan(-threshold, threshold, color="0.92", lw=0, zorder=0)
        ax.set_xscale("symlog", linthresh=threshold, linscale=0.5)
        ax.xaxis.set_major_locator(ticker.FixedLocator(_symlog_ticks(edges, threshold)))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_yscale("log")
        ax.set_ylim(smallest / 3, 2.0)
        ax.set_title(name(model))
        ax.set_xlabel(r"$\lambda \|w\|^2$" if scaled else r"$\lambda$")
        ax.set_ylabel("share of spectrum")
        labels = [names.words(t) for t in labels]
        sub.legend(handles, labels, loc="outside lower center", frameon=False)
    for sub in panels[len(models) :]:
        sub.set_visible(False)
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
