"""Hessians of a model's mean data loss: exact answers, fast estimators, and PyHessian beside them.

Every function takes any ``torch.nn.Module``, a mean-reduced loss ``loss_fn(outputs, targets)``
and ``data``: an ``(inputs, targets)`` batch, or a DataLoader whose every pass covers the same
examples. The variables are the parameters with ``requires_grad``; frozen parameters are
constants. Input that defines no fixed Hessian (random sampling or augmentation, a sum-reduced
loss, mismatched dtypes, unused parameters) is refused with a FlatnessError before any work
(:mod:`flatness.hessian.checks`). The options shared by the estimators:

- ``curvature``: ``"hessian"`` (default), ``"ggn"`` (the generalised Gauss-Newton part
  ``J^T H_z J``) or ``"residual"`` (the rest, Hessian minus GGN);
- ``bn_mode``: BatchNorm with running statistics (``"eval"``, PyHessian's convention) or with
  each batch's statistics (``"train"``, the authors'); the model's modes are restored after.
  Left unset it is ``"eval"``, with a :class:`ModeWarning` when a BatchNorm layer is in
  training mode, since the model's own mode then says otherwise;
- ``l2``: add ``l2 * I``, the Hessian of ``l2/2 ||w||^2`` (``l2 >= 0``; default 0: the data loss alone);
- ``output``: which model output the loss is taken of, for models returning a tuple or a
  dict (default: the tensor, a tuple's first element, a mapping's ``"logits"``).

The L2 term is never part of "the Hessian" unless ``l2`` is given. A model that is not a
``torch.nn.Module`` or a loss that is not callable is refused with a FlatnessError too. Every
function records gradients for itself, so it may be called under ``torch.no_grad()`` or
``torch.inference_mode()`` (data made in inference mode are copied; a model made there is
refused, as autograd cannot differentiate its parameters), and at the model's own precision,
with the caller's autocast and the user's gradient hooks switched off. The model comes back as
it was: the same Parameter objects, dtypes, values, modes, buffers and hooks, a submodule
registered under two names included.

Shortcuts are taken only where a probe justifies them: the exact Gauss-Newton part that
``trace()`` computes example by example needs examples that do not interact (no output may
depend on another example's input: batch statistics, centring over the batch, a contrastive
head) and, like ``exact_hessian`` and GGN products, a model whose every use of a variable
``torch.func.functional_call`` sees (not a weight read again through a list or a closure).
Otherwise ``trace()`` falls back to probes of the whole-batch Hessian, and the functions that
need ``torch.func`` refuse the model, naming the parameters and the functions that work.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from flatness.hessian.checks import (
    ConvergenceWarning,
    ModeWarning,
    Output,
    warn_if_batchnorm_trains,
)
from flatness.hessian.exact import (
    MAX_EXACT_PARAMS,
    Measures,
    Rank,
    SoftmaxSpectrum,
    exact_hessian,
    hessian_rank,
    softmax_regression_hessian,
    softmax_regression_spectrum,
    weight_norm,
)
from flatness.hessian.gauss_newton import ggn_trace
from flatness.hessian.joint import Measurement, joint_measurement
from flatness.hessian.lanczos import Eigenpairs, SpectralDensity, lanczos_density, lanczos_top
from flatness.hessian.operator import BN_MODES, CURVATURES, HessianOperator
from flatness.hessian.reference import PyHessianEstimate, pyhessian_estimate, pyhessian_hvp
from flatness.hessian.stochastic import METHODS, Estimate, frobenius_estimate, trace_estimate

__all__ = [
    "BN_MODES",
    "CURVATURES",
    "ConvergenceWarning",
    "MAX_EXACT_PARAMS",
    "ModeWarning",
    "METHODS",
    "Eigenpairs",
    "Estimate",
    "HessianOperator",
    "Measurement",
    "Measures",
    "PyHessianEstimate",
    "Rank",
    "SoftmaxSpectrum",
    "SpectralDensity",
    "exact_hessian",
    "frobenius_norm",
    "ggn_trace",
    "hessian_rank",
    "measure_all",
    "pyhessian_estimate",
    "pyhessian_hvp",
    "softmax_regression_hessian",
    "softmax_regression_spectrum",
    "spectral_density",
    "top_eigenvalues",
    "trace",
    "weight_norm",
]


def _operator(model, loss_fn, data, curvature, bn_mode, l2, output) -> HessianOperator:
    if bn_mode is None:
        bn_mode = "eval"
        # the caller of the public function, two frames up from here
        warn_if_batchnorm_trains(model, stacklevel=3)
    return HessianOperator(
        model, loss_fn, data, curvature=curvature, bn_mode=bn_mode, l2=l2, output=output
    )


def top_eigenvalues(
    model: nn.Module,
    loss_fn: Callable,
    data,
    k: int = 1,
    tol: float = 1e-4,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    eigenvectors: bool = False,
    block: int | None = None,
    curvature: str = "hessian",
    bn_mode: str | None = None,
    l2: float = 0.0,
    output: Output = None,
) -> Eigenpairs:
    """The ``k`` largest (algebraic) eigenvalues by block Lanczos, repeated ones included.

    Converged when each Ritz pair's residual ``||H y - theta y||`` is at most ``tol * |theta|``.
    Reported residuals include the rounding of a product in the model's dtype (about
    ``4.8e-7`` times the largest Ritz value in float32), so a smaller ``tol`` spends
    ``max_steps`` and reports ``converged=False``: use a float64 model for it. See
    :func:`flatness.hessian.lanczos.lanczos_top`.

    Raises:
        FlatnessError: bad options (``k``, ``tol``, ``block``, ``max_steps``, ``seed``) or
            input the checks refuse.
    """
    op = _operator(model, loss_fn, data, curvature, bn_mode, l2, output)
    return lanczos_top(
        op, k, tol, seed=seed, max_steps=max_steps, eigenvectors=eigenvectors, block=block
    )


def trace(
    model: nn.Module,
    loss_fn: Callable,
    data,
    probes: int | None = None,
    *,
    rtol: float = 0.01,
    max_probes: int = 1000,
    seed: int = 0,
    method: str = "auto",
    batch: int = 32,
    curvature: str = "hessian",
    bn_mode: str | None = None,
    l2: float = 0.0,
    output: Output = None,
) -> Estimate:
    """``Tr H`` with a standard error, to a requested relative standard error ``rtol``.

    By default (``probes=None``) probes are drawn in blocks of ``batch`` (one pass over the
    data each) until the standard error is at most ``rtol`` times the estimate, or until
    ``max_probes`` (then ``converged=False`` and a :class:`ConvergenceWarning`). A number of
    ``probes`` fixes the budget instead (``converged=None``: there is no target to reach).

    Methods: ``"auto"`` (default) takes the Gauss-Newton part's trace exactly where that is
    about as cheap as a few products (every variable in a Linear, a Conv2d or a BatchNorm
    with running statistics, and no batch statistics: one batched backward per batch,
    :func:`flatness.hessian.ggn_trace`)
    and probes only the residual, which is small near a minimum. Its probing of that residual
    starts with ``stochastic.RESIDUAL_MIN_PROBES`` (8) Hutchinson probes, stops as soon as
    they reach ``rtol`` even with their spread at its upper 95 % confidence bound, and
    otherwise samples up to a block of
    ``max(32, batch)``; it keeps sampling when the block's spread says at most four blocks
    reach ``rtol`` (a dominant diagonal), and otherwise reuses the block's products as
    Hutch++'s sketch and probes only the deflated rest (a few dominant eigenvalues).
    Where the Gauss-Newton trace is not cheap it is ``"krylov"``: a
    short block Lanczos run whose space is taken exactly, and Hutchinson on probes deflated
    against it (at least 16), as :func:`measure_all` does. With a fixed budget it is Hutch++.
    ``"ggn+hutchinson"`` (``"ggn+hutch++"``: Hutch++ on the residual) forces the split
    (on any model with BatchNorm in eval mode and a per-example mean loss, through
    per-example products elsewhere); ``"hutchinson"``, ``"hutch++"`` and ``"krylov"`` (``rtol``
    only) force one estimator.
    The returned ``method`` says which ran (and can be passed back); ``probes`` counts the
    random probes behind ``stderr`` and ``hvps`` every Hessian-vector product (sketches
    included, the GGN's Jacobian products not).

    The standard error is the spread of those ``probes`` samples, so it is itself uncertain
    when they are few: the error exceeds two standard errors about as often as Student's t
    with ``probes - 1`` degrees of freedom does. Stopping at ``rtol`` uses at least 32, or at
    least 8 on the residual after the exact Gauss-Newton part (see above). A fixed
    budget does not: Hutch++ (``"auto"`` or ``"hutch++"``) spends ``2 (probes // 3)`` of it on
    the sketch, leaving ``probes - 2 (probes // 3)`` random probes, 4 for ``probes=12`` (the
    estimate then lay more than two standard errors from the exact trace in 14 % of 200 seeds
    on a small MLP, against 5 % for a normal error), 10 for 30, and the nominal 5 % only from a
    budget of about 90; Hutchinson keeps all ``probes``. Below about 30 random probes, read the
    standard error as rough.

    Raises:
        FlatnessError: bad options (the valid ones named) or input the checks refuse.
    """
    op = _operator(model, loss_fn, data, curvature, bn_mode, l2, output)
    return trace_estimate(
        op, probes, rtol=rtol, max_probes=max_probes, method=method, batch=batch, seed=seed
    )


def frobenius_norm(
    model: nn.Module,
    loss_fn: Callable,
    data,
    probes: int | None = None,
    *,
    rtol: float = 0.01,
    max_probes: int = 1000,
    seed: int = 0,
    method: str = "auto",
    batch: int = 32,
    curvature: str = "hessian",
    bn_mode: str | None = None,
    l2: float = 0.0,
    output: Output = None,
) -> Estimate:
    """``||H||_F = sqrt(Tr H^2)`` from ``E ||H z||^2`` (Rademacher z), with a standard error.

    Stopping and methods as for :func:`trace` (without ``"ggn+hutchinson"``); ``rtol`` bounds
    the relative standard error of the norm itself. As there, a fixed budget of ``probes``
    leaves Hutch++ (``"auto"`` and ``"hutch++"`` here) only ``probes - 2 (probes // 3)``
    random probes behind the standard error, which is rough below about 30 of them (a budget
    under about 90).

    Raises:
        FlatnessError: bad options (the valid ones named) or input the checks refuse.
    """
    op = _operator(model, loss_fn, data, curvature, bn_mode, l2, output)
    return frobenius_estimate(
        op, probes, rtol=rtol, max_probes=max_probes, method=method, batch=batch, seed=seed
    )


def measure_all(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    k: int = 1,
    tol: float = 1e-3,
    rtol: float = 0.05,
    block: int | None = None,
    max_probes: int = 1000,
    slq_steps: int = 0,
    seed: int = 0,
    curvature: str = "hessian",
    bn_mode: str | None = None,
    l2: float = 0.0,
    output: Output = None,
) -> Measurement:
    """The top ``k`` eigenvalues, the trace and the Frobenius norm (with standard errors), and
    with ``slq_steps`` an SLQ density, all from one stream of Hessian-vector products.

    A block Lanczos run of ``block`` vectors (default 4, or ``k`` with ``slq_steps``) runs until
    the top ``k`` Ritz pairs have relative residuals at most ``tol`` (as
    :func:`top_eigenvalues`), and for at least ``slq_steps`` steps. Its Krylov space is then
    taken exactly, and Rademacher probes deflated against it are drawn in blocks until the
    trace's and the norm's relative standard errors are at most ``rtol`` (at least 16 probes,
    so that the reported error is itself sound; at most ``max_probes``). A trace near 0 has no
    relative precision to reach, so its standard error is held to ``rtol`` times the larger of
    ``|Tr H|`` and ``||H||_F``. Each probe's one
    product gives both the trace's and the norm's sample: the module text of
    :mod:`flatness.hessian.joint` has the identities. Work is counted once: ``hvps``,
    ``passes`` and ``seconds`` are the whole measurement's, in the result and in its two
    estimates. A limit reached before a tolerance gives ``converged=False`` and a
    :class:`ConvergenceWarning`.

    For ``H = diag(2, 1)`` (least squares of two orthogonal inputs of squared norms 2 and 1),
    the Krylov space is everything, so no probe is needed, every answer is exact and the
    standard error is the estimate's float32 rounding alone:

    >>> import torch
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> x, y = torch.tensor([[2**0.5, 0.0], [0.0, 1.0]]), torch.zeros(2, 1)
    >>> m = measure_all(model, torch.nn.functional.mse_loss, (x, y))
    >>> round(m.lambda_max, 5), round(m.trace.estimate, 5), round(m.frobenius.estimate**2, 5)
    (2.0, 3.0, 5.0)
    >>> m.trace.stderr < 1e-5, m.trace.probes, m.hvps
    (True, 0, 2)

    Raises:
        FlatnessError: bad options (``k``, ``tol``, ``rtol``, ``block``, ``max_probes``,
            ``slq_steps``, ``seed``) or input the checks refuse.
    """
    op = _operator(model, loss_fn, data, curvature, bn_mode, l2, output)
    return joint_measurement(
        op,
        k=k,
        tol=tol,
        rtol=rtol,
        block=block,
        max_probes=max_probes,
        slq_steps=slq_steps,
        seed=seed,
    )


def spectral_density(
    model: nn.Module,
    loss_fn: Callable,
    data,
    steps: int = 50,
    probes: int = 4,
    *,
    seed: int = 0,
    curvature: str = "hessian",
    bn_mode: str | None = None,
    l2: float = 0.0,
    output: Output = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``steps`` Lanczos steps from each of ``probes`` starts.

    Peak memory beyond the model: ``probes x (steps + 1) x P`` numbers of the model's dtype for
    the bases, plus the work space of ``probes`` simultaneous products; measured figures are in
    :func:`flatness.hessian.lanczos.lanczos_density`.

    Raises:
        FlatnessError: bad options (``steps``, ``probes``, ``seed``) or input the checks refuse.
    """
    op = _operator(model, loss_fn, data, curvature, bn_mode, l2, output)
    return lanczos_density(op, steps, probes, seed=seed)
