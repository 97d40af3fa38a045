"""The chapter "Does any measure predict generalisation?": every measure of the book, scored on
grids of runs by the field's ranking statistics (:mod:`flatness.analysis.ranking`).

:mod:`~flatness.chapters.predict.design` declares the grids.
"""

from flatness.chapters.predict.design import HYPERS, RULES, Design, designs, grid

__all__ = ["HYPERS", "RULES", "Design", "designs", "grid"]
