"""Intervals and judgements against scipy's own tests, closed forms and constructed data."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from flatness.analysis import stats
from flatness.chapters import common
from flatness.errors import FlatnessError


def test_welch_matches_scipys_welch_t_test_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 3), rng.normal(0.2, 0.8, 5)
    iv = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert iv.low == pytest.approx(ref.low, rel=1e-10)
    assert iv.high == pytest.approx(ref.high, rel=1e-10)
    assert iv.estimate == pytest.approx(a.mean() - b.mean())


def test_three_seeds_give_the_wide_interval_three_seeds_deserve():
    # equal variances and sizes: Welch's df is 2 (n - 1) = 4, t_{0.975, 4} = 2.776
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0])
    iv = stats.welch(a, b)
    half = 2.7764451051977987 * math.sqrt(1 / 3 + 1 / 3)
    assert iv.df == pytest.approx(4.0)
    assert (iv.low, iv.high) == pytest.approx((1 - half, 1 + half))
    assert stats.judge(iv) == "no clear difference"


def test_ratio_is_welch_on_logs_and_refuses_non_positive_values():
    a, b = [2.0, 2.2, 1.9], [1.0, 1.1, 0.9]
    iv = stats.ratio(a, b)
    ref = sps.ttest_ind(np.log(a), np.log(b), equal_var=False).confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((math.exp(ref.low), math.exp(ref.high)))
    assert iv.null == 1.0 and stats.judge(iv) == "higher"
    with pytest.raises(FlatnessError, match="positive"):
        stats.ratio([1.0, -1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    "a,b,reason", [([1.0], [2.0, 3.0], "one seed"), ([1.0, 1.0], [2.0, 2.0], "no spread")]
)
def test_one_seed_or_no_spread_cannot_be_judged(a, b, reason):
    iv = stats.welch(a, b)
    assert not iv.judgeable and reason in iv.reason
    assert stats.judge(iv) == "cannot be judged"
    assert stats.judge(stats.ratio(a, b)) == "cannot be judged"


def test_paired_bootstrap_matches_the_normal_interval_of_paired_differences():
    rng = np.random.default_rng(1)
    n = 2000
    b = (rng.random(n) < 0.8).astype(float)
    a = b.copy()
    flip = rng.choice(n, 120, replace=False)
    a[flip[:90]] = 1.0  # a right where b was wrong, mostly
    a[flip[90:]] = 0.0
    # identical seeds: only the examples vary, so the interval is the paired one
    iv = stats.paired_bootstrap(np.stack([a, a]), np.stack([b, b]), resamples=4000, seed=0)
    d = a - b
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert iv.estimate == pytest.approx(d.mean())
    assert iv.high - iv.low == pytest.approx(2 * half, rel=0.12)
    # an unpaired interval would be about five times wider here: pairing matters
    unpaired = 1.96 * math.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)
    assert iv.high - iv.low < 0.5 * 2 * unpaired


def test_paired_bootstrap_counts_seed_noise_and_refuses_one_seed():
    rng = np.random.default_rng(2)
    n = 500
    # arm a's seeds disagree with each other a lot; arm b's do not
    a = (rng.random((3, n)) < np.array([[0.6], [0.9], [0.75]])).astype(float)
    b = np.stack([(rng.random(n) < 0.75).astype(float)] * 3)
    wide = stats.paired_bootstrap(a, b, resamples=2000)
    assert stats.judge(wide) == "no clear difference"
    assert wide.high - wide.low > 0.1
    assert stats.judge(stats.paired_bootstrap(a[:1], b)) == "cannot be judged"
    with pytest.raises(FlatnessError, match="same examples"):
        stats.paired_bootstrap(a, b[:, :10])


@pytest.mark.parametrize("k,n", [(10, 10), (0, 10), (7, 20), (95, 100)])
def test_binomial_is_clopper_pearson(k, n):
    iv = stats.binomial(k, n)
    low = sps.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    high = sps.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-9)


def test_duplicate_seeds_are_refused():
    assert stats.check_seeds([2, 0, 1]) == (2, 0, 1)
    with pytest.raises(FlatnessError, match=r"duplicate seeds \[0\]"):
        stats.check_seeds([0, 1, 0])
    with pytest.raises(FlatnessError, match="non-negative"):
        stats.check_seeds([-1])


def _iv(low, high, null=1.0):
    return stats.Interval((low + high) / 2, low, high, null, "test", (3, 3))


@pytest.mark.parametrize(
    "intervals,outcome",
    [
        ([(1.5, 3.0), (1.2, 2.0), (1.1, 4.0)], "reproduced"),
        ([(1.5, 3.0), (0.8, 2.0), (0.9, 4.0)], "partly reproduced"),
        ([(1.5, 3.0), (0.3, 0.9), (0.9, 4.0)], "not reproduced"),
        ([(0.2, 0.5), (0.3, 0.9), (0.1, 0.4)], "opposite"),
    ],
)
def test_sharper_half_follows_the_intervals(intervals, outcome):
    ratios = dict(zip(("lambda_max", "trace", "frobenius"), (_iv(*x) for x in intervals)))
    half = common.sharper_half(ratios, "wd 0.01", "wd 0")
    assert half.outcome == outcome
    assert half.text.count("ratio") == 3


def test_better_half_and_the_claim_say_what_the_interval_says():
    worse = common.better_half(_iv(-0.05, -0.01, 0.0), "wd 0.01", "wd 0")
    assert worse.outcome == "opposite" and "generalises worse" in worse.text
    # with no paper gain to hold it against, an unclear gain cannot count against the claim
    unclear = common.better_half(_iv(-0.01, 0.02, 0.0), "wd 0.01", "wd 0")
    assert unclear.outcome == "inconclusive" and "is inconclusive" in unclear.text
    small = common.Reference({}, 3.0, "a 3-point gain")
    excluded = common.better_half(_iv(-0.01, 0.02, 0.0), "wd 0.01", "wd 0", small)
    assert excluded.outcome == "not reproduced" and "does not clearly" in excluded.text
    one_seed = stats.Interval(
        0.01, math.nan, math.nan, 0.0, "t", (1, 1), reason="one seed: cannot be judged"
    )
    assert common.better_half(one_seed, "a", "b").outcome == "cannot be judged"
    sharp = common.sharper_half({"trace": _iv(2.0, 3.0)}, "a", "b")
    better = common.better_half(_iv(0.01, 0.03, 0.0), "a", "b")
    assert common.combine(sharp, better) == "reproduced"
    assert common.combine(sharp, worse) == "partly reproduced"
    assert (
        common.combine(common.sharper_half({"trace": _iv(0.5, 0.9)}, "a", "b"), worse)
        == "not reproduced"
    )


def test_a_measure_that_is_not_always_positive_is_judged_by_its_difference():
    # the trace of an indefinite Hessian can be negative: no ratio, a Welch difference instead
    iv = common.effect([1.0, 2.0, 1.5], [-0.5, 0.2, 0.1])
    ref = sps.ttest_ind([1.0, 2.0, 1.5], [-0.5, 0.2, 0.1], equal_var=False).confidence_interval()
    assert iv.null == 0.0 and (iv.low, iv.high) == pytest.approx((ref.low, ref.high))
    half = common.sharper_half({"trace": iv}, "a", "b")
    assert "Tr H difference" in half.text
    assert common.effect([2.0, 3.0], [1.0, 1.5]).null == 1.0


def test_short_form_of_an_interval():
    iv = stats.Interval(0.5, 0.25, 0.75, 0.0, "t", (3, 3))
    assert iv.short(".2f", 100) == "50.00 [25.00, 75.00]"
    one = stats.welch([1.0], [2.0, 3.0])
    assert one.short() == "-1.5 (one seed)"
