"""flatness: the companion code to "Flatness is a False Friend" (Granziol, 2020).

The package is layered; each layer imports only those below it, and nothing imports upward,
not even inside a function (``tests/test_layers.py`` checks both). From the bottom:

- shared leaves, which every layer may import: :mod:`flatness.errors`, :mod:`flatness.paths`,
  :mod:`flatness.provenance`, :mod:`flatness.profiles` (how big each chapter's experiments
  are) and :mod:`flatness.validation` (checks of the values users give);
- :mod:`flatness.hessian` (exact Hessians, Lanczos, Hutch++, SLQ, the GGN, PyHessian's
  estimates), :mod:`flatness.data` and :mod:`flatness.models`, which know nothing of
  training, and :mod:`flatness.measures` (sharpness measures beyond the raw Hessian), which
  builds on :mod:`flatness.hessian` alone;
- :mod:`flatness.training`: the run config, the authors' recipes, the training loop, its
  measurements and checkpoints; it knows nothing of the store;
- :mod:`flatness.results`: the results store, the published layer,
  :func:`~flatness.results.runs.load_or_run` (published, else stored, else trained), grids,
  sweeps and their cost; it knows nothing of chapters;
- :mod:`flatness.analysis`: intervals, judgements and the house style of figures;
- :mod:`flatness.chapters`: one module or package per chapter;
- :mod:`flatness.book`: executing the chapters and rendering the book;
- the entry points: :mod:`flatness.cli` (``python -m flatness``) and this package's names
  below.
"""

from flatness.errors import FlatnessError
from flatness.profiles import PROFILES, get_profile
from flatness.results.runs import load_or_run
from flatness.results.store import Store
from flatness.training.config import RunConfig

__all__ = ["PROFILES", "FlatnessError", "RunConfig", "Store", "get_profile", "load_or_run"]
__version__ = "0.1.0"
