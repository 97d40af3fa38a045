"""The judging sentences of the estimators chapter, on made-up runs whose verdict is known:
ties, the clock, methods that never converge, ``auto``'s choice, coverage and errors."""

import pandas as pd
import pytest
from scipy import stats as sps

from flatness.chapters import estimators as E
from flatness.chapters.estimators import prose as P
from flatness.hessian.stochastic import MIN_PROBES

RTOL = 0.01


def runs_of(methods, *, measure="trace", seeds=3, rtol=RTOL):
    """Per-seed runs: ``methods`` maps a method to its per-run fields (lists over seeds allowed)."""
    rows = []
    for method, fields in methods.items():
        for s in range(seeds):
            row = {
                "measure": measure, "method": method, "rtol": rtol, "seed": s, "ran as": method,
                "probes": 50, "hvps": 100, "passes": 1, "seconds": 1.0, "converged": True,
                "rel error": 0.001, "rel stderr": 0.005, "covered": True,
            }  # fmt: skip
            row |= {k: v[s] if isinstance(v, list) else v for k, v in fields.items()}
            rows.append(row)
    return pd.DataFrame(rows)


def summary(runs):
    return E.adaptive_summary(runs)


def test_tied_cheapest_methods_are_named_together_against_the_others():
    runs = runs_of({"a": {"hvps": 100, "seconds": 2.0}, "b": {"hvps": 100, "seconds": 1.0},
                    "c": {"hvps": 300, "seconds": 3.0}})  # fmt: skip
    text = P.cheapest_sentence(summary(runs), "trace", 1000)
    assert text.startswith("Asked for 1 %, the trace was cheapest with a and b (tied): 100 HVPs")
    assert "against 300 for c" in text
    assert "b was also the quickest (1 s)" in text
    runs = runs_of({"a": {"hvps": 32}, "b": {"hvps": 96}, "c": {"hvps": 96}})
    assert "against 96 for b and c" in P.cheapest_sentence(summary(runs), "trace", 1000)


@pytest.mark.parametrize(
    "quickest, phrase",
    [(0.9, "by the clock it was within 20 % of the quickest, c (1 s against 0.9 s)"),
     (0.5, "by the clock c was quickest (0.5 s against 1 s)")],
)  # fmt: skip
def test_the_clock_is_judged_with_a_tolerance(quickest, phrase):
    runs = runs_of({"a": {"hvps": 100, "seconds": 1.0}, "c": {"hvps": 200, "seconds": quickest}})
    assert phrase in P.cheapest_sentence(summary(runs), "trace", 1000)


def test_when_no_method_always_converges_the_one_that_did_most_often_is_named():
    runs = runs_of(
        {"a": {"converged": [True, False, False]}, "b": {"converged": [True, True, False]}}
    )
    text = P.cheapest_sentence(summary(runs), "trace", 64)
    assert text == (
        "Asked for 1 %, no method reached it for the trace in every run within 64 probes; "
        "b did most often (67 % of runs)."
    )
    assert P.trust_cheapest(summary(runs), 64).startswith(
        "Cheapest at 1 % among the methods that reached it in every run: none for the trace"
    )


def test_only_the_tightest_rtol_is_judged():
    loose = runs_of({"a": {"hvps": 5}, "b": {"hvps": 50}}, rtol=0.1)
    tight = runs_of({"a": {"hvps": 500}, "b": {"hvps": 200}})
    text = P.cheapest_sentence(summary(pd.concat([loose, tight])), "trace", 1000)
    assert "cheapest with b: 200 HVPs" in text and "against 500 for a" in text


def test_auto_that_chose_the_cheaper_forced_method():
    runs = runs_of({"auto": {"hvps": 104, "ran as": "hutch++"}, "hutch++": {"hvps": 100},
                    "hutchinson": {"hvps": 400}})  # fmt: skip
    assert P.auto_clause(summary(runs), "trace", 3) == (
        "chose Hutch++ for the trace, the cheaper of the two forced choices, and spent about "
        "as many HVPs as forcing it"
    )


def test_auto_that_mixed_estimators_over_seeds_and_spent_more():
    runs = runs_of({"auto": {"hvps": 150, "ran as": ["hutch++", "hutch++", "hutchinson"]},
                    "hutch++": {"hvps": 100}, "hutchinson": {"hvps": 400}})  # fmt: skip
    assert P.auto_clause(summary(runs), "trace", 3) == (
        "ran as Hutch++ on 2 of 3 seeds and Hutchinson on 1 of 3 seeds for the trace and "
        "spent 1.5 times the HVPs of the better forced choice, Hutch++"
    )


def test_honest_errors_with_few_runs_still_leave_a_low_coverage_possible():
    runs = runs_of({"a": {}, "b": {}})
    low = sps.beta.ppf(0.025, 3, 1)  # Clopper-Pearson lower end for 3 of 3
    assert f"{100 * low:.0f} %" == "29 %"
    assert P.honesty_sentence(summary(runs), runs).endswith(
        "but with 3 runs a coverage as low as 29 % cannot be ruled out either."
    )


def test_too_small_errors_are_named_with_their_interval_and_probe_count():
    runs = runs_of({"a": {"covered": False, "probes": MIN_PROBES}, "b": {}}, seeds=10)
    high = 1 - 0.025 ** (1 / 10)  # Clopper-Pearson upper end for 0 of 10
    text = P.honesty_sentence(summary(runs), runs)
    assert f"a on the trace (0 of 10 covered, interval 0 % to {100 * high:.0f} %)" in text
    assert "b on the trace" not in text
    assert f"the fewest random probes allowed, {MIN_PROBES}" in text
    fixed = E.coverage_table(runs[runs.method == "b"], ["measure", "method"])
    assert P.trust_coverage(fixed, summary(runs), runs).startswith(
        "Coverage clearly below the claimed 95 % for 0 fixed-budget and 1 adaptive methods"
    )


def test_errors_above_rtol_name_the_worst_case():
    runs = runs_of({"a": {"rel error": 0.005}, "b": {"rel error": -0.03}})
    assert P.error_sentence(summary(runs)).endswith(
        "in 1 of 2 cases; it was furthest above for b (trace, `rtol` 1 %), at 3 times `rtol`."
    )
    runs = runs_of({"a": {"rel error": 0.005}})
    assert P.error_sentence(summary(runs)) == (
        "The mean |relative error| stayed below the requested `rtol` in all 1 cases (at most 0.5 "
        "times it)."
    )


def test_runs_that_gave_up_are_listed_with_their_share():
    runs = runs_of({"a": {"converged": [True, True, False]}, "b": {}})
    assert P.gave_up_sentence(summary(runs), 64) == (
        "Some runs stopped at 64 probes short of their `rtol`, and said so (`converged=False`): "
        "a for the trace at 1 % in 33 % of runs."
    )
    assert P.gave_up_sentence(summary(runs_of({"b": {}})), 64) == (
        "Every run reached its `rtol` within 64 probes."
    )


def test_ours_against_pyhessian():
    runs = runs_of({"auto": {"hvps": 60, "rel error": 0.004}})
    ph = pd.DataFrame({"rel error": [0.02, -0.04], "probes used": [10, 20]})
    assert P.ours_vs_pyhessian(summary(runs), ph) == (
        "Asked for 1 % instead, the book's `flatness.hessian.trace` spent 60 HVPs on average (4 "
        "times PyHessian's) and was closer to the truth: off by 0.4 % on average, against "
        "PyHessian's 3 %."
    )


def test_slq_advice_follows_its_own_standard_errors():
    assert P.slq_trust(0.4, 1.2).endswith(
        "; read its density for the shape of the bulk and the outliers."
    )
    text = P.slq_trust(0.4, 3.5)
    assert text.startswith(
        "SLQ's trace is 0.4 and its $\\operatorname{Tr} H^2$ 3.5 standard errors"
    )
    assert "more than the 1.96 an honest standard error allows" in text
