"""The house figures: legends outside the data, text readable at the column width, accuracy on
linear axes, few measurements drawn as points, labelled axes, spectra whose bulk and outliers
both show."""

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402

from flatness.analysis import plotting  # noqa: E402
from flatness.analysis.stats import Interval  # noqa: E402
from flatness.chapters.spectra import Spectrum  # noqa: E402

#: Width of the text column in CSS pixels (the book's theme, a 1280-pixel window, a page with
#: its table of contents), and the smallest text a reader should have to read there.
COLUMN_PX = 660
SMALLEST_PX = 11

ARMS = ("wd 0", "wd 0.0005", "wd 0.01")


@pytest.fixture(autouse=True)
def house_style():
    plotting.style()
    yield
    plt.close("all")


def history(measured_every: int = 15, epochs: int = 30) -> pd.DataFrame:
    """Three arms x three seeds; accuracy and weight norm every epoch, the Hessian's measures
    every ``measured_every`` epochs."""
    rng = np.random.default_rng(0)
    rows = []
    for arm in ARMS:
        for seed in range(3):
            for epoch in range(1, epochs + 1):
                measured = epoch % measured_every == 0
                rows.append(
                    {
                        "arm": arm,
                        "seed": seed,
                        "epoch": epoch,
                        "test_acc": 0.9 - 0.4 * np.exp(-epoch / 5) + 0.01 * rng.normal(),
                        "train_loss": np.exp(-epoch / 5) + 0.01 * rng.random(),
                        "weight_norm": 10 + 0.1 * epoch + rng.random(),
                        "lambda_max": 50 + 10 * rng.random() if measured else np.nan,
                        "trace": 500 + 50 * rng.random() if measured else np.nan,
                    }
                )
    return pd.DataFrame(rows)


def interval(estimate, low, high, null=1.0):
    return Interval(estimate, low, high, null, "t", 3, 0.95, 2, "")


def effects(kind: str) -> pd.DataFrame:
    if kind == "ratio":
        return pd.DataFrame(
            [
                {"row": f"{a}: {m}", "interval": interval(1.5, 1.1, 2.0), "group": m}
                for a in ARMS[1:]
                for m in ("λ_max", "Tr H")
            ]
        )
    return pd.DataFrame(
        [
            {
                "row": f"{a}: test accuracy",
                "interval": interval(-3, -8, 1, 0.0),
                "group": "accuracy",
            }
            for a in ARMS[1:]
        ]
    )


def final() -> pd.DataFrame:
    last = history().query("epoch == 30").copy()
    for m in ("lambda_max", "trace", "frobenius"):
        last[m] = last.get(m, 80.0)
        last[f"{m}_bn_train"] = 1.3 * last[m]
    return last


def spiky(model: str, arms=("SGD", "Adam")) -> list[Spectrum]:
    """A bulk of 95 % of the weight between 1e-4 and 1e-1, and three outliers at 10, 100, 1000:
    the shape of a network's SLQ spectrum, which a linear axis shows as one spike."""
    bulk = np.geomspace(1e-4, 1e-1, 60)
    nodes = np.concatenate([bulk, -bulk[:10], [10.0, 100.0, 1000.0]])
    weights = np.concatenate([np.full(70, 0.95 / 70), [0.02, 0.02, 0.01]])
    return [
        Spectrum("adaptive", model, a, 3.0 + i, nodes, weights, "SLQ", "k")
        for i, a in enumerate(arms)
    ]


def scaled_frame() -> pd.DataFrame:
    alpha = np.geomspace(0.1, 30, 12)
    return pd.DataFrame(
        {"alpha": alpha, "train_loss": 1 / alpha, "lambda_max": 2 / alpha, "trace": 5 / alpha,
         "frobenius": 3 / alpha, "bound": 10 / alpha}
    )  # fmt: skip


def two_sided(model: str) -> list[Spectrum]:
    """Eigenvalues from -0.22 to 0.26, most weight near 0: a small network's SLQ spectrum (a
    LeNet-5's), whose axis runs through several decades on both sides."""
    nodes = np.array([-0.223, -0.16, -0.0813, -0.0011, 0.0237, 0.1178, 0.2031, 0.258])
    weights = np.array([1e-4, 7e-4, 5.7e-3, 0.935, 0.0543, 2.7e-3, 1e-3, 4e-4])  # LeNet-5's
    return [
        Spectrum("cnn", model, a, 6.0, nodes, weights / weights.sum(), "SLQ", "k") for a in ARMS
    ]


def found() -> list[Spectrum]:
    vgg = spiky("vgg16-bn", ("SGD", "SWA", "Adam", "AdamW", "Gadam"))
    return vgg + spiky("lenet5") + two_sided("mlp-10-100")


#: Every figure of the house helpers, drawn on made-up data shaped like the chapters'.
FIGURES = {
    "curves": lambda: plotting.curves(
        history(), ["weight_norm", "test_acc", "lambda_max", "trace"], hue="arm", ncols=2
    ),
    "forest": lambda: plotting.forest(effects("ratio"), xlabel="ratio"),
    "forest_pair": lambda: plotting.forest_pair(
        effects("ratio"), effects("difference"), top_label="ratio", bottom_label="points"
    ),
    "scatter": lambda: plotting.scatter(final(), ["lambda_max", "trace"], "test_acc", hue="arm"),
    "bn_modes": lambda: plotting.bn_modes(final(), hue="arm"),
    "scaling": lambda: plotting.scaling(scaled_frame(), mark=1.0),
    "spectra": lambda: plotting.spectra(found(), scaled=False),
    "spectra scaled": lambda: plotting.spectra(found(), scaled=True),
}


def legends(fig):
    found = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    figs = [fig]
    while figs:
        f = figs.pop()
        found += f.legends
        figs += f.subfigs
    return found


@pytest.mark.parametrize("name", list(FIGURES))
def test_legends_sit_outside_every_axes(name):
    fig = FIGURES[name]()
    fig.canvas.draw()
    found = legends(fig)
    assert found, f"{name} has no legend"
    for legend in found:
        box = legend.get_window_extent()
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            data = ax.get_window_extent()
            overlap = box.intersection(box, data)
            area = 0 if overlap is None else max(overlap.width, 0) * max(overlap.height, 0)
            assert area < 1, f"{name}: the legend covers {area:.0f} px² of an axes"


@pytest.mark.parametrize("name", list(FIGURES))
def test_text_is_readable_at_the_column_width(name):
    fig = FIGURES[name]()
    fig.canvas.draw()
    width_px = fig.get_figwidth() * 96  # an SVG's size in CSS pixels
    shrink = min(1.0, COLUMN_PX / width_px)
    small = []
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_visible() and text.get_text().strip() and text.get_figure() is not None:
            px = text.get_fontsize() * 96 / 72 * shrink
            if px < SMALLEST_PX:
                small.append((text.get_text(), round(px, 1)))
    assert not small, f"{name}: text under {SMALLEST_PX} px at the column width: {small[:5]}"


@pytest.mark.parametrize("name", ["curves", "scatter", "bn_modes", "scaling", "spectra"])
def test_every_axes_is_labelled(name):
    fig = FIGURES[name]()
    for ax in fig.axes:
        if ax.get_visible():
            assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())


def panels(fig) -> dict:
    return {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible()}


def test_accuracy_is_on_a_linear_axis_and_the_measures_on_log_ones():
    fig = plotting.curves(
        history(measured_every=1), ["test_acc", "train_loss", "lambda_max"], hue="arm"
    )
    by = panels(fig)
    assert by[plotting.label("test_acc")].get_yscale() == "linear"
    assert by[plotting.label("train_loss")].get_yscale() == "log"
    assert by[plotting.label("lambda_max")].get_yscale() == "log"
    scatter = plotting.scatter(final(), ["lambda_max"], "test_acc", hue="arm")
    assert scatter.axes[0].get_yscale() == "linear" and scatter.axes[0].get_xscale() == "log"


def drawn_lines(ax) -> list:
    """The Line2D of ``ax`` that join their points with a line."""
    return [
        line
        for line in ax.get_lines()
        if line.get_linestyle() not in ("None", "none", "", " ") and len(line.get_xdata()) > 1
    ]


def test_a_series_measured_at_few_epochs_is_drawn_as_points():
    fig = plotting.curves(history(measured_every=15), ["weight_norm", "lambda_max"], hue="arm")
    by = panels(fig)
    measured = by[plotting.label("lambda_max")]
    assert not drawn_lines(measured)  # two epochs: no line between them
    points = [line for line in measured.get_lines() if line.get_marker() == "o"]
    assert len(points) == len(ARMS) and all(len(p.get_xdata()) == 2 for p in points)
    # side by side at each epoch (measured every 15), not hiding each other's bars
    first = sorted(float(p.get_xdata()[0]) for p in points)
    assert min(np.diff(first)) >= 1.0 and max(np.abs(np.array(first) - 15)) < 7.5
    assert measured.collections  # the error bars over seeds
    assert len(drawn_lines(by[plotting.label("weight_norm")])) == len(ARMS)  # every epoch: lines
    # five measured epochs make a line again
    fig = plotting.curves(history(measured_every=6), ["lambda_max"], hue="arm")
    assert len(drawn_lines(fig.axes[0])) == len(ARMS)


def test_a_spike_dominated_spectrum_shows_its_bulk_and_its_outliers():
    fig = plotting.spectra(spiky("vgg16-bn"), scaled=False)
    ax = next(a for a in fig.axes if a.get_visible())
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "log"
    bottom = ax.get_ylim()[0]
    for step in (p for p in ax.patches if isinstance(p, StepPatch)):
        values, edges, _ = step.get_data()
        shown = values > bottom
        centres = (edges[:-1] + edges[1:]) / 2
        # the bulk spreads over several bins, not one spike
        assert np.count_nonzero(shown & (np.abs(centres) < 0.2)) >= 5
        for outlier in (10.0, 100.0, 1000.0):
            k = min(np.searchsorted(edges, outlier, side="right"), len(values)) - 1
            assert shown[k], f"the outlier at {outlier} is not drawn"
        # the bins' shares are the weights: nothing is lost or smoothed away
        assert values[values > bottom].sum() == pytest.approx(1.0)
    # the bulk and the largest outlier are far apart on the axis, with room for the bulk
    x0, x1 = ax.transData.transform([(1e-3, 1), (1000.0, 1)])[:, 0]
    assert x1 - x0 > 0.5 * ax.get_window_extent().width


def test_the_house_style_draws_svg_in_a_notebook():
    from IPython.core.interactiveshell import InteractiveShell
    from matplotlib.figure import Figure

    shell = InteractiveShell.instance()
    try:
        plotting.style()
        formatters = shell.display_formatter.formatters
        assert Figure in formatters["image/svg+xml"].type_printers
        assert Figure not in formatters["image/png"].type_printers
    finally:
        InteractiveShell.clear_instance()


def test_a_log_axis_spanning_less_than_a_decade_reads_in_plain_numbers():
    fig = plotting.curves(history(measured_every=15), ["lambda_max"], hue="arm")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_yscale() == "log"
    shown = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    low, high = ax.get_ylim()
    within = [t for t in shown if low <= float(t.replace("−", "-")) <= high]
    assert len(within) >= 2, shown
    assert not any("10^" in t or "times" in t for t in shown), shown
    # and the epochs of a panel with an empty slot below it are labelled
    fig = plotting.curves(history(), ["weight_norm", "test_acc", "lambda_max"], hue="arm", ncols=2)
    fig.canvas.draw()
    last = panels(fig)[plotting.label("test_acc")]
    assert any(t.get_text() for t in last.get_xticklabels())


def test_long_row_labels_leave_the_intervals_half_the_width():
    long = "C3 softmax regression on digits: weight decay 0.01 (best on validation data) vs 0"
    top, bottom = effects("ratio"), effects("difference")
    top["row"], bottom["row"] = long, long
    fig = plotting.forest_pair(top, bottom, top_label="ratio", bottom_label="points")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" among them
        fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_window_extent().width > 0.45 * fig.bbox.width


@pytest.mark.parametrize("name", list(FIGURES))
def test_tick_labels_do_not_collide(name):
    fig = FIGURES[name]()
    fig.canvas.draw()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
            for a, b in zip(boxes, boxes[1:]):
                overlap = a.intersection(a, b)
                assert overlap is None or overlap.width * overlap.height < 1, (
                    name,
                    [t.get_text() for t in labels],
                )


def test_numeric_settings_are_written_as_numbers():
    frame = history().assign(
        weight_decay=lambda f: f.arm.map({"wd 0": 0.0, "wd 0.0005": 5e-4, "wd 0.01": 0.01})
    )
    fig = plotting.curves(frame, ["weight_norm"], hue="weight_decay")
    entries = [t.get_text() for t in legends(fig)[0].get_texts()]
    assert entries == ["0", "0.0005", "0.01"]
