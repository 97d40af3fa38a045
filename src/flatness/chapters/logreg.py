"""The logistic-regression chapter: weight decay makes softmax regression sharper.

Everything the chapter computes lives here, so the chapter itself only calls and plots.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from flatness import data as datasets
from flatness import hessian, plotting, stats
from flatness.chapters import common, theory
from flatness.config import (
    RunConfig,
    get_profile,
    parameter_changes,
)
from flatness.errors import RunMissing
from flatness.recipes import LOGREG_TRAINING, LOGREG_WEIGHT_DECAYS
from flatness.store import Run, Store, load_or_run
from flatness.train import default_device, load_model

MEASURES = ("lambda_max", "trace", "frobenius")
FINAL_COLUMNS = ("test_acc", "val_acc", "train_loss", "weight_norm", *MEASURES)


@dataclass(frozen=True)
class LogregSettings:
    """Sizes for the logistic-regression chapter; training follows :data:`recipes.LOGREG_TRAINING`."""

    dataset: str
    epochs: int
    batch_size: int
    lr: float
    weight_decays: tuple[float, ...]
    seeds: tuple[int, ...]
    train_size: int | None = None
    hessian_every: int = 1
    #: log10 range and count of the scale factors alpha applied to a trained W
    alpha_log10_range: tuple[float, float] = (-1.0, 1.5)
    alpha_count: int = 21
    pyhessian_max_iter: int = 100
    pyhessian_tol: float = 1e-3
    #: the page's own exact Hessians (scaling, class blocks, PyHessian's check) use the first
    #: this many training examples (None: all); the runs' measures always use all of them
    analysis_examples: int | None = None
    #: seeds whose runs PyHessian is checked on (None: every seed)
    pyhessian_seeds: tuple[int, ...] | None = None

    def run_configs(self, model: str = "logreg") -> list[RunConfig]:
        """One run of ``model`` per (weight decay, seed), weight decay varying slowest."""
        return [
            RunConfig(
                model=model,
                dataset=self.dataset,
                weight_decay=wd,
                seed=seed,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                train_size=self.train_size,
                hessian_every=self.hessian_every,
            )
            for wd in self.weight_decays
            for seed in self.seeds
        ]

    def with_overrides(self, *, dataset=None, seeds=None, weight_decays=None, epochs=None):
        """Replace the fields a chapter's parameters may override; ``None`` keeps the profile's."""
        changes = parameter_changes(
            dataset=dataset, seeds=seeds, weight_decays=weight_decays, epochs=epochs
        )
        return dataclasses.replace(self, **changes)


def _settings(profile: str, **chapter) -> LogregSettings:
    training = {k: v for k, v in LOGREG_TRAINING[profile].items()}
    return LogregSettings(**training, **chapter)


#: The chapter's settings for each profile.
SETTINGS = {
    "smoke": _settings(
        "smoke", weight_decays=(0.0, 1e-2), seeds=(0, 1), alpha_count=5, pyhessian_max_iter=20
    ),
    "cpu": _settings("cpu", weight_decays=LOGREG_WEIGHT_DECAYS, seeds=(0, 1, 2)),
    # a dense 7,850 x 7,850 Hessian with its eigenvalues takes about a minute on a laptop: the
    # page's own exact Hessians use 5,000 of MNIST's 55,000 training images, at 7 scales
    "paper": _settings(
        "paper",
        weight_decays=LOGREG_WEIGHT_DECAYS,
        seeds=(0, 1, 2),
        alpha_count=7,
        analysis_examples=5000,
        pyhessian_seeds=(0,),
    ),
}


def settings(profile: str, **overrides) -> LogregSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced.

    Raises:
        FlatnessError: an unknown profile or data set, duplicate seeds, or a value out of range.
    """
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def grid(profile: str) -> list[RunConfig]:
    """The runs this chapter's figures read at ``profile`` (:class:`~flatness.config.RunConfig`)."""
    return settings(profile).run_configs()


def sweep(
    settings: LogregSettings,
    *,
    store: Store | None = None,
    data_root=None,
    device=None,
    progress: bool = False,
    train_missing: bool = True,
) -> list[Run]:
    """Every (weight decay, seed) run of the settings, trained only where neither published
    nor stored (with ``train_missing=False``, a missing run raises
    :class:`~flatness.errors.RunMissing` naming every missing run)."""
    runs, missing = [], []
    for cfg in settings.run_configs():
        try:
            runs.append(
                load_or_run(
                    cfg,
                    store=store,
                    data_root=data_root,
                    device=device,
                    progress=progress,
                    train_missing=train_missing,
                )
            )
        except RunMissing as err:
            missing += err.configs
    if missing:
        raise RunMissing(missing)
    return runs


def final_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run with its final metrics."""
    rows = [
        {"weight_decay": r.config.weight_decay, "seed": r.config.seed}
        | {k: r.metrics[k] for k in FINAL_COLUMNS}
        for r in runs
    ]
    return pd.DataFrame(rows)


def summary(runs: list[Run]) -> pd.DataFrame:
    """Per weight decay: mean and sample standard deviation over seeds of the final metrics.

    Columns are ``<metric>_mean``, ``<metric>_sd`` and ``seeds``; sd is NaN for one seed.
    """
    table = final_table(runs).drop(columns="seed")
    grouped = table.groupby("weight_decay")
    means = grouped.mean().add_suffix("_mean")
    sds = grouped.std(ddof=1).add_suffix("_sd")
    out = pd.concat([means, sds], axis=1)
    out["seeds"] = grouped.size()
    return out


def history(runs: list[Run]) -> pd.DataFrame:
    """Per-epoch series of every run, in long form (one row per run and epoch)."""
    frames = []
    for r in runs:
        arrays = r.arrays
        epochs = len(arrays["epoch"])
        series = {k: v for k, v in arrays.items() if _per_epoch(k, v, epochs)}
        frame = pd.DataFrame(series)
        frame["weight_decay"] = r.config.weight_decay
        frame["seed"] = r.config.seed
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _per_epoch(name: str, values: np.ndarray, epochs: int) -> bool:
    """Is this stored array a per-epoch series (not weights, a spectrum or an SLQ density)?"""
    whole_run = name.startswith(("state.", "eigenvalues", "slq_"))
    return not whole_run and values.ndim == 1 and len(values) == epochs


def trained_model(run: Run, data: datasets.Dataset) -> nn.Linear:
    return load_model(run.config, run.arrays, data.input_shape, data.num_classes)


def train_accuracy(model: nn.Linear, data: datasets.Dataset) -> float:
    """The fraction of ``data``'s training examples that ``model`` classifies correctly."""
    w = model.weight
    with torch.no_grad():
        predicted = model(data.x_train.flatten(1).to(w)).argmax(1).cpu()
    return float((predicted == data.y_train).double().mean())


def scaled_measures(
    model: nn.Linear, data: datasets.Dataset, alphas, *, device=None
) -> pd.DataFrame:
    """Training loss, the exact Hessian measures and the trace bound of the model with W and b
    scaled by each alpha, in float64 on the whole training split of ``data``: the columns of
    :func:`flatness.chapters.theory.scaling` (``bound`` = 2 L max_i ||x~_i||^2, every pixel of
    an image counted; ``ratio`` = Tr H / bound)."""
    device = device if device is not None else default_device()
    x, y = data.x_train.flatten(1).to(device).double(), data.y_train.to(device)
    return theory.scaling(copy.deepcopy(model).to(device), x, y, alphas)  # the caller's stays put


def analysis_data(data: datasets.Dataset, settings: LogregSettings) -> datasets.Dataset:
    """``data`` with its training split cut to ``settings.analysis_examples`` (if set)."""
    n = settings.analysis_examples
    if n is None or n >= len(data.y_train):
        return data
    return dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])


def analysis_sentence(settings: LogregSettings, data: datasets.Dataset) -> str:
    """What the page's own exact Hessians are computed on, in words."""
    n = len(analysis_data(data, settings).y_train)
    if n == len(data.y_train):
        return f"all {n:,} training examples"
    return f"the first {n:,} of the {len(data.y_train):,} training examples"


def alphas(settings: LogregSettings) -> np.ndarray:
    lo, hi = settings.alpha_log10_range
    return np.logspace(lo, hi, settings.alpha_count)


def pyhessian_comparison(
    runs: list[Run], data: datasets.Dataset, settings: LogregSettings, *, device=None
) -> pd.DataFrame:
    """PyHessian's top eigenvalue and trace beside the exact ones, for each run's final model."""
    device = device if device is not None else default_device()
    x, y = data.x_train.to(device), data.y_train.to(device)
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


def best_weight_decay(runs: list[Run]) -> float:
    """The weight decay above the smallest with the best mean **validation** accuracy over
    seeds: the one claim C3's "generalises better" half compares with the smallest."""
    table = final_table(runs)
    above = table[table.weight_decay != table.weight_decay.min()]
    return float(above.groupby("weight_decay").val_acc.mean().idxmax())


def claim(runs: list[Run], data: datasets.Dataset, *, device=None, resamples: int = 2000):
    """Claim C3 for softmax regression, as a :class:`~flatness.chapters.common.Claim`.

    *Sharper*: the largest weight decay against the smallest (the baseline, normally 0), each
    measure's ratio with Welch's t interval over seeds. *Generalises better*: the weight decay
    with the best mean **validation** accuracy (the test set never chooses it) against the
    baseline, in test accuracy, with a bootstrap over seeds and, paired, over test examples.
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
    sharper = common.sharper_half(ratios, arm(hi), arm(lo))
    better = common.better_half(acc, f"{arm(best)} (best on validation data)", arm(lo))
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
        ``(ratios, accuracy)``: frames for :func:`flatness.plotting.forest`, with the same
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


def class_blocks(run: Run, data: datasets.Dataset) -> np.ndarray:
    """The exact Hessian of a run's final model with parameters grouped by class.

    Returns:
        ``(K (d + 1), K (d + 1))`` float64: for each class its d weights then its bias, so the
        ``(d + 1) x (d + 1)`` block ``(k, l)`` couples classes k and l.
    """
    model = trained_model(run, data)
    h = hessian.softmax_regression_hessian(model, data.x_train.flatten(1)).cpu().numpy()
    k, d = model.weight.shape
    order = np.concatenate([np.r_[c * d : (c + 1) * d, k * d + c] for c in range(k)])
    return h[np.ix_(order, order)]
