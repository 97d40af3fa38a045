"""Grids of runs: a named list of run configs, and the points of a YAML file.

A chapter's grid (the runs its figures read) comes from the chapter itself
(:func:`flatness.chapters.grids.chapter_grid`); this module knows nothing of chapters.
A YAML grid lists points; each point names a model and, optionally, an optimiser and any
:class:`~flatness.training.config.RunConfig` field; list values multiply out. Fields left out come from
the recipe at the profile (:func:`flatness.training.recipes.run_config`)::

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

from flatness.errors import FlatnessError
from flatness.training.config import RunConfig
from flatness.validation import strict_loader, yaml_number


@dataclass(frozen=True)
class Grid:
    """A named list of distinct run configs at one profile."""

    name: str
    profile: str
    configs: tuple[RunConfig, ...]

    def __len__(self) -> int:
        return len(self.configs)


def unique(configs) -> tuple[RunConfig, ...]:
    """``configs`` without repeats (by key), in their order."""
    seen, out = set(), []
    for c in configs:
        if c.key() not in seen:
            seen.add(c.key())
            out.append(c)
    return tuple(out)


def read_yaml(path: Path, profile: str) -> list[RunConfig]:
    """The points of the YAML grid file ``path`` at ``profile``, list values multiplied out."""
    from flatness.training import recipes

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
