"""Chapters whose runs are not all at hand: a note with the missing runs, a page of what is there,
and nothing trained unless asked."""

import nbformat
import pytest

from flatness.analysis import names
from flatness.book import availability
from flatness.book import build as book
from flatness.chapters import common, grids, mlp
from flatness.profiles import get_profile
from flatness.results.runs import load_or_run
from flatness.results.store import Store


@pytest.fixture
def empty_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("FLATNESS_PUBLISHED", str(tmp_path / "published"))
    return tmp_path


def test_only_the_paper_profile_leaves_missing_runs_untrained():
    assert [get_profile(p).train_missing for p in ("smoke", "cpu", "paper")] == [True, True, False]


def test_a_chapter_with_no_run_at_hand_is_its_opening_and_a_note(empty_layers):
    done = book.execute_chapter(
        "cnn", profile="smoke", out=empty_layers, progress=False, train_missing=False
    )
    grid = grids.chapter_grid("cnn", "smoke")
    assert done.placeholder and (done.missing, done.grid) == (len(grid), len(grid))
    nb = nbformat.read(done.notebook, as_version=4)
    assert all(c.cell_type == "markdown" for c in nb.cells)
    assert nb.cells[0].source.startswith("# ")
    note = nb.cells[-1].source
    assert f"{len(grid)} of the {len(grid)} runs" in note and "none of its results" in note
    assert "python -m flatness sweep cnn --profile smoke --executor slurm" in note
    assert "GPU-hours" in note and "--train-missing" in note
    for c in grid:  # few enough to be listed one by one, each with its key
        assert f"`{c.key()}`" in note
    assert not (empty_layers / "results").exists()  # nothing trained


def test_a_chapter_with_some_runs_at_hand_executes_on_them_and_says_which_are_missing(
    empty_layers,
):
    s = mlp.settings("smoke")
    arms = s.run_configs()
    keep = [c for label in list(arms)[:2] for c in arms[label]]  # one network, both decays
    for c in keep:
        load_or_run(c)
    done = book.execute_chapter(
        "mlp", profile="smoke", out=empty_layers, progress=False, train_missing=False
    )
    assert not done.error and not done.placeholder
    assert done.missing == len(s.runs()) - len(keep)
    assert sorted(r.key for r in Store().runs()) == sorted(c.key() for c in keep)
    nb = nbformat.read(done.notebook, as_version=4)
    note = nb.metadata["flatness"]["note"]
    assert f"{done.missing} of the {len(s.runs())} runs" in note
    assert f"shows what the {len(keep)} runs at hand give" in note
    staged = empty_layers / "staged.ipynb"
    book._stage_notebook(done.notebook, staged)
    assert nbformat.read(staged, as_version=4).cells[1].source == note
    # the page judged the one network whose runs are there
    results = common.train(s, train_missing=False)
    assert [a.label for a in results.settings.arms] == list(arms)[:2]
    assert len(results.settings.comparisons) == 1 and len(results.missing) == done.missing
    # and lists each comparison it could not judge as such, not silently dropped
    assert results.unjudged == s.comparisons[1:] and results.unjudged
    outputs = str([c.get("outputs") for c in nb.cells if c.cell_type == "code"])
    for arm, base in s.comparisons[1:]:
        assert f"*not yet judged*: {names.words(arm)} vs {names.words(base)}" in outputs
    assert outputs.count("not yet judged") == len(s.comparisons) - 1


def test_a_run_published_or_stored_since_makes_the_page_execute_again(empty_layers):
    before = availability.availability("cnn", "smoke")
    stamp = book.fingerprint("cnn", "smoke", {}, book.checkout(), before.present_keys)
    load_or_run(grids.chapter_grid("cnn", "smoke")[0])
    after = availability.availability("cnn", "smoke")
    assert len(after.missing) == len(before.missing) - 1
    assert book.fingerprint("cnn", "smoke", {}, book.checkout(), after.present_keys) != stamp


def test_many_missing_runs_are_counted_per_network(empty_layers):
    a = availability.availability("verdicts", "paper")
    assert len(a.missing) > availability.LISTED
    note = availability.note(a, executed=True)
    assert "| network and optimiser | runs | GPU-hours |" in note
    assert "| wrn-28-10/cifar100 sgd | 6 |" in note


def test_a_chapter_that_trained_its_runs_is_reused_by_the_next_build(empty_layers):
    run = dict(profile="smoke", out=empty_layers, progress=False, reuse=True)
    first = book.execute_chapter("logreg", **run)
    assert not first.error and not first.reused and first.missing == len(first_grid())
    assert len(Store().runs()) == len(first_grid())  # it trained them
    again = book.execute_chapter("logreg", **run)
    assert again.reused and again.missing == 0


def first_grid():
    return grids.chapter_grid("logreg", "smoke")


@pytest.mark.parametrize("chapter", book.chapters())
def test_a_placeholder_keeps_no_reference_to_a_value_that_was_never_glued(chapter):
    import jupytext

    notebook = jupytext.read(book.checkout() / "book" / f"{chapter}.md")
    opening = [c.source for c in notebook.cells[: _first_code(notebook)]]
    cut = availability.placeholder(notebook, "note")
    text = "\n".join(c.source for c in cut.cells)
    assert "{glue" not in text and cut.cells[-1].source == "note"
    # every other line of the opening is kept as it was
    for source in opening:
        for line in source.splitlines():
            if "{glue" not in line:
                assert line in text


def _first_code(notebook) -> int:
    return next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")


SHARED_MNIST = book.checkout().parent / "shared" / "data"  # ../shared/data


def require_current_published_computations():
    # a stale one is never read: the paper book would compute it again (the theory chapter's
    # facts take some 22 minutes on 2 CPU cores), so the fix is to publish it again
    from flatness.results import computations

    found, damaged = computations.published_entries()
    assert found and not damaged
    stale = [c.path.name for c in found if not c.current()]
    assert not stale, (
        f"published computations of code changed since: {stale}; make them again with "
        "`python -m flatness book --profile paper --data-root DATA --results STORE` and "
        "`python -m flatness publish computations --profile paper --results STORE`"
    )


def test_every_published_computation_is_current():
    require_current_published_computations()


@pytest.mark.skipif(
    not (SHARED_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(),
    reason=f"the real MNIST files are not at {SHARED_MNIST} (CI has them)",
)
def test_the_paper_chapters_render_from_what_is_published_and_train_or_compute_nothing(
    tmp_path, monkeypatch
):
    # stale published computations would be computed again here, for many minutes: fail first
    require_current_published_computations()
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("FLATNESS_DATA", str(SHARED_MNIST))
    done = {
        name: book.execute_chapter(name, profile="paper", out=tmp_path, progress=False)
        for name in book.chapters()
    }
    assert not [n for n, d in done.items() if d.error]
    executed = {n for n, d in done.items() if not d.placeholder}
    # those whose runs or computations are published render in full; the others are notes
    assert {"theory", "logreg", "mlp", "verdicts"} <= executed
    assert {n for n, d in done.items() if d.placeholder} == {
        n for n, d in done.items() if d.missing == d.grid and d.grid
    }
    assert not (tmp_path / "results").exists()  # nothing trained, nothing computed
