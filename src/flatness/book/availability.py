"""Which of a chapter's runs are at hand, and what its page says about the others.

A chapter's grid (:func:`flatness.chapters.grids.chapter_grid`) is *at hand* where each run is published
(:mod:`flatness.results.published`) or in the local results store. When runs are missing and training
was not asked for, the book either executes the chapter on the runs it has (chapters with a
``train_missing`` parameter) or renders its opening and a note (:func:`placeholder`); either
way :func:`note` heads the page with the missing runs, the commands that make them and their
estimated GPU-hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flatness.errors import FlatnessError
from flatness.training.config import RunConfig

#: Listed one by one up to this many; beyond, the note gives counts per network.
LISTED = 24


@dataclass(frozen=True)
class Availability:
    """A chapter's grid at a profile and the runs of it that are neither published nor stored."""

    chapter: str
    profile: str
    grid: tuple[RunConfig, ...]
    missing: tuple[RunConfig, ...]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def present_keys(self) -> list[str]:
        gone = {c.key() for c in self.missing}
        return sorted(c.key() for c in self.grid if c.key() not in gone)


def availability(chapter: str, profile: str, store=None, published=None) -> Availability:
    """Look each run of ``chapter``'s grid up in the published layer and the local store."""
    from flatness.chapters.grids import chapter_grid
    from flatness.results.published import Published
    from flatness.results.store import Store

    store = store or Store()
    published = published or Published.default()
    grid = tuple(chapter_grid(chapter, profile))
    missing = []
    for c in grid:
        try:
            found = published.find(c) is not None or store.load(c) is not None
        except FlatnessError:  # a damaged published run is missing until restored
            found = False
        if not found:
            missing.append(c)
    return Availability(chapter, profile, grid, tuple(missing))


def note(a: Availability, *, executed: bool) -> str:
    """The Markdown note heading a chapter whose runs are not all at hand."""
    from flatness.results import plan

    estimates = plan.gpu_estimate(list(a.missing))
    hours = sum(e.hours for e in estimates)
    shown = (
        f"This page shows what the {len(a.grid) - len(a.missing)} runs at hand give."
        if executed
        else "This page shows none of its results until they are."
    )
    lines = [
        "```{admonition} Not every run of this page is published",
        ":class: warning",
        f"{len(a.missing)} of the {len(a.grid)} runs this page reads at profile `{a.profile}` are "
        f"neither published nor in the results store. {shown}",
        "",
        f"Make them on a Slurm cluster with "
        f"`python -m flatness sweep {a.chapter} --profile {a.profile} --executor slurm "
        f"--partition PARTITION` (about {hours:.3g} GPU-hours in all, estimated from counted "
        f"FLOPs at an assumed {plan.ASSUMED_GPU_FLOPS / 1e12:g} TFLOP/s and "
        f"{plan.ASSUMED_SECONDS_PER_OP * 1e6:g} microseconds per operator), or here with "
        f"`--executor local`; then `python -m flatness publish {a.chapter} --profile "
        f"{a.profile}`, or rebuild with `python -m flatness book --profile {a.profile} "
        f"--train-missing`. `python -m flatness sweep-status {a.chapter} --profile {a.profile}` "
        "follows them.",
        "```",
        "",
        _listing(estimates),
    ]
    return "\n".join(lines)


def _listing(estimates) -> str:
    """The missing runs, in a collapsed block: one row per run, or per network when many."""
    lines = [
        "```{admonition} The missing runs",
        ":class: dropdown",
    ]
    if len(estimates) <= LISTED:
        lines += ["| run | key | GPU-hours |", "|---|---|---:|"]
        lines += [f"| {e.config.label()} | `{e.config.key()}` | {e.hours:.3g} |" for e in estimates]
    else:
        groups: dict[str, list] = {}
        for e in estimates:
            opt = e.config.optimiser + ("+avg" if e.config.averaging else "")
            groups.setdefault(f"{e.config.model}/{e.config.dataset} {opt}", []).append(e)
        lines += ["| network and optimiser | runs | GPU-hours |", "|---|---:|---:|"]
        lines += [
            f"| {name} | {len(es)} | {sum(e.hours for e in es):.3g} |"
            for name, es in groups.items()
        ]
    return "\n".join([*lines, "```"])


_GLUE_ROLE = re.compile(r"\{glue(:[a-z]+)?\}`")


def placeholder(notebook, text: str):
    """``notebook`` cut to its opening (every cell before the first code cell), then ``text``;
    nothing is executed."""
    import nbformat

    cells = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            break
        # a glued value comes from a code cell that will not run: its line would be a dangling
        # reference, which the strict build refuses
        kept = [line for line in cell.source.splitlines() if not _GLUE_ROLE.search(line)]
        cell.source = "\n".join(kept)
        cells.append(cell)
    notebook.cells = [*cells, nbformat.v4.new_markdown_cell(text)]
    return notebook
