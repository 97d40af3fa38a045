"""What a verdict may rest on: runs that learnt nothing are left out, runs far from a minimum
are judged as such, and an interval that cannot tell is "inconclusive", not "not reproduced"."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from flatness.analysis import stats
from flatness.chapters import cnn, common, verdicts
from flatness.profiles import PROFILES
from flatness.results import published
from flatness.results.store import Store


def _iv(low, high, null=1.0):
    return stats.Interval((low + high) / 2, low, high, null, "test", (3, 3))


REF = common.Reference({"lambda_max": 8.0, "trace": 40.0, "frobenius": 13.0}, 1.0, "test")


@pytest.mark.parametrize(
    "intervals,outcome",
    [
        # no measure clearly differs, and the trace's interval still reaches the paper's 40x
        ([(0.5, 3.0), (0.4, 41.0), (0.9, 4.0)], "inconclusive"),
        # no measure clearly differs, and every interval ends below the paper's ratio
        ([(0.5, 3.0), (0.4, 39.0), (0.9, 12.9)], "not reproduced"),
        # one clearly flatter, the others unclear: evidence against, whatever their widths
        ([(0.2, 0.9), (0.4, 41.0), (0.9, 14.0)], "not reproduced"),
    ],
)
def test_an_unclear_sharper_half_is_inconclusive_only_while_it_reaches_the_papers_ratio(
    intervals, outcome
):
    ratios = dict(zip(("lambda_max", "trace", "frobenius"), (_iv(*x) for x in intervals)))
    assert common.sharper_half(ratios, "a", "b", REF).outcome == outcome


def test_a_train_mode_measure_is_held_against_its_base_measures_paper_ratio():
    assert REF.ratio("trace_bn_train") == 40.0
    half = common.sharper_half({"trace_bn_train": _iv(0.5, 30.0)}, "a", "b", REF)
    assert half.outcome == "not reproduced" and "exclude the paper's ratios" in half.text


def test_an_unclear_accuracy_gain_is_inconclusive_only_while_it_reaches_the_papers_gain():
    # the paper's gain is 1 point = 0.01 in accuracy
    wide = common.better_half(_iv(-0.001, 0.0074, 0.0), "a", "b", REF)
    assert wide.outcome == "not reproduced"
    assert "excludes the paper's gain of 1 point)" in wide.text
    # the interval's ends keep enough digits to show which side of 0 it starts
    assert "-0.10 points to +0.74 points" in wide.text
    reaching = common.better_half(_iv(-0.001, 0.012, 0.0), "a", "b", REF)
    assert reaching.outcome == "inconclusive" and "still holds the paper's gain" in reaching.text
    assert reaching.text.startswith("Whether a generalises better than b is inconclusive")
    tiny = common.better_half(_iv(0.00004, 0.0074, 0.0), "a", "b", REF)
    assert tiny.outcome == "reproduced" and "+0.004 points to +0.740 points" in tiny.text


@pytest.mark.parametrize(
    "halves,claim",
    [
        (("reproduced", "inconclusive"), "partly reproduced"),
        (("inconclusive", "inconclusive"), "inconclusive"),
        (("inconclusive", "not reproduced"), "not reproduced"),
        (("inconclusive", "cannot be judged"), "inconclusive"),
        (("not at a minimum", "reproduced"), "not at a minimum"),
    ],
)
def test_a_claim_combines_its_halves(halves, claim):
    a, b = (common.Half("x", o, {}, "") for o in halves)
    assert common.combine(a, b) == claim


def test_every_outcome_is_defined():
    assert set(common.OUTCOME_DEFINITIONS) == set(common.OUTCOMES)
    page = verdicts.definitions()
    for outcome in (*common.OUTCOMES, "not tested"):
        assert f"- *{outcome}*:" in page


def _smoke_cnn(**changes):
    return dataclasses.replace(cnn.settings("smoke"), **changes)


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    results = common.train(_smoke_cnn(), store=store)
    return store, results


def test_runs_far_from_a_minimum_are_judged_as_such(smoke_store):
    store, results = smoke_store
    losses = common.final_table(results).train_loss
    bound = common.MINIMUM_LOSS_SHARE * math.log(10)
    assert (losses > bound).any()  # two epochs of LeNet-5 on 200 digits end far above
    (claim,) = common.claims(results)
    assert claim.outcome == "not at a minimum"
    assert claim.sharper.outcome == claim.better.outcome == "not at a minimum"
    far = int((losses > bound).sum())
    assert f"Not judged: {far} of the runs of" in claim.sharper.text
    assert f"ended above training loss {bound:.3g}" in claim.sharper.text
    assert f"the largest at {losses.max():.3g}" in claim.sharper.text
    # the effects stay on the page, once, without a verdict on either half
    assert claim.text.count("Not judged") == 1 and "test-accuracy gain" in claim.text
    assert "not clearly" not in claim.text and "inconclusive" not in claim.text
    # with a bound above every loss the same runs are judged on their intervals
    loose = common.train(_smoke_cnn(minimum_loss_share=10.0), store=store)
    (judged,) = common.claims(loose)
    assert judged.outcome != "not at a minimum"
    assert judged.sharper.effects.keys() == claim.sharper.effects.keys()


def test_the_summary_table_shows_the_training_loss_beside_the_measures(smoke_store):
    _, results = smoke_store
    shown = common.summary_table(results)
    headers = list(shown.columns)
    assert "training loss" in headers and headers.index("training loss") < headers.index("λ_max")
    lo = common.final_table(results).groupby("arm", sort=False).train_loss.mean()
    assert [float(v.split(" ± ")[0]) for v in shown["training loss"]] == pytest.approx(
        lo.to_numpy(), rel=1e-3
    )


@pytest.fixture
def excluding(monkeypatch):
    """The smoke runs, judged as a profile that leaves out runs that learnt nothing."""
    strict = dataclasses.replace(PROFILES["smoke"], excludes_dead_runs=True)
    monkeypatch.setattr(common, "get_profile", lambda name: strict)


def test_the_smoke_profile_keeps_runs_that_learnt_nothing_and_says_so(smoke_store):
    _, results = smoke_store
    # two epochs of LeNet-5 on 200 digits: every run ends at about ln 10
    dead = [r for r in results.all_runs if published.collapsed(r)]
    assert dead and len(results.dead_kept) == len(dead) and not results.excluded
    note = common.excluded_markdown(results)
    assert note.startswith(f"**{len(dead)} of {len(results.all_runs)} runs learnt nothing**")


def test_every_run_that_learnt_nothing_is_left_out(smoke_store, excluding):
    store, full = smoke_store
    results = common.train(_smoke_cnn(), store=store)
    assert results.all_runs == [] and len(results.excluded) == len(full.all_runs)
    assert set(results.unjudged) == set(full.settings.comparisons)
    assert common.claims(results) == []


def test_a_run_that_learnt_nothing_is_in_no_table_and_the_page_says_so(
    smoke_store, monkeypatch, excluding
):
    store, full = smoke_store
    dead_key = full.runs["lenet5, wd 0.01"][0].config.key()

    def collapsed(run):
        return run.config.key() == dead_key

    monkeypatch.setattr(common.published, "collapsed", collapsed)
    monkeypatch.setattr(common.published, "collapse_reason", lambda run: "training loss 2.3")
    results = common.train(_smoke_cnn(), store=store)
    assert [r.config.key() for _, r, _ in results.excluded] == [dead_key]
    assert dead_key not in set(common.final_table(results).key)
    assert dead_key not in {k for k in common.history(results).get("key", [])}
    assert len(results.runs["lenet5, wd 0.01"]) == len(full.runs["lenet5, wd 0.01"]) - 1
    note = common.excluded_markdown(results)
    total = len(full.all_runs)
    assert note.startswith(f"**1 of {total} runs excluded.**") and dead_key in note
    # the claim rests on the remaining seed only: one seed cannot give an interval
    (claim,) = common.claims(results)
    assert claim.better.effects["test_acc"].n == (1, 2)


def test_an_arm_with_no_run_left_is_not_judged(smoke_store, monkeypatch, excluding):
    store, _ = smoke_store
    monkeypatch.setattr(common.published, "collapsed", lambda run: run.config.weight_decay > 0)
    monkeypatch.setattr(common.published, "collapse_reason", lambda run: "it learnt nothing")
    results = common.train(_smoke_cnn(), store=store)
    assert results.unjudged == (("lenet5, wd 0.01", "lenet5, wd 0"),)
    assert common.claims(results) == []
    rows = verdicts._chapter_rows("cnn", _smoke_cnn(), "smoke", [], set(), {}, True)
    assert [r["outcome"] for r in rows] == ["not tested"]
    assert "2 run(s) learnt nothing and are excluded" in rows[0]["effect [95 % CI]"]


def test_the_verdict_summary_counts_each_half_of_c3_apart():
    table = pd.DataFrame(
        {
            "claim": ["C2", "C3", "C3", "C3", "C3", "C6", "C6"],
            "half": ["", *["sharper", "generalises better"] * 2, "a", "b"],
            "outcome": [
                "reproduced",
                "reproduced",
                "inconclusive",
                "reproduced",
                "not reproduced",
                "reproduced",
                "not reproduced",
            ],
        }
    )
    text = verdicts.summary(table)
    assert "C2: reproduced" in text
    assert "C3 *sharper*: 2 reproduced (of 2 settings)" in text
    assert "C3 *generalises better*: 1 inconclusive, 1 not reproduced (of 2 settings)" in text
    assert "C6: 1 reproduced, 1 not reproduced (of 2 rows)" in text


def test_c4_counts_settings_not_at_a_minimum_as_undecided():
    def claim(outcome):
        return common.Claim("C3", "s", "a", "b", None, None, outcome)

    row = verdicts.c4_row([claim("not at a minimum"), claim("inconclusive")], "cpu", "digits")
    assert row["outcome"] == "not at a minimum"
    row = verdicts.c4_row([claim("reproduced"), claim("not at a minimum")], "cpu", "digits")
    assert row["outcome"] == "partly reproduced"
    assert "1 reproduced, 1 not at a minimum" in row["effect [95 % CI]"]


def test_points_format_keeps_the_side_of_zero_visible():
    iv = _iv(0.00004, 0.0074, 0.0)
    fmt = stats.points_format(iv, scale=100)
    assert f"{100 * iv.low:{fmt}}" == "+0.004"
    assert stats.points_format(_iv(0.0, 0.0074, 0.0), scale=100) == "+.2f"  # 0 is exactly 0
    assert np.isclose(float(f"{100 * iv.high:{fmt}}"), 0.74)


def test_the_readme_states_the_thresholds_the_code_uses():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"(final training loss at least {published.COLLAPSED_SHARE:g} ln K)" in text
    assert f"a run above training loss {common.MINIMUM_LOSS_SHARE:g} ln K" in text


def test_an_unclear_gain_with_no_known_paper_gain_is_inconclusive():
    # the paper's C3 accuracy gains are not recorded: [+0.00, +0.74] points cannot count against
    assert common.C3_REFERENCE.accuracy_points is None
    half = common.better_half(_iv(0.0, 0.0074, 0.0), "a", "b", common.C3_REFERENCE)
    assert half.outcome == "inconclusive"
    rules = common.rules_markdown(cnn.settings("cpu"))
    assert "an unclear gain is inconclusive, never evidence against it" in rules
