"""The estimators and logistic-regression chapters' tables as a reader sees them: named, split
narrow, and a reason wherever a value is missing."""

import math
from types import SimpleNamespace

import pandas as pd
import torch

from flatness.chapters.estimators import tables as estimator_tables
from flatness.chapters.logreg import tables as logreg_tables


def cells(styler) -> pd.DataFrame:
    return styler.data


def test_slq_moments_say_why_the_largest_eigenvalue_has_no_standard_error():
    moments = {1: (9.0, 0.5), 2: (50.0, math.nan)}  # Tr H^2 from one probe: no spread
    density = SimpleNamespace(moment=lambda k: moments[k], nodes=torch.tensor([[1.0, 2.9]]))
    frame, shown = estimator_tables.slq_moments(10.0, 40.0, 3.0, density)
    assert list(frame["relative error"].round(3)) == [-0.1, 0.25, -0.033]
    se = list(cells(shown)["SLQ standard error"])
    assert se == ["0.5", "— (one probe)", "— (not a mean over probes)"]
    html = shown.to_html()
    assert "nan" not in html.lower() and "None" not in html


def adaptive_summary():
    return pd.DataFrame(
        {
            "measure": ["trace", "trace", "frobenius"],
            "method": ["auto", "ggn+hutchinson", "hutch++"],
            "rtol": [0.01, 0.01, 0.03],
            "ran as": ["hutch++ (2), hutchinson (1)", "ggn+hutchinson", "hutch++"],
            "probes": [40.0, 32.0, 64.0],
            "hvps": [120.0, 32.0, 192.0],
            "seconds": [0.5, 0.25, 1.0],
            "abs rel error": [0.004, 0.002, 0.01],
            "rel stderr": [0.009, 0.008, 0.02],
            "converged": [1.0, 2 / 3, 1.0],
            "covered": [3, 2, 3],
            "runs": [3, 3, 3],
        }
    )


def test_the_adaptive_results_are_two_narrow_tables_in_words():
    cost = cells(estimator_tables.adaptive_cost(adaptive_summary()))
    accuracy = cells(estimator_tables.adaptive_accuracy(adaptive_summary()))
    assert len(cost.columns) <= 6 and len(accuracy.columns) <= 7
    assert list(cost["method (auto: what ran)"]) == [
        "auto: Hutch++ (2), Hutchinson (1)",
        "GGN + Hutchinson",
        "Hutch++",
    ]
    assert list(cost["measure"]) == ["Tr H", "Tr H", "‖H‖_F"]
    assert list(cost["requested rel. s.e. (rtol)"]) == ["1 %", "1 %", "3 %"]
    assert list(accuracy["converged"]) == ["3 of 3", "2 of 3", "3 of 3"]
    assert list(accuracy["mean |rel. error|"]) == ["0.4 %", "0.2 %", "1 %"]


def test_logreg_tables_name_their_columns_and_say_when_one_seed_has_no_spread():
    summary = pd.DataFrame(
        {
            "test_acc_mean": [0.9, 0.91], "test_acc_sd": [0.01, float("nan")],
            "train_loss_mean": [0.1, 0.2], "train_loss_sd": [0.01, float("nan")],
            "weight_norm_mean": [5.0, 2.0], "weight_norm_sd": [0.1, float("nan")],
            "lambda_max_mean": [1.0, 2.0], "lambda_max_sd": [0.1, float("nan")],
            "trace_mean": [3.0, 4.0], "trace_sd": [0.1, float("nan")],
            "frobenius_mean": [1.5, 2.5], "frobenius_sd": [0.1, float("nan")],
            "seeds": [2, 1],
        },
        index=pd.Index([0.0, 1e-2], name="weight_decay"),
    )  # fmt: skip
    training = cells(logreg_tables.final_training(summary))
    assert list(training.columns) == [
        "weight decay", "seeds", "test accuracy (%)", "training loss", "‖w‖₂"
    ]  # fmt: skip
    assert list(training["test accuracy (%)"]) == ["90.00 ± 1", "91.00 (one seed)"]
    measures = cells(logreg_tables.final_measures(summary))
    assert list(measures.columns) == ["weight decay", "seeds", "λ_max", "Tr H", "‖H‖_F"]
    comparison = pd.DataFrame(
        {
            "weight_decay": [0.0], "seed": [0],
            "lambda_max exact": [2.0], "lambda_max PyHessian": [1.99],
            "lambda_max rel. error": [0.005], "trace exact": [10.0], "trace PyHessian": [9.0],
            "trace rel. error": [0.1], "trace probes used": [20],
        }
    )  # fmt: skip
    eig = cells(logreg_tables.pyhessian_eigenvalue(comparison))
    assert list(eig.columns) == [
        "weight decay", "seed", "exact λ_max", "PyHessian's λ_max", "|relative error|"
    ]  # fmt: skip
    trace = cells(logreg_tables.pyhessian_trace(comparison))
    assert list(trace.iloc[0]) == ["0", "0", "10", "9", "10.00 %", "20"]
