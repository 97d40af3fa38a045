"""Grids: every chapter's lookups at every profile are its declared grid; YAML grids."""

import pytest
from test_recipes import HAVE_MNIST, SHARED_DATA

from flatness import data as datasets
from flatness.chapters import (
    adaptive,
    cnn,
    common,
    estimators,
    grids,
    logreg,
    measures,
    mlp,
    predict,
    rank,
    resnets,
    spectra,
    verdicts,
)
from flatness.chapters.rank import slq as rank_slq
from flatness.errors import FlatnessError, RunMissing
from flatness.results.runs import load_or_run, recording
from flatness.training import recipes

PROFILES = ("smoke", "cpu", "paper")


def _rank_lookups(profile):
    s = rank.settings(profile)
    if s.dataset == "mnist" and not HAVE_MNIST:
        pytest.skip(f"the real MNIST files are not at {SHARED_DATA} (CI has them)")
    d = datasets.load(s.dataset, data_root=SHARED_DATA, train_size=s.train_size)
    for lookup in (rank.spectra, rank_slq.large_net):
        with pytest.raises(RunMissing):
            lookup(s, d, train_missing=False)


def _verdict_lookups(profile, monkeypatch):
    if profile == "paper" and not HAVE_MNIST:  # the paper's verdicts read MNIST's runs
        pytest.skip(f"the real MNIST files are not at {SHARED_DATA} (CI has them)")
    # C2 is computed from the theory chapter (minutes at paper scale) and reads no runs
    monkeypatch.setattr(verdicts, "c2_row", lambda *a, **k: verdicts._row(*["C2"] * 9))
    table = verdicts.rows(profile, train_missing=False)
    assert set(table.outcome[table.claim == "C3"]) == {"not tested"}


LOOKUPS = {
    "logreg": lambda p, mp: logreg.sweep(logreg.settings(p), train_missing=False),
    "mlp": lambda p, mp: common.train(mlp.settings(p), train_missing=False),
    "cnn": lambda p, mp: common.train(cnn.settings(p), train_missing=False),
    "resnets": lambda p, mp: common.train(resnets.settings(p), train_missing=False),
    "adaptive": lambda p, mp: common.train(adaptive.settings(p), train_missing=False),
    "spectra": lambda p, mp: spectra.spectra(p, train_missing=False),
    "estimators": lambda p, mp: estimators.problem(estimators.settings(p), train_missing=False),
    "rank": lambda p, mp: _rank_lookups(p),
    "measures": lambda p, mp: measures.comparisons(p, train_missing=False),
    "predict": lambda p, mp: predict.collect(p, train_missing=False),
    "verdicts": _verdict_lookups,
}


def test_every_chapter_with_runs_has_a_lookup_here():
    assert set(LOOKUPS) == set(grids.CHAPTERS)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("chapter", sorted(LOOKUPS))
def test_a_chapters_lookups_are_exactly_its_grid(chapter, profile, monkeypatch):
    """Every run the chapter's code asks for, with nothing published or stored, is in the grid a
    sweep trains and publish publishes, and the grid holds no run the chapter never reads."""
    monkeypatch.setenv("FLATNESS_DATA", str(SHARED_DATA))  # verdicts' C6 loads MNIST at paper
    with recording(dry=True) as asked:
        try:
            LOOKUPS[chapter](profile, monkeypatch)
        except RunMissing:
            pass
    grid = {c.key() for c in grids.chapter_grid(chapter, profile)}
    keys = {c.key() for c in asked}
    assert keys, chapter
    assert keys <= grid, [c.label() for c in asked if c.key() not in grid]
    assert grid <= keys, sorted(grid - keys)


def test_a_dry_recording_trains_nothing(store_root):
    cfg = logreg.settings("smoke").run_configs()[0]
    with recording(dry=True) as asked, pytest.raises(RunMissing, match="neither published"):
        load_or_run(cfg)
    assert asked == [cfg] and not store_root.exists()


def test_all_is_the_union_of_the_chapters_without_repeats():
    every = grids.load("all", "smoke")
    keys = [c.key() for c in every.configs]
    assert len(keys) == len(set(keys))
    union = {c.key() for name in grids.CHAPTERS for c in grids.chapter_grid(name, "smoke")}
    assert set(keys) == union


def test_a_yaml_grid_multiplies_lists_and_fills_the_rest_from_the_recipe(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "runs:\n"
        "  - {model: logreg, weight_decay: [0, 1e-3], seed: [0, 1, 2], epochs: 2}\n"
        "  - {model: mlp-10-100, optimiser: adam, seed: 4}\n"
    )
    g = grids.load(str(path), "cpu")
    assert len(g) == 7
    assert {(c.weight_decay, c.seed) for c in g.configs[:6]} == {
        (wd, s) for wd in (0.0, 1e-3) for s in (0, 1, 2)
    }
    assert all(c.epochs == 2 for c in g.configs[:6])
    assert g.configs[6] == recipes.run_config("mlp-10-100", "adam", "cpu", seed=4)


@pytest.mark.parametrize(
    "text, match",
    [
        ("runs: []", "non-empty list"),
        ("runs: [{seed: 1}]", "point 1: each point is a mapping with a `model`"),
        ("runs: [{model: logreg}, {model: nope}]", "point 2"),
        ("runs: [{model: logreg, colour: red}]", "unknown run setting 'colour'"),
        ("runs: [{model: logreg, epochs: 0}]", "epochs"),
        ("runs: [{model: logreg", "not valid YAML"),
        ("runs: [{model: logreg, seed: []}]", "point 1: seed lists no value"),
        ("runs: [{model: logreg}]\nextra: 1", "unknown keys \\['extra'\\]"),
        ("runs: [{model: foonet, epochs: 2}]", '"model": "foonet".*unknown model'),
        # YAML keeps the last of a key given twice; a grid refuses it, at any level
        (
            "runs: [{model: logreg, epochs: 3}]\nruns: [{model: logreg}]",
            r"not valid YAML \(duplicate key 'runs' \(on line 2, given before on line 1\)\)",
        ),
        ("runs:\n  - {model: logreg, seed: 0, seed: 1}", "duplicate key 'seed' \\(on line 2"),
        ("runs:\n  - model: logreg\n    epochs: 2\n    epochs: 3", "duplicate key 'epochs'"),
    ],
)
def test_a_bad_yaml_grid_is_one_message_naming_the_point(tmp_path, text, match):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(FlatnessError, match=match):
        grids.load(str(path), "smoke")


def test_an_unknown_grid_lists_the_choices():
    with pytest.raises(FlatnessError, match="unknown grid 'nope'.*'logreg'.*'all'"):
        grids.load("nope", "smoke")
    with pytest.raises(FlatnessError, match="cannot read the grid file"):
        grids.load("missing.yaml", "smoke")
