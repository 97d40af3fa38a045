"""The chapter's analysis: summaries over seeds and the verdict on claim C3."""

import numpy as np
import pandas as pd
import pytest

from flatness import data
from flatness.chapters import logreg
from flatness.store import Store


def fake_summary(acc, lam, acc_sd=0.001, lam_sd=0.01, seeds=3, val=None):
    rows = {}
    for wd, a, m, v in zip((0.0, 1e-3, 1e-2), acc, lam, val or acc):
        rows[wd] = {"test_acc_mean": a, "test_acc_sd": acc_sd, "seeds": seeds}
        rows[wd] |= {"val_acc_mean": v, "val_acc_sd": acc_sd}
        for measure in logreg.MEASURES:
            rows[wd] |= {f"{measure}_mean": m, f"{measure}_sd": lam_sd}
    return pd.DataFrame.from_dict(rows, orient="index")


@pytest.mark.parametrize(
    "acc,lam,outcome",
    [
        ((0.90, 0.95, 0.94), (1.0, 2.0, 4.0), "reproduced"),
        ((0.95, 0.951, 0.94), (1.0, 2.0, 4.0), "partly reproduced"),  # gain within test noise
        ((0.90, 0.95, 0.94), (1.0, 1.0, 1.0), "not reproduced"),
    ],
)
def test_verdict_outcomes(acc, lam, outcome):
    v = logreg.verdict(fake_summary(acc, lam), test_examples=10_000)
    assert v.outcome == outcome
    assert "0.01" in v.text and "lambda_max" in v.text


def test_the_candidate_weight_decay_is_chosen_on_validation_not_test_accuracy():
    # 1e-3 is best on test, 1e-2 on validation: the verdict must judge 1e-2
    summary = fake_summary((0.90, 0.97, 0.93), (1.0, 2.0, 4.0), val=(0.90, 0.91, 0.95))
    v = logreg.verdict(summary, test_examples=10_000)
    assert "best weight decay on validation data, 0.01" in v.text
    assert v.outcome == "reproduced"  # 0.93 vs 0.90 on test is clearly better, and sharper


def test_a_small_test_set_cannot_call_a_small_gain_better():
    summary = fake_summary((0.95, 0.96, 0.94), (1.0, 2.0, 4.0))
    assert logreg.verdict(summary, test_examples=100_000).outcome == "reproduced"
    assert logreg.verdict(summary, test_examples=300).outcome == "partly reproduced"


def test_summary_and_scaling_on_real_runs(tmp_path):
    settings = logreg.settings("smoke", seeds=[0, 1], epochs=2)
    runs = logreg.sweep(settings, store=Store(tmp_path), device="cpu")
    summary = logreg.summary(runs)
    table = logreg.final_table(runs)
    assert list(summary.index) == [0.0, 0.01] and (summary["seeds"] == 2).all()
    for wd in (0.0, 0.01):
        values = table[table.weight_decay == wd]["lambda_max"]
        assert summary.loc[wd, "lambda_max_mean"] == pytest.approx(values.mean())
        assert summary.loc[wd, "lambda_max_sd"] == pytest.approx(values.std(ddof=1))
    d = data.load("digits", train_size=settings.train_size)
    scaling = logreg.scaled_measures(
        logreg.trained_model(runs[0], d), d, [1.0, 10.0, 100.0], device="cpu"
    )
    at_one = scaling.iloc[0]
    assert at_one.lambda_max == pytest.approx(runs[0].metrics["lambda_max"], rel=1e-6)
    assert np.all(np.diff(scaling.trace) < 0)
    comparison = logreg.pyhessian_comparison(runs[:1], d, settings, device="cpu")
    row = comparison.iloc[0]
    # power iteration returns a Rayleigh quotient: never above the exact largest eigenvalue
    assert 0 < row["lambda_max PyHessian"] <= row["lambda_max exact"] * (1 + 1e-6)
    assert row["lambda_max exact"] == pytest.approx(runs[0].metrics["lambda_max"], rel=1e-6)
