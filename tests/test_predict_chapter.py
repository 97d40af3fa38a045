"""The prediction chapter's grids, tables, pairs and judging words, on constructed inputs."""

import math
import types

import numpy as np
import pandas as pd
import pytest

from flatness.chapters.predict import claims, design, prose, table


@pytest.mark.parametrize(("profile", "runs"), [("cpu", 324), ("smoke", 32)])
def test_each_grid_is_a_full_factorial_of_distinct_runs(profile, runs):
    found = design.designs(profile)
    configs = design.grid(profile)
    assert len(configs) == runs == len({c.key() for c in configs})
    for d in found:
        cells = pd.DataFrame([d.cell(c) | {"seed": c.seed} for c in d.configs()])
        levels = d.levels
        assert len(cells) == len(d.optimisers) * levels**3 * len(d.seeds)
        # every combination of levels once per seed
        assert not cells.duplicated().any()
        assert set(cells.weight_decay) == set(cells.lr) == set(cells["size"]) == set(range(levels))


def test_gadam_runs_average_the_second_half_at_their_learning_rate():
    d = design.designs("cpu")[0]
    gadam = [c for c in d.configs() if c.averaging]
    assert len(gadam) == len(d.configs()) // 3
    assert all(c.optimiser == "adamw" and c.average_start == 50 and c.average_lr == c.lr
               for c in gadam)  # fmt: skip
    assert all(
        c.schedule == "constant" and c.snapshot_loss == design.STOP_LOSS for c in d.configs()
    )


def test_every_pair_differs_in_the_claims_hyperparameter_alone():
    d = design.designs("cpu")[0]
    found = list(claims._comparisons(d))
    by = pd.Series([f[0] for f in found]).value_counts()
    assert by["C3"] == 3 * 9 and by["C5"] == 2 * 9
    for claim, arm, base, _ in found:
        for a, b in zip(arm, base, strict=True):
            ca, cb = d.cell(a), d.cell(b)
            differ = {h for h in design.HYPERS if ca[h] != cb[h]}
            assert differ == ({"weight_decay"} if claim == "C3" else {"optimiser"})
            assert a.seed == b.seed


def _metrics(reached=True):
    m = {"train_loss": 0.001, "train_acc": 1.0, "test_acc": 0.9}
    m |= {c: 1.0 for c in table.COLUMNS}
    if reached:
        m |= {"snapshot.epoch": 40, "snapshot.train_loss": 0.009, "snapshot.train_acc": 0.99,
              "snapshot.test_acc": 0.85} | {f"snapshot.{c}": 2.0 for c in table.COLUMNS}  # fmt: skip
    else:
        m["snapshot.epoch"] = None
    return m


def test_a_run_gives_one_row_per_stopping_rule_and_never_reaching_the_loss_leaves_it_empty():
    d = design.designs("cpu")[0]
    cfg = d.configs()[0]
    budget, loss = table._rows(d, cfg, _metrics())
    assert budget["gap"] == pytest.approx(0.1) and budget["epoch"] == 100
    assert loss["gap"] == pytest.approx(0.14) and loss["epoch"] == 40 and loss["trace"] == 2.0
    _, never = table._rows(d, cfg, _metrics(reached=False))
    assert not never["reached"] and math.isnan(never["gap"]) and math.isnan(never["trace"])


def test_the_noise_threshold_is_the_binomial_standard_error_of_a_difference_of_cell_means():
    frame = pd.DataFrame({"grid": "g", "weight_decay": 0, "optimiser": "sgd", "lr": 0,
                          "size": [0, 0, 1, 1], "test_acc": 0.9})  # fmt: skip
    expected = 1.96 * math.sqrt(2 * 0.1 * 0.9 / (10_000 * 2))
    assert table.noise_threshold(frame) == pytest.approx(expected)


def _score(est, low, high):
    return {"tau": est, "tau_low": low, "tau_high": high}


def test_judging_words_follow_the_whole_interval():
    assert prose.sign(_score(0.3, 0.1, 0.5), "tau") == "above zero"
    assert prose.sign(_score(-0.3, -0.5, -0.1), "tau") == "below zero"
    assert prose.sign(_score(0.3, -0.1, 0.5), "tau") == "not distinguishable from zero"
    # every resample agreed: the point itself is the verdict
    assert prose.sign(_score(1.0, math.nan, math.nan), "tau") == "above zero"
    assert prose.beats(_score(0.6, 0.5, 0.7), _score(0.3, 0.1, 0.45), "tau")
    assert not prose.beats(_score(0.6, 0.4, 0.7), _score(0.3, 0.1, 0.45), "tau")


def test_the_strongest_hyperparameter_is_the_one_that_moves_the_measure():
    rng = np.random.default_rng(0)
    rows = [dict(weight_decay=w, optimiser=o, lr=lr, size=s, m=math.exp(2 * lr + 0.01 * rng.normal()))
            for w in range(3) for o in ("sgd", "adam") for lr in range(3) for s in range(3)]  # fmt: skip
    assert table.strongest(pd.DataFrame(rows), "m") == "lr"


def test_the_pairs_are_judged_and_one_per_claim_and_grid_is_the_headline():
    rng = np.random.default_rng(0)
    d = design.designs("cpu")[0]
    runs = {}
    for c in d.configs():
        metrics = {"train_loss": 0.001, "lambda_max": rng.uniform(1, 2), "trace": rng.uniform(1, 2),
                   "frobenius": rng.uniform(1, 2), "test_acc": 0.9}  # fmt: skip
        arrays = {"test_correct": rng.random(200) < 0.9}
        runs[c.key()] = types.SimpleNamespace(config=c, metrics=metrics, arrays=arrays)
    collected = table.Collected("cpu", pd.DataFrame(), (d,), (), (), runs)
    found = claims.pairs(collected)
    assert [p.claim for p in found].count("C3") == 27 and [p.claim for p in found].count("C5") == 18
    heads = {p.claim: p for p in found if p.headline}
    assert sum(p.headline for p in found) == 2
    assert heads["C3"].judged.arm == "SGD, lr 0.02, width 0.25, wd 0.0005"
    assert heads["C3"].judged.baseline == "SGD, lr 0.02, width 0.25, wd 0"
    assert heads["C5"].judged.arm == "Gadam, lr 0.001, width 0.25, wd 0.25"
    assert heads["C5"].judged.baseline == "SGD, lr 0.02, width 0.25, wd 0.0005"
    # two seeds per arm, every run at a minimum: each half gets a judged outcome
    for half in (heads["C3"].judged.sharper, heads["C3"].judged.better):
        assert half.outcome not in ("not at a minimum", "cannot be judged")
