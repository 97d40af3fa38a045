"""flatness: the companion code to "Flatness is a False Friend" (Granziol, 2020).

Modules mirror the book: :mod:`flatness.config` (profiles and run configs),
:mod:`flatness.data`, :mod:`flatness.models`, :mod:`flatness.train`, :mod:`flatness.store`
(the results store), :mod:`flatness.hessian` (exact Hessians and PyHessian's estimates),
:mod:`flatness.chapters` (one module per chapter), :mod:`flatness.stats` (intervals and
judgements), :mod:`flatness.plotting` (the house style) and :mod:`flatness.book`.
"""

from flatness.config import PROFILES, RunConfig, get_profile
from flatness.errors import FlatnessError
from flatness.store import Store, load_or_run

__all__ = ["PROFILES", "FlatnessError", "RunConfig", "Store", "get_profile", "load_or_run"]
__version__ = "0.1.0"
