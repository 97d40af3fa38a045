"""The judgement of each rank bound and the chapter's sentences follow made-up tables whose
answer is counted here by hand: a bound that fails anywhere is never "reproduced", a bound that
cannot fail is no evidence, SLQ can only decide what its bracket allows."""

import itertools

import pandas as pd
import pytest

from flatness.chapters import rank
from flatness.chapters.rank import BOUNDS
from flatness.chapters.rank import tables as T

# a small net with P = 100 whose ceiling (largest possible rank) is 90
P, CEILING = 100, 90
VALUES = {"examples": 95, "fan_in": 85, "neurons": 60, "deep_linear": 20}


def case(activation, state, tolerance, rank_, holds, seed=0, ggn_rank=None):
    return {"activation": activation, "state": state, "weight_decay": 0.0, "seed": seed,
            "tolerance": tolerance, "rank": rank_, "ggn_rank": rank_ if ggn_rank is None else ggn_rank,
            "parameters": P, "ceiling": CEILING} | VALUES | {
        f"holds_{b}": b in holds for b in BOUNDS}  # fmt: skip


def slq_frame(verdicts: dict[str, list[str]], low=0.0, low_se=0.01) -> pd.DataFrame:
    n = len(next(iter(verdicts.values())))
    frame = pd.DataFrame({"state": ["trained"] * n, "weight_decay": [0.0] * n,
                          "seed": list(range(n)), "tolerance": ["rel 1e-06"] * n,
                          "low": [low] * n, "low_se": [low_se] * n} | verdicts)  # fmt: skip
    frame.attrs |= {
        "parameters": 1000,
        "ceiling": 900,
        "bounds": {b: 10 * VALUES[b] for b in BOUNDS},
    }
    return frame


def test_vacuity_rule_by_hand():
    # vacuous at or above the ceiling, nearly vacuous at or above 90 % of it
    assert rank.NEARLY_VACUOUS == 0.9
    assert [rank.vacuity(b, 1084) for b in (1098, 1084, 1083, 976, 975, 314)] == [
        "vacuous", "vacuous", "nearly vacuous", "nearly vacuous", "", ""
    ]  # fmt: skip


def test_the_ceiling_is_p_less_the_last_hidden_width_and_one():
    assert rank.Architecture(64, (5, 50), 10).ceiling == 1135 - 51
    assert rank.Architecture(4, (), 3).ceiling == 15 - 5  # softmax regression: d + 1 shifts


@pytest.mark.parametrize(
    ("exact_failed", "slq"),
    list(
        itertools.product(
            [0, 1, 4],
            [
                ["undecided"] * 3,
                ["fails", "undecided", "undecided"],
                ["holds", "holds", "holds"],
                ["fails"] * 3,
            ],
        )
    ),  # fmt: skip
)
def test_an_outcome_never_contradicts_the_cases(exact_failed, slq):
    # the bound "neurons" (60 < ceiling 90) on 4 exact cases, exact_failed of them failing
    table = pd.DataFrame([case("relu", "trained", "rel 1e-06", 50, set(BOUNDS) - (
        {"neurons"} if i < exact_failed else set()), seed=i) for i in range(4)])  # fmt: skip
    j = rank.judge(table, slq_frame({b: slq for b in BOUNDS}))["neurons"]
    failed = exact_failed + slq.count("fails")
    held = (4 - exact_failed) + slq.count("holds")
    assert j.effect.startswith(f"holds in {held} of {held + failed} cases that could decide it")
    # a bound that fails in more cases than it holds is refuted, not "partly" true
    want = (
        "reproduced" if not failed else "partly reproduced" if held >= failed else "not reproduced"
    )
    assert j.outcome == want
    if failed:
        assert j.outcome != "reproduced"
    assert j.sentence() == f"**neurons x K**: {want}; {j.effect}."


def test_a_vacuous_bound_is_no_evidence_and_slq_decides_alone():
    # "examples" = 95 >= ceiling 90: its 4 exact cases cannot fail and are not counted
    table = pd.DataFrame([case("tanh", "initial", "rel 1e-04", 80, set(BOUNDS), seed=i)
                          for i in range(4)])  # fmt: skip
    undecided = rank.judge(table, slq_frame({b: ["undecided"] * 2 for b in BOUNDS}))
    assert undecided["examples"].outcome == "inconclusive"
    assert undecided["examples"].effect.startswith("no case could decide it; small nets: bound 95")
    assert "vacuous" in undecided["examples"].effect
    # the nearly vacuous fan_in (85 >= 81) still counts, and says so
    assert undecided["fan_in"].outcome == "reproduced"
    assert "(nearly vacuous), fails in 0 of 4 exact cases" in undecided["fan_in"].effect
    failing = rank.judge(table, slq_frame({b: ["fails", "undecided"] for b in BOUNDS}))
    assert failing["examples"].outcome == "not reproduced"
    assert failing["examples"].effect.startswith("holds in 0 of 1 cases")
    assert "fails in 1 of 2 SLQ cases, 1 undecided" in failing["examples"].effect
    assert rank.judge(table.iloc[:0], slq_frame({b: [] for b in BOUNDS}))["neurons"].outcome == (
        "cannot be judged"
    )


def test_slq_judges_each_case_by_its_bracket():
    row = {"predicted_x": 0.9, "low": 0.0, "low_se": 0.01, "high": 0.5, "high_se": 0.1}
    assert rank.judge_case(row, "x") == "fails"  # 0.9 > 0.5 + 2 x 0.1
    assert rank.judge_case(row | {"high": 0.75}, "x") == "undecided"  # 0.9 < 0.95
    assert rank.judge_case(row | {"predicted_x": 0.2, "low": 0.3}, "x") == "holds"  # 0.2 < 0.28
    assert rank.judge_case(row | {"predicted_x": 0.2, "low": 0.21}, "x") == "undecided"


def test_slq_says_what_its_bracket_can_decide():
    never = T.slq_reach(slq_frame({"examples": ["fails", "undecided"]}))
    assert never.startswith("In all 2 SLQ cases the bracket's lower end is 0.000 or less")
    assert "never holding" in never
    some = slq_frame({"examples": ["fails", "undecided"]})
    some.loc[0, "low"] = 0.5
    assert T.slq_reach(some).startswith("In 1 of 2 SLQ cases the bracket's lower end is clear of 0")


def test_deficiency_says_rank_below_p_is_guaranteed_and_whether_n_caps_the_ggn():
    table = pd.DataFrame([case("relu", "trained", "rel 1e-06", 90, set()),
                          case("relu", "trained", "rel 1e-08", 70, set())])  # fmt: skip
    text = T.deficiency(table)
    assert "at least 10 zero eigenvalues: its rank is at most 90 of P = 100" in text
    assert "guaranteed, not found" in text
    assert "below that ceiling in 1 of 2 cases (50 %)" in text
    # N(K-1) = 95 >= 90: the sample does not force the GGN below the ceiling
    assert "The sample does not force it: N(K-1) = 95" in text
    table["examples"] = 60
    assert "the GGN's rank is at most N(K-1) = 60, below the ceiling" in T.deficiency(table)


def test_the_verdict_lists_every_judgement_and_random_relu_failures():
    table = pd.DataFrame([
        case("relu", "initial", "rel 1e-06", 85, {"examples", "fan_in"}),
        case("tanh", "trained", "rel 1e-06", 50, {"examples", "fan_in", "neurons"}),
    ])  # fmt: skip
    judgements = rank.judge(table, slq_frame({b: ["undecided"] * 2 for b in BOUNDS}))
    text = T.verdict(table, judgements)
    for j in judgements.values():
        assert f"- {j.sentence()}" in text.splitlines()
    assert text.rstrip().endswith(
        "For the random (initial) ReLU networks neurons x K and deep-linear formula each fail "
        "for some seed and tolerance."
    )


def test_findings_call_a_vacuous_bound_unable_to_fail():
    easy = {"examples", "fan_in"}
    table = pd.DataFrame([case("linear", "trained", "rel 1e-06", 50, easy),
                          case("tanh", "initial", "abs 0.0001", 50, easy | {"neurons"})])  # fmt: skip
    lines = T.findings(table).splitlines()
    assert lines[0] == "- **N(K-1)** = 95 cannot fail here: no network's rank can exceed 90."
    assert lines[1] == (
        "- **(K-1) x fan-ins** holds in every case at every tolerance (85 of at most 90: nearly "
        "vacuous)."
    )
    assert lines[2] == (
        "- **neurons x K** fails in 1 of 2 cases (linear (trained)); it holds at 10⁻⁴ (absolute)."
    )
    assert lines[3] == (
        "- **deep-linear formula** fails in 2 of 2 cases (every network and state); at every "
        "tolerance it fails in some case."
    )


def test_tables_for_reading_use_words_not_identifiers():
    most = set(BOUNDS) - {"neurons"}
    table = pd.DataFrame([case("relu", "initial", "rel 1e-06", 80, set(BOUNDS), seed=s) for s in (0, 1)]
                         + [case("relu", "initial", "abs 0.0001", 70 + 2 * s, most, seed=s)
                            for s in (0, 1)]
                         + [case("tanh", "trained", "rel 1e-06", 1000, set(), seed=0),
                            case("tanh", "trained", "abs 0.0001", 1000, set(), seed=0)])  # fmt: skip
    table.loc[:3, "weight_decay"] = float("nan")
    grid = T.rank_grid(table)
    assert list(grid.columns) == ["network", "state", "weight decay", "10⁻⁶ max|λ|",
                                  "10⁻⁴ (absolute)"]  # fmt: skip
    # in the table's order, not sorted: ReLU before tanh
    assert grid.values.tolist() == [["ReLU", "initial", "—", "80", "70–72"],
                                    ["tanh", "trained", "0", "1000", "1000"]]  # fmt: skip
    bounds = T.bound_table(table)
    assert bounds.values.tolist()[:2] == [
        ["N(K-1)", "95", "95.0 %", "no (vacuous)"],
        ["(K-1) x fan-ins", "85", "85.0 %", "barely (nearly vacuous)"],
    ]
    fails = T.failure_table(table)
    assert list(fails.columns) == ["tolerance", *(rank.BOUND_NAMES[b] for b in BOUNDS)]
    assert fails.values.tolist() == [["10⁻⁶ max|λ|", "1 of 3", "1 of 3", "1 of 3", "1 of 3"],
                                     ["10⁻⁴ (absolute)", "1 of 3", "1 of 3", "3 of 3", "1 of 3"]]  # fmt: skip


def test_the_gauss_rule_sentence_says_whether_it_left_the_bracket():
    check = pd.DataFrame({"tolerance": ["rel 1e-4", "rel 1e-8"], "exact": [0.5, 0.4],
                          "slq": [0.52, 0.1], "low": [0.45, 0.3], "high": [0.55, 0.5]})  # fmt: skip
    check["error"] = check.slq - check.exact
    assert T.check_sentence(check) == (
        "the Gauss rule alone is off by up to 0.30 (at tolerance 10⁻⁸ max|λ|) and falls outside "
        "the bracket in 1 of 2 cases: with a few dozen Lanczos steps a Ritz value near zero can "
        "land on either side of a tolerance that small"
    )
    check.loc[1, "slq"] = 0.35
    check["error"] = check.slq - check.exact
    assert T.check_sentence(check).endswith(
        "(at tolerance 10⁻⁸ max|λ|), inside the bracket in every case"
    )


def test_tolerance_span_against_the_spectra():
    import torch

    from flatness.chapters.rank import Spectrum

    def spectrum(eigenvalues):
        h = torch.tensor(eigenvalues, dtype=torch.float64)
        return Spectrum("relu", "trained", 0.0, 0, h, h, 0.1)

    wide = [spectrum([-1e-12, 0.0, 1e-3, 10.0])]  # 13 decades, the exact zero left out
    assert T.tolerance_span(wide, (1e-4, 1e-6, 1e-8)).startswith(
        "The tolerances span 4 decades of spectra that span 13 (median over the exact spectra)"
    )
    narrow = [spectrum([1.0, 10.0, 100.0])]
    assert T.tolerance_span(narrow, (1e-4, 1e-8)).startswith(
        "The tolerances span 4 decades, at least as many as the spectra (2,"
    )
