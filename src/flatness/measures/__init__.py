"""Sharpness measures beyond the raw Hessian, each checked against exact answers in the tests.

The same conventions as :mod:`flatness.hessian`: any ``torch.nn.Module``, a mean-reduced
``loss_fn(outputs, targets)``, ``data`` an ``(inputs, targets)`` batch or a DataLoader whose
every pass covers the same examples, keyword-only ``seed=`` where a measure is random, the same
refusals of input that defines no fixed measure, ``bn_mode`` and ``output`` as there. Each
returns a small frozen dataclass: the value, its standard error where it is random, and the
work done (passes over the data, Hessian-vector products).

Which parameters are perturbed, and why: :mod:`flatness.measures.perturbation`.

- :func:`scaled_sharpness`: ``lambda_max ||w||^2`` and ``Tr H ||w||^2``;
- :func:`average_sharpness`, :func:`worst_sharpness`: adaptive sharpness (Kwon et al. 2021,
  Andriushchenko et al. 2023), average case by Monte Carlo, worst case by projected gradient
  ascent in an ``l2`` or ``linf`` set;
- :func:`adaptive_curvature`: their second-order forms, ``rho^2/2 sum_i w_i^2 H_ii`` and
  ``rho^2/2 lambda_max(D H D)``, ``D = diag(|w|)``;
- :func:`pac_bayes_flatness`: PAC-Bayes flatness and its bound, plain and magnitude-aware
  (Jiang et al. 2020);
- :func:`relative_flatness`: relative flatness of one layer (Petzka et al. 2021);
- :func:`fisher_rao_norm`: the Fisher-Rao norm (Liang et al. 2019);
- :func:`measure_suite`: all of them at once, at fixed settings (:mod:`flatness.measures.suite`),
  as training runs record them after their last epoch.
"""

from flatness.measures.adaptive import (
    NORMS,
    AdaptiveCurvature,
    AverageSharpness,
    PrecisionWarning,
    WorstSharpness,
    adaptive_curvature,
    average_sharpness,
    worst_sharpness,
)
from flatness.measures.pacbayes import PacBayes, pac_bayes_flatness
from flatness.measures.relative import RelativeFlatness, default_layer, relative_flatness
from flatness.measures.scale import FisherRao, ScaledSharpness, fisher_rao_norm, scaled_sharpness
from flatness.measures.suite import Suite, measure_suite

__all__ = [
    "NORMS",
    "AdaptiveCurvature",
    "AverageSharpness",
    "FisherRao",
    "PacBayes",
    "PrecisionWarning",
    "RelativeFlatness",
    "ScaledSharpness",
    "Suite",
    "WorstSharpness",
    "adaptive_curvature",
    "average_sharpness",
    "default_layer",
    "fisher_rao_norm",
    "measure_suite",
    "pac_bayes_flatness",
    "relative_flatness",
    "scaled_sharpness",
    "worst_sharpness",
]
