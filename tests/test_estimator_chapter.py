"""The estimators chapter's own computations: shared budgets, honest HVP counts, coverage
intervals and settings, on a float64 MLP small enough for a dense Hessian."""

import importlib
import re

import pandas as pd
import pytest
import torch
from scipy import stats as sps
from test_estimators import make

from flatness import hessian as H
from flatness.chapters import estimators as E
from flatness.errors import FlatnessError

POWER = "power iteration (PyHessian)"


@pytest.fixture(scope="module")
def small():
    """A :class:`estimators.Problem` of the tanh MLP of test_estimators (92 parameters)."""
    model, data = make("tanh")
    exact = H.exact_hessian(model, E.ce, data)
    return E.Problem(None, model, data, exact, torch.linalg.eigvalsh(exact))


@pytest.fixture
def counters(monkeypatch):
    """HVPs counted outside the code under test: rows of every HessianOperator.matmat (matvec
    goes through it) and every call of PyHessian's hessian_vector_product."""
    counts = {"Lanczos": 0, POWER: 0}
    matmat = H.HessianOperator.matmat

    def counted_matmat(self, vectors):
        counts["Lanczos"] += vectors.shape[0]
        return matmat(self, vectors)

    module = importlib.import_module("pyhessian.hessian")  # the package's name hides it
    hvp = module.hessian_vector_product

    def counted_hvp(*args, **kwargs):
        counts[POWER] += 1
        return hvp(*args, **kwargs)

    monkeypatch.setattr(H.HessianOperator, "matmat", counted_matmat)
    monkeypatch.setattr(module, "hessian_vector_product", counted_hvp)
    return counts


def test_both_eigenvalue_methods_run_on_the_same_budgets_and_spend_them(small, counters):
    budgets, k, seeds = (2, 4, 7, 10), 3, (0, 1)
    runs = E.eigenvalue_runs(small, budgets, k, seeds)
    for column, expected in (("top-1", {2, 4, 7, 10}), ("top-3", {3, 6, 9})):
        grids = {
            m: sorted(set(runs[(runs.method == m) & (runs.eigenvalues == column)].budget))
            for m in E.EIGEN_METHODS
        }
        assert grids["Lanczos"] == grids[POWER] == sorted(expected), column
        for method in E.EIGEN_METHODS:
            rows = runs[(runs.method == method) & (runs.eigenvalues == column)]
            assert len(rows) == len(expected) * len(seeds)
            assert (rows.hvps == rows.budget).all(), (method, column)  # tol never fires here
    # the counts the chapter reports are the HVPs that were spent, method by method
    for method in E.EIGEN_METHODS:
        assert runs[runs.method == method].hvps.sum() == counters[method], method


def test_the_not_reached_message_names_the_hvps_actually_spent(small, counters):
    budgets, k = (3, 6, 15), 3
    runs = E.eigenvalue_runs(small, budgets, k, (0,))
    for method, run in E.EIGEN_METHODS.items():
        reach = E.hvps_to_reach(runs, method, "top-3", level=1e-300)  # unreachable
        assert not reach.reached
        before = counters[method]
        run(small, k, max(budgets), seed=0)  # the run at the largest budget, counted again
        spent = counters[method] - before
        (n,) = map(int, re.fullmatch(r"not reached within (\d+) HVPs", reach.phrase()).groups())
        assert n == spent == 15, method  # 5 steps of a block of 3; 5 iterations x 3 eigenvalues


def test_a_reached_level_names_the_first_budget_every_seed_reached(small):
    runs = E.eigenvalue_runs(small, (1, 2, 40), 1, (0, 1))
    lanczos = runs[runs.method == "Lanczos"].set_index(["budget", "seed"])
    # one HVP gives a Rayleigh quotient, far from the top eigenvalue; 40 of 92 dimensions suffice
    assert lanczos.loc[1, "rel error"].min() > 1e-3 and lanczos.loc[40, "rel error"].max() < 1e-6
    reach = E.hvps_to_reach(runs, "Lanczos", "top-1", level=1e-6)
    assert reach.reached and reach.hvps == lanczos.loc[40, "hvps"].max() <= 40
    assert reach.phrase() == f"{reach.hvps} HVPs"


@pytest.mark.parametrize("covered,runs", [(10, 10), (9, 10), (0, 10), (3, 7), (19, 20)])
def test_coverage_interval_is_clopper_pearson(covered, runs):
    c = E.coverage([True] * covered + [False] * (runs - covered))
    assert (c.covered, c.runs) == (covered, runs)
    # the exact interval from beta quantiles (Clopper and Pearson 1934), not binomtest
    low = sps.beta.ppf(0.025, covered, runs - covered + 1) if covered else 0.0
    high = sps.beta.ppf(0.975, covered + 1, runs - covered) if covered < runs else 1.0
    assert c.interval.low == pytest.approx(low, abs=1e-9)
    assert c.interval.high == pytest.approx(high, abs=1e-9)


def test_coverage_wording_follows_the_interval():
    ten = E.coverage([True] * 10).sentence("x")
    assert "10 of 10" in ten and "69 % to 100 %" in ten and "consistent" in ten
    assert "cannot tell it from a coverage of 69 %" in ten
    low = E.coverage([True] * 4 + [False] * 6).sentence("x")
    assert "fewer than the 95 %" in low and "consistent" not in low
    frame = pd.DataFrame({"m": ["a"] * 10 + ["b"] * 10, "covered": [True] * 15 + [False] * 5})
    table = E.coverage_table(frame, ["m"])
    assert table.covered.tolist() == [10, 5] and table.runs.tolist() == [10, 10]


def test_fixed_budget_runs_count_coverage_at_z(small):
    runs = E.trace_runs(small, (3, 12), (0, 1, 2))
    assert len(runs) == 2 * 2 * 2 * 3
    assert (runs.hvps == runs.budget).all()
    truth = {
        "trace": torch.trace(small.hessian).item(),
        "frobenius": torch.linalg.matrix_norm(small.hessian).item(),
    }
    for r in runs.to_dict("records"):
        scale = abs(truth[r["measure"]])  # |rel error| x |truth| = |estimate - truth|
        assert r["covered"] == (abs(r["rel error"]) * scale <= E.Z * r["rel stderr"] * scale)
    assert 0 < runs.covered.sum()


def test_shared_budgets_round_down_to_multiples():
    assert E.shared_budgets((3, 6, 12, 24), 5) == (5, 10, 20)
    assert E.shared_budgets((3, 6), 1) == (3, 6)
    with pytest.raises(FlatnessError, match="no budget of at least 7"):
        E.shared_budgets((3, 6), 7)


def test_settings_keep_the_profile_and_refuse_bad_values():
    for profile, s in E.SETTINGS.items():
        assert E.settings(profile) == s
        assert s.top_k <= max(s.budgets) and len(set(s.seeds)) == len(s.seeds)
        assert list(s.budgets) == sorted(set(s.budgets))
    s = E.settings("smoke", seeds=[4, 5, 6], budgets=[4, 8], rtols=0.2, top_k=2)
    assert (s.seeds, s.budgets, s.rtols, s.top_k) == ((4, 5, 6), (4, 8), (0.2,), 2)
    assert E.settings("smoke", seeds=None).seeds == E.SETTINGS["smoke"].seeds
    bad = [
        ({"seeds": [1, 1]}, "duplicate seeds"),
        ({"budgets": [6, 3]}, "strictly increasing"),
        ({"budgets": [0, 3]}, "at least 1"),
        ({"budgets": "many"}, "must be a list"),
        ({"rtols": [1.5]}, "between 0 and 1"),
        ({"top_k": 500}, "top_k=500 needs a budget of at least 500"),
        ({"top_k": 0}, "at least 1"),
        ({"dataset": "imagenet"}, "imagenet"),
    ]
    for overrides, message in bad:
        with pytest.raises(FlatnessError, match=message):
            E.settings("cpu", **overrides)
    with pytest.raises(FlatnessError):
        E.settings("huge")


def test_a_study_is_stored_once_and_redone_when_its_problem_changes(small, tmp_path, monkeypatch):
    """The chapter's studies are cached computations keyed by the trained run and the sample:
    the same problem reads the stored table back, another run computes it again."""
    from types import SimpleNamespace

    from flatness.chapters.estimators import studies

    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path))
    s = E.settings("smoke", budgets=[6, 12], seeds=[0, 1])
    p = E.Problem(SimpleNamespace(key="run-a"), *list(small.__dict__.values())[1:])
    calls = []
    real = E.trace.trace_runs

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(E.trace, "trace_runs", counted)
    first = studies.trace_runs("smoke", p, s)
    again = studies.trace_runs("smoke", p, s)
    pd.testing.assert_frame_equal(first, again)
    assert len(calls) == 1 and len(first) == 2 * 2 * len(E.FIXED_METHODS) * 2
    other = E.Problem(SimpleNamespace(key="run-b"), *list(small.__dict__.values())[1:])
    studies.trace_runs("smoke", other, s)
    assert len(calls) == 2
