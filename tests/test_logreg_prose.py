"""The logistic-regression page's sentences follow made-up data whose answer is known."""

import pandas as pd
import pytest

from flatness.chapters.logreg import prose as P


def scaling(trace=(4.0, 2.0, 1.0), ratio=(0.5, 0.5, 0.5)):
    return pd.DataFrame({"alpha": [0.5, 2.0, 8.0], "trace": trace, "ratio": ratio})


def test_a_separating_solution_whose_trace_falls_under_the_bound():
    facts = P.scaling_facts(scaling(), 1.0)
    assert (
        facts["separates"] == "It classifies every training example correctly, so it separates them"
    )
    assert facts["trace_fall"] == "falls at every step, by a factor of 4 in all"
    assert facts["bound_holds"] == "holds"
    assert (facts["alpha_lo"], facts["alpha_hi"]) == (0.5, 8.0)


def test_a_solution_that_does_not_separate_and_a_bound_that_fails():
    facts = P.scaling_facts(scaling(trace=(4.0, 1.0, 2.0), ratio=(0.5, 1.5, 0.5)), 0.987)
    assert facts["separates"].startswith("It classifies 98.7 % of the training examples correctly")
    assert "does **not** separate" in facts["separates"]
    assert facts["trace_fall"] == "does **not** fall at every step (first over last: 2)"
    assert facts["bound_holds"] == "**fails**"


def comparison(trace_err):
    return pd.DataFrame({"lambda_max rel. error": [0.001, 0.0078], "trace rel. error": trace_err,
                         "trace probes used": [3, 11]})  # fmt: skip


def test_pyhessian_trace_is_judged_against_one_percent():
    facts = P.pyhessian_facts(comparison([0.02, 0.08]), every_run=False)
    assert facts["ph_runs"] == "the first seed of each weight decay"
    assert facts["ph_eig_err"] == pytest.approx(0.78)
    assert facts["ph_trace"] == (
        "Its trace is off by up to 8 %: its stopping rule ended after 3 to 11 Hutchinson probes, "
        "too few for a precise trace"
    )
    facts = P.pyhessian_facts(comparison([0.002, 0.004]), every_run=True)
    assert facts["ph_runs"] == "every run"
    assert facts["ph_trace"].startswith("Its trace is within 0.4 % of the exact one")
    same = comparison([0.02, 0.08]).assign(**{"trace probes used": [20, 20]})
    assert "ended after 20 Hutchinson probes" in P.pyhessian_facts(same, every_run=True)["ph_trace"]
