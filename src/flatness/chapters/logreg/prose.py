"""What the logistic-regression chapter says about its scaling figure and its check of
PyHessian, chosen from the data (:mod:`flatness.chapters.logreg` computes them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: PyHessian's trace counts as precise when every final model's is within this relative error
PRECISE_TRACE = 0.01


def scaling_facts(scaling: pd.DataFrame, train_acc: float) -> dict:
    """The scaled model of :func:`~flatness.chapters.logreg.scaled_measures`, whose training
    accuracy (the fraction of examples it classifies correctly) is ``train_acc``."""
    falls = bool((np.diff(scaling.trace.to_numpy()) < 0).all())
    drop = float(scaling.trace.iloc[0] / scaling.trace.iloc[-1])
    if train_acc == 1.0:
        separates = "It classifies every training example correctly, so it separates them"
    else:
        separates = (
            f"It classifies {100 * train_acc:.4g} % of the training examples correctly, so it "
            "does **not** separate them and the argument does not apply in full: scaled far "
            "enough, its loss grows again"
        )
    return {
        "alpha_lo": float(scaling.alpha.iloc[0]),
        "alpha_hi": float(scaling.alpha.iloc[-1]),
        "separates": separates,
        "trace_fall": (
            f"falls at every step, by a factor of {drop:.3g} in all"
            if falls
            else f"does **not** fall at every step (first over last: {drop:.3g})"
        ),
        "bound_holds": "holds" if (scaling.ratio <= 1 + 1e-9).all() else "**fails**",
    }


def pyhessian_facts(comparison: pd.DataFrame, every_run: bool) -> dict:
    """The :func:`~flatness.chapters.logreg.pyhessian_comparison` table in words; ``every_run``
    says whether every run was checked or only the first seed of each weight decay."""
    trace_err = float(comparison["trace rel. error"].max())
    probes = comparison["trace probes used"]
    few, many = int(probes.min()), int(probes.max())
    told = f"its stopping rule ended after {few if few == many else f'{few} to {many}'} Hutchinson probes"
    return {
        "ph_runs": "every run" if every_run else "the first seed of each weight decay",
        "ph_eig_err": float(100 * comparison["lambda_max rel. error"].max()),
        "ph_trace": (
            f"Its trace is off by up to {100 * trace_err:.2g} %: {told}, too few for a precise "
            "trace"
            if trace_err > PRECISE_TRACE
            else f"Its trace is within {100 * trace_err:.2g} % of the exact one; {told}"
        ),
    }
