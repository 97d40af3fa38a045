"""Executing chapters with papermill and rendering the book with Jupyter Book 1.

Chapters are MyST Markdown notebooks under ``book/``; papermill runs each one with a profile's
parameters, and Jupyter Book renders the executed notebooks (its own execution is off).
Everything produced goes under ``<out>/_build``: ``executed/`` (notebooks), ``stage/`` (the
book's sources as rendered) and ``html/``.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from flatness.config import get_profile
from flatness.errors import FlatnessError, unknown
from flatness.paths import project_root

#: Pages of the table of contents that are plain Markdown, not executed notebooks.
PLAIN_PAGES = ("book/index", "book/status")
STATUS_MARKER = "<!-- execution-table -->"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ChapterError(RuntimeError):
    """A chapter failed to execute; the message names it and holds the traceback."""


@dataclass(frozen=True)
class Execution:
    chapter: str
    profile: str
    notebook: Path
    seconds: float
    error: str | None = None


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


def chapter_source(name: str, root: Path | None = None) -> Path:
    root = root or checkout()
    valid = chapters(root)
    if name not in valid:
        raise unknown("chapter", name, valid)
    return root / "book" / f"{name}.md"


def read_chapter(path: Path):
    """A MyST notebook as an nbformat notebook (through jupytext)."""
    import jupytext

    return jupytext.read(path)


def parameters_cells(notebook) -> list:
    return [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def chapter_parameters(name: str, root: Path | None = None) -> list[str]:
    """The names a chapter's ``parameters`` cell assigns."""
    cells = parameters_cells(read_chapter(chapter_source(name, root)))
    if len(cells) != 1:
        raise FlatnessError(f"chapter {name} must have exactly one cell tagged 'parameters'")
    tree = ast.parse(cells[0].source)
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]


def execute_chapter(
    name: str,
    *,
    profile: str = "cpu",
    parameters: dict | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> Execution:
    """Execute one chapter with papermill; the notebook lands in ``<out>/_build/executed``.

    Raises:
        ChapterError: when a cell fails (the message holds the chapter, cell and traceback).
        FlatnessError: for an unknown chapter, profile or parameter.
    """
    import papermill

    root = checkout()
    get_profile(profile)
    parameters = dict(parameters or {})
    valid = chapter_parameters(name, root)
    for key in parameters:
        if key == "profile" or key not in valid:
            raise unknown(
                f"parameter for chapter {name}", key, [v for v in valid if v != "profile"]
            )
    target = Path(out or root) / "_build" / "executed" / f"{name}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            read_chapter(chapter_source(name, root)),
            str(target),
            parameters={"profile": profile, **parameters},
            kernel_name="python3",
            cwd=str(root),
            progress_bar=progress,
        )
    except papermill.PapermillExecutionError as err:
        if err.ename == "FlatnessError":  # bad input reached the chapter: say so, no traceback
            raise FlatnessError(f"chapter {name}: {err.evalue}") from None
        trace = _ANSI.sub("", "\n".join(err.traceback))
        error = f"chapter {name} failed (profile {profile}) in cell {err.exec_count}:\n{trace}"
    return Execution(name, profile, target, time.perf_counter() - start, error)


def _status_table(runs: list[Execution]) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "| chapter | profile | status | seconds | executed |",
        "|---|---|---|---:|---|",
    ]
    for r in runs:
        status = "failed" if r.error else "passed"
        lines.append(
            f"| [{r.chapter}]({r.chapter}.ipynb) | {r.profile} | {status} | {r.seconds:.1f} | {when} |"
        )
    return "\n".join(lines)


def build_book(
    *,
    profile: str = "cpu",
    parameters: dict | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> Path:
    """Execute every chapter and render the book; returns the path of ``index.html``.

    Raises:
        ChapterError: after executing every chapter, if any failed (all failures are listed).
    """
    root = checkout()
    get_profile(profile)
    build = Path(out or root) / "_build"
    stage = build / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns("*.ipynb", ".*"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    executions = []
    for name in chapters(root):
        print(f"executing {name} (profile {profile})", file=sys.stderr, flush=True)
        run = execute_chapter(
            name, profile=profile, parameters=parameters, out=out, progress=progress
        )
        executions.append(run)
        (stage / "book" / f"{name}.md").unlink()
        shutil.copy2(run.notebook, stage / "book" / f"{name}.ipynb")
    failures = [r.error for r in executions if r.error]
    if failures:
        raise ChapterError("\n\n".join(failures))
    status = stage / "book" / "status.md"
    status.write_text(status.read_text().replace(STATUS_MARKER, _status_table(executions)))
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
        "--keep-going",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    index = build / "html" / "index.html"
    if done.returncode != 0 or not index.is_file():
        raise ChapterError(f"jupyter-book failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    print(f"book written to {index}", file=sys.stderr)
    return index
