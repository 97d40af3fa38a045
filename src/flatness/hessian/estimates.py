"""The result of a randomised estimate: the value, its standard error and the work it cost."""

from __future__ import annotations

from dataclasses import dataclass


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
