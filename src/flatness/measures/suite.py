"""Every measure of this package at once, at fixed settings: what a training run records after
its last epoch, and what a chapter computes from a stored run's weights.

The settings are fixed before any run is measured and are the same for every network, data
set and comparison, so no measure is tuned to the result it is asked to judge:

- the radii ``rho`` of adaptive sharpness are the second of the four values Andriushchenko et
  al. 2023 swept for CNNs on CIFAR-10 (their ``sh/eval_sharpness_final.sh``): 0.1 of
  {0.05, 0.1, 0.2, 0.4} for the average case, 0.5 of {0.25, 0.5, 1, 2} for the worst case
  in ``l2`` and 0.002 of {0.001, ..., 0.008} in ``linf``. They measure on 1,024 examples in
  batches of 128 (m-sharpness with m = 128); here the loss is that of the whole measured
  set (m = n), as the Hessian measures are;
- the second-order forms are reported without ``rho^2/2``, as ``sum_i w_i^2 H_ii`` and
  ``lambda_max(D H D)``: a constant factor changes no ratio between two runs;
- PAC-Bayes flatness with Jiang et al. 2020's target (a drop of 0.1 in training accuracy),
  its bound about the origin (the runs keep no initial weights);
- relative flatness on :func:`~flatness.measures.default_layer`.

BatchNorm is measured with running statistics (``bn_mode="eval"``) throughout: the Fisher-Rao
norm is defined only where examples do not interact, and one mode keeps the measures'
comparisons alike. Every measure reads larger where a solution is sharper.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.hessian.checks import Output
from flatness.measures.adaptive import (
    PrecisionWarning,
    adaptive_curvature,
    average_sharpness,
    worst_sharpness,
)
from flatness.measures.pacbayes import pac_bayes_flatness
from flatness.measures.relative import default_layer, relative_flatness
from flatness.measures.scale import fisher_rao_norm, scaled_sharpness

#: the radius of each adaptive sharpness (module text)
RHO_AVERAGE, RHO_WORST_L2, RHO_WORST_LINF = 0.1, 0.5, 0.002
#: Monte Carlo pairs of the average case; restarts and steps of the worst case (Andriushchenko
#: et al. take 20 steps); the standard error and the restart that won are what says whether
#: they were enough
PAIRS, RESTARTS, STEPS = 20, 2, 20

#: Every measure's column name, in the order pages show them, with its family.
FAMILIES = {
    "scaled_lambda_max": "scale-aware",
    "scaled_trace": "scale-aware",
    "adaptive_average": "adaptive sharpness",
    "adaptive_worst_l2": "adaptive sharpness",
    "adaptive_worst_linf": "adaptive sharpness",
    "adaptive_trace": "adaptive curvature",
    "adaptive_lambda_max": "adaptive curvature",
    "relative_flatness": "relative flatness",
    "pac_bayes": "PAC-Bayes",
    "pac_bayes_magnitude": "PAC-Bayes",
    "fisher_rao": "Fisher-Rao norm",
}
#: every measure's column name
MEASURES = tuple(FAMILIES)
#: the measures read from the Hessian or the per-example gradients, whose values lose their
#: digits once the loss is below the dtype's resolution
CURVATURE = (
    "scaled_lambda_max",
    "scaled_trace",
    "adaptive_trace",
    "adaptive_lambda_max",
    "relative_flatness",
    "fisher_rao",
)
#: A loss below this many units in the last place of 1 leaves the softmax saturated. In
#: float32, curvature measures were off by a factor of 2 to 4 at a loss of 0 (8e-10 in
#: float64) and agreed within 1 % with float64 at 5e-7 (about 4 units).
SATURATED = 1.0
#: the measures estimated at random, which carry a standard error (column ``<name>_se``)
RANDOM = (
    "scaled_trace",
    "adaptive_average",
    "adaptive_trace",
    "relative_flatness",
)


@dataclass(frozen=True)
class Suite:
    """The measures of one model: ``values`` (column -> value,
    :data:`~flatness.measures.suite.MEASURES`, ``_se`` columns for
    :data:`~flatness.measures.suite.RANDOM`, and ``weight_norm_squared``), the work done and
    its time.

    ``imprecise`` names the measures whose loss increase was within the rounding of the loss
    (:class:`~flatness.measures.PrecisionWarning`); ``unconverged`` those whose iteration
    stopped at its limit (a PAC-Bayes bisection that never reached its target, a Lanczos run
    short of its tolerance)."""

    values: dict
    hvps: int
    forward_passes: int
    seconds: float
    #: seconds spent on each family of :data:`~flatness.measures.suite.FAMILIES`
    family_seconds: dict
    imprecise: tuple[str, ...] = ()
    unconverged: tuple[str, ...] = ()
    #: measures the model does not define (NaN in ``values``), such as relative flatness of a
    #: network without a linear layer
    undefined: tuple[str, ...] = ()


def measure_suite(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    seed: int = 0,
    lambda_max: float | None = None,
    trace: tuple[float, float] | None = None,
    output: Output = None,
) -> Suite:
    """Every measure of :data:`~flatness.measures.suite.MEASURES` of ``model`` on ``data``, at
    the module's settings.

    ``lambda_max`` and ``trace`` (estimate, standard error), when a measurement of the same
    model and data already gave them, are reused for the scale-aware measures.

    A loss so small that the model's dtype cannot resolve its curvature (below
    :data:`~flatness.measures.suite.SATURATED` units in the last place of 1, where the softmax
    probabilities round to 0 and 1) puts every curvature measure in ``imprecise``; a measure
    the model does not define (relative flatness without a linear layer, the Fisher-Rao norm where examples
    interact or the loss is not a plain per-example mean) is NaN and named in ``undefined``.

    Raises:
        FlatnessError: input any of the measures refuses; only one of ``lambda_max`` and
            ``trace``, or either not finite (a standard error below 0 included).
    """
    lambda_max, trace = _given(lambda_max, trace)
    start = time.perf_counter()
    common = dict(bn_mode="eval", output=output)
    seeded = common | dict(seed=seed)
    values, hvps, passes, imprecise, unconverged, undefined = {}, 0, 0, [], [], []
    spent: dict[str, float] = {}
    clock = [start]

    def lap(family: str) -> None:
        now = time.perf_counter()
        spent[family] = spent.get(family, 0.0) + now - clock[0]
        clock[0] = now

    with warnings.catch_warnings(record=True) as caught:
        # recorded in the result, where a run's stored measures keep it
        warnings.simplefilter("always", PrecisionWarning)
        if lambda_max is None or trace is None:
            s = scaled_sharpness(model, loss_fn, data, **seeded)
            lambda_max, trace = s.lambda_max, (s.trace, s.trace_stderr)
            hvps, passes = hvps + s.hvps, passes + s.passes
            if not s.converged:
                unconverged.append("scaled_lambda_max")
        squared = float(
            sum(p.detach().double().pow(2).sum() for p in model.parameters() if p.requires_grad)
        )
        values |= {
            "scaled_lambda_max": lambda_max * squared,
            "scaled_trace": trace[0] * squared,
            "scaled_trace_se": trace[1] * squared,
        }
        lap("scale-aware")
        n = _precision_warnings(caught)
        avg = average_sharpness(model, loss_fn, data, RHO_AVERAGE, pairs=PAIRS, **seeded)
        values |= {"adaptive_average": avg.value, "adaptive_average_se": avg.stderr}
        passes += avg.forward_passes
        if _precision_warnings(caught) > n:
            imprecise.append("adaptive_average")
        for column, rho, norm in (
            ("adaptive_worst_l2", RHO_WORST_L2, "l2"),
            ("adaptive_worst_linf", RHO_WORST_LINF, "linf"),
        ):
            n = _precision_warnings(caught)
            worst = worst_sharpness(
                model, loss_fn, data, rho, norm=norm, restarts=RESTARTS, steps=STEPS, **seeded
            )
            values[column] = worst.value
            passes += worst.forward_passes + worst.backward_passes
            if _precision_warnings(caught) > n:
                imprecise.append(column)
        lap("adaptive sharpness")
    for w in caught:  # the others are the caller's to see
        if not issubclass(w.category, PrecisionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    curvature = adaptive_curvature(model, loss_fn, data, 1.0, **seeded)
    values |= {
        "adaptive_trace": curvature.weighted_trace,
        "adaptive_trace_se": curvature.weighted_trace_stderr,
        "adaptive_lambda_max": curvature.weighted_lambda_max,
    }
    hvps, passes = hvps + curvature.hvps, passes + curvature.passes
    if not curvature.converged:
        unconverged.append("adaptive_lambda_max")
    lap("adaptive curvature")
    try:
        layer = default_layer(model)
    except FlatnessError:  # a network without a linear layer (all-convolutional)
        values |= {"relative_flatness": math.nan, "relative_flatness_se": math.nan}
        undefined.append("relative_flatness")
    else:
        relative = relative_flatness(model, loss_fn, data, layer=layer, **seeded)
        values |= {"relative_flatness": relative.value, "relative_flatness_se": relative.stderr}
        hvps, passes = hvps + relative.hvps, passes + relative.passes
    lap("relative flatness")
    for column, aware in (("pac_bayes", False), ("pac_bayes_magnitude", True)):
        pb = pac_bayes_flatness(model, loss_fn, data, magnitude_aware=aware, **seeded)
        values[column] = pb.flatness
        passes += pb.forward_passes
        if not pb.converged:
            unconverged.append(column)
    lap("PAC-Bayes")
    try:
        fr = fisher_rao_norm(model, loss_fn, data, **common)
    except FlatnessError:  # the input passed every other measure: the norm alone is undefined
        values["fisher_rao"] = math.nan
        undefined.append("fisher_rao")
    else:
        values["fisher_rao"] = fr.value
        passes += fr.forward_passes
    lap("Fisher-Rao norm")
    values["weight_norm_squared"] = squared
    dtype = next(p for p in model.parameters() if p.requires_grad).dtype
    if avg.base_loss < SATURATED * torch.finfo(dtype).eps:
        imprecise += [m for m in CURVATURE if m not in imprecise]
    return Suite(
        values={k: float(v) for k, v in values.items()},
        hvps=hvps,
        forward_passes=passes,
        seconds=time.perf_counter() - start,
        family_seconds=spent,
        imprecise=tuple(imprecise),
        unconverged=tuple(unconverged),
        undefined=tuple(undefined),
    )


def _precision_warnings(caught) -> int:
    return sum(issubclass(w.category, PrecisionWarning) for w in caught)


def _given(lambda_max, trace) -> tuple:
    """``lambda_max`` and ``trace`` checked: both or neither, finite numbers, a standard error
    of at least 0."""
    if lambda_max is None and trace is None:
        return None, None
    if lambda_max is None or trace is None:
        raise FlatnessError(
            "give both lambda_max and trace=(estimate, stderr) from one measurement, or neither"
        )

    def number(value, what: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise FlatnessError(f"{what} must be a finite number, got {value!r}")
        return float(value)

    if not isinstance(trace, (tuple, list)) or len(trace) != 2:
        raise FlatnessError(f"trace must be a pair (estimate, stderr), got {trace!r}")
    estimate, stderr = number(trace[0], "trace's estimate"), number(trace[1], "trace's stderr")
    if stderr < 0:
        raise FlatnessError(f"trace's stderr must be at least 0, got {stderr!r}")
    return number(lambda_max, "lambda_max"), (estimate, stderr)
