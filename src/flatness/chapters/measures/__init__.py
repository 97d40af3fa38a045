"""The chapter "Which measures still call the L2 solution sharper?": every comparison the
book makes, judged again with every measure of :mod:`flatness.measures`.

The comparisons are the claims' own: weight decay against none in the logistic-regression,
MLP, CNN and residual-net chapters (C3), each optimiser against SGD in the adaptive-optimiser
chapter (C5), on the same runs, each at its chapter's profile (the largest at hand in a
best-evidence build). A measure's effect is the ratio of its geometric means over seeds
(Welch's t on the logarithms, :func:`flatness.chapters.common.effect`) and is judged sharper,
flatter, no clear difference, or cannot be judged, by the same rule as the claims.

A run's measures are those it recorded after its last epoch
(:func:`flatness.training.measurement.sharpness`); a run stored before runs recorded them has
them computed once from its weights, with the same function on the same examples and seed,
and kept as a computation of the results store; a run with neither weights nor measures is
counted and named on the page.
"""

from flatness.chapters.measures.comparisons import (
    CHAPTERS,
    VERDICTS,
    Comparison,
    comparisons,
    display,
    effects,
    grid,
    orbit_run,
    show_table,
    summary,
    table,
)
from flatness.chapters.measures.computed import COLUMNS, FAMILIES, RAW, orbit, run_measures
from flatness.chapters.measures.figures import figure, orbit_figure
from flatness.chapters.measures.prose import (
    build_facts,
    family_verdicts,
    orbit_facts,
    sentences,
    stances,
)

__all__ = [
    "build_facts",
    "CHAPTERS",
    "COLUMNS",
    "FAMILIES",
    "RAW",
    "VERDICTS",
    "Comparison",
    "comparisons",
    "display",
    "effects",
    "family_verdicts",
    "grid",
    "figure",
    "orbit",
    "orbit_facts",
    "orbit_figure",
    "orbit_run",
    "sentences",
    "show_table",
    "run_measures",
    "stances",
    "summary",
    "table",
]
