"""The theory chapter's verdicts follow the data: made-up tables where an identity holds and
where it fails must give opposite sentences."""

import pandas as pd
import pytest

from flatness.chapters.theory import prose as P


def split_table(split_error=1e-16, trained_ratio=0.1, trace_r=1e-17):
    rows = []
    for seed in (0, 1):
        for state, ratio in (("initial", 0.5), ("trained", trained_ratio)):
            rows.append({
                "seed": seed, "state": state, "parameters": 100, "loss": 2.3 if state == "initial" else 0.1,
                "frobenius_G": 2.0, "frobenius_R": 2.0 * ratio, "frobenius_H": 1.0,
                "trace_G": 3.0, "trace_R": trace_r, "split_error": split_error,
                "lambda_min_R": -0.1, "lambda_max_R": 0.2 if seed == 0 else 0.0,
            })  # fmt: skip
    return pd.DataFrame(rows)


def test_split_facts_quote_the_table():
    facts = P.split_facts(split_table())
    assert (facts["ratio_init"], facts["ratio_trained"], facts["loss_trained"]) == pytest.approx(
        (0.5, 0.1, 0.1)
    )
    assert facts["split_verdict"].startswith("$G + R$ equals")
    assert facts["residual_verdict"].startswith("For every seed")
    assert facts["trace_r_verdict"].startswith("vanishes to rounding")
    # seed 1's residual has no positive eigenvalue
    assert (
        facts["residual_sign"]
        == "The residual has eigenvalues of both signs in 2 of 4 networks only"
    )
    table = split_table()
    table["lambda_max_R"] = 0.2
    assert P.split_facts(table)["residual_sign"].startswith(
        "In every network the residual is indefinite"
    )


def test_split_verdicts_turn_when_the_identities_fail():
    facts = P.split_facts(split_table(split_error=1e-6, trained_ratio=0.9, trace_r=0.5))
    assert "does **not** match" in facts["split_verdict"]
    # 0.9 > 0.5: the residual grew with training
    assert facts["residual_verdict"].startswith("Not for every seed")
    assert facts["trace_r_verdict"].startswith("does not vanish")


def test_kronecker_verdict_compares_the_rank_with_both_bounds():
    table = pd.DataFrame({"parameters": [650] * 2, "rank": [531, 531], "bound": [585] * 2,
                          "data_bound": [531] * 2, "formula_error": [1e-17, 2e-17]})  # fmt: skip
    assert P.kronecker_facts(table)["kron_verdict"] == (
        "The rank respects the bound for every seed, and equals the data-dependent bound exactly"
    )
    table.loc[1, "rank"] = 600
    assert P.kronecker_facts(table)["kron_verdict"] == (
        "The rank **exceeds** the bound, below the data-dependent bound"
    )


def scaled_table(loss=(1.0, 0.1, 0.01), ratio=(0.5, 0.4, 0.3)):
    return pd.DataFrame({"alpha": [1.0, 10.0, 100.0], "train_loss": loss, "lambda_max": [3.0, 2.0, 1.0],
                         "trace": [3.0, 2.0, 1.0], "frobenius": [3.0, 2.0, 1.0], "ratio": ratio})  # fmt: skip


def path_table(norms=(10.0, 5.0, 1.0), lmax=(0.1, 0.5, 1.0), train_acc=1.0):
    return pd.DataFrame({"gamma": [1e-4, 1e-3, 1e-2], "train_acc": [train_acc, 0.99, 0.9],
                         "weight_norm": norms, "lambda_max": lmax, "trace": [1.0, 2.0, 3.0],
                         "frobenius": [1.0, 0.5, 2.0], "grad_norm": [1e-13, 1e-12, 1e-14],
                         "newton_steps": [9, 4, 3]})  # fmt: skip


def test_scaling_verdicts():
    facts = P.scaling_facts(path_table(), scaled_table())
    assert facts["sep_text"] == "It separates the training sample"
    assert facts["bound_verdict"] == "holds"
    assert facts["falling_verdict"].startswith("The loss and all three measures fall")
    assert facts["scaled_lmax_drop"] == 3.0
    facts = P.scaling_facts(
        path_table(train_acc=0.98), scaled_table(loss=(1.0, 0.1, 0.2), ratio=(0.5, 1.2, 0.3))
    )
    assert "does **not** separate" in facts["sep_text"]
    assert facts["bound_verdict"] == "**fails**"
    assert facts["falling_verdict"].startswith("Not all")


def test_l2_directions_and_the_c3_mechanism():
    facts = P.l2_facts(path_table())
    assert facts["norm_dir"] == "falls at every step of $\\gamma$"
    assert "rises at every step" in facts["measure_dir"]
    assert "is not monotone in $\\gamma$ (1 rises, 1 falls)" in facts["measure_dir"]
    assert facts["c3_text"].startswith("This is the mechanism of claim C3")
    assert facts["grad_verdict"] == "below"
    assert P.l2_facts(path_table(lmax=(1.0, 0.5, 0.1)))["c3_text"].startswith("Here the largest")


def test_batchnorm_and_dinh_verdicts_turn_on_failure():
    bn = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1], "alpha": [0.5, 1.0, 2.0] * 2,
                       "loss_deviation": [1e-16, 0, 2e-16] * 2, "hessian_deviation": [1e-15, 0, 1e-15] * 2,
                       "lambda_max": [4.0, 1.0, 0.25, 80.0, 20.0, 5.0]})  # fmt: skip
    facts = P.batchnorm_facts(bn, 640)
    # 16 within each seed; pooling the seeds would say 320
    assert (facts["bn_alphas"], facts["bn_lmax_spread"]) == ("0.5, 1, 2", 16.0)
    assert facts["bn_verdict"] == "Both identities hold to rounding error"
    bn.loc[0, "hessian_deviation"] = 1e-3
    assert P.batchnorm_facts(bn, 640)["bn_verdict"] == "The identities do **not** hold here"

    dinh = pd.DataFrame({"seed": [0, 0, 1, 1], "a": [0.1, 10.0, 0.1, 10.0],
                         "lambda_max": [100.0, 50.0, 3.0, 40.0], "output_change": [1e-15] * 4,
                         "recomputed_deviation": [1e-14] * 4})  # fmt: skip
    best = pd.DataFrame({"a_star": [0.9, 1.2], "trace_min": [0.999, 0.9], "trace_at_1": [1.0, 1.0]})
    facts = P.dinh_facts(dinh, best)
    assert facts["dinh_span"] == 2.0  # the smaller span over seeds: 100 / 50
    assert facts["dinh_close"].startswith("Over this range")
    assert facts["dinh_best_text"] == "so the trained weights are not at the trace's minimum"
    assert facts["dinh_drop_max"] == pytest.approx(10.0)
    assert facts["dinh_verdict"] == "The outputs agree to rounding error"
    assert facts["dinh_recomputed_verb"] == "reproduces"
    dinh["recomputed_deviation"] = 1e-4
    assert P.dinh_facts(dinh, best)["dinh_recomputed_verb"] == "does **not** reproduce"
    dinh["output_change"] = 1e-3
    assert "do **not** agree" in P.dinh_facts(dinh, best)["dinh_verdict"]


def g_rises_table(g_initial=(2.643, 2.074, 3.0), g_trained=(2.930, 3.160, 1.0)):
    # the cpu book's seeds 0 and 1: ||G||_F rose with training while ||R||_F fell
    rows = []
    for seed, (g0, g1) in enumerate(zip(g_initial, g_trained)):
        rows.append({"seed": seed, "state": "initial", "frobenius_G": g0, "frobenius_R": 3.0})
        rows.append({"seed": seed, "state": "trained", "frobenius_G": g1, "frobenius_R": 0.01})
    return pd.DataFrame(rows)


def test_the_terms_sentence_follows_the_table_it_stands_over():
    text = P.terms_text(g_rises_table())
    assert "both" not in text.lower()
    assert text.startswith(
        "Here $\\|G\\|_F$ does not shrink for seed 0 (2.643 to 2.930) and seed 1 (2.074 to "
        "3.160); $\\|R\\|_F$ shrinks for every seed"
    )
    # every seed's G and R smaller after training: now, and only now, both shrink
    shrinking = P.terms_text(g_rises_table(g_trained=(1.0, 1.0, 1.0)))
    assert shrinking.startswith("Here both terms shrink from initialisation to training")
    # a term that stays put has not shrunk
    flat = g_rises_table(g_trained=(2.643, 1.0, 1.0))
    assert "does not shrink for seed 0 (2.643 to 2.643)" in P.terms_text(flat)
    assert P.split_facts(split_table())["terms_shrink"].startswith(
        "Here $\\|G\\|_F$ does not shrink for seed 0 (2.000 to 2.000) and seed 1"
    )


def test_c2_is_the_theory_pages_own_judgement():
    # separates, falls and stays under the bound: reproduced; any one failing: not
    assert P.scaling_judgement(path_table(), scaled_table()) == {
        "separates": True, "falls": True, "bounded": True
    }  # fmt: skip
    assert P.scaling_outcome(path_table(), scaled_table()) == "reproduced"
    assert P.scaling_outcome(path_table(train_acc=0.98), scaled_table()) == "not reproduced"
    assert P.scaling_outcome(path_table(), scaled_table(ratio=(0.5, 1.01, 0.3))) == (
        "not reproduced"
    )
    assert P.scaling_outcome(path_table(), scaled_table(loss=(1.0, 0.1, 0.2))) == "not reproduced"


@pytest.mark.parametrize("page", ["theory", "rank"])
def test_inline_glued_markdown_is_read_as_myst(page):
    # CommonMark, the inline role's default, leaves $...$ as text and eats the backslash of
    # \|, so "$\|H\|_F$" reached the reader as "$|H|_F$"
    import re
    from pathlib import Path

    source = (Path(__file__).parents[1] / "book" / f"{page}.md").read_text()
    roles = re.findall(r"\{glue:md\}`([^`]+)`", source)
    assert roles
    assert [r for r in roles if not r.endswith(":myst")] == []
