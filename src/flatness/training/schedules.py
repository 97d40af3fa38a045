"""Learning-rate schedules as factors on the initial learning rate, by 0-based epoch.

The authors' ``linear`` schedule (diegogranziol/GadamX, ``run_sgd.py``, ``schedule``): with
``t = epoch / T``, the factor is 1 while ``t <= 0.5``, falls linearly to ``r`` at ``t = 0.9``,
then stays at ``r``. Without averaging ``T`` is the number of epochs and ``r = final_ratio``
(0.01); with averaging ``T`` is the averaging start and ``r = average_lr / lr``, so the
averaged iterates are collected at the constant averaging learning rate.

``step`` divides by 10 at 50 % and 75 % of ``T`` (then ``r`` with averaging, after ``T``);
``cosine`` is ``r + (1 - r) (1 + cos(pi t)) / 2`` for ``t <= 1`` and ``r`` after;
``constant`` is 1 (``r`` after ``T`` with averaging).

>>> [round(factor("linear", e, epochs=10), 3) for e in (0, 5, 7, 9)]
[1.0, 1.0, 0.505, 0.01]
>>> [round(factor("cosine", e, epochs=4, final_ratio=0.0), 3) for e in range(5)]
[1.0, 0.854, 0.5, 0.146, 0.0]
>>> [factor("step", e, epochs=8) for e in (0, 3, 4, 5, 6, 7)]
[1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
"""

from __future__ import annotations

import math

from flatness.errors import unknown

SCHEDULES = ("linear", "constant", "step", "cosine")


def factor(
    schedule: str,
    epoch: int,
    *,
    epochs: int,
    final_ratio: float = 0.01,
    average_start: int | None = None,
    average_ratio: float | None = None,
) -> float:
    """The learning rate of 0-based ``epoch`` as a fraction of the initial one.

    Args:
        schedule: one of :data:`SCHEDULES`.
        epoch: 0-based epoch.
        epochs: the run's epochs (the horizon ``T`` without averaging).
        final_ratio: ``r`` without averaging.
        average_start: with averaging, the horizon ``T``.
        average_ratio: with averaging, ``r = average_lr / lr``.

    Raises:
        FlatnessError: for an unknown schedule.
    """
    if schedule not in SCHEDULES:
        raise unknown("schedule", schedule, SCHEDULES)
    horizon, r = epochs, final_ratio
    if average_start is not None:
        # from average_start on (every epoch when it is 0) the averaged iterates are collected
        # at the constant averaging rate
        if epoch >= average_start:
            return average_ratio
        horizon, r = average_start, average_ratio
    t = epoch / horizon
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        if t <= 0.5:
            return 1.0
        if t <= 0.9:
            return 1.0 - (1.0 - r) * (t - 0.5) / 0.4
        return r
    if schedule == "step":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
