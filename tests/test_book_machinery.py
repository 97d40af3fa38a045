"""The book machinery on a tiny fake book: parameters read as papermill reads them, alt text,
missing pages, clean error output, the interpreter chapters run on, the status page, citations."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ROOT

from flatness.book import build as book
from flatness.errors import FlatnessError

FAKE_CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Fake

As argued by {cite:t}`granziol2020flatness`, see {numref}`fig-fake-line`.

```{code-cell} ipython3
:tags: [parameters]

profile = "cpu"
seeds = None
dataset = None
data_root = None
```

```{code-cell} ipython3
import os
import sys
import time

print("PARAMETERS", repr((profile, seeds, dataset, data_root)))
print("INTERPRETER", sys.executable)
print("RESULTS", os.environ.get("FLATNESS_RESULTS"))
print("PROGRESS", os.environ.get("FLATNESS_PROGRESS"))
```

```{code-cell} ipython3
---
mystnb:
  figure:
    caption: |
      The largest eigenvalue $\\lambda_{\\max}$ against the **weight norm**.
    name: fig-fake-line
---
import matplotlib.pyplot as plt

plt.plot([0, 1], [1, 0]);
```
"""

TOC = """format: jb-book
root: book/index
parts:
  - caption: Chapters
    chapters:
      - file: book/fake
  - caption: Appendix
    chapters:
      - file: book/status
      - file: book/bibliography
"""


def make_checkout(root, index="# Index\n\nA fake book.\n"):
    """A checkout with the real configuration, status and bibliography pages and one fake chapter."""
    (root / "book").mkdir(parents=True)
    shutil.copy2(ROOT / "_config.yml", root / "_config.yml")
    for name in ("status.md", "bibliography.md", "references.bib"):
        shutil.copy2(ROOT / "book" / name, root / "book" / name)
    shutil.copytree(ROOT / "book" / "_static", root / "book" / "_static")  # _config.yml's CSS
    (root / "_toc.yml").write_text(TOC)
    (root / "book" / "index.md").write_text(index)
    (root / "book" / "fake.md").write_text(FAKE_CHAPTER)
    return root


def flatness(*args, cwd, env=None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "flatness", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
    )


def printed(notebook, tag: str) -> str:
    text = notebook.read_text()
    found = re.search(rf"{tag} (.*?)\\n", text)
    assert found, f"{tag} not printed in {notebook}"
    return found.group(1)


@pytest.fixture(scope="module")
def fake_book(tmp_path_factory):
    """The fake book built once on the smoke profile: (checkout, html folder)."""
    root = make_checkout(tmp_path_factory.mktemp("fake") / "checkout")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLATNESS_RESULTS", str(root / "results"))
        mp.chdir(root)
        index = book.build_book(profile="smoke", progress=False)
    return root, index.parent


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def test_parameters_are_read_as_papermill_reads_them():
    read = book.read_parameter
    assert read("dataset", "None") is None
    assert read("augment", "True") is True and read("augment", "false") == "false"
    assert read("seeds", "5") == 5 and isinstance(read("seeds", "5"), int)
    assert read("lr", "1e-2") == 0.01 and read("lr", ".5") == 0.5
    assert read("dataset", "mnist") == "mnist" and read("dataset", "null") == "null"
    with pytest.raises(FlatnessError, match=r"-y 'seeds: \[0, 1\]'"):
        read("seeds", "[0, 1]")
    both = book.read_parameters([["seeds", "7"]], ["seeds: [0, 1]\ndataset: digits"])
    assert both == {"seeds": 7, "dataset": "digits"}  # -p after -y, as papermill orders them
    # YAML 1.1 reads 1e-2 as text; every user means the number
    assert book.read_parameters(None, ["weight_decays: [0, 1e-2]\nlr: 5E-3"]) == {
        "weight_decays": [0, 0.01],
        "lr": 0.005,
    }
    # one -y text giving a key twice is refused (YAML would keep the last); later -y or -p win
    with pytest.raises(FlatnessError, match="not YAML .*duplicate key 'seeds'"):
        book.read_parameters(None, ["seeds: [0, 1]\nepochs: 2\nseeds: [2]"])
    assert book.read_parameters(None, ["seeds: [0]", "seeds: [1]"]) == {"seeds": [1]}


def test_the_command_line_and_plain_papermill_hand_a_chapter_the_same_values(tmp_path):
    root = make_checkout(tmp_path / "checkout")
    data = str(tmp_path / "data")
    os.mkdir(data)  # a data root given must exist
    pairs = ["-p", "dataset", "None", "-p", "seeds", "7", "-p", "data_root", data]
    env = {"FLATNESS_RESULTS": str(tmp_path / "results")}
    done = flatness("chapter", "fake", "--profile", "smoke", *pairs, cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    ours = printed(root / "_build" / "executed" / "fake.ipynb", "PARAMETERS")
    bin_dir = os.path.dirname(sys.executable)
    plain = subprocess.run(
        f"{bin_dir}/jupytext --to ipynb book/fake.md -o - | "
        f"{bin_dir}/papermill - theirs.ipynb -p profile smoke {' '.join(pairs)}",
        shell=True,
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert plain.returncode == 0, plain.stderr
    assert ours == printed(root / "theirs.ipynb", "PARAMETERS") == f"('smoke', 7, None, {data!r})"


def test_data_root_and_results_given_relative_mean_the_callers_folder(tmp_path):
    # chapters run in the checkout; plain papermill runs them where it is called
    caller = make_checkout(tmp_path / "checkout") / "notes"  # a folder under the checkout
    (caller / "data").mkdir(parents=True)  # a data root given must exist
    command = ["chapter", "fake", "--profile", "smoke", "--out", str(tmp_path / "out")]
    done = flatness(*command, "--data-root", "data", "--results", "store", cwd=caller)
    assert done.returncode == 0, done.stderr
    notebook = tmp_path / "out" / "_build" / "executed" / "fake.ipynb"
    assert printed(notebook, "PARAMETERS") == f"('smoke', None, None, {str(caller / 'data')!r})"
    assert printed(notebook, "RESULTS") == str(caller / "store")
    twice = flatness(*command, "--data-root", "data", "-p", "data_root", "data", cwd=caller)
    assert twice.returncode == 2
    assert "-p data_root and --data-root both given" in twice.stderr


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (["-p", "data_root", "5"], "data_root must be a folder (a path) or None, got 5"),
        (["-p", "seeds", "[0, 1]"], "give lists with -y 'seeds: [0, 1]'"),
    ],
)
def test_bad_parameter_values_are_one_line_and_exit_2(tmp_path, pair, message):
    root = make_checkout(tmp_path / "checkout")
    done = flatness("chapter", "fake", "--profile", "smoke", *pair, cwd=root)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (root / "_build" / "executed" / "fake.ipynb").exists()


def test_a_chapter_listed_but_missing_is_one_line_naming_the_file(tmp_path):
    root = make_checkout(tmp_path / "checkout")
    toc = TOC.replace(
        "      - file: book/fake\n", "      - file: book/fake\n      - file: book/ghost\n"
    )
    (root / "_toc.yml").write_text(toc)
    for command in (["book", "--profile", "smoke"], ["chapter", "ghost", "--profile", "smoke"]):
        done = flatness(*command, cwd=root)
        assert done.returncode == 2, command
        assert "book/ghost.md does not exist" in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (root / "_build" / "executed").exists()  # refused before executing anything


def test_a_failing_jupyter_book_step_reports_without_colour_codes(tmp_path, monkeypatch):
    # FORCE_COLOR makes Sphinx colour its output even into a pipe
    root = make_checkout(tmp_path / "checkout", index="# Index\n\nSee {ref}`nowhere-at-all`.\n")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(root)
    with pytest.raises(book.ChapterError) as err:
        book.build_book(profile="smoke", progress=False)
    message = str(err.value)
    assert message.startswith("jupyter-book failed")
    assert "undefined label: 'nowhere-at-all'" in message
    assert "\x1b" not in message


def test_chapters_run_on_this_interpreter_whatever_python3_kernelspec_a_user_has(tmp_path):
    root = make_checkout(tmp_path / "checkout")
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        '{"argv": ["/bin/false", "{connection_file}"], "display_name": "elsewhere", '
        '"language": "python"}'
    )
    env = {
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"),
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "FLATNESS_RESULTS": str(tmp_path / "results"),
    }
    # the bogus spec is the one Jupyter finds for python3 here
    found = subprocess.run(
        [sys.executable, "-c", "from jupyter_client.kernelspec import KernelSpecManager as M; "
         "print(M().get_kernel_spec('python3').argv[0])"],
        capture_output=True, text=True, env={**os.environ, **env},
    )  # fmt: skip
    assert found.stdout.strip() == "/bin/false", found.stderr
    done = flatness("chapter", "fake", "--profile", "smoke", cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    assert printed(root / "_build" / "executed" / "fake.ipynb", "INTERPRETER") == sys.executable
    # training in a chapter's kernel draws no progress bars (the notebook would keep each redraw)
    assert printed(root / "_build" / "executed" / "fake.ipynb", "PROGRESS") == "0"


def test_plain_text_of_a_caption():
    caption = r"The **trace** $\mathrm{Tr}\,H$ and $\lambda_{\max}$, see {numref}`fig-a` and [here](x.html)."
    assert book.plain_text(caption) == "The trace Tr H and lambda_max, see fig-a and here."


def test_every_figure_has_its_caption_as_alt_text(fake_book):
    _, html = fake_book
    parser = Images()
    parser.feed((html / "book" / "fake.html").read_text())
    figures = [i for i in parser.images if "_images/" in i.get("src", "")]
    assert len(figures) == 1
    assert figures[0]["alt"] == "The largest eigenvalue lambda_max against the weight norm."


def test_the_status_page_lists_executions_and_the_build_environment(fake_book):
    from importlib import metadata

    _, html = fake_book
    page = (html / "book" / "status.html").read_text()
    assert book.STATUS_MARKER not in page and book.ENVIRONMENT_MARKER not in page
    assert "fake" in page and "smoke" in page and "passed" in page
    for package in ("torch", "seaborn", "papermill", "jupyter-book"):
        name = (
            f'<code class="docutils literal notranslate"><span class="pre">{package}</span></code>'
        )
        assert f"<p>{name}</p></td>\n<td><p>{metadata.version(package)}</p>" in page
    assert sys.version.split()[0] in page
    assert "not a git checkout" in page  # the fake checkout has no git history
    assert "cpu (" in page or "cuda (" in page


def test_the_status_page_shows_no_folder_of_the_build_machine(fake_book):
    root, html = fake_book
    page = (html / "book" / "status.html").read_text()
    for folder in (root, ROOT, Path.home(), Path(sys.executable).parent, Path(sys.prefix)):
        assert str(folder) not in page, folder
    assert "/home/" not in page and "/Users/" not in page
    assert "outside the checkout" in page  # the interpreter is named, not located


def test_the_interpreter_is_named_relative_to_the_checkout(tmp_path, monkeypatch):
    inside = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(inside))
    assert book._interpreter(tmp_path) == "`.venv/bin/python`"
    assert str(tmp_path) not in book._interpreter(tmp_path / "elsewhere")


def test_citations_resolve_and_the_bibliography_lists_every_entry(fake_book):
    _, html = fake_book
    chapter = (html / "book" / "fake.html").read_text()
    assert "Granziol" in chapter and "2020" in chapter
    bibliography = (html / "book" / "bibliography.html").read_text()
    for title in ("Flatness is a false friend", "Wide residual networks", "Hutch++"):
        assert title in bibliography


def test_the_real_bibliography_has_every_key_the_book_cites():
    from pybtex.database import parse_file

    entries = parse_file(ROOT / "book" / "references.bib").entries
    required = {
        "granziol2020flatness", "yao2020pyhessian", "keskar2017large", "dinh2017sharp",
        "jiang2020fantastic", "sagun2017empirical", "papyan2019measurements",
        "ghorbani2019investigation", "izmailov2018averaging", "granziol2020gadam",
        "meyer2021hutchpp", "ubaru2017slq", "loshchilov2019adamw", "he2016identity",
        "zagoruyko2016wide", "springenberg2015striving", "lecun1998gradient", "simonyan2015very",
        "pennington2018spectrum", "singh2021analytic",
    }  # fmt: skip
    assert required <= set(entries)
    assert "2006.09091" in entries["granziol2020flatness"].fields["eprint"]
    assert "2003.01247" in entries["granziol2020gadam"].fields["eprint"]
    cited = set()
    for page in (ROOT / "book").glob("*.md"):
        for keys in re.findall(r"\{cite(?::\w+)?\}`([^`]*)`", page.read_text()):
            cited |= {k.strip() for k in keys.split(",")}
    assert cited <= set(entries), sorted(cited - set(entries))


def test_the_real_plain_pages_render_without_warnings(tmp_path):
    from pybtex.database import parse_file

    # the chapters are stand-ins (one heading each): the pages under test are the plain ones
    stage = tmp_path / "stage"
    (stage / "book").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, stage / name)
    shutil.copy2(ROOT / "book" / "references.bib", stage / "book" / "references.bib")
    shutil.copytree(ROOT / "book" / "_static", stage / "book" / "_static")
    for page in book.toc_files(ROOT):
        target = stage / f"{page}.md"
        if page in book.PLAIN_PAGES:
            shutil.copy2(ROOT / f"{page}.md", target)
        else:
            target.write_text(f"# {page.split('/')[-1]}\n\nA stand-in chapter.\n")
    status = stage / "book" / "status.md"
    assert (
        book.STATUS_MARKER in status.read_text() and book.ENVIRONMENT_MARKER in status.read_text()
    )
    status.write_text(
        status.read_text().replace(book.ENVIRONMENT_MARKER, book.environment_table(ROOT))
    )
    index = book.render(stage, tmp_path / "_build")
    intro = (index.parent / "book" / "index.html").read_text()
    assert "Granziol, 2020" in intro  # citations resolve (author-year style)
    words = " ".join(re.sub(r"<[^>]+>", " ", intro).split())
    assert "python -m flatness chapter NAME --profile paper --data-root" in words
    assert "papermill - out.ipynb -p profile paper" in words
    bibliography = (index.parent / "book" / "bibliography.html").read_text()
    entries = parse_file(ROOT / "book" / "references.bib").entries
    assert bibliography.count('role="doc-biblioentry"') == len(entries)  # all, cited or not


def test_an_unchanged_chapter_is_reused_and_a_changed_one_executed_again(tmp_path):
    root = make_checkout(tmp_path / "checkout")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLATNESS_RESULTS", str(root / "results"))
        mp.chdir(root)
        first = book.execute_chapter("fake", profile="smoke", progress=False, reuse=True)
        again = book.execute_chapter("fake", profile="smoke", progress=False, reuse=True)
        other = book.execute_chapter("fake", profile="cpu", progress=False, reuse=True)
        source = root / "book" / "fake.md"
        source.write_text(source.read_text() + "\nOne more sentence.\n")
        edited = book.execute_chapter("fake", profile="cpu", progress=False, reuse=True)
        forced = book.execute_chapter("fake", profile="cpu", progress=False, reuse=False)
        expected = book.fingerprint("fake", "cpu", {}, root)
    assert not first.reused and first.seconds > 0
    # a reused notebook keeps the date and duration of the execution that wrote it
    assert again.reused and again.started == first.started
    assert again.seconds == pytest.approx(first.seconds, abs=1e-3)
    row = book._status_table([again])
    assert "passed, reused" in row
    assert (
        first.started.strftime("%Y-%m-%d %H:%M UTC") in row and book.duration(first.seconds) in row
    )
    assert not other.reused  # another profile is another page
    assert not edited.reused  # the source changed
    assert not forced.reused
    # the notebook (one path per chapter) now holds the last, forced, execution's fingerprint
    stamp = json.loads(forced.notebook.read_text())["metadata"]["flatness"]["fingerprint"]
    assert stamp == expected


def test_a_notebook_executed_before_the_book_recorded_times_has_papermills(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["papermill"] = {
        "start_time": "2026-01-02T03:04:05.678901",
        "end_time": "2026-01-02T03:06:10.678901",
        "duration": 125.0,
    }
    path = tmp_path / "old.ipynb"
    nbformat.write(notebook, path)
    started, seconds = book.executed_when(path)
    assert started.isoformat().startswith("2026-01-02T03:04:05") and seconds == 125.0
    assert book.duration(seconds) == "2 min 05 s"
    assert book.executed_when(tmp_path / "missing.ipynb") == (None, None)


def test_durations_read_as_words():
    assert book.duration(4.24) == "4.2 s"
    assert book.duration(3 * 3600 + 7 * 60 + 20) == "3 h 07 min"
    assert book.duration(None) == "unknown"


KERNEL_PARENT = """
import time
from jupyter_client.utils import run_sync
from flatness.book import build as book
manager = book._this_python()()
run_sync(manager.start_kernel)()
print(manager.provisioner.process.pid, flush=True)
time.sleep(600)
"""

# A killed `flatness chapter` must not leave its kernel computing for nobody. ipykernel polls for
# a change of parent (jupyter_client passes the launcher's pid), which also holds under a
# subreaper (a container's init, systemd --user, tmux), where an orphan's new parent is not pid 1.
SUBREAPER = """
import ctypes, subprocess, sys, time
ctypes.CDLL("libc.so.6").prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
child.wait()
time.sleep(600)
"""


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: the subreaper has not reaped it yet
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_chapter_kernel_dies_with_the_process_executing_the_chapter():
    reaper = subprocess.Popen(
        [sys.executable, "-c", SUBREAPER, KERNEL_PARENT], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        parent, kernel = int(reaper.stdout.readline()), int(reaper.stdout.readline())
        time.sleep(1.0)
        assert alive(kernel)  # the kernel runs while its parent does
        os.kill(parent, signal.SIGKILL)  # no handler of the parent's can clean up
        deadline = time.monotonic() + 20
        while alive(kernel) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(kernel), f"kernel {kernel} outlived its parent"
    finally:
        reaper.kill()
        reaper.wait()


class FakePapermill:
    """Stands in for ``papermill.execute_notebook``: writes the notebook it is given, marked
    with the execution's number, to the output path, then fails as told (``fail``: an exception
    name, or an exception to raise). No kernel starts."""

    def __init__(self, monkeypatch):
        import papermill

        self.calls, self.fail = [], None
        monkeypatch.setattr(papermill, "execute_notebook", self)

    def __call__(self, notebook, output, parameters, **kwargs):
        import nbformat
        import papermill

        self.calls.append(parameters)
        notebook = nbformat.from_dict(json.loads(nbformat.writes(notebook)))
        notebook.metadata["execution"] = len(self.calls)
        nbformat.write(notebook, output)
        if isinstance(self.fail, BaseException):
            raise self.fail
        if self.fail:
            raise papermill.PapermillExecutionError(
                3, 3, "boom()", self.fail, "it went wrong", ["Traceback", f"{self.fail}: boom"]
            )


def executed_number(notebook: Path) -> int:
    return json.loads(notebook.read_text())["metadata"]["execution"]


@pytest.fixture
def fake_checkout(tmp_path, monkeypatch):
    root = make_checkout(tmp_path / "checkout")
    monkeypatch.setenv("FLATNESS_RESULTS", str(root / "results"))
    monkeypatch.chdir(root)
    return root


def test_a_failed_execution_leaves_the_last_good_notebook_and_keeps_its_own_apart(
    fake_checkout, monkeypatch
):
    executed = fake_checkout / "_build" / "executed"
    good, failed = executed / "fake.ipynb", executed / "fake.failed.ipynb"
    papermill = FakePapermill(monkeypatch)
    run = dict(profile="smoke", progress=False)
    first = book.execute_chapter("fake", reuse=True, **run)
    assert first.notebook == good and not first.error and executed_number(good) == 1
    kept = good.read_bytes()

    papermill.fail = "ZeroDivisionError"
    broken = book.execute_chapter("fake", **run)
    assert broken.error and "ZeroDivisionError: boom" in broken.error
    assert broken.notebook == failed and executed_number(failed) == 2  # kept, to debug it
    # the last good notebook, with the fingerprint a later build reuses it by
    assert good.read_bytes() == kept and b'"fingerprint"' in kept
    assert sorted(p.name for p in executed.iterdir()) == ["fake.failed.ipynb", "fake.ipynb"]

    # bad input met in the chapter, and an interrupted execution: nothing replaced, no leftovers
    papermill.fail = "FlatnessError"
    with pytest.raises(FlatnessError, match="chapter fake: it went wrong"):
        book.execute_chapter("fake", **run)
    papermill.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        book.execute_chapter("fake", **run)
    assert good.read_bytes() == kept and executed_number(failed) == 2
    assert sorted(p.name for p in executed.iterdir()) == ["fake.failed.ipynb", "fake.ipynb"]

    papermill.fail = None  # the next success replaces the notebook and drops the failed one
    fixed = book.execute_chapter("fake", **run)
    assert fixed.notebook == good and executed_number(good) == len(papermill.calls) == 5
    assert sorted(p.name for p in executed.iterdir()) == ["fake.ipynb"]
    assert json.loads(good.read_text())["metadata"]["flatness"]["fingerprint"]


def test_the_book_says_which_chapters_it_executes_and_which_it_reuses(
    fake_checkout, monkeypatch, capsys
):
    papermill = FakePapermill(monkeypatch)
    monkeypatch.setattr(book, "render", lambda stage, build: build / "html" / "index.html")
    # the package's code is part of a fingerprint: an edit elsewhere must not make this flaky
    monkeypatch.setattr(book, "fingerprint", lambda *args, **kwargs: "unchanged")
    book.build_book(profile="smoke", progress=False)
    err = capsys.readouterr().err
    assert re.search(r"^executed fake \(profile smoke\) in [\d.]+ s$", err, re.M), err
    assert err.strip().splitlines()[-1].startswith("book written to ")
    assert len(err.strip().splitlines()) == 2  # one line per chapter, then where the book is
    book.build_book(profile="smoke", progress=False)
    err = capsys.readouterr().err
    assert "executed" not in err.replace("executed 20", "") and len(papermill.calls) == 1
    assert re.search(r"reused fake \(profile smoke, executed \d{4}-\d\d-\d\d \d\d:\d\d UTC\)", err)
    papermill.fail = "ValueError"
    with pytest.raises(book.ChapterError) as failure:
        book.build_book(profile="smoke", progress=False, rerun=True)
    failed = fake_checkout / "_build" / "executed" / "fake.failed.ipynb"
    assert f"the partly executed notebook: {failed}" in str(failure.value)
    assert re.search(
        r"^failed fake \(profile smoke\) after .*; kernel log .*fake\.log$",
        capsys.readouterr().err,
        re.M,
    )


SETTINGS_CELL = """
```{code-cell} ipython3
from flatness.chapters import logreg as chapter

settings = chapter.settings(profile, seeds=seeds, dataset=dataset)
```
"""


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"seeds": [-1]}, "chapter fake: seeds must be non-negative integers, got -1"),
        ({"dataset": "imagenet"}, "chapter fake: unknown dataset 'imagenet'"),
        ({"data_root": "nowhere"}, "the data root {nowhere} (data_root) does not exist"),
    ],
)
def test_parameters_the_chapter_would_refuse_are_refused_before_any_kernel_starts(
    fake_checkout, monkeypatch, parameters, message
):
    source = fake_checkout / "book" / "fake.md"
    source.write_text(source.read_text() + SETTINGS_CELL)
    papermill = FakePapermill(monkeypatch)
    message = message.format(nowhere=fake_checkout / "nowhere")
    with pytest.raises(FlatnessError, match=re.escape(message)):
        book.execute_chapter("fake", profile="smoke", parameters=parameters, progress=False)
    with pytest.raises(FlatnessError, match=re.escape(message)):
        book.build_book(profile="smoke", parameters=parameters, progress=False)
    assert papermill.calls == [] and not (fake_checkout / "_build" / "executed").exists()
    # what the chapter accepts goes through, as the chapter is handed it
    (fake_checkout / "nowhere").mkdir()
    fine = {"seeds": [0, 2], "dataset": "digits", "data_root": "nowhere"}
    book.execute_chapter("fake", profile="smoke", parameters=fine, progress=False)
    assert papermill.calls[0]["seeds"] == [0, 2]
    assert papermill.calls[0]["data_root"] == str(fake_checkout / "nowhere")


def test_bad_chapter_settings_are_one_line_from_the_command_line_without_a_kernel(tmp_path):
    root = make_checkout(tmp_path / "checkout")
    source = root / "book" / "fake.md"
    source.write_text(source.read_text() + SETTINGS_CELL)
    env = {"FLATNESS_RESULTS": str(tmp_path / "results")}
    done = flatness("chapter", "fake", "--profile", "smoke", "-y", "seeds: [-1]", cwd=root, env=env)
    assert done.returncode == 2
    assert (
        done.stderr
        == "flatness: error: chapter fake: seeds must be non-negative integers, got -1\n"
    )
    assert not (root / "_build" / "executed").exists()


def test_chapter_kernels_train_without_progress_bars(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from flatness.results.runs import PROGRESS_ENV, load_or_run
    from flatness.training.config import RunConfig

    assert book._this_python()().kernel_spec.env == {PROGRESS_ENV: "0"}
    asked = []

    def train(config, *, data_root, device, progress, checkpoint):
        asked.append(progress)
        return SimpleNamespace(metrics={"test_acc": 0.5}, arrays={"x": np.zeros(2)})

    tiny = dict(model="logreg", dataset="digits", weight_decay=0.0, epochs=1, train_size=60)
    for seed, value in enumerate([None, "0"]):
        if value is None:
            monkeypatch.delenv(PROGRESS_ENV, raising=False)
        else:
            monkeypatch.setenv(PROGRESS_ENV, value)
        config = RunConfig(**tiny, seed=seed)
        load_or_run(
            config, store=tmp_path, device="cpu", published=False, train_fn=train, progress=True
        )
    assert asked == [True, False]  # the command line keeps its bars


def test_the_opening_sums_up_what_the_verdict_page_glued(tmp_path):
    import nbformat

    from flatness.book import build

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("glue(...)")
    record = "application/papermill.record/text/markdown"
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={record: "On this build, C2: reproduced.", "text/plain": "''"},
            metadata={"scrapbook": {"name": "summary_md", "mime_prefix": ""}},
        )
    ]
    nb.cells = [cell]
    path = tmp_path / "verdicts.ipynb"
    nbformat.write(nb, path)
    done = build.Execution("verdicts", "cpu", path, 1.0)
    other = build.Execution("theory", "cpu", path, 150.0)
    text = build.findings([other, done])
    assert "its chapter): On this build, C2: reproduced.\n\n" in text
    assert "`cpu` profile" in text
    assert "Executing its 2 chapters took 2 min 31 s in all" in text
    paper = build.Execution("logreg", "paper", path, 5.0)
    mixed = build.findings([other, paper, done])
    assert "with each chapter at the largest profile at hand (`cpu` for theory, verdicts; " in mixed
    assert "`paper` for logreg)" in mixed
    failed = build.Execution("verdicts", "cpu", path, 1.0, error="boom")
    assert build.findings([failed]).startswith("The verdict page was not executed")
    assert build.SUMMARY_MARKER in (build.checkout() / "book" / "index.md").read_text()


def test_the_status_page_names_chapters_by_their_titles_and_packages_as_code(tmp_path):
    from flatness.book import build

    page = build.checkout() / "book" / "rank.md"
    heading = next(line for line in page.read_text().splitlines() if line.startswith("# "))
    assert build.chapter_title("rank") == heading[2:].strip()
    assert build.chapter_title("no-such-chapter") == "no-such-chapter"
    done = build.Execution("rank", "cpu", tmp_path / "rank.ipynb", 2.0)
    assert f"| [{heading[2:].strip()}](rank.ipynb) | cpu |" in build._status_table([done])
    assert "| `pyhessian` |" in build.environment_table(build.checkout())


def test_chapters_executed_at_once_give_the_pages_one_at_a_time_gives(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path / "results"))
    run = dict(profile="smoke", progress=False, reuse=False, announce=False)
    options = {name: dict(run, out=tmp_path / "parallel") for name in ("theory", "logreg")}
    done = book._execute_all(options, jobs=2)
    assert set(done) == {"theory", "logreg"} and not any(d.error for d in done.values())
    serial = book._execute_all(
        {name: dict(run, out=tmp_path / "serial") for name in options}, jobs=1
    )
    for name in options:
        assert done[name].notebook.parent.parent.parent == tmp_path / "parallel"
        ours, theirs = _glued_values(done[name].notebook), _glued_values(serial[name].notebook)
        assert len(ours) > 5 and ours.keys() == theirs.keys()
        # what the page says is the same, apart from when it ran and how long it took
        timed = {k for k in ours if any(w in k for w in ("build", "cost", "time", "info"))}
        assert {k: ours[k] for k in ours.keys() - timed} == {
            k: theirs[k] for k in ours.keys() - timed
        }


def _glued_values(notebook: Path) -> dict:
    import nbformat

    out = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                data = output.get("data", {})
                out[name] = {k: v for k, v in data.items() if "image" not in k}
    return out


@pytest.mark.parametrize("jobs", [0, -1, 2.5, True, book.MAX_JOBS + 1])
def test_a_number_of_jobs_out_of_range_is_refused_before_any_chapter(jobs, tmp_path):
    with pytest.raises(FlatnessError, match="jobs must be an integer from 1 to"):
        book.build_book(profile="smoke", out=tmp_path, jobs=jobs)
    assert not (tmp_path / "_build").exists()
