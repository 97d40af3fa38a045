"""Training one run: its config, the paper's recipes, the loop, its measurements and checkpoints.

It owns :mod:`~flatness.training.config` (:class:`~flatness.training.config.RunConfig`, the
semantic config that names a run), :mod:`~flatness.training.recipes` (the authors' settings
by model, optimiser and profile), :mod:`~flatness.training.schedules` (learning-rate
schedules), :mod:`~flatness.training.loop` (the training loop, resumable, with iterate
averaging), :mod:`~flatness.training.measurement` (the Hessian measures taken during training)
and :mod:`~flatness.training.checkpoint` (atomic, resumable checkpoints).

It may import the shared leaves (:mod:`flatness.errors`, :mod:`flatness.paths`,
:mod:`flatness.provenance`, :mod:`flatness.profiles`, :mod:`flatness.validation`) and the
bottom layer (:mod:`flatness.hessian`, :mod:`flatness.data`, :mod:`flatness.models`). It knows
nothing of the results store, the chapters or the book: a run is trained and returned, and
keeping it is :mod:`flatness.results`' business.
"""
