"""Options and checks that several commands share: the profile, the store and its folders.

Every check here refuses a bad value up front, before anything is written, with a message
naming the option and the fix.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flatness.errors import FlatnessError
from flatness.profiles import PROFILES


def check_folder(option: str, path: str | None, *, write: bool = False) -> None:
    """Refuse, before anything is written, a folder option that cannot be a folder (a file, or
    a path below one) or, with ``write``, cannot be created or written to.

    Raises:
        FlatnessError: naming the option, the path and why.
    """
    from flatness.results.entries import folder_problem

    if path is None:
        return
    problem = folder_problem(Path(path), write=write)
    if problem is not None:
        wanted = "a folder that can be written" if write else "a folder"
        raise FlatnessError(f"{option} {path}: {problem}; give {wanted}")


def profile_option(parser: argparse.ArgumentParser, default: str) -> None:
    # commands differ in their default (those that train here: cpu; the grid commands: paper),
    # so every help says which
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=default,
        help="the scale of the runs: %(choices)s (default: %(default)s)",
    )


def store_options(parser: argparse.ArgumentParser) -> None:
    """The options naming the results store, the data and the published layer, alike on every
    grid command (and plan)."""
    parser.add_argument("--results", help="the results store's folder ($FLATNESS_RESULTS)")
    parser.add_argument("--data-root", help="where torchvision data sets live ($FLATNESS_DATA)")
    parser.add_argument(
        "--published",
        help="the published layer (default: $FLATNESS_PUBLISHED, else <checkout>/published)",
    )


def layers(args):
    """The results store and the published layer the options name, each refused up front
    where it can never be a folder (as is a ``--data-root`` that cannot)."""
    from flatness.results.published import Published
    from flatness.results.store import Store

    check_folder("--data-root", args.data_root)
    published = Published(Path(args.published)) if args.published else Published.default()
    return Store(args.results), published


def check_store_exists(store, args) -> None:
    """Refuse, for a command that reads the results store but never creates it (ls,
    sweep-status, publish), a store folder named by ``--results`` or ``$FLATNESS_RESULTS`` that
    does not exist. The default store may be missing: a fresh checkout has trained nothing.

    Raises:
        FlatnessError: naming the option or variable, the path and the fix.
    """
    from flatness.paths import RESULTS_ENV

    if store.root.is_dir():
        return
    # read as an empty store, a mistyped path would list no runs and pass unseen
    if args.results is not None:
        named = f"--results {args.results}"
    elif os.environ.get(RESULTS_ENV):
        named = f"${RESULTS_ENV}={os.environ[RESULTS_ENV]}"
    else:
        return
    raise FlatnessError(
        f"{named}: no such folder; `{args.command}` only reads a results store, so give the "
        "folder of an existing one (run, sweep, chapter and book create a store)"
    )
