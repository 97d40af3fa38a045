"""The chapter "Does any measure predict generalisation?": every measure of the book, scored on
grids of runs by the field's ranking statistics (:mod:`flatness.analysis.ranking`).

- :mod:`~flatness.chapters.predict.design`: the grids (which runs, and why);
- :mod:`~flatness.chapters.predict.table`: their runs as one table, and every measure's scores;
- :mod:`~flatness.chapters.predict.claims`: C3 and C5 judged on the grids' pairs;
- :mod:`~flatness.chapters.predict.anchor`: diagonal linear networks, a known answer;
- :mod:`~flatness.chapters.predict.figures` and :mod:`~flatness.chapters.predict.prose`: the
  page's figures and its judging sentences.
"""

from flatness.chapters.predict.anchor import Anchor, diagonal_networks
from flatness.chapters.predict.claims import Pair, counts, pairs
from flatness.chapters.predict.design import (
    HYPER_NAMES,
    HYPERS,
    RULES,
    Design,
    designs,
    grid,
    levels_table,
)
from flatness.chapters.predict.figures import (
    anchor_figure,
    psi,
    rules,
    scatter,
    scatter_measures,
    statistics,
)
from flatness.chapters.predict.prose import anchor_facts, facts, runs_display, score_table
from flatness.chapters.predict.table import (
    COLUMNS,
    FAMILIES,
    Collected,
    collect,
    scores,
    strongest,
)

__all__ = [
    "Anchor",
    "anchor_figure",
    "anchor_facts",
    "diagonal_networks",
    "COLUMNS",
    "FAMILIES",
    "HYPERS",
    "HYPER_NAMES",
    "RULES",
    "Collected",
    "Design",
    "Pair",
    "collect",
    "counts",
    "designs",
    "facts",
    "grid",
    "levels_table",
    "pairs",
    "psi",
    "rules",
    "scatter",
    "scatter_measures",
    "scores",
    "statistics",
    "strongest",
    "runs_display",
    "score_table",
]
