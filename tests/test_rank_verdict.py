"""The verdict on claim C6 and the larger network's summary follow made-up tables whose answer
is known: bounds that hold everywhere, fail everywhere, fail only for random ReLU nets."""

import pandas as pd

from flatness.chapters.rank import BOUNDS
from flatness.chapters.rank import tables as T


def case(activation, state, tolerance, rank, holds, parameters=100):
    return {"activation": activation, "state": state, "weight_decay": 0.0, "seed": 0,
            "tolerance": tolerance, "rank": rank, "parameters": parameters} | {
        f"holds_{b}": b in holds for b in BOUNDS}  # fmt: skip


def slq(**verdicts):
    return pd.DataFrame([{b: verdicts.get(b, "holds") for b in BOUNDS}] * 2)


def test_one_bound_holding_everywhere_one_failing_everywhere_and_random_relu_failures():
    table = pd.DataFrame([
        case("relu", "initial", "rel 1e-6", 100, {"examples"}),
        case("relu", "initial", "rel 1e-3", 80, {"examples", "fan_in"}),
        case("tanh", "trained", "rel 1e-6", 60, {"examples", "fan_in", "neurons"}),
        case("tanh", "trained", "rel 1e-3", 50, {"examples", "fan_in", "neurons"}),
    ])  # fmt: skip
    text = T.verdict(table, slq(neurons="fails", fan_in="undecided"))
    assert text == (
        "The Hessian is rank-deficient in 75 % of the cases measured. "
        "Only N(K-1) holds in every case and at every tolerance. "
        "The deep-linear formula fails in every case. "
        "For the random (initial) ReLU networks (K-1) x fan-ins, neurons x K and deep-linear "
        "formula each fail for some seed and tolerance. "
        "On the larger network SLQ's bracket shows neurons x K failing in at least one state and "
        "tolerance."
    )


def test_no_bound_everywhere_and_every_bound_holding_for_random_relu_nets():
    table = pd.DataFrame([
        case("relu", "initial", "rel 1e-6", 40, set(BOUNDS)),
        case("tanh", "trained", "rel 1e-6", 100, {"fan_in"}),
        case("tanh", "trained", "rel 1e-3", 90, {"examples"}),
    ])  # fmt: skip
    text = T.verdict(table, slq())
    assert "No candidate bound holds in every case and at every tolerance. " in text
    assert "fails in every case" not in text and "each fail in every case" not in text
    assert "For the random (initial) ReLU networks every candidate bound holds." in text
    assert text.endswith("On the larger network SLQ's bracket shows no bound failing.")


def test_large_findings_count_each_verdict_per_bound():
    verdicts = pd.DataFrame({"examples": ["holds"] * 3, "fan_in": ["fails", "holds", "fails"],
                             "neurons": ["undecided"] * 3, "deep_linear": ["fails"] * 3})  # fmt: skip
    assert T.large_findings(verdicts) == (
        "Over the 3 rows (state, weight decay, tolerance): N(K-1) holds in 3; (K-1) x fan-ins "
        "fails in 2, holds in 1; neurons x K undecided in 3; deep-linear formula fails in 3."
    )


def test_the_gauss_rule_sentence_says_whether_it_left_the_bracket():
    check = pd.DataFrame({"tolerance": ["rel 1e-4", "rel 1e-8"], "exact": [0.5, 0.4],
                          "slq": [0.52, 0.1], "low": [0.45, 0.3], "high": [0.55, 0.5]})  # fmt: skip
    check["error"] = check.slq - check.exact
    assert T.check_sentence(check) == (
        "the Gauss rule alone is off by up to 0.30 (at tolerance rel 1e-8) and falls outside the "
        "bracket in 1 of 2 cases: with a few dozen Lanczos steps a Ritz value near zero can land "
        "on either side of a tolerance that small"
    )
    check.loc[1, "slq"] = 0.35
    check["error"] = check.slq - check.exact
    assert T.check_sentence(check).endswith(
        "(at tolerance rel 1e-8), inside the bracket in every case"
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
