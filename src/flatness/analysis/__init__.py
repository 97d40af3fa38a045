"""Judging numbers and showing them: intervals and verdicts, and the house style of figures.

It owns :mod:`~flatness.analysis.stats` (confidence intervals over seeds and test examples,
and the judgements chosen from them) and :mod:`~flatness.analysis.plotting` (seaborn with one
house style, and the book's figures).

It may import the shared leaves only: it works on numbers and tables, whatever made them.
The chapters and the book import it.
"""
