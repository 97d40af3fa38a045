"""The results of runs: where they are kept, what is published, and grids of them.

It owns :mod:`~flatness.results.entries` (one run's folder read back: good, damaged or
failed), :mod:`~flatness.results.store` (the local results store, one folder per run keyed by
the hash of its config, written atomically), :mod:`~flatness.results.published` (the
committed, read-only published layer, read before the store),
:mod:`~flatness.results.runs` (:func:`~flatness.results.runs.load_or_run`: published, else
stored, else trained and stored), :mod:`~flatness.results.grids` (named lists of run configs,
YAML grids), :mod:`~flatness.results.sweep` (training a grid here or on Slurm, resumably) and
:mod:`~flatness.results.plan` (what a grid costs).

It may import the shared leaves, the bottom layer (hessian, data, models) and
:mod:`flatness.training`. Of its modules only :mod:`~flatness.results.runs` and
:mod:`~flatness.results.sweep` train; the store itself knows nothing of training. It knows
nothing of the chapters or the book: a chapter's grid is the chapter's
(:mod:`flatness.chapters.grids`).
"""
