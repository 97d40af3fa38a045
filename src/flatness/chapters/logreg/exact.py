"""The logistic-regression chapter's own exact Hessians of its final models: the scaled model,
PyHessian's estimates beside the exact measures, and the Hessian's blocks by class.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import torch
from torch import nn

from flatness import data as datasets
from flatness import hessian
from flatness.chapters import theory
from flatness.chapters.logreg.design import (
    LogregSettings,
)
from flatness.results.computations import cached, data_hash
from flatness.results.entries import Run
from flatness.training.loop import default_device, load_model


def trained_model(run: Run, data: datasets.Dataset) -> nn.Linear:
    return load_model(run.config, run.arrays, data.input_shape, data.num_classes)


def train_accuracy(model: nn.Linear, data: datasets.Dataset) -> float:
    """The fraction of ``data``'s training examples that ``model`` classifies correctly."""
    w = model.weight
    with torch.no_grad():
        predicted = model(data.x_train.flatten(1).to(w)).argmax(1).cpu()
    return float((predicted == data.y_train).double().mean())


#: the modules whose source is part of the keys of this page's cached computations
CODE = (
    "flatness.chapters.logreg.design",
    "flatness.chapters.theory.softmax",
    "flatness.hessian.checks",
    "flatness.hessian.exact",
    "flatness.hessian.loaders",
    "flatness.hessian.reference",
    "flatness.hessian.softmax",
)


def scaled_measures(
    model: nn.Linear, data: datasets.Dataset, alphas, *, device=None, profile: str | None = None
) -> pd.DataFrame:
    """Training loss, the exact Hessian measures and the trace bound of the model with W and b
    scaled by each alpha, in float64 on the whole training split of ``data``: the columns of
    :func:`flatness.chapters.theory.scaling` (``bound`` = 2 L max_i ||x~_i||^2, every pixel of
    an image counted; ``ratio`` = Tr H / bound). Computed once and kept in the results store,
    keyed by the weights, the sample and the alphas."""
    device = device if device is not None else default_device()
    x, y = data.x_train.flatten(1).to(device).double(), data.y_train.to(device)
    inputs = {
        "profile": profile,
        "weights": data_hash(*model.parameters()),
        "sample": data_hash(x, y),
        "alphas": [float(a) for a in alphas],
    }
    # on a copy: the caller's model stays where it is
    compute = lambda: theory.scaling(copy.deepcopy(model).to(device), x, y, alphas)
    return cached("logreg.scaled_measures", inputs, compute, code=CODE)


def pyhessian_comparison(
    runs: list[Run],
    data: datasets.Dataset,
    settings: LogregSettings,
    *,
    device=None,
    profile: str | None = None,
) -> pd.DataFrame:
    """PyHessian's top eigenvalue and trace beside the exact ones, for each run's final model;
    computed once and kept in the results store, keyed by the runs, the sample and the
    settings."""
    device = device if device is not None else default_device()
    x, y = data.x_train.to(device), data.y_train.to(device)
    inputs = {
        "profile": profile,
        "runs": [r.key for r in runs],
        "sample": data_hash(x, y),
        "settings": dataclasses.asdict(settings),
    }
    compute = lambda: _pyhessian_comparison(runs, data, settings, x, y, device)
    return cached("logreg.pyhessian_comparison", inputs, compute, code=CODE)


def _pyhessian_comparison(runs, data, settings, x, y, device) -> pd.DataFrame:
    rows = []
    seeds = settings.pyhessian_seeds
    for run in [r for r in runs if seeds is None or r.config.seed in seeds]:
        model = trained_model(run, data).to(device)
        exact = hessian.Measures.of(hessian.softmax_regression_hessian(model, x))
        est = hessian.pyhessian_estimate(
            model,
            nn.functional.cross_entropy,
            (x, y),
            max_iter=settings.pyhessian_max_iter,
            tol=settings.pyhessian_tol,
            seed=run.config.seed,
        )
        rows.append(
            {
                "weight_decay": run.config.weight_decay,
                "seed": run.config.seed,
                "lambda_max exact": exact.lambda_max,
                "lambda_max PyHessian": est.top_eigenvalue,
                "lambda_max rel. error": abs(est.top_eigenvalue / exact.lambda_max - 1),
                "trace exact": exact.trace,
                "trace PyHessian": est.trace,
                "trace rel. error": abs(est.trace / exact.trace - 1),
                "trace probes used": est.trace_probes,
            }
        )
    return pd.DataFrame(rows)


#: the class-block figure shows at most this many rows: a panel is some 300 screen pixels wide,
#: so more rows would be subsampled by the renderer, which can drop a block's largest entries
HEATMAP_ROWS = 400


@dataclasses.dataclass(frozen=True)
class ClassBlocks:
    """The magnitude of a softmax regression's exact Hessian, parameters grouped by class.

    ``magnitude`` is ``(K b, K b)``: block ``(k, l)``, rows and columns ``k b`` to ``(k+1) b``,
    couples classes k and l, whose ``d + 1`` parameters are each class's d weights then its
    bias. Each block is cut into cells of ``pooled x pooled`` entries (the last ones smaller)
    and a cell holds the largest ``|H_ij|`` in it, so ``b = ceil((d + 1) / pooled)``; with
    ``pooled == 1`` it is ``|H|`` itself."""

    magnitude: np.ndarray
    block: int
    pooled: int
    #: each class's parameters, d + 1
    size: int

    def sentence(self) -> str:
        """What one pixel of the figure is, in words."""
        if self.pooled == 1:
            return "Each pixel is one entry."
        rows = len(self.magnitude) // self.block * self.size
        return (
            f"The Hessian has {rows:,} rows, more than the figure has pixels, so each pixel is "
            f"the largest magnitude in a {self.pooled} x {self.pooled} square of entries of "
            "its block."
        )


def class_blocks(
    run: Run, data: datasets.Dataset, *, rows: int = HEATMAP_ROWS, profile: str | None = None
) -> ClassBlocks:
    """The exact Hessian of a run's final model grouped by class, each block max-pooled so that
    the whole has at most ``rows`` rows (see :class:`ClassBlocks`). Computed once and kept in
    the results store, keyed by the run, the sample and ``rows``."""
    x = data.x_train.flatten(1)
    inputs = {"profile": profile, "run": run.key, "sample": data_hash(x), "rows": rows}
    found = cached("logreg.class_blocks", inputs, lambda: _class_blocks(run, data, rows), code=CODE)
    return ClassBlocks(**found)


def _class_blocks(run: Run, data: datasets.Dataset, rows: int) -> dict:
    model = trained_model(run, data)
    h = hessian.softmax_regression_hessian(model, data.x_train.flatten(1)).cpu().numpy()
    k, d = model.weight.shape
    size = d + 1
    if k > rows:
        raise ValueError(f"{k} classes cannot be shown in {rows} rows")
    pooled = -(-size // (rows // k))  # the least cell side that fits K blocks in `rows`
    cells = -(-size // pooled)
    # per class: its weights then its bias, each cut into cells
    order = [np.r_[c * d : (c + 1) * d, k * d + c] for c in range(k)]
    starts = [np.arange(0, size, pooled) for _ in range(k)]
    magnitude = np.zeros((k * cells, k * cells))
    for a in range(k):
        for b in range(k):
            block = np.abs(h[np.ix_(order[a], order[b])])
            # reduceat takes the maximum over each run of `pooled` rows, then of columns
            pooled_block = np.maximum.reduceat(
                np.maximum.reduceat(block, starts[a], 0), starts[b], 1
            )
            magnitude[a * cells : (a + 1) * cells, b * cells : (b + 1) * cells] = pooled_block
    # float32 keeps 7 digits of a log-scale picture and halves what is published
    return {
        "magnitude": magnitude.astype(np.float32),
        "block": cells,
        "pooled": pooled,
        "size": size,
    }
