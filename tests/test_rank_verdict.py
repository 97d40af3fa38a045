"""The verdict on claim C6 and the larger network's summary follow made-up tables whose answer
is known: bounds that hold everywhere, fail everywhere, fail only for random ReLU nets."""

import pandas as pd

from flatness.chapters import rank_tables as T
from flatness.chapters.rank import BOUNDS


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
