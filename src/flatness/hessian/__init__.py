"""Hessians of a model's mean data loss: exact answers, fast estimators, and PyHessian beside them.

Every function takes any ``torch.nn.Module``, a mean-reduced loss ``loss_fn(outputs, targets)``
and ``data``: an ``(inputs, targets)`` batch, or a DataLoader whose full pass is one operator.
The options shared by the estimators:

- ``curvature``: ``"hessian"`` (default), ``"ggn"`` (the generalised Gauss-Newton part
  ``J^T H_z J``) or ``"residual"`` (the rest, Hessian minus GGN);
- ``bn_mode``: BatchNorm with running statistics (``"eval"``, PyHessian's convention) or with
  each batch's statistics (``"train"``, the authors'); the model's modes are restored after;
- ``l2``: add ``l2 * I``, the Hessian of ``l2/2 ||w||^2`` (default 0: the data loss alone).

The L2 term is never part of "the Hessian" unless ``l2`` is given.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from flatness.hessian.exact import (
    MAX_EXACT_PARAMS,
    Measures,
    Rank,
    exact_hessian,
    hessian_rank,
    softmax_regression_hessian,
    weight_norm,
)
from flatness.hessian.lanczos import Eigenpairs, SpectralDensity, lanczos_density, lanczos_top
from flatness.hessian.operator import BN_MODES, CURVATURES, HessianOperator
from flatness.hessian.reference import PyHessianEstimate, pyhessian_estimate, pyhessian_hvp
from flatness.hessian.stochastic import METHODS, Estimate, frobenius_estimate, trace_estimate

__all__ = [
    "BN_MODES",
    "CURVATURES",
    "MAX_EXACT_PARAMS",
    "METHODS",
    "Eigenpairs",
    "Estimate",
    "HessianOperator",
    "Measures",
    "PyHessianEstimate",
    "Rank",
    "SpectralDensity",
    "exact_hessian",
    "frobenius_norm",
    "hessian_rank",
    "pyhessian_estimate",
    "pyhessian_hvp",
    "softmax_regression_hessian",
    "spectral_density",
    "top_eigenvalues",
    "trace",
    "weight_norm",
]


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
    curvature: str = "hessian",
    bn_mode: str = "eval",
    l2: float = 0.0,
) -> Eigenpairs:
    """The ``k`` largest (algebraic) eigenvalues by Lanczos with full reorthogonalisation.

    Converged when each Ritz pair's residual ``||H y - theta y||`` is at most ``tol * |theta|``.
    See :func:`flatness.hessian.lanczos.lanczos_top`.
    """
    op = HessianOperator(model, loss_fn, data, curvature=curvature, bn_mode=bn_mode, l2=l2)
    return lanczos_top(op, k, tol, seed=seed, max_steps=max_steps, eigenvectors=eigenvectors)


def trace(
    model: nn.Module,
    loss_fn: Callable,
    data,
    probes: int = 60,
    *,
    seed: int = 0,
    method: str = "hutch++",
    batch: int = 16,
    curvature: str = "hessian",
    bn_mode: str = "eval",
    l2: float = 0.0,
) -> Estimate:
    """``Tr H`` from ``probes`` Hessian-vector products (Hutch++ by default), with a standard error.

    ``batch`` products share one pass over the data.
    """
    op = HessianOperator(model, loss_fn, data, curvature=curvature, bn_mode=bn_mode, l2=l2)
    return trace_estimate(op, probes, method=method, batch=batch, seed=seed)


def frobenius_norm(
    model: nn.Module,
    loss_fn: Callable,
    data,
    probes: int = 60,
    *,
    seed: int = 0,
    method: str = "hutch++",
    batch: int = 16,
    curvature: str = "hessian",
    bn_mode: str = "eval",
    l2: float = 0.0,
) -> Estimate:
    """``||H||_F = sqrt(Tr H^2)`` from ``probes`` products (``E ||H z||^2`` for Rademacher z)."""
    op = HessianOperator(model, loss_fn, data, curvature=curvature, bn_mode=bn_mode, l2=l2)
    return frobenius_estimate(op, probes, method=method, batch=batch, seed=seed)


def spectral_density(
    model: nn.Module,
    loss_fn: Callable,
    data,
    steps: int = 50,
    probes: int = 4,
    *,
    seed: int = 0,
    curvature: str = "hessian",
    bn_mode: str = "eval",
    l2: float = 0.0,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``steps`` Lanczos steps from each of ``probes`` starts.

    Peak memory beyond the model: ``probes x (steps + 1) x P`` numbers of the model's dtype for
    the bases, plus the work space of ``probes`` simultaneous products; measured figures are in
    :func:`flatness.hessian.lanczos.lanczos_density`.
    """
    op = HessianOperator(model, loss_fn, data, curvature=curvature, bn_mode=bn_mode, l2=l2)
    return lanczos_density(op, steps, probes, seed=seed)
