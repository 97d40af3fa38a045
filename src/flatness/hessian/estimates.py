"""The result of a randomised estimate: the value, its standard error and the work it cost."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: the rounding of an estimate in the model's dtype, in machine epsilons of its magnitude:
#: a standard error never claims less (where the sampled part is exactly 0, a linear model's
#: residual or a Krylov space that spans everything, the spread alone would claim 0 or 1e-32)
ROUNDING = 4


def with_rounding(stderr: float, estimate: float, dtype: torch.dtype) -> float:
    """``stderr`` combined with the rounding of ``estimate`` in ``dtype``."""
    return math.hypot(stderr, ROUNDING * torch.finfo(dtype).eps * abs(estimate))


@dataclass(frozen=True)
class Estimate:
    """A randomised estimate with its standard error and the work it cost."""

    estimate: float
    stderr: float
    #: the estimator that ran, one of :data:`~flatness.hessian.METHODS` other than "auto"
    #: (``method=`` takes it)
    method: str
    #: Hessian-vector products spent (random probes, sketch and exact products)
    hvps: int
    #: passes over the data
    passes: int
    seconds: float
    #: random probes behind the standard error
    probes: int = 0
    #: whether the requested relative standard error was reached; None for a fixed budget of
    #: probes, which has no target to reach
    converged: bool | None = None
    #: the part of the estimate computed without randomness (Hutch++'s sketch, the GGN trace)
    exact_part: float = 0.0
