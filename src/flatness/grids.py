"""Grids of runs: what a chapter reads at a profile, or a list of points in a YAML file.

Every chapter module that reads stored runs declares ``grid(profile)``, the runs its figures
read; :func:`chapter_grid` collects them and ``all`` is their union. A YAML grid lists points;
each point names a model and, optionally, an optimiser and any
:class:`~flatness.config.RunConfig` field; list values multiply out. Fields left out come from
the recipe at the profile (:func:`flatness.recipes.run_config`)::

    runs:
      - {model: logreg, weight_decay: [0, 5e-4], seed: [0, 1, 2], epochs: 20}
      - {model: mlp-10-100, optimiser: sgd, seed: 0}
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from flatness.config import RunConfig, get_profile, strict_loader, yaml_number
from flatness.errors import FlatnessError, unknown

#: chapter name -> module name under flatness.chapters, for chapters that read stored runs
CHAPTERS = (
    "logreg",
    "mlp",
    "cnn",
    "resnets",
    "adaptive",
    "rank",
    "spectra",
    "verdicts",
    "estimators",
)


@dataclass(frozen=True)
class Grid:
    """A named list of distinct run configs at one profile."""

    name: str
    profile: str
    configs: tuple[RunConfig, ...]

    def __len__(self) -> int:
        return len(self.configs)


def chapter_grid(name: str, profile: str) -> list[RunConfig]:
    """The runs chapter ``name`` reads at ``profile`` (``[]`` for a chapter without runs).

    Raises:
        FlatnessError: an unknown profile.
    """
    import importlib

    get_profile(profile)
    if name not in CHAPTERS:
        return []
    module = importlib.import_module(f"flatness.chapters.{name}")
    return list(module.grid(profile))


def _unique(configs) -> tuple[RunConfig, ...]:
    seen, out = set(), []
    for c in configs:
        if c.key() not in seen:
            seen.add(c.key())
            out.append(c)
    return tuple(out)


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
        return Grid("all", profile, _unique(configs))
    if grid in CHAPTERS:
        return Grid(grid, profile, _unique(chapter_grid(grid, profile)))
    path = Path(grid)
    if path.suffix in (".yml", ".yaml") or path.is_file():
        return Grid(path.stem, profile, _unique(_read_yaml(path, profile)))
    raise unknown("grid", grid, [*CHAPTERS, "all", "a YAML file"])


def _read_yaml(path: Path, profile: str) -> list[RunConfig]:
    from flatness import recipes

    try:
        found = yaml.load(path.read_text(), Loader=strict_loader())
    except OSError as err:
        raise FlatnessError(f"cannot read the grid file {path} ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise FlatnessError(f"the grid file {path} is not valid YAML ({err})") from None
    if isinstance(found, dict) and set(found) - {"runs"}:
        extra = sorted(map(str, set(found) - {"runs"}))
        raise FlatnessError(f"the grid file {path} has unknown keys {extra}; it holds `runs:` only")
    if not isinstance(found, dict) or not isinstance(found.get("runs"), list) or not found["runs"]:
        raise FlatnessError(
            f"the grid file {path} must hold `runs:`, a non-empty list of points such as "
            "{model: logreg, weight_decay: [0, 5e-4], seed: [0, 1, 2]}"
        )
    configs = []
    for i, point in enumerate(found["runs"], 1):
        if not isinstance(point, dict) or "model" not in point:
            raise FlatnessError(f"{path}, point {i}: each point is a mapping with a `model`")
        lists = {k: yaml_number(v if isinstance(v, list) else [v]) for k, v in point.items()}
        if not all(lists.values()):
            empty = [k for k, v in lists.items() if not v]
            raise FlatnessError(f"{path}, point {i}: {', '.join(empty)} lists no value")
        for values in itertools.product(*lists.values()):
            fields = dict(zip(lists, values, strict=True))
            shown = json.dumps(fields, default=str)
            model, optimiser = fields.pop("model"), fields.pop("optimiser", "sgd")
            try:
                configs.append(recipes.run_config(model, optimiser, profile, **fields))
            except (FlatnessError, TypeError) as err:
                raise FlatnessError(f"{path}, point {i} ({shown}): {err}") from None
    return configs
