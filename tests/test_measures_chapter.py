"""The chapter "Which measures still call the L2 solution sharper?": measures computed from a
stored run's weights against those the run recorded, the rescaling against the network's own
outputs, and the verdict counts against hand-made verdicts."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from flatness import data as datasets
from flatness import models
from flatness.analysis import stats
from flatness.chapters import measures
from flatness.chapters.measures import prose
from flatness.measures import suite
from flatness.results.runs import load_or_run
from flatness.training.config import RunConfig


def test_measures_computed_from_weights_equal_those_the_run_recorded(store_root):
    cfg = RunConfig(model="mlp-10-100", dataset="digits", weight_decay=1e-3, seed=2, epochs=2)
    run = load_or_run(cfg)
    data = datasets.load("digits")
    recorded = measures.run_measures(run, data, profile="smoke")
    stripped = {k: v for k, v in run.metrics.items() if k not in suite.MEASURES}
    computed = measures.run_measures(
        dataclasses.replace(run, metrics=stripped), data, profile="smoke"
    )
    assert set(recorded) == set(computed) == set(measures.COLUMNS)
    for m in measures.COLUMNS:
        assert computed[m] == pytest.approx(recorded[m], rel=1e-5), m
    assert any(p.name.startswith("measures.run") for p in (store_root / "computations").iterdir())


def test_a_run_without_weights_or_measures_has_none(store_root):
    cfg = RunConfig(model="logreg", dataset="digits", weight_decay=0.0, seed=0, epochs=1)

    class Bare:  # a published run whose weights were left out, from before runs recorded measures
        config, metrics, arrays = cfg, {"lambda_max": 1.0}, {}

    assert measures.run_measures(Bare(), datasets.load("digits"), profile="smoke") is None


def test_the_rescaling_keeps_the_function_and_moves_the_weights():
    torch.manual_seed(0)
    model = models.build("mlp-10-100", (1, 8, 8), 10).double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    for a in (0.1, 3.0):
        out = measures.computed.rescaled(model, a)
        torch.testing.assert_close(out(x), model(x), rtol=1e-12, atol=1e-12)
        first = [m for m in out.modules() if isinstance(m, torch.nn.Linear)][0]
        original = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][0]
        torch.testing.assert_close(first.weight, a * original.weight)


def _judged(verdicts: dict[str, list[str]], at_minimum=True) -> pd.DataFrame:
    rows = []
    for m, vs in verdicts.items():
        for i, v in enumerate(vs):
            rows.append(
                {
                    "comparison": f"c{i}",
                    "claim": "C3",
                    "measure": m,
                    "family": measures.FAMILIES[m],
                    "interval": stats.Interval(1.0, 0.5, 2.0, 1.0, "", (3, 3)),
                    "verdict": v,
                    "at_minimum": at_minimum,
                }
            )
    return pd.DataFrame(rows)


def test_family_verdicts_pool_their_measures_verdicts():
    judged = _judged(
        {
            "lambda_max": ["sharper", "sharper"],
            "trace": ["sharper", "sharper"],
            "frobenius": ["sharper", "no clear difference"],
            "scaled_lambda_max": ["flatter", "sharper"],
            "scaled_trace": ["flatter", "no clear difference"],
            "pac_bayes": ["flatter", "flatter"],
            "pac_bayes_magnitude": ["no clear difference", "flatter"],
        }
    )
    found = [measures.Comparison("mlp", "cpu", "C3", "s", "a", "b", pd.DataFrame(), None, 0, True)]
    table = prose.family_verdicts(judged, found).set_index("family")
    raw = table.loc["raw Hessian"]
    assert (raw.sharper, raw.flatter, raw["no clear difference"]) == (5, 0, 1)
    assert raw["the L2 solution is"] == prose.STANCES["sharper or unclear"]
    assert table.loc["scale-aware", "the L2 solution is"] == prose.STANCES["mixed"]
    assert table.loc["PAC-Bayes", "the L2 solution is"] == prose.STANCES["flatter or unclear"]
    assert table.loc["Fisher-Rao norm", "the L2 solution is"] == prose.STANCES["cannot be judged"]
    assert table.loc["raw Hessian", "comparisons"] == 2


def test_comparisons_away_from_a_minimum_judge_nothing():
    judged = _judged({"lambda_max": ["sharper"]}, at_minimum=False)
    assert prose.stances(judged)["lambda_max"] == "cannot be judged"


def test_the_orbit_facts_name_the_measures_that_stay_put():
    frame = pd.DataFrame({"scale": [0.1, 1.0, 10.0]})
    for m in measures.COLUMNS:
        frame[m] = [1.0, 1.0, 1.0]
    frame["lambda_max"] = [100.0, 1.0, 4.0]
    frame["fisher_rao"] = [1.005, 1.0, 0.996]  # within 1 %
    facts = prose.orbit_facts(frame)
    assert facts["orbit_moving"] == 1 and facts["orbit_still"] == len(measures.COLUMNS) - 1
    assert "λ_max changes by a factor of up to 100" in facts["orbit_md"]
    assert math.isclose(prose.orbit_spread(frame)["lambda_max"], np.log(100.0))
