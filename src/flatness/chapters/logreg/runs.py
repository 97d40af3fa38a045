"""The logistic-regression chapter's runs and their tables: final metrics, per-epoch series, the
summary over seeds and the weight decay validation data prefer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flatness.chapters.logreg.design import (
    FINAL_COLUMNS,
    LogregSettings,
)
from flatness.errors import RunMissing
from flatness.results.entries import Run
from flatness.results.runs import load_or_run
from flatness.results.store import Store


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


def best_weight_decay(runs: list[Run]) -> float:
    """The weight decay above the smallest with the best mean **validation** accuracy over
    seeds: the one claim C3's "generalises better" half compares with the smallest."""
    table = final_table(runs)
    above = table[table.weight_decay != table.weight_decay.min()]
    return float(above.groupby("weight_decay").val_acc.mean().idxmax())
