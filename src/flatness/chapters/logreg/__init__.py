"""The logistic-regression chapter: weight decay makes softmax regression sharper.

Everything the chapter computes lives here, so the chapter itself only calls and plots.
Its parts: :mod:`~flatness.chapters.logreg.design` (sizes per profile, the runs, the sample of
the page's own Hessians), :mod:`~flatness.chapters.logreg.runs` (the runs and their tables),
:mod:`~flatness.chapters.logreg.exact` (exact Hessians of the final models),
:mod:`~flatness.chapters.logreg.judgement` (claim C3, judged from intervals) and
:mod:`~flatness.chapters.logreg.prose` (what the page says, chosen from the data). Every name of
the first four is served from here.
"""

from flatness.chapters.logreg.design import (
    FINAL_COLUMNS,
    MEASURES,
    SETTINGS,
    LogregSettings,
    alphas,
    analysis_data,
    analysis_sentence,
    grid,
    settings,
)
from flatness.chapters.logreg.exact import (
    class_blocks,
    pyhessian_comparison,
    scaled_measures,
    train_accuracy,
    trained_model,
)
from flatness.chapters.logreg.judgement import (
    claim,
    effects,
)
from flatness.chapters.logreg.runs import (
    best_weight_decay,
    final_table,
    history,
    summary,
    sweep,
)

__all__ = [
    "FINAL_COLUMNS",
    "LogregSettings",
    "MEASURES",
    "SETTINGS",
    "alphas",
    "analysis_data",
    "analysis_sentence",
    "best_weight_decay",
    "claim",
    "class_blocks",
    "effects",
    "final_table",
    "grid",
    "history",
    "pyhessian_comparison",
    "scaled_measures",
    "settings",
    "summary",
    "sweep",
    "train_accuracy",
    "trained_model",
]
