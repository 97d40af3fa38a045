"""The verdict page's rows for claims C2 and C6, on the smoke profile."""

from flatness.chapters import rank, verdicts


def test_c6_has_one_row_per_bound_with_counts_that_add_up(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path))
    rows = verdicts.c6_rows("smoke")
    assert [r["half"] for r in rows] == [f"rank <= {rank.BOUND_NAMES[b]}" for b in rank.BOUNDS]
    for r in rows:
        held, total = (int(w) for w in r["effect [95 % CI]"].split()[2:5:2])
        expected = (
            "reproduced"
            if held == total
            else "not reproduced"
            if held == 0
            else "partly reproduced"
        )
        assert 0 <= held <= total and r["outcome"] == expected


def test_c2_scales_a_separating_solution(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path))
    row = verdicts.c2_row("smoke")
    assert row["claim"] == "C2"
    # the theory chapter's smallest-gamma optimum separates the smoke sample: the claim holds
    assert row["outcome"] == "reproduced", row["effect [95 % CI]"]
    assert "largest Tr H / bound" in row["effect [95 % CI]"]
