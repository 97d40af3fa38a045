"""The chapter "Is the Hessian low-rank?" (claim C6): exact ranks against candidate bounds.

Small MLPs (identity, tanh and ReLU activations, the same widths) get their dense float64
Hessian of the mean cross-entropy data loss at initialisation and after training, with and
without L2; its numerical rank is compared with four candidate bounds (:func:`bounds`). The
Gauss-Newton part (GGN) is measured beside it, because that is where the bounds are theorems.
A network too large for a dense Hessian gets stochastic Lanczos quadrature (SLQ) instead, whose
near-zero mass is first checked against the exact one on a small network.

Its parts: :mod:`~flatness.chapters.rank.design` (activations, bounds, sizes per profile),
:mod:`~flatness.chapters.rank.networks` (the nets and the bounds their architectures give),
:mod:`~flatness.chapters.rank.exact` (dense spectra and numerical ranks),
:mod:`~flatness.chapters.rank.tables` (the tables and code-chosen sentences),
:mod:`~flatness.chapters.rank.slq` (the SLQ check and the large net) and
:mod:`~flatness.chapters.rank.judgement` (one judgement per bound from every test, which the
verdict page prints too). Every name of each part is served from here.
"""

from flatness.chapters.rank.design import (
    ACTIVATIONS,
    BOUND_NAMES,
    BOUNDS,
    REGISTERED,
    SETTINGS,
    RankSettings,
    grid,
    settings,
    small_grid,
)
from flatness.chapters.rank.exact import (
    Spectrum,
    ranks,
    spectra,
    spectrum,
)
from flatness.chapters.rank.judgement import (
    NEARLY_VACUOUS,
    OUTCOMES,
    Judgement,
    judge,
    vacuity,
)
from flatness.chapters.rank.networks import (
    Architecture,
    bounds,
    ce,
    data_rank,
    initial_model,
    linear_mlp,
    train_linear,
    trained_model,
)
from flatness.chapters.rank.slq import (
    density,
    judge_case,
    large_net,
    near_zero_fraction,
    slq_cases,
    slq_check,
    slq_fraction,
    slq_verdicts,
    tolerances,
)
from flatness.chapters.rank.tables import (
    CASE,
    NETWORKS,
    bound_table,
    check_sentence,
    check_table,
    deficiency,
    failure_table,
    failures,
    findings,
    ggn_findings,
    rank_grid,
    rank_table,
    slq_bound_table,
    slq_mass_table,
    slq_reach,
    summary,
    tolerance_name,
    tolerance_span,
    verdict,
)

__all__ = [
    "ACTIVATIONS",
    "BOUND_NAMES",
    "BOUNDS",
    "CASE",
    "NEARLY_VACUOUS",
    "NETWORKS",
    "OUTCOMES",
    "REGISTERED",
    "SETTINGS",
    "Architecture",
    "bound_table",
    "bounds",
    "ce",
    "check_sentence",
    "check_table",
    "data_rank",
    "deficiency",
    "density",
    "failure_table",
    "failures",
    "findings",
    "ggn_findings",
    "grid",
    "initial_model",
    "judge",
    "judge_case",
    "Judgement",
    "large_net",
    "linear_mlp",
    "near_zero_fraction",
    "rank_grid",
    "rank_table",
    "ranks",
    "RankSettings",
    "settings",
    "slq_bound_table",
    "slq_cases",
    "slq_check",
    "slq_fraction",
    "slq_mass_table",
    "slq_reach",
    "slq_verdicts",
    "small_grid",
    "spectra",
    "Spectrum",
    "spectrum",
    "summary",
    "tolerance_name",
    "tolerance_span",
    "tolerances",
    "train_linear",
    "trained_model",
    "vacuity",
    "verdict",
]
