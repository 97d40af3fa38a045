"""The best-evidence build: each chapter at the largest profile it can show without training.

A reader online should see the strongest evidence at hand, not the laptop stand-ins where the
paper's own scale is published. ``python -m flatness book --best-evidence`` (``make site``)
executes each chapter at the ``paper`` profile where

- every run its paper grid reads is published or stored (nothing is trained), or, for a chapter
  that reads no runs (theory), its paper-profile computations are published
  (:mod:`flatness.results.computations`), and
- the paper's data sets can be read (on disk, or downloadable),

and at ``cpu`` otherwise; the verdict page then judges each claim with its chapter's profile.
Each page says at its top which profile it shows (:class:`flatness.book.build.TakeAway`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flatness import data as datasets
from flatness import paths
from flatness.book import availability
from flatness.results import computations
from flatness.results.published import published_root

#: the profiles a chapter may be shown at, largest first
SCALES = ("paper", "cpu")
#: the chapters whose claims the verdict page collects (each at its own chapter's profile)
VERDICT_CHAPTERS = ("theory", "logreg", "mlp", "cnn", "resnets", "adaptive", "rank", "predict")
#: the pages that judge other chapters' runs, each at its own chapter's profile
COLLECTORS = ("measures", "verdicts")


@dataclass(frozen=True)
class Choice:
    """The profile a chapter is shown at, and why, in words."""

    chapter: str
    profile: str
    why: str


def _data_readable(profile: str, data_root) -> str | None:
    """Why the data sets of ``profile`` cannot be read here, or None."""
    needed = {"paper": ("mnist",)}.get(profile, ())
    root = Path(data_root).expanduser() if data_root is not None else paths.data_root()
    offline = os.environ.get(datasets.OFFLINE_ENV, "").lower() in ("1", "true", "yes")
    for name in needed:
        if datasets.missing_files(name, root) and offline:
            return f"{name} is not at {root} and ${datasets.OFFLINE_ENV} forbids downloading it"
    return None


def choose(chapter: str, *, data_root=None, published=None) -> Choice:
    """The largest profile of :data:`SCALES` at which ``chapter`` shows evidence without
    training, by the rules of the module's docstring."""
    for profile in SCALES[:-1]:
        blocked = _data_readable(profile, data_root)
        at_hand = availability.availability(chapter, profile)
        if at_hand.grid:
            if at_hand.missing:
                why = (
                    f"{len(at_hand.missing)} of its {len(at_hand.grid)} {profile} runs are missing"
                )
                continue
            why = f"all {len(at_hand.grid)} of its {profile} runs are published or stored"
        else:
            found = [
                c
                for c in _published_computations(published)
                if c.name.startswith(f"{chapter}.") and c.inputs.get("profile") == profile
            ]
            if not found:
                why = f"its {profile} computations are not published"
                continue
            why = f"its {len(found)} {profile} computations are published"
        if blocked:
            why = blocked
            continue
        return Choice(chapter, profile, why)
    return Choice(chapter, SCALES[-1], why)


def _published_computations(published) -> list[computations.Computation]:
    base = Path(published) if published is not None else published_root()
    return computations.stored(base)[0] if base is not None else []


def choices(chapters: list[str], *, data_root=None, published=None) -> dict[str, Choice]:
    """:func:`choose` for each chapter; the verdict page is executed at ``cpu`` and given each
    claim's chapter profile (its ``chapter_profiles`` parameter), so it collects each claim at
    the largest scale available."""
    out = {}
    for name in chapters:
        if name in COLLECTORS:
            out[name] = Choice(name, SCALES[-1], "each comparison at its own chapter's profile")
        else:
            out[name] = choose(name, data_root=data_root, published=published)
    return out
