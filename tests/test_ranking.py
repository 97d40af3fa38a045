"""Ranking statistics against scipy, hand-counted grids and toy grids whose answers are known."""

import itertools
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from flatness.analysis import ranking
from flatness.errors import FlatnessError

HYPERS = ("a", "b", "c", "d")


def toy_grid(seed=0, seeds=2, noise=0.1):
    """Four hyperparameters at three levels; the gap is driven by ``a`` (and less by ``b``);
    ``same`` is the gap itself, ``follow`` follows ``a`` alone, ``independent`` is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for a, b, c, d, s in itertools.product(range(3), range(3), range(3), range(3), range(seeds)):
        gap = a + 0.3 * b + rng.normal(0, noise)
        rows.append(
            dict(
                a=a,
                b=b,
                c=c,
                d=d,
                seed=s,
                gap=gap,
                same=gap,
                follow=a + 0.01 * rng.normal(),
                independent=rng.normal(),
            )
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("ties", [False, True])
def test_kendall_tau_is_scipys_tau_b(ties):
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.integers(0, 4, 30) if ties else rng.normal(size=30)
        y = rng.integers(0, 4, 30) if ties else x + rng.normal(size=30)
        assert ranking.kendall_tau(x, y) == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_tau_of_a_constant_is_undefined():
    assert math.isnan(ranking.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_a_measure_equal_to_the_gap_scores_perfectly():
    r = ranking.rank(toy_grid(), "same", HYPERS, seed=0, draws=50)
    assert r.tau.estimate == pytest.approx(1.0)
    assert r.big_psi.estimate == pytest.approx(1.0)
    assert all(v.estimate == pytest.approx(1.0) for v in r.psi.values())
    assert r.cmi.estimate == pytest.approx(1.0)
    assert r.sign_error.estimate == 0 and r.mean_sign_error.estimate == 0
    assert (r.cells, r.full, r.seeds, r.environments) == (81, 81, 2, 4 * 27 * 3)


def test_a_measure_independent_of_the_gap_scores_near_zero():
    r = ranking.rank(toy_grid(), "independent", HYPERS, seed=0, draws=50)
    # 81 cells: tau's standard deviation under independence is about 0.075
    assert abs(r.tau.estimate) < 0.2
    assert r.cmi.estimate < 0.05
    assert 0.35 < r.mean_sign_error.estimate < 0.65


def test_a_measure_following_the_hyperparameter_that_drives_the_gap_has_no_conditional_information():
    r = ranking.rank(toy_grid(), "follow", HYPERS, seed=0, draws=50)
    assert r.tau.estimate > 0.6
    assert r.psi["a"].estimate == pytest.approx(1.0)
    assert abs(r.psi["c"].estimate) < 0.2
    # Psi averages the one hyperparameter it follows with three it does not
    assert r.big_psi.estimate < 0.5
    assert r.cmi.estimate < 0.02
    assert "a" in r.condition
    # it cannot order pairs that differ in b alone, whose gaps differ: the worst case fails
    assert r.sign_error.estimate >= 0.5


def _cmi_by_counting(runs, measure, hypers, subset):
    """I(V_m; V_g | U_S) / H(V_g | U_S) from counts over ordered pairs of distinct cells, in bits."""
    cells = runs.groupby(list(hypers))[[measure, "gap"]].mean().reset_index().to_dict("records")
    table = Counter()
    for p, q in itertools.permutations(cells, 2):
        u = tuple((p[h], q[h]) for h in subset)
        table[u, p["gap"] > q["gap"], p[measure] > q[measure]] += 1
    total = sum(table.values())
    mi = h = 0.0
    for u in {k[0] for k in table}:
        n_u = sum(v for k, v in table.items() if k[0] == u)
        for vg, vm in itertools.product([False, True], repeat=2):
            joint = table[u, vg, vm] / n_u
            pg = (table[u, vg, False] + table[u, vg, True]) / n_u
            pm = (table[u, False, vm] + table[u, True, vm]) / n_u
            if joint:
                mi += n_u / total * joint * math.log2(joint / (pg * pm))
        for vg in (False, True):
            pg = (table[u, vg, False] + table[u, vg, True]) / n_u
            if pg:
                h -= n_u / total * pg * math.log2(pg)
    return mi / h


def test_the_conditional_score_is_the_minimum_over_conditioning_sets_counted_by_hand():
    rng = np.random.default_rng(3)
    rows = [
        dict(a=a, b=b, c=c, seed=0, gap=a + b + rng.normal(0, 0.5), m=a + rng.normal(0, 0.5))
        for a, b, c in itertools.product(range(2), range(3), range(2))
    ]
    runs = pd.DataFrame(rows)
    subsets = [s for k in range(3) for s in itertools.combinations(("a", "b", "c"), k)]
    expected = {s: _cmi_by_counting(runs, "m", ("a", "b", "c"), s) for s in subsets}
    score, condition = ranking.conditional_mi(runs, "m", ("a", "b", "c"))
    assert score == pytest.approx(min(expected.values()), abs=1e-12)
    assert expected[condition] == pytest.approx(score, abs=1e-12)


def test_sign_error_counted_by_hand():
    # one hyperparameter at three levels: gaps 1 < 2 < 3, measure orders the last two wrongly
    runs = pd.DataFrame(dict(h=[0, 1, 2], seed=0, gap=[1.0, 2.0, 3.0], m=[1.0, 3.0, 2.0]))
    assert ranking.sign_error(runs, "m", ["h"]) == (1.0, pytest.approx(1 / 3), 3)
    # pairs whose gaps differ by 1 or less are noise: only (0, 2) is judged, and rightly
    assert ranking.sign_error(runs, "m", ["h"], threshold=1.0) == (0.0, 0.0, 1)
    # a measure that cannot tell a pair apart is wrong half the time
    tied = runs.assign(m=[1.0, 1.0, 2.0])
    assert ranking.sign_error(tied, "m", ["h"])[1] == pytest.approx((0.5 + 0 + 0) / 3)


def test_granulated_tau_counted_by_hand():
    # h1 at two levels, h2 at two: psi_h1 averages two pairs, psi_h2 two pairs
    runs = pd.DataFrame(
        dict(
            h1=[0, 0, 1, 1],
            h2=[0, 1, 0, 1],
            seed=0,
            gap=[1.0, 2.0, 3.0, 4.0],
            m=[1.0, 2.0, 0.0, 5.0],
        )
    )
    # varying h1 at h2=0: gaps 1->3, m 1->0: -1; at h2=1: gaps 2->4, m 2->5: +1 => psi_h1 = 0
    # varying h2 at h1=0: gaps 1->2, m 1->2: +1; at h1=1: 3->4, 0->5: +1 => psi_h2 = 1
    assert ranking.granulated(runs, "m", ["h1", "h2"]) == {"h1": 0.0, "h2": 1.0, "Psi": 0.5}


def test_seeds_that_agree_leave_no_interval_and_seeds_that_differ_widen_it():
    quiet = toy_grid(seeds=2, noise=0.0)
    quiet["independent"] = np.repeat(quiet["independent"].to_numpy()[::2], 2)
    r = ranking.rank(quiet, "independent", HYPERS, seed=0, draws=30)
    assert not r.tau.judgeable and r.tau.low == r.tau.high == r.tau.estimate
    noisy = ranking.rank(toy_grid(seeds=3, noise=0.5), "follow", HYPERS, seed=0, draws=200)
    assert noisy.tau.low < noisy.tau.estimate < noisy.tau.high
    assert noisy.tau.high - noisy.tau.low > 0.02


def test_the_bootstrap_is_reproducible_from_its_seed():
    a = ranking.rank(toy_grid(seeds=3, noise=0.5), "follow", HYPERS, seed=5, draws=40)
    b = ranking.rank(toy_grid(seeds=3, noise=0.5), "follow", HYPERS, seed=5, draws=40)
    assert a == b


def test_a_grid_missing_cells_and_seeds_scores_the_runs_at_hand():
    runs = toy_grid()
    # cell 0 loses both seeds, cell 1 one of its two
    partial = runs.drop(index=[0, 1, 2])
    r = ranking.rank(partial, "same", HYPERS, seed=0, draws=20)
    assert (r.cells, r.full, r.seeds) == (80, 81, 2)
    assert r.tau.estimate == pytest.approx(1.0) and r.sign_error.estimate == 0
    # the one-seed cell's mean is its one run: tau equals scipy's on the cell means by hand
    means = partial.groupby(list(HYPERS))[["follow", "gap"]].mean()
    expected = sps.kendalltau(means["follow"], means["gap"]).statistic
    assert ranking.rank(partial, "follow", HYPERS, seed=0, draws=5).tau.estimate == pytest.approx(
        expected, abs=1e-12
    )


def test_bad_columns_and_values_get_one_clear_message():
    runs = toy_grid()
    with pytest.raises(FlatnessError, match="no column"):
        ranking.Grid(runs, ["a", "nope"])
    with pytest.raises(FlatnessError, match="no runs"):
        ranking.Grid(runs.iloc[:0], HYPERS)
    with pytest.raises(FlatnessError, match="one value only"):
        ranking.Grid(runs[runs.a == 0], HYPERS)
    grid = ranking.Grid(runs, HYPERS)
    with pytest.raises(FlatnessError, match="no column 'absent'"):
        grid.rank("absent", seed=0)
    bad = runs.assign(same=runs["same"].where(runs.index != 3))
    with pytest.raises(FlatnessError, match="NaN"):
        ranking.Grid(bad, HYPERS).rank("same", seed=0)


def _small():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        [
            dict(opt=o, wd=w, seed=s, gap=rng.normal(), m=rng.normal())
            for o in ("sgd", "adam")
            for w in (0.0, 1e-4)
            for s in (0, 1)
        ]  # fmt: skip
    )


@pytest.mark.parametrize("call", [ranking.granulated, ranking.conditional_mi, ranking.sign_error])
def test_every_entry_point_refuses_a_bad_measure_as_rank_does(call):
    runs = _small()
    with pytest.raises(FlatnessError, match="no column 'zz'"):
        call(runs, "zz", ["opt", "wd"])
    runs.loc[0, "m"] = np.nan
    with pytest.raises(FlatnessError, match="NaN"):
        call(runs, "m", ["opt", "wd"])
    with pytest.raises(FlatnessError, match="not numbers"):
        call(runs.assign(m="x"), "m", ["opt", "wd"])


def test_missing_levels_and_repeated_runs_are_refused():
    runs = _small()
    holed = runs.astype({"wd": object})
    holed.loc[holed.wd == 0, "wd"] = None
    with pytest.raises(FlatnessError, match=r"\['wd'\] hold missing values"):
        ranking.Grid(holed, ["opt", "wd"])
    with pytest.raises(FlatnessError, match="repeat a cell and seed"):
        ranking.Grid(pd.concat([runs, runs.iloc[:1]]), ["opt", "wd"])
    with pytest.raises(FlatnessError, match="name one twice"):
        ranking.Grid(runs, ["wd", "wd"])
    # one hyperparameter may be named as a string
    assert ranking.Grid(runs[runs.opt == "sgd"], "wd").hypers == ("wd",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"draws": 0}, "draws"), ({"draws": 1.5}, "draws"), ({"seed": -1}, "seed"),
     ({"seed": 1.5}, "seed"), ({"threshold": math.nan}, "threshold"),
     ({"threshold": -0.1}, "threshold"), ({"threshold": "0.1"}, "threshold")],
)  # fmt: skip
def test_bad_bootstrap_settings_are_refused(kwargs, match):
    with pytest.raises(FlatnessError, match=match):
        ranking.rank(_small(), "m", ["opt", "wd"], **({"seed": 0} | kwargs))


def test_a_gap_that_never_changes_has_no_conditional_score():
    score, condition = ranking.conditional_mi(_small().assign(gap=1.0), "m", ["opt", "wd"])
    assert math.isnan(score) and condition == ()


def test_kendall_tau_counts_infinities_as_scipy_and_refuses_text():
    x, y = [1, np.inf, np.inf, -np.inf], [1, 2, 3, 0]
    assert ranking.kendall_tau(x, y) == pytest.approx(sps.kendalltau(x, y).statistic)
    with pytest.raises(FlatnessError, match="numbers"):
        ranking.kendall_tau(["a", "b"], [1, 2])


def test_the_sign_error_is_the_expectation_over_coupled_seeds_counted_by_hand():
    # one hyperparameter at two levels, two seeds: the measure orders seed 0's pair rightly
    # and seed 1's wrongly, so the one environment's expected sign-error is 1/2
    runs = pd.DataFrame(
        dict(h=[0, 0, 1, 1], seed=[0, 1, 0, 1], gap=[1.0, 1.0, 2.0, 2.0], m=[1.0, 3.0, 2.0, 2.5])
    )
    assert ranking.sign_error(runs, "m", ["h"]) == (0.5, 0.5, 1)
    # cell means would say rightly (2 < 2.25) and hide the seed that disagrees
    assert runs.groupby("h").m.mean().is_monotonic_increasing


def test_rank_intervals_hold_their_estimate_though_resampling_pulls_taus_to_zero():
    # two noisy seeds: a resampled cell mean is noisier than the mean of both, so the raw
    # percentiles of tau sit below the estimate; the centred interval keeps it inside
    r = ranking.rank(toy_grid(seeds=2, noise=1.0), "same", HYPERS, seed=0, draws=200)
    for iv in (r.tau, r.big_psi, r.cmi, *r.psi.values()):
        assert iv.low <= iv.estimate <= iv.high
    assert -1 <= r.tau.low and r.tau.high <= 1
