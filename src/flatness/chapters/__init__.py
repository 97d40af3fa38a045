"""One module per chapter of the book, in the order of ``_toc.yml``.

Each module owns its chapter's computations and its settings for the three profiles
(``SETTINGS`` and ``settings(profile, **overrides)``); training chapters also declare the runs
their figures read (``runs(settings)``). The layers below (data, models, train, hessian, store,
plotting) know nothing of chapters.
"""


def glue_facts(facts: dict) -> None:
    """Glue a chapter's facts for its page: strings as Markdown (read with ``{glue:md}``),
    numbers as they are (``{glue:text}``). Call it from an executing notebook."""
    from IPython.display import Markdown
    from myst_nb import glue

    for key, value in facts.items():
        glue(key, Markdown(value) if isinstance(value, str) else value, display=False)
