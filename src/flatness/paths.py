"""Where results, data and the book live.

Environment variables win; otherwise folders of the checkout (found by walking up from the
working directory to the folder holding ``_toc.yml``); otherwise a per-user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "FLATNESS_RESULTS"
DATA_ENV = "FLATNESS_DATA"


def project_root(start: Path | None = None) -> Path | None:
    """The checkout holding ``_toc.yml`` at or above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "book").is_dir():
            return folder
    return None


def _default(sub: str) -> Path:
    root = project_root()
    if root is not None:
        return root / sub
    return Path.home() / ".cache" / "flatness" / sub


def results_root() -> Path:
    """``$FLATNESS_RESULTS``, else ``<checkout>/results`` (git-ignored), else a per-user cache."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else _default("results")


def data_root() -> Path:
    """``$FLATNESS_DATA``, else ``<checkout>/data`` (git-ignored), else a per-user cache."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else _default("data")
