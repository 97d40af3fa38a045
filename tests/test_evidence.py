"""The best-evidence build: each chapter at the largest profile it can show without training,
and the verdict page judging each claim at its chapter's profile."""

import pytest

from flatness.book import availability, evidence
from flatness.chapters import logreg, verdicts
from flatness.errors import FlatnessError
from flatness.results import computations


def fake_availability(monkeypatch, counts: dict):
    """Each chapter's paper grid of ``counts[chapter] = (runs, missing)`` runs."""

    def found(chapter, profile, store=None, published=None):
        runs, missing = counts.get(chapter, (0, 0))
        grid = tuple(range(runs))
        return availability.Availability(chapter, profile, grid, grid[:missing])

    monkeypatch.setattr(availability, "availability", found)


def test_a_chapter_is_shown_at_paper_only_where_nothing_must_be_trained(monkeypatch, tmp_path):
    monkeypatch.delenv("FLATNESS_OFFLINE", raising=False)
    fake_availability(monkeypatch, {"logreg": (15, 0), "cnn": (6, 6), "spectra": (19, 11)})
    published = tmp_path / "published"
    paper = evidence.choose("logreg", published=published)
    assert (paper.profile, paper.why) == (
        "paper",
        "all 15 of its paper runs are published or stored",
    )
    for chapter, why in (("cnn", "6 of its 6"), ("spectra", "11 of its 19")):
        c = evidence.choose(chapter, published=published)
        assert c.profile == "cpu" and c.why.startswith(why), c
    # a chapter without runs: paper once its paper computations are published
    assert evidence.choose("theory", published=published).profile == "cpu"
    results = tmp_path / "results"
    computations.cached("theory.fact", {"profile": "paper"}, lambda: 1.0, results=results)
    computations.cached("theory.fact", {"profile": "cpu"}, lambda: 2.0, results=results)
    computations.cached("rank.other", {"profile": "paper"}, lambda: 3.0, results=results)
    computations.publish(computations.stored(results)[0], published)
    theory = evidence.choose("theory", published=published)
    assert (theory.profile, theory.why) == ("paper", "its 1 paper computations are published")


def test_offline_without_the_papers_data_every_chapter_stays_at_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("FLATNESS_OFFLINE", "1")
    fake_availability(monkeypatch, {"logreg": (15, 0)})
    c = evidence.choose("logreg", data_root=tmp_path / "no-data", published=tmp_path)
    assert c.profile == "cpu" and "mnist is not at" in c.why and "FLATNESS_OFFLINE" in c.why
    chosen = evidence.choices(["logreg", "verdicts"], data_root=tmp_path, published=tmp_path)
    assert chosen["verdicts"].profile == "cpu"


def test_the_verdict_page_takes_each_claim_at_its_chapters_profile(monkeypatch):
    asked = {}
    missing = verdicts.RunMissing(logreg.settings("smoke").run_configs()[:1])

    def c2(profile, **kwargs):
        asked["theory"] = profile
        return verdicts._row("C2", "theory", profile, "", "", "", "", "reproduced", "")

    def sweep(settings, **kwargs):
        asked["logreg"] = settings.dataset
        raise missing

    def chapter_rows(chapter, settings, profile, *args):
        asked[chapter] = profile
        return []

    def c6(profile, **kwargs):
        asked["rank"] = profile
        return []

    monkeypatch.setattr(verdicts, "c2_row", c2)
    monkeypatch.setattr(logreg, "sweep", sweep)
    monkeypatch.setattr(verdicts, "_chapter_rows", chapter_rows)
    monkeypatch.setattr(verdicts, "c6_rows", c6)
    table = verdicts.rows("smoke", profiles={"theory": "cpu", "mlp": "cpu", "logreg": "cpu"})
    assert asked["theory"] == "cpu" and asked["mlp"] == "cpu" and asked["cnn"] == "smoke"
    assert asked["logreg"] == logreg.settings("cpu").dataset and asked["rank"] == "smoke"
    assert set(table.profile) == {"smoke", "cpu", "cpu and smoke"}  # C4 spans chapters
    assert "profile" in verdicts.display(table).data.columns
    sentence = verdicts.scale_sentence("smoke", {"theory": "cpu"})
    assert "`cpu`: theory" in sentence and "`smoke`: logreg" in sentence
    assert "profile" not in verdicts.display(table[table.profile == "cpu"]).data.columns
    with pytest.raises(FlatnessError, match="chapter"):
        verdicts.rows("smoke", profiles={"nope": "cpu"})
    with pytest.raises(FlatnessError, match="'smoke', 'cpu', 'paper'"):
        verdicts.rows("smoke", profiles={"theory": "huge"})
