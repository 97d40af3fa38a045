"""``python -m flatness``: the command line, the package's entry point.

It sits on top of every layer and may import any of them: :mod:`flatness.cli.commands` holds
the parser and the commands that train, list, plan and build (``run``, ``ls``, ``plan``,
``chapter``, ``book``), :mod:`flatness.cli.grids` the grid commands (``sweep``,
``sweep-status``, ``publish``) and :mod:`flatness.cli.options` the options and checks they
share. Nothing below imports it.
"""

from flatness.cli.commands import main

__all__ = ["main"]
