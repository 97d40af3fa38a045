"""One module, or one package, per chapter of the book, in the order of ``_toc.yml``.

Each chapter owns its computations and its settings for the three profiles (``SETTINGS`` and
``settings(profile, **overrides)``); chapters that read stored runs also declare them
(``grid(profile)``), and :mod:`~flatness.chapters.grids` collects those grids. A chapter that
needs more than one module is a package named after it, its parts named by what they hold
(:mod:`~flatness.chapters.theory`, :mod:`~flatness.chapters.estimators`,
:mod:`~flatness.chapters.rank`, :mod:`~flatness.chapters.logreg`); the package serves the names
of its computing parts, and its ``prose`` part, where it has one, holds the sentences chosen from
the data. :mod:`~flatness.chapters.common` holds what the training chapters share.

It may import every layer below it: the shared leaves, hessian, data and models,
:mod:`flatness.training`, :mod:`flatness.results` and :mod:`flatness.analysis`. Those know
nothing of chapters; only :mod:`flatness.book` and the command line import them.
"""


def glue_facts(facts: dict) -> None:
    """Glue a chapter's facts for its page: strings as Markdown (read with ``{glue:md}``),
    numbers as they are (``{glue:text}``). Call it from an executing notebook."""
    from IPython.display import Markdown
    from myst_nb import glue

    for key, value in facts.items():
        glue(key, Markdown(value) if isinstance(value, str) else value, display=False)
