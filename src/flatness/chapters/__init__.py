"""One module per chapter of the book, in the order of ``_toc.yml``.

Each module owns its chapter's computations and its settings for the three profiles
(``SETTINGS`` and ``settings(profile, **overrides)``); training chapters also declare the runs
their figures read (``runs(settings)``). The layers below (data, models, train, hessian, store,
plotting) know nothing of chapters.
"""
