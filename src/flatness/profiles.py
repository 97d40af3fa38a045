"""Profiles: how big each chapter's experiments are.

A *profile* says how large every chapter's experiments are: ``smoke`` runs in seconds for CI,
``cpu`` is the default book on real offline data, ``paper`` uses the paper's data and settings
and wants a GPU. Chapters never hard-code sizes; they ask the profile.

A leaf: it imports nothing of flatness but :mod:`flatness.errors`, so every layer can ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

from flatness.errors import unknown


@dataclass(frozen=True)
class Profile:
    """A named scale for the whole book; each chapter module maps it to its own settings."""

    name: str
    description: str
    progress: bool
    #: whether the book trains runs that are neither published nor stored, unasked
    train_missing: bool = True
    #: whether runs that learnt nothing are left out of tables, figures and verdicts; the
    #: smoke profile's runs are too short to learn, and its pages keep them (and say so) only to
    #: prove that they run
    excludes_dead_runs: bool = True


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="seconds per chapter, for CI; the numbers mean nothing",
        progress=False,
        excludes_dead_runs=False,
    ),
    "cpu": Profile(
        name="cpu",
        description="real offline data (scikit-learn's digits), on a CPU",
        progress=True,
    ),
    "paper": Profile(
        name="paper",
        description="the paper's data and settings (MNIST, CIFAR-100, 300 epochs); wants a GPU",
        progress=True,
        # days of training: rendered from published runs unless --train-missing
        train_missing=False,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``, or an error listing the valid ones."""
    if name not in PROFILES:
        raise unknown("profile", name, PROFILES)
    return PROFILES[name]
