"""The theory chapter: six exact facts about cross-entropy Hessians, each measured in float64.

1. the Gauss-Newton split H = G + R of a small MLP's Hessian (Sagun et al. 2017; Papyan 2019);
2. softmax regression's Kronecker form and its rank bound (K-1)(d+1);
3. scaling a separating solution by alpha: loss and every measure fall to 0, under the bound
   Tr H <= 2 L max_i ||x~_i||^2 (Granziol 2020, paper notes section 2);
4. the exact L2 optimum by Newton's method: the data Hessian against the L2 coefficient;
5. BatchNorm scale invariance: L(alpha u) = L(u), H(alpha u) = H(u) / alpha^2;
6. Dinh et al. (2017)'s rescaling (a W1, a b1, W2 / a) of a ReLU net: one function, any sharpness.

No estimator is used: every Hessian is dense or closed-form, float64, on the whole sample.
Its parts: :mod:`~flatness.chapters.theory.design` (sizes per profile, the sample),
:mod:`~flatness.chapters.theory.softmax` (facts 2-4), :mod:`~flatness.chapters.theory.networks`
(the MLP facts 1, 5 and 6) and :mod:`~flatness.chapters.theory.prose` (the sentences the page
quotes, chosen from the data). Every name of the first three is served from here.
"""

from flatness.chapters.theory.design import (
    SETTINGS,
    TheorySettings,
    load,
    log_range,
    scaling_sample,
    settings,
)
from flatness.chapters.theory.networks import (
    BN_EPS,
    autograd_hessian,
    batchnorm_invariance,
    dinh_rescaling,
    gauss_newton_split,
    mlp,
    require_alive,
    rescaled,
    trace_minimiser,
    train,
)
from flatness.chapters.theory.softmax import (
    NewtonResult,
    kronecker_hessian,
    kronecker_rank,
    l2_path,
    newton,
    scaling,
    separating_scaling,
    softmax_loss,
    softmax_model,
)

__all__ = [
    "BN_EPS",
    "NewtonResult",
    "SETTINGS",
    "TheorySettings",
    "autograd_hessian",
    "batchnorm_invariance",
    "dinh_rescaling",
    "gauss_newton_split",
    "kronecker_hessian",
    "kronecker_rank",
    "l2_path",
    "load",
    "log_range",
    "mlp",
    "newton",
    "require_alive",
    "rescaled",
    "scaling",
    "scaling_sample",
    "separating_scaling",
    "settings",
    "softmax_loss",
    "softmax_model",
    "trace_minimiser",
    "train",
]
