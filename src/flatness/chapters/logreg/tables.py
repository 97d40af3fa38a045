"""The tables of the logistic-regression chapter as the page shows them.

Each returns a pandas Styler named by :mod:`flatness.analysis.names`, without index, narrow
enough for the text column: the final values are one table for training and one for the
Hessian measures, and the check of PyHessian one table for the top eigenvalue and one for the
trace.
"""

from __future__ import annotations

import pandas as pd

from flatness.analysis import names


def _mean_sd(summary: pd.DataFrame, column: str, fmt: str, scale: float = 1.0) -> list[str]:
    """``"mean ± sd"`` per weight decay; with one seed there is no spread, and the cell says so."""
    means, sds = scale * summary[f"{column}_mean"], scale * summary[f"{column}_sd"]
    return [
        f"{m:{fmt}} (one seed)" if pd.isna(s) else f"{m:{fmt}} ± {s:.1g}"
        for m, s in zip(means, sds)
    ]


def _decays(summary: pd.DataFrame) -> dict:
    return {"weight decay": [f"{w:g}" for w in summary.index], "seeds": summary["seeds"].values}


def final_training(summary: pd.DataFrame):
    """Test accuracy, training loss and weight norm per weight decay, mean ± sd over seeds,
    from :func:`~flatness.chapters.logreg.summary`."""
    shown = pd.DataFrame(
        _decays(summary)
        | {
            "test accuracy (%)": _mean_sd(summary, "test_acc", ".2f", scale=100),
            names.display("train_loss"): _mean_sd(summary, "train_loss", ".3g"),
            names.display("weight_norm"): _mean_sd(summary, "weight_norm", ".3g"),
        }
    )
    return names.table(shown)


def final_measures(summary: pd.DataFrame):
    """The three exact flatness measures per weight decay, mean ± sd over seeds."""
    shown = pd.DataFrame(
        _decays(summary)
        | {
            names.display(m): _mean_sd(summary, m, ".3g")
            for m in ("lambda_max", "trace", "frobenius")
        }
    )
    return names.table(shown)


def _pyhessian(comparison: pd.DataFrame, measure: str, extra: dict) -> pd.DataFrame:
    name = names.display(measure)
    return pd.DataFrame(
        {
            "weight decay": [f"{w:g}" for w in comparison.weight_decay],
            "seed": comparison.seed.values,
            f"exact {name}": [f"{v:.4g}" for v in comparison[f"{measure} exact"]],
            f"PyHessian's {name}": [f"{v:.4g}" for v in comparison[f"{measure} PyHessian"]],
            "|relative error|": [f"{100 * e:.2f} %" for e in comparison[f"{measure} rel. error"]],
        }
        | extra
    )


def pyhessian_eigenvalue(comparison: pd.DataFrame):
    """PyHessian's largest eigenvalue beside the exact one, per run, from
    :func:`~flatness.chapters.logreg.pyhessian_comparison`."""
    return names.table(_pyhessian(comparison, "lambda_max", {}))


def pyhessian_trace(comparison: pd.DataFrame):
    """PyHessian's trace beside the exact one, per run, with the probes its stopping rule used."""
    probes = {"probes used": comparison["trace probes used"].values}
    return names.table(_pyhessian(comparison, "trace", probes))
