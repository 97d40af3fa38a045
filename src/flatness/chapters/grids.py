"""The runs each chapter reads, and grids named by a chapter, ``all`` or a YAML file.

Every chapter module that reads stored runs declares ``grid(profile)``, the runs its figures
read; :func:`chapter_grid` collects them and ``all`` is their union. Sweeps, publishing and the
book's availability notes name grids this way (:func:`load`); the grid itself and YAML points
are :mod:`flatness.results.grids`'.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from flatness.errors import unknown
from flatness.profiles import get_profile
from flatness.results.grids import Grid, read_yaml, unique
from flatness.training.config import RunConfig

__all__ = ["CHAPTERS", "Grid", "chapter_grid", "load"]

#: chapter name -> module name under flatness.chapters, for chapters that read stored runs
CHAPTERS = (
    "logreg",
    "mlp",
    "cnn",
    "resnets",
    "adaptive",
    "rank",
    "spectra",
    "measures",
    "predict",
    "verdicts",
    "estimators",
)


def chapter_grid(name: str, profile: str) -> list[RunConfig]:
    """The runs chapter ``name`` reads at ``profile`` (``[]`` for a chapter without runs).

    Raises:
        FlatnessError: an unknown profile.
    """
    get_profile(profile)
    if name not in CHAPTERS:
        return []
    module = importlib.import_module(f"flatness.chapters.{name}")
    return list(module.grid(profile))


def load(grid: str, profile: str) -> Grid:
    """The grid named ``grid``: a chapter (``logreg``, ``mlp`` ...), ``all`` (every chapter's
    runs) or the path of a YAML file.

    Raises:
        FlatnessError: an unknown name, an unreadable or malformed YAML file (a key given
            twice in one mapping included), a point with an unknown model, optimiser or field,
            or a value out of range (naming the point).
    """
    get_profile(profile)
    if grid == "all":
        configs = [c for name in CHAPTERS for c in chapter_grid(name, profile)]
        return Grid("all", profile, unique(configs))
    if grid in CHAPTERS:
        return Grid(grid, profile, unique(chapter_grid(grid, profile)))
    path = Path(grid)
    if path.suffix in (".yml", ".yaml") or path.is_file():
        return Grid(path.stem, profile, unique(read_yaml(path, profile)))
    raise unknown("grid", grid, [*CHAPTERS, "all", "a YAML file"])
