"""Adaptive sharpness (Kwon et al. 2021; in the forms of Andriushchenko et al. 2023): the loss
increase under perturbations ``delta = |w| * u`` scaled elementwise by the weights, average-case
and worst-case, and their second-order forms.

With ``D = diag(|w|)`` and ``L(w + delta) = L(w) + g^T delta + delta^T H delta / 2 + O(|delta|^3)``:

- average case, ``u ~ N(0, rho^2 I)``: ``E[L(w + D u)] - L(w) = rho^2/2 Tr(D H D) + O(rho^4)``,
  the gradient term averaging out and the third-order one vanishing by symmetry;
  ``Tr(D H D) = sum_i w_i^2 H_ii``;
- worst case, ``||u||_2 <= rho``: at a minimum (``g = 0``),
  ``max L(w + D u) - L(w) = rho^2/2 lambda_max(D H D) + O(rho^3)``; away from one the first-order
  term ``rho ||D g||_2`` leads.

Both are unchanged when a ReLU layer's weights and biases are multiplied by ``a > 0`` and the
next layer's weights divided by it (Dinh et al. 2017), as ``D`` scales with the weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from flatness.errors import unknown
from flatness.hessian.checks import Output, check_options, with_autograd
from flatness.hessian.joint import joint_measurement
from flatness.hessian.operator import HessianOperator
from flatness.measures.operators import Scaled
from flatness.measures.options import count, positive
from flatness.measures.perturbation import PerturbedLoss, resolve_mode

#: the norms of the worst-case perturbation set
NORMS = ("l2", "linf")


class PrecisionWarning(UserWarning):
    """A loss increase too small to be told from the rounding of the loss in the model's dtype."""


@dataclass(frozen=True)
class AverageSharpness:
    """``E[L(w + |w| * u)] - L(w)``, ``u ~ N(0, rho^2 I)``, by Monte Carlo over antithetic pairs.

    ``value`` averages ``(L(w + d) + L(w - d))/2 - L(w)`` over ``pairs`` draws ``d``, which
    cancels the gradient's first-order noise; ``stderr`` is the spread of those pair means over
    ``sqrt(pairs)``. Near a minimum each pair mean is a weighted sum of chi-squares, skewed to
    the right, so the error falls below ``-2 stderr`` more often than a normal one would: on the
    quadratic loss of ``tests/test_measures.py``'s coverage test, over 200 seeds, 7.5 % of runs
    of 10 pairs did (6.5 % of 50 pairs), 1.5 % rose above ``+2 stderr``, and 97 % (99 %) lay
    within 3."""

    value: float
    stderr: float
    rho: float
    pairs: int
    base_loss: float
    forward_passes: int


@dataclass(frozen=True)
class WorstSharpness:
    """``max L(w + |w| * u) - L(w)`` over ``||u||_p <= rho``, by projected gradient ascent.

    ``value`` is the best increase found at any step of any restart (a lower bound on the true
    maximum); ``restart`` and ``step`` say where (step 0 is the start), ``restarts`` and ``steps``
    what was spent. Each restart starts at a uniform random point of the sphere (``l2``) or a
    random corner (``linf``) of radius ``rho``, and moves by steps of ``step_size * rho``
    along the normalised gradient (``l2``) or its sign (``linf``), projected back into the set.
    For ``linf`` the maximum of a quadratic lies at one of the box's corners, which ascent finds
    less surely than the ``l2`` maximum: raise ``restarts`` there. ``direction`` takes no part
    in comparisons of two results.
    """

    value: float
    rho: float
    norm: str
    restart: int
    step: int
    restarts: int
    steps: int
    base_loss: float
    #: the perturbation ``u`` that reached ``value`` (``delta = |w| * u``), flat
    direction: torch.Tensor = field(compare=False)
    forward_passes: int
    backward_passes: int


@dataclass(frozen=True)
class AdaptiveCurvature:
    """The second-order forms of adaptive sharpness, from one stream of products of
    ``D H D`` (``D = diag(|w|)``; :func:`flatness.hessian.measure_all` on it).

    ``average = rho^2/2 Tr(D H D)`` (with ``average_stderr``), ``worst = rho^2/2 lambda_max(D H D)``;
    ``weighted_trace = sum_i w_i^2 H_ii`` and ``weighted_lambda_max`` are those without
    ``rho^2/2``."""

    average: float
    average_stderr: float
    worst: float
    rho: float
    weighted_trace: float
    weighted_trace_stderr: float
    weighted_lambda_max: float
    converged: bool
    hvps: int
    passes: int


def _resolved(value: float, base: float, dtype: torch.dtype, what: str) -> None:
    """A :class:`PrecisionWarning` where a loss increase is too small to be told from the
    rounding of the loss in the model's dtype (some 100 units in the last place of ``L(w)``)."""
    floor = 100 * torch.finfo(dtype).eps * max(abs(base), torch.finfo(dtype).tiny)
    if abs(value) < floor:
        warnings.warn(
            f"{what}: the loss increase {value:.3g} is within {floor:.2g}, the rounding of the "
            f"loss {base:.6g} in {str(dtype).removeprefix('torch.')}, so it says nothing; "
            "measure a float64 model (model.double() and double inputs) or use a larger rho",
            PrecisionWarning,
            stacklevel=3,
        )


@with_autograd
def average_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    data,
    rho: float,
    *,
    pairs: int = 50,
    seed: int = 0,
    bn_mode: str | None = None,
    output: Output = None,
) -> AverageSharpness:
    """Average-case adaptive sharpness ``E[L(w + |w| * u)] - L(w)``, ``u ~ N(0, rho^2 I)``
    (Andriushchenko et al. 2023, eq. 3, elementwise adaptive), with a standard error.

    Each of ``pairs`` draws costs two passes over the data (``u`` and ``-u``). The perturbed
    parameters are every variable (see :mod:`flatness.measures.perturbation`).

    Raises:
        FlatnessError: bad options or input the Hessian functions refuse.
    """
    rho = positive(rho, "rho")
    pairs = count(pairs, "pairs", 2)
    check_options(seed=seed)
    bn_mode = resolve_mode(model, bn_mode)
    f = PerturbedLoss(model, loss_fn, data, bn_mode=bn_mode, output=output)
    gen = torch.Generator().manual_seed(seed)
    scale = f.weights.abs()
    means = []
    for _ in range(pairs):
        u = rho * torch.randn(f.size, generator=gen, dtype=torch.float64).to(f.dtype)
        d = scale * u.to(f.device)
        means.append((f.loss(d) + f.loss(-d)) / 2 - f.base)
    t = torch.tensor(means, dtype=torch.float64)
    _resolved(float(t.mean()), f.base, f.dtype, "average_sharpness")
    return AverageSharpness(
        value=float(t.mean()),
        stderr=float(t.std() / math.sqrt(pairs)),
        rho=rho,
        pairs=pairs,
        base_loss=f.base,
        forward_passes=f.forward_passes,
    )


def _project(u: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return u.clamp(-rho, rho)
    length = float(u.norm())
    return u if length <= rho else u * (rho / length)


@with_autograd
def worst_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    data,
    rho: float,
    *,
    norm: str = "l2",
    restarts: int = 4,
    steps: int = 20,
    step_size: float = 0.25,
    seed: int = 0,
    bn_mode: str | None = None,
    output: Output = None,
) -> WorstSharpness:
    """Worst-case adaptive sharpness ``max L(w + |w| * u) - L(w)`` over ``||u||_p <= rho``
    (Kwon et al. 2021; Andriushchenko et al. 2023, eq. 2), by projected gradient ascent with
    ``restarts`` random starts of ``steps`` steps each (see :class:`WorstSharpness`).

    The answer is the best loss increase seen, so it never exceeds the true maximum; more
    restarts and steps can only raise it. Every iterate lies in the set.

    Raises:
        FlatnessError: bad options (``norm`` one of ``"l2"``, ``"linf"``) or input the Hessian
            functions refuse.
    """
    rho = positive(rho, "rho")
    if norm not in NORMS:
        raise unknown("norm", norm, NORMS)
    restarts = count(restarts, "restarts")
    steps = count(steps, "steps", 0)
    step_size = positive(step_size, "step_size")
    check_options(seed=seed)
    bn_mode = resolve_mode(model, bn_mode)
    f = PerturbedLoss(model, loss_fn, data, bn_mode=bn_mode, output=output)
    gen = torch.Generator().manual_seed(seed)
    scale = f.weights.abs()
    best = (-math.inf, 0, 0, torch.zeros_like(f.weights))
    backward = 0
    for r in range(restarts):
        z = torch.randn(f.size, generator=gen, dtype=torch.float64).to(f.device, f.dtype)
        u = rho * (z.sign() if norm == "linf" else z / z.norm())
        for s in range(steps + 1):
            if s < steps:
                value, g = f.loss_and_gradient(scale * u)
                backward += 1
            else:
                value, g = f.loss(scale * u), None
            if value - f.base > best[0]:
                best = (value - f.base, r, s, u.clone())
            if g is None:
                break
            g_u = scale * g  # the gradient in u
            if norm == "linf":
                move = g_u.sign()
            else:
                length = float(g_u.norm())
                if length == 0:
                    break  # a stationary point of the loss in the set: nothing to ascend
                move = g_u / length
            u = _project(u + step_size * rho * move, rho, norm)
    value, restart, step, direction = best
    _resolved(value, f.base, f.dtype, "worst_sharpness")
    return WorstSharpness(
        value=float(value),
        rho=rho,
        norm=norm,
        restart=restart,
        step=step,
        restarts=restarts,
        steps=steps,
        base_loss=f.base,
        direction=direction.detach().cpu(),
        forward_passes=f.forward_passes,
        backward_passes=backward,
    )


@with_autograd
def adaptive_curvature(
    model: nn.Module,
    loss_fn: Callable,
    data,
    rho: float,
    *,
    tol: float = 1e-3,
    rtol: float = 0.05,
    seed: int = 0,
    bn_mode: str | None = None,
    output: Output = None,
) -> AdaptiveCurvature:
    """The second-order forms of adaptive sharpness, ``rho^2/2 Tr(D H D)`` (average case) and
    ``rho^2/2 lambda_max(D H D)`` (worst case, l2), ``D = diag(|w|)``: the top eigenvalue to a
    relative residual ``tol`` and the weighted trace ``sum_i w_i^2 H_ii`` to a relative standard
    error ``rtol``, from one stream of products (:func:`flatness.hessian.measure_all` on
    ``D H D``; Hutchinson's probes of it are ``|w|``-scaled probes of ``H``).

    Raises:
        FlatnessError: bad options or input the Hessian functions refuse.
    """
    rho = positive(rho, "rho")
    bn_mode = resolve_mode(model, bn_mode)
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, output=output)
    weights = torch.cat([p.reshape(-1) for p in op.params.values()])
    m = joint_measurement(Scaled(op, weights.abs()), k=1, tol=tol, rtol=rtol, seed=seed)
    half = rho**2 / 2
    return AdaptiveCurvature(
        average=half * m.trace.estimate,
        average_stderr=half * m.trace.stderr,
        worst=half * m.lambda_max,
        rho=rho,
        weighted_trace=m.trace.estimate,
        weighted_trace_stderr=m.trace.stderr,
        weighted_lambda_max=m.lambda_max,
        converged=m.converged,
        hvps=m.hvps,
        passes=m.passes,
    )
