"""Executing chapters with papermill and rendering the book with Jupyter Book 1.

Chapters are MyST Markdown notebooks under ``book/``; papermill runs each one with a profile's
parameters, and Jupyter Book renders the executed notebooks (its own execution is off).
Everything produced goes under ``<out>/_build``: ``executed/`` (notebooks), ``stage/`` (the
book's sources as rendered) and ``html/``. A chapter executes into a temporary notebook beside
``executed/NAME.ipynb`` that replaces it only on success; a failed execution leaves the last good
notebook as it was and its own as ``executed/NAME.failed.ipynb`` (removed by the next success).
Parameters the chapter would refuse are refused before a kernel starts (:func:`check_parameters`).
Chapter kernels train without progress bars (:data:`flatness.results.runs.PROGRESS_ENV`): every redraw
would be kept in the executed notebook.

``python -m flatness chapter -p KEY VALUE`` and ``papermill -p KEY VALUE`` read values alike
(:func:`flatness.book.parameters.read_parameter`); chapters run on the interpreter that runs
flatness, whatever ``python3`` kernelspec a user has installed (:func:`_this_python`).
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from flatness.book import availability
from flatness.book.parameters import _data_root, read_parameter, read_parameters  # noqa: F401  (re-exported)
from flatness.errors import FlatnessError, unknown
from flatness.paths import project_root
from flatness.profiles import get_profile

#: Pages of the table of contents that are plain Markdown, not executed notebooks.
PLAIN_PAGES = (
    "book/index",
    "book/api",
    "book/status",
    "book/troubleshooting",
    "book/bibliography",
)
#: Where ``book/status.md`` gets the table of chapter executions, and the build environment.
STATUS_MARKER = "<!-- execution-table -->"
ENVIRONMENT_MARKER = "<!-- build-environment -->"
#: Where ``book/index.md`` gets what this build found: the verdict page's glued summary.
SUMMARY_MARKER = "<!-- verdict-summary -->"
#: Packages whose versions the status page lists.
VERSIONED = (
    "torch", "torchvision", "numpy", "scipy", "pandas", "seaborn", "matplotlib", "scikit-learn",
    "pyhessian", "jupyter-book", "myst-nb", "papermill", "flatness",
)  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ChapterError(RuntimeError):
    """A chapter failed to execute; the message names it and holds the traceback."""


@dataclass(frozen=True)
class Execution:
    chapter: str
    profile: str
    notebook: Path
    seconds: float
    error: str | None = None
    #: the notebook of an earlier execution with the same fingerprint was reused
    reused: bool = False
    #: runs of the chapter's grid neither published nor stored (not trained: not asked to)
    missing: int = 0
    grid: int = 0
    #: nothing was executed: the page is the chapter's opening and a note on the missing runs
    placeholder: bool = False
    #: when the notebook's execution started (UTC); a reused notebook keeps its own, and its
    #: :attr:`seconds` are that execution's (None where the notebook does not say)
    started: dt.datetime | None = None


def checkout() -> Path:
    """The checkout holding ``_toc.yml`` and ``book/``."""
    root = project_root()
    if root is None:
        raise FlatnessError(
            "no book found: run this from the flatness checkout (the folder with _toc.yml)"
        )
    return root


def toc_files(root: Path) -> list[str]:
    """Every page of ``_toc.yml`` in reading order, as paths without suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return pages


def chapters(root: Path | None = None) -> list[str]:
    """Chapter names (``book/NAME.md`` is the source), in reading order."""
    root = root or checkout()
    return [Path(p).name for p in toc_files(root) if p not in PLAIN_PAGES]


def page_source(page: str, root: Path) -> Path:
    """The Markdown file of a ``_toc.yml`` page.

    Raises:
        FlatnessError: when the table of contents lists a page whose file does not exist.
    """
    source = root / f"{page}.md"
    if not source.is_file():
        raise FlatnessError(
            f"_toc.yml lists {page}, but {source} does not exist: write it or remove it from _toc.yml"
        )
    return source


def chapter_source(name: str, root: Path | None = None) -> Path:
    """``book/NAME.md`` of a chapter; FlatnessError for an unknown or missing chapter."""
    root = root or checkout()
    valid = chapters(root)
    if name not in valid:
        raise unknown("chapter", name, valid)
    return page_source(f"book/{name}", root)


def read_chapter(path: Path):
    """A MyST notebook as an nbformat notebook (through jupytext)."""
    import jupytext

    return jupytext.read(path)


def parameters_cells(notebook) -> list:
    return [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def _parameters_cell(notebook, name: str) -> list[ast.Assign]:
    """The assignments of a chapter's one ``parameters`` cell."""
    cells = parameters_cells(notebook)
    if len(cells) != 1:
        raise FlatnessError(f"chapter {name} must have exactly one cell tagged 'parameters'")
    return [node for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign)]


def _names(cell: list[ast.Assign]) -> list[str]:
    return [t.id for node in cell for t in node.targets]


def chapter_parameters(name: str, root: Path | None = None) -> list[str]:
    """The names a chapter's ``parameters`` cell assigns."""
    return _names(_parameters_cell(read_chapter(chapter_source(name, root)), name))


def check_parameters(
    name: str,
    profile: str,
    parameters: dict | None = None,
    root: Path | None = None,
    *,
    notebook=None,
) -> dict:
    """Chapter ``name``'s parameters, refused before a kernel starts where the chapter would
    refuse them; returned with ``data_root`` absolute.

    Besides the names its ``parameters`` cell assigns, two checks the chapter itself makes are
    made here with the chapter's own functions: a ``data_root`` given must be an existing folder
    (:func:`flatness.data.load`'s check), and each ``MODULE.settings(...)`` call the chapter
    makes on a module of :mod:`flatness.chapters` is made with the same arguments (so
    ``seeds: [-1]`` is refused as the chapter would refuse it, in a second, not after the
    kernel has started). ``notebook`` is the chapter already read (:func:`read_chapter`), if
    the caller has it.

    Raises:
        FlatnessError: an unknown chapter or parameter, a ``data_root`` that is not a path or
            None or not an existing folder, or a value the chapter's settings refuse (the
            message starts ``chapter NAME:``, as when the chapter itself refuses it).
    """
    root = root or checkout()
    parameters = dict(parameters or {})
    if notebook is None:
        notebook = read_chapter(chapter_source(name, root))
    cell = _parameters_cell(notebook, name)
    valid = _names(cell)
    for key in parameters:
        if key == "profile" or key not in valid:
            raise unknown(
                f"parameter for chapter {name}", key, [v for v in valid if v != "profile"]
            )
    if "data_root" in parameters:
        parameters["data_root"] = _data_root(parameters["data_root"])
    if parameters.get("data_root") is not None:
        from flatness import data as datasets

        datasets._data_root(parameters["data_root"])  # the loader's own check: it must exist
    values = {**_defaults(cell), "profile": profile, **parameters}
    for function, args, kwargs in _settings_calls(notebook, values):
        try:
            function(*args, **kwargs)
        except FlatnessError as err:
            raise FlatnessError(f"chapter {name}: {err}") from None
        except Exception:  # not bad input: the execution reports it, with its traceback
            pass
    return parameters


def _defaults(cell: list[ast.Assign]) -> dict:
    """The values a ``parameters`` cell assigns, where they are literals."""
    found = {}
    for node in cell:
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError):
            continue
        found.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
    return found


def _settings_calls(notebook, values: dict):
    """``(settings, args, kwargs)`` for each ``MODULE.settings(...)`` call of the chapter's code
    on a module it imports from :mod:`flatness.chapters`, whose arguments are parameters (as
    ``values`` gives them) or literals; calls with other arguments are left out."""
    trees = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            trees.append(ast.parse(cell.source))
        except SyntaxError:  # IPython syntax (magics): such a cell is not read
            continue
    modules = {}
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module == "flatness.chapters":
            for alias in node.names:
                modules[alias.asname or alias.name] = f"flatness.chapters.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flatness.chapters.") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in (n for tree in trees for n in ast.walk(tree)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "settings"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in modules
        ):
            continue
        try:
            args = [_argument(a, values) for a in node.args]
            kwargs = {k.arg: _argument(k.value, values) for k in node.keywords if k.arg}
        except (ValueError, TypeError, SyntaxError):
            continue
        if any(k.arg is None for k in node.keywords):  # **mapping
            continue
        try:
            module = importlib.import_module(modules[node.func.value.id])
        except ImportError:
            continue
        if callable(getattr(module, "settings", None)):
            yield module.settings, args, kwargs


def _argument(node: ast.expr, values: dict):
    if isinstance(node, ast.Starred):
        raise ValueError("a starred argument")
    if isinstance(node, ast.Name):
        if node.id not in values:
            raise ValueError(f"{node.id} is not a parameter")
        return values[node.id]
    return ast.literal_eval(node)


_ROLE = re.compile(r"\{[\w:.-]+\}`([^`]*)`")  # {numref}`fig-x` -> fig-x
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TEX_WRAP = re.compile(r"\\(?:mathrm|operatorname|text|mathbf|mathit|boldsymbol)\{([^}]*)\}")


def plain_text(markdown: str) -> str:
    """Markdown (with MyST roles and TeX) as one line of plain text, e.g. for alt text."""
    text = _LINK.sub(r"\1", _ROLE.sub(r"\1", markdown))
    text = re.sub(r"\\[,;:! ]", " ", _TEX_WRAP.sub(r"\1", text))
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)  # \lambda -> lambda
    return " ".join(re.sub(r"[`*${}\\]", "", text).split())


def describe_figures(notebook) -> int:
    """Give every captioned figure cell an alt text (its caption's plain text) unless it has one.

    Without it, myst-nb renders ``<img alt="...path of the image...">``. Returns how many cells
    got one. The metadata keys are myst-nb's: ``mystnb.figure.caption`` and ``mystnb.image.alt``.
    """
    count = 0
    for cell in notebook.cells:
        options = cell.get("metadata", {}).get("mystnb")
        figure = options.get("figure") if isinstance(options, dict) else None
        if not isinstance(figure, dict) or not figure.get("caption"):
            continue
        image = options.setdefault("image", {})
        if isinstance(image, dict) and not image.get("alt"):
            image["alt"] = plain_text(str(figure["caption"]))
            count += 1
    return count


@functools.cache
def _this_python(log: Path | None = None):
    """A kernel manager that starts ipykernel on this interpreter (``sys.executable``), its
    own output (not the cells') appended to ``log`` where given.

    papermill looks ``python3`` up among the kernelspecs, where a user-level one (e.g. left by
    another Python install) wins over the virtual environment's and starts a Python without
    flatness ("Kernel died"). This builds the spec as jupyter_client does for its native kernel,
    with :data:`flatness.results.runs.PROGRESS_ENV` set to ``0`` in the kernel's environment: training
    in a chapter draws no progress bars, whose every redraw the executed notebook would keep.
    """
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client import AsyncKernelManager  # nbclient's default manager
    from jupyter_client.kernelspec import KernelSpec

    from flatness.results.runs import PROGRESS_ENV

    class ThisPython(AsyncKernelManager):
        @property
        def kernel_spec(self):
            return KernelSpec(resource_dir=RESOURCES, env={PROGRESS_ENV: "0"}, **get_kernel_dict())

        async def start_kernel(self, **kw):
            if log is None:
                return await super().start_kernel(**kw)
            # "Kernel is running over TCP without encryption" and the like: for the log; the
            # kernel process keeps its own copy of the file once started
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as handle:
                kw.setdefault("stdout", handle)
                kw.setdefault("stderr", handle)
                return await super().start_kernel(**kw)

    return ThisPython


def fingerprint(
    name: str, profile: str, parameters: dict, root: Path, present: list[str] | None = None
) -> str:
    """What a chapter's output depends on: its source, profile and parameters, the package's
    code, the pinned requirements and the results store it reads. Training is deterministic
    given a run's config, so an executed notebook with the same fingerprint is the same page."""
    from flatness.paths import results_root

    h = hashlib.sha256()
    h.update(chapter_source(name, root).read_bytes())
    h.update(json.dumps([profile, parameters], sort_keys=True, default=str).encode())
    package = Path(__file__).resolve().parents[1]  # the flatness package's folder
    for f in sorted(package.rglob("*.py")):
        h.update(f.relative_to(package).as_posix().encode() + f.read_bytes())
    for f in (root / "requirements.txt", root / "_config.yml"):
        if f.is_file():
            h.update(f.read_bytes())
    h.update(str(results_root()).encode())
    # the runs at hand: a run published or stored since changes the page
    h.update(json.dumps(present or []).encode())
    return h.hexdigest()


def _reusable(target: Path, stamp: str) -> bool:
    import nbformat

    if not target.is_file():
        return False
    try:
        meta = nbformat.read(target, as_version=4).metadata.get("flatness", {})
    except Exception:  # a damaged notebook is simply executed again
        return False
    return meta.get("fingerprint") == stamp and not meta.get("error")


def execute_chapter(
    name: str,
    *,
    profile: str = "cpu",
    parameters: dict | None = None,
    out: Path | None = None,
    progress: bool = True,
    reuse: bool = False,
    train_missing: bool | None = None,
    announce: bool = False,
) -> Execution:
    """Execute one chapter with papermill; the notebook lands in ``<out>/_build/executed``.

    Runs of the chapter's grid that are neither published nor stored are trained only with
    ``train_missing`` (default: the profile's :attr:`~flatness.profiles.Profile.train_missing`).
    Otherwise a chapter with a ``train_missing`` parameter runs on the runs at hand, and one
    without, or with none at hand, becomes its opening and a note
    (:mod:`flatness.book.availability`); both pages start with the list of missing runs.

    ``parameters`` are values, e.g. from :func:`flatness.book.parameters.read_parameters`, checked
    before any kernel starts (:func:`check_parameters`). Captioned figures get their caption as
    alt text (:func:`describe_figures`). The kernel runs on this interpreter.

    The chapter executes into a temporary notebook beside ``NAME.ipynb``, which it replaces
    only on success: a failed execution leaves the last good notebook (and the fingerprint
    it carries) as it was, and its own notebook as ``NAME.failed.ipynb``, which is then
    :attr:`Execution.notebook`; the next success removes it. With ``announce``, one line on
    stderr says, once it is done, whether the chapter was executed (and how long it took),
    reused or left a note. What the kernel process itself prints (Jupyter's start-up notices)
    goes to ``_build/logs/NAME.log``, not the terminal.

    Raises:
        ChapterError: when a cell fails (the message holds the chapter, cell and traceback).
        FlatnessError: for an unknown or missing chapter, an unknown profile or parameter, a
            ``data_root`` that is not a path or None or not an existing folder, or a value the
            chapter refuses.
    """
    import nbformat
    import papermill

    root = checkout()
    get_profile(profile)
    notebook = read_chapter(chapter_source(name, root))
    parameters = check_parameters(name, profile, parameters, root, notebook=notebook)
    valid = _names(_parameters_cell(notebook, name))
    if train_missing is None:
        train_missing = get_profile(profile).train_missing
    if "train_missing" in valid:
        parameters.setdefault("train_missing", train_missing)
    train_missing = parameters.get("train_missing", train_missing)
    at_hand = availability.availability(name, profile)
    describe_figures(notebook)
    target = Path(out or root) / "_build" / "executed" / f"{name}.ipynb"
    failed = failed_notebook(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent.parent / "logs" / f"{name}.log"
    stamp = fingerprint(name, profile, parameters, root, at_hand.present_keys)
    counts = dict(missing=len(at_hand.missing), grid=len(at_hand.grid))
    partial = at_hand.missing and not train_missing
    executable = "train_missing" in valid and len(at_hand.missing) < len(at_hand.grid)
    say = functools.partial(print, file=sys.stderr, flush=True) if announce else lambda _: None
    if reuse and _reusable(target, stamp):
        started, seconds = executed_when(target)
        say(f"reused {name} (profile {profile}, executed {_stamp(started)})")
        return Execution(
            name,
            profile,
            target,
            seconds,
            reused=True,
            **counts,
            placeholder=bool(partial and not executable),
            started=started,
        )
    if partial and not executable:
        say(
            f"not executed {name} (profile {profile}): {len(at_hand.missing)} of "
            f"{len(at_hand.grid)} runs missing, its page is a note"
        )
        text = availability.note(at_hand, executed=False)
        now = _now()
        _write(availability.placeholder(notebook, text), target, stamp, started=now, seconds=0.0)
        failed.unlink(missing_ok=True)
        return Execution(name, profile, target, 0.0, **counts, placeholder=True, started=now)
    # papermill writes its output as it goes: into a notebook of this execution's own
    temporary = target.with_name(f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.executing.ipynb")
    start, started = time.perf_counter(), _now()
    try:
        try:
            papermill.execute_notebook(
                notebook,
                str(temporary),
                parameters={"profile": profile, **parameters},
                kernel_name="python3",
                kernel_manager_class=_this_python(log),
                cwd=str(root),
                progress_bar=progress,
            )
        except papermill.PapermillExecutionError as err:
            if err.ename == "FlatnessError":  # bad input reached the chapter: say so, no traceback
                raise FlatnessError(f"chapter {name}: {err.evalue}") from None
            trace = _ANSI.sub("", "\n".join(err.traceback))
            error = f"chapter {name} failed (profile {profile}) in cell {err.exec_count}:\n{trace}"
            if temporary.is_file():
                os.replace(temporary, failed)  # kept to debug it; the good notebook stays
            else:
                failed.unlink(missing_ok=True)  # an earlier failure's: not this one's
            seconds = time.perf_counter() - start
            say(f"failed {name} (profile {profile}) after {duration(seconds)}; kernel log {log}")
            return Execution(name, profile, failed, seconds, error, **counts, started=started)
        seconds = time.perf_counter() - start
        note = availability.note(at_hand, executed=True) if partial else None
        # the runs it trained are at hand now: the next build with nothing changed reuses it
        present = availability.availability(name, profile).present_keys
        executed = nbformat.read(temporary, as_version=4)
        stamp = fingerprint(name, profile, parameters, root, present)
        _write(executed, target, stamp, note, started=started, seconds=seconds)
        failed.unlink(missing_ok=True)
    finally:
        temporary.unlink(missing_ok=True)
    say(f"executed {name} (profile {profile}) in {duration(seconds)}")
    return Execution(name, profile, target, seconds, **counts, started=started)


def failed_notebook(executed: Path) -> Path:
    """Where the notebook of a failed execution of ``executed`` (``NAME.ipynb``) is kept."""
    return executed.with_name(f"{executed.stem}.failed.ipynb")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _stamp(when: dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when is not None else "unknown"


def executed_when(notebook: Path) -> tuple[dt.datetime | None, float | None]:
    """When the execution that wrote ``notebook`` started (UTC) and how many seconds it took.

    Read from what the book wrote into the notebook's metadata (``flatness.started`` and
    ``flatness.seconds``), else from papermill's (``papermill.start_time`` and ``duration``);
    ``(None, None)`` where neither says, or the notebook cannot be read."""
    import nbformat

    try:
        meta = nbformat.read(notebook, as_version=4).metadata
    except Exception:  # damaged or missing: nothing to say about it
        return None, None
    ours, theirs = meta.get("flatness", {}), meta.get("papermill", {})
    started = _parse_time(ours.get("started") or theirs.get("start_time"))
    seconds = ours.get("seconds", theirs.get("duration"))
    return started, float(seconds) if isinstance(seconds, (int, float)) else None


def _parse_time(text) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _write(
    notebook,
    target: Path,
    stamp: str,
    note: str | None = None,
    *,
    started: dt.datetime | None = None,
    seconds: float | None = None,
) -> None:
    """Write ``notebook`` with its fingerprint, the note on missing runs its page starts with,
    and when its execution started and how long it took (which a later build that reuses it
    reports); it replaces ``target`` in one step, so a reader never sees half a notebook."""
    import nbformat

    notebook.metadata["flatness"] = {"fingerprint": stamp}
    if started is not None:
        notebook.metadata["flatness"]["started"] = started.isoformat()
    if seconds is not None:
        notebook.metadata["flatness"]["seconds"] = round(seconds, 3)
    if note:
        notebook.metadata["flatness"]["note"] = note
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp.ipynb")
    try:
        nbformat.write(notebook, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def duration(seconds: float | None) -> str:
    """Seconds in words for a reader: ``4.2 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def chapter_title(name: str, root: Path | None = None) -> str:
    """The chapter's title, its page's first ``# `` heading (the name when it has none)."""
    try:
        lines = chapter_source(name, root).read_text().splitlines()
    except (FlatnessError, OSError):
        return name
    return next((line[2:].strip() for line in lines if line.startswith("# ")), name)


def _status_table(runs: list[Execution]) -> str:
    """The status page's table: per chapter, its profile, outcome, and when its notebook was
    executed and how long that took; a reused notebook keeps its own execution's date and
    duration and is marked reused."""
    lines = [
        "| chapter | profile | status | executed | duration |",
        "|---|---|---|---|---:|",
    ]
    for r in runs:
        status = "failed" if r.error else "passed"
        if r.placeholder:
            status = f"not executed: {r.missing} of {r.grid} runs missing"
        elif r.missing:
            status += f" ({r.missing} of {r.grid} runs missing)"
        if r.reused:  # its notebook's fingerprint matched: code, source and store unchanged
            status += ", reused"
        took = "none" if r.placeholder else duration(r.seconds)
        when = _stamp(r.started)
        lines.append(
            f"| [{chapter_title(r.chapter)}]({r.chapter}.ipynb) | {r.profile} | "
            f"{status} | {when} | {took} |"
        )
    return "\n".join(lines)


def _git_state(root: Path) -> str:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "not a git checkout"
    changed = git("status", "--porcelain")
    if changed is None:
        return f"`{commit}`"
    count = len(changed.splitlines())
    return f"`{commit}`" + (
        f", with uncommitted changes ({count} file(s) changed or untracked)"
        if count
        else ", no uncommitted changes"
    )


def _device() -> str:
    # the device the chapters pick (flatness.training.loop.default_device), described
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s))"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _interpreter(root: Path) -> str:
    """The interpreter's path relative to the checkout; outside it, its name alone (the build
    machine's folders, a home folder among them, are no reader's business)."""
    executable = Path(sys.executable)
    try:
        return f"`{executable.relative_to(root.resolve()).as_posix()}`"
    except ValueError:
        venv = " in a virtual environment" if sys.prefix != sys.base_prefix else ""
        return f"`{executable.name}`{venv} outside the checkout"


def environment_table(root: Path) -> str:
    """What this build ran with, as a Markdown table: Python, platform, git commit, device and
    the versions of :data:`VERSIONED` (``not installed`` where absent)."""
    from importlib import metadata

    rows = [
        ("Python", f"{platform.python_version()} ({_interpreter(root)})"),
        ("platform", platform.platform()),
        ("git commit", _git_state(root)),
        ("device", _device()),
    ]
    for package in VERSIONED:
        try:  # a package is named as pip names it: code, not words
            rows.append((f"`{package}`", metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((f"`{package}`", "not installed"))
    lines = ["| item | value |", "|---|---|"]
    return "\n".join(lines + [f"| {item} | {value} |" for item, value in rows])


def build_book(
    *,
    profile: str = "cpu",
    parameters: dict | None = None,
    out: Path | None = None,
    progress: bool = False,
    rerun: bool = False,
    train_missing: bool | None = None,
    best_evidence: bool = False,
    jobs: int = 1,
) -> Path:
    """Execute every chapter and render the book; returns the path of ``index.html``.

    ``jobs`` chapters execute at once (each in its own process and kernel, sharing the cores);
    papermill's progress bars are drawn only with one.

    With ``best_evidence``, each chapter is executed at the largest profile it can show without
    training (:mod:`flatness.book.evidence`), ``profile`` elsewhere, and the verdict page judges
    each claim at its chapter's profile; one line on stderr says which chapter is at which.

    A chapter whose executed notebook carries the same :func:`fingerprint` (source, profile,
    parameters, package code, requirements, results store) is reused unless ``rerun``; one line
    on stderr per chapter says which, with its time, and the last names ``index.html``.
    Kernels' own output goes to ``_build/logs/NAME.log``, Jupyter Book's to
    ``_build/logs/jupyter-book.log`` (``progress`` draws papermill's bar per chapter). Every
    chapter's parameters are checked (:func:`check_parameters`) before the first executes.

    Raises:
        ChapterError: after executing every chapter, if any failed (all failures are listed,
            each with the path of its failed notebook).
        FlatnessError: before executing any chapter, for bad input (see :func:`check_parameters`).
    """
    root = checkout()
    get_profile(profile)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise FlatnessError(f"jobs must be an integer from 1 to {MAX_JOBS}, got {jobs!r}")
    for page in toc_files(root):  # a missing page is bad input: say so before any execution
        page_source(page, root)
    at = {name: profile for name in chapters(root)}
    extra = {name: {} for name in at}
    if best_evidence:
        from flatness.book import evidence

        data_root = (parameters or {}).get("data_root")
        chosen = evidence.choices(list(at), data_root=data_root)
        at = {name: c.profile for name, c in chosen.items()}
        for collector in evidence.COLLECTORS:  # pages that gather other chapters' runs
            if collector in at:
                extra[collector] = {
                    "chapter_profiles": {c: at.get(c, profile) for c in evidence.VERDICT_CHAPTERS}
                }
        scales = {}
        for name, p in at.items():
            scales.setdefault(p, []).append(name)
        print(
            "best evidence: "
            + "; ".join(f"{p} for {', '.join(names)}" for p, names in scales.items()),
            file=sys.stderr,
            flush=True,
        )
    for name in chapters(root):
        check_parameters(name, at[name], {**(parameters or {}), **extra[name]}, root)
    build = Path(out or root) / "_build"
    stage = build / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns("*.ipynb", ".*"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    options = {
        name: dict(
            profile=at[name],
            parameters={**(parameters or {}), **extra[name]},
            out=out,
            progress=progress and jobs == 1,
            reuse=not rerun,
            train_missing=train_missing,
            announce=True,
        )
        for name in chapters(root)
    }
    done = _execute_all(options, jobs)
    executions = []
    for name in chapters(root):
        run = done[name]
        executions.append(run)
        sources = stage / "book" / SOURCES
        sources.mkdir(exist_ok=True)
        (stage / "book" / f"{name}.md").replace(sources / f"{name}.md")
        if not run.error:
            away = TakeAway.of(name, at[name], root, extra[name].get("chapter_profiles"))
            _stage_notebook(run.notebook, stage / "book" / f"{name}.ipynb", away)
    failures = [
        f"{r.error}\nthe partly executed notebook: {r.notebook}" for r in executions if r.error
    ]
    if failures:
        raise ChapterError("\n\n".join(failures))
    status = stage / "book" / "status.md"
    if status.is_file():
        text = status.read_text().replace(STATUS_MARKER, _status_table(executions))
        status.write_text(text.replace(ENVIRONMENT_MARKER, environment_table(root)))
    opening = stage / "book" / "index.md"
    if opening.is_file():
        opening.write_text(opening.read_text().replace(SUMMARY_MARKER, findings(executions)))
    index = render(stage, build)
    print(f"book written to {index}", file=sys.stderr)
    return index


#: the most chapters executed at once (there are fewer chapters than this)
MAX_JOBS = 16


def default_jobs() -> int:
    """Chapters executed at once by default: one per core, at most 4 (beyond, the chapters'
    own work, not their kernels' start, sets the time)."""
    return max(1, min(4, os.cpu_count() or 1))


def _execute_all(options: dict[str, dict], jobs: int) -> dict[str, Execution]:
    """:func:`execute_chapter` for each chapter, ``jobs`` at a time, each kernel with its share
    of the cores for torch's threads (unless ``OMP_NUM_THREADS`` is set).

    Chapters share only the results store, whose runs and computations are each made by one
    process while the others wait on its lock, so the order they run in changes no page."""
    if jobs == 1:
        return {name: execute_chapter(name, **kw) for name, kw in options.items()}
    import concurrent.futures
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn, not fork: a forked child of a process whose OpenMP threads ran can hang in them
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_share_cores,
        initargs=(threads,),
    )
    with pool:
        futures = {name: pool.submit(execute_chapter, name, **kw) for name, kw in options.items()}
        return {name: f.result() for name, f in futures.items()}


def _share_cores(threads: int) -> None:
    """In a worker: kernels started from here use ``threads`` threads (the kernel inherits the
    environment), unless the user chose a number."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))


def glued(notebook: Path, name: str) -> str | None:
    """The Markdown a chapter glued under ``name`` (myst_nb's ``glue``), or None."""
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            if output.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                data = output.get("data", {})
                return data.get("application/papermill.record/text/markdown")
    return None


def findings(executions: list[Execution]) -> str:
    """What the book's opening says this build found: the verdict page's summary, from the
    notebook that page executed (or reused), and the profile it holds for."""
    verdicts = next((r for r in executions if r.chapter == "verdicts"), None)
    summary = None
    if verdicts is not None and not verdicts.error and not verdicts.placeholder:
        summary = glued(verdicts.notebook, "summary_md")
    timed = [r.seconds for r in executions if not r.placeholder and r.seconds is not None]
    took = (
        f"\n\nExecuting its {len(timed)} chapters took {duration(sum(timed))} in all; a "
        "chapter trains only the runs its results store does not hold yet, so this time "
        "includes training only where a chapter's execution did (the {doc}`status` page gives "
        "each chapter's duration and date, and each training chapter's opening note how long "
        "its runs took to train)."
        if timed
        else ""
    )
    if summary is None:
        return (
            "The verdict page was not executed on this build, so it has no findings to sum up."
            + took
        )
    groups: dict[str, list[str]] = {}
    for r in executions:
        groups.setdefault(r.profile, []).append(r.chapter)
    if len(groups) > 1:
        listed = "; ".join(f"`{p}` for {', '.join(cs)}" for p, cs in groups.items())
        scale = f"with each chapter at the largest profile at hand ({listed})"
    else:
        scale = f"with the `{verdicts.profile}` profile"
    return (
        f"What this build found, {scale} "
        f"(the {{doc}}`verdicts` page has every row, its interval and its chapter): {summary}"
        + took
    )


def _stage_notebook(executed: Path, staged: Path, away: TakeAway | None = None) -> None:
    """Copy an executed notebook for rendering, without papermill's injected-parameters cell
    (each chapter's provenance admonition already names its profile and settings), and with
    ``away``'s box under the title and its install cell first (both hidden from no one who
    downloads the notebook: the page's download is this staged notebook)."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    note = notebook.metadata.get("flatness", {}).get("note")
    under_title = [note] if note else []  # under the title: the first cell holds it
    if away is not None:
        under_title.append(away.box())
    for offset, text in enumerate(under_title, start=1):
        notebook.cells.insert(offset, nbformat.v4.new_markdown_cell(text))
    if away is not None:
        install = nbformat.v4.new_code_cell(away.install_cell())
        install.metadata["tags"] = ["remove-cell"]
        notebook.cells.insert(0, install)
    nbformat.write(notebook, staged)


#: the branch the deploy workflow (.github/workflows/book.yml) publishes _build/html to
PAGES_BRANCH = "gh-pages"


@dataclass(frozen=True)
class TakeAway:
    """What a chapter page offers a reader who wants it on their own machine: the executed
    notebook (the theme's download button and a link), its MyST source, a Colab launch link
    and the command that re-executes it. The repository is ``repository.url`` in
    ``_config.yml``, the one place it is set."""

    chapter: str
    profile: str
    repository: str
    #: each claim's chapter and its profile, where the verdict page of a best-evidence build
    #: judges claims at several
    chapter_profiles: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, chapter: str, profile: str, root: Path, chapter_profiles: dict | None = None
    ) -> TakeAway:
        try:
            config = yaml.safe_load((root / "_config.yml").read_text())
        except (OSError, yaml.YAMLError) as err:
            raise FlatnessError(f"cannot read {root / '_config.yml'}: {err}") from None
        repository = config.get("repository") if isinstance(config, dict) else None
        url = repository.get("url", "") if isinstance(repository, dict) else ""
        url = str(url).strip().rstrip("/").removesuffix(".git")
        part = r"(?!\.+(?:/|$))[\w.-]+"  # a GitHub owner or name, not "." or ".."
        if not re.fullmatch(rf"https://github\.com/{part}/{part}", url):
            raise FlatnessError(
                f"_config.yml's repository.url must be a GitHub repository "
                f"(https://github.com/OWNER/NAME), got {url!r}: the chapters' Colab links "
                "and install cells are made from it"
            )
        mixed = chapter_profiles and len({profile, *chapter_profiles.values()}) > 1
        return cls(chapter, profile, url, tuple(chapter_profiles.items()) if mixed else ())

    @property
    def colab(self) -> str:
        """Colab opens the executed notebook the deploy workflow publishes on the pages branch."""
        path = self.repository.removeprefix("https://github.com/")
        return (
            f"https://colab.research.google.com/github/{path}/blob/{PAGES_BRANCH}"
            f"/_sources/book/{self.chapter}.ipynb"
        )

    @property
    def command(self) -> str:
        command = f"python -m flatness chapter {self.chapter} --profile {self.profile}"
        if self.chapter_profiles:
            pairs = ", ".join(f"{c}: {p}" for c, p in self.chapter_profiles)
            command += f" -y 'chapter_profiles: {{{pairs}}}'"
        return command

    def shows(self) -> str:
        """The sentence that says which profile the page shows."""
        if not self.chapter_profiles:
            return f"This page shows the **{self.profile}** profile."
        groups: dict[str, list[str]] = {}
        for chapter, profile in self.chapter_profiles:
            groups.setdefault(profile, []).append(chapter)
        listed = "; ".join(f"**{p}** for {', '.join(cs)}" for p, cs in groups.items())
        return (
            f"This page judges each claim at its chapter's profile ({listed}), as its table's "
            f"profile column says; the **{self.profile}** profile elsewhere."
        )

    def box(self) -> str:
        return (
            ":::{admonition} Take this chapter away\n"
            ":class: tip\n"
            f"{self.shows()}\n"
            f"- {{download}}`The executed notebook <{self.chapter}.ipynb>`, with its outputs and "
            "the parameters papermill injected, and "
            f"{{download}}`its MyST Markdown source <{SOURCES}/{self.chapter}.md>`.\n"
            f"- [Open it in Colab]({self.colab}): its first cell installs flatness from "
            f"[the repository]({self.repository}).\n"
            f"- Re-execute it in a checkout: `{self.command}`.\n"
            ":::"
        )

    def install_cell(self) -> str:
        return (
            "# On Colab, flatness comes from the repository first; elsewhere it is installed\n"
            "import sys\n\n"
            'if "google.colab" in sys.modules:\n'
            "    get_ipython().run_line_magic(\n"
            f'        "pip", "install --quiet git+{self.repository}"\n'
            "    )"
        )


#: where the staged book keeps the chapters' MyST sources, for download
SOURCES = "sources"


def render(stage: Path, build: Path) -> Path:
    """Render the book in ``stage`` with Jupyter Book 1 into ``build/html``; any Sphinx warning
    fails (``-W``), an unresolved cross-reference included (nitpicky, ``-n``). Returns the path
    of ``index.html``.

    Raises:
        ChapterError: when Jupyter Book fails; the message holds the end of its output.
    """
    command = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(stage),
        "--path-output",
        str(build.parent),
        "--builder",
        "html",
        "-W",
        "-n",  # nitpicky: every cross-reference must resolve
        "--keep-going",
        # a fresh Sphinx environment: one pickled by an earlier build keeps a stale view of
        # references.bib (a key added since fails the build with a KeyError)
        "--all",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    logs = build / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "jupyter-book.log").write_text(f"{done.stdout}\n{done.stderr}")
    index = build / "html" / "index.html"
    if done.returncode != 0 or not index.is_file():
        # FORCE_COLOR and the like make Sphinx colour its output even into a pipe
        output = _ANSI.sub("", f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        raise ChapterError(f"jupyter-book failed:\n{output}")
    return index
