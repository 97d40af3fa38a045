"""The verdict page's rows for claims C2 and C6, on the smoke profile: each is the judgement
its own chapter prints, never a second opinion."""

import re

import numpy as np

from flatness import data as datasets
from flatness.chapters import rank, theory, verdicts
from flatness.chapters.theory import prose as theory_prose


def test_c6_rows_are_the_rank_pages_judgements_and_never_contradict_a_case(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path))
    rows = verdicts.c6_rows("smoke")
    assert [r["half"] for r in rows] == [f"rank <= {rank.BOUND_NAMES[b]}" for b in rank.BOUNDS]
    s = rank.settings("smoke")
    d = datasets.load(s.dataset, train_size=s.train_size)
    table = rank.rank_table(rank.spectra(s, d), s, d)
    cases = rank.slq_cases(rank.large_net(s, d))
    page = rank.verdict(table, rank.judge(table, cases))
    for b, r in zip(rank.BOUNDS, rows):
        # the rank page's line for this bound is the verdict row's outcome and effect
        assert f"**{rank.BOUND_NAMES[b]}**: {r['outcome']}; {r['effect [95 % CI]']}." in page
        # counted again from the tables: a case counts where it could fail
        vacuous = table[b].iloc[0] >= table.ceiling.iloc[0]
        exact_failed = int((~table[f"holds_{b}"]).sum())
        failed = exact_failed + int((cases[b] == "fails").sum())
        held = (0 if vacuous else len(table) - exact_failed) + int((cases[b] == "holds").sum())
        if held + failed:
            assert r["effect [95 % CI]"].startswith(f"holds in {held} of {held + failed} cases")
        if failed:
            assert r["outcome"] != "reproduced"
        want = (
            "inconclusive"
            if not held + failed
            else "reproduced"
            if not failed
            else "not reproduced"
            if not held
            else "partly reproduced"
        )
        assert r["outcome"] == want, r


def test_c2_scales_a_separating_solution_over_the_theory_pages_range(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path))
    row = verdicts.c2_row("smoke")
    assert row["claim"] == "C2"
    # the theory chapter's smallest-gamma optimum separates the smoke sample: the claim holds
    assert row["outcome"] == "reproduced", row["effect [95 % CI]"]
    assert "largest Tr H / bound" in row["effect [95 % CI]"]
    # the same alpha range as the theory page: every alpha of its settings, 10^-1 to 10^1.5
    low, high = (10.0**e for e in theory.settings("smoke").alpha_log10_range)
    found = re.match(r"α (\S+) to (\S+):", row["effect [95 % CI]"])
    assert found, row["effect [95 % CI]"]
    assert np.allclose([float(v) for v in found.groups()], [low, high], rtol=1e-2)


def test_c2_reads_the_theory_pages_stored_computation(tmp_path, monkeypatch):
    """The verdict page's C2 row and the theory page share one stored computation: once the
    theory page's fact 3 is in the store, the row computes nothing."""
    from flatness.chapters.theory import facts, softmax
    from flatness.results import computations

    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path))
    s = theory.settings("smoke")
    x, y = theory.load(s)
    path, scaled = facts.scaling("smoke", s, x, y)
    found, _ = computations.stored(tmp_path)
    assert [c.name for c in found] == ["theory.scaling"]

    def no_recomputing(*args, **kwargs):
        raise AssertionError("the C2 row recomputed the theory page's fact")

    monkeypatch.setattr(softmax, "separating_scaling", no_recomputing)
    row = verdicts.c2_row("smoke")
    assert row["outcome"] == theory_prose.scaling_outcome(path, scaled)
    assert f"on {len(y):,} examples" in row["setting"]
