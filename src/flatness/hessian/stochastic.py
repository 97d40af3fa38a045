"""Randomised trace estimators with a fixed budget and a standard error.

Hutchinson: ``Tr A = E[z^T A z]`` for Rademacher ``z``; its variance is ``2 (||A||_F^2 - sum a_ii^2)``
per probe. Hutch++ (Meyer, Musco, Musco and Woodruff, 2021) spends a third of the budget on a
sketch ``Q`` of A's range, takes ``Tr(Q^T A Q)`` exactly and Hutchinson only on the deflated rest,
which for the fast-decaying spectra of Hessians leaves a far smaller variance at equal cost.

Applied to ``A = H`` (trace) and ``A = H^2`` (squared Frobenius norm, as ``||H z||^2``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flatness.errors import FlatnessError, unknown
from flatness.hessian.operator import HessianOperator

METHODS = ("hutch++", "hutchinson")


@dataclass(frozen=True)
class Estimate:
    """A randomised estimate with its standard error and the work it cost."""

    estimate: float
    stderr: float
    method: str
    #: Hessian-vector products spent
    hvps: int
    #: passes over the data
    passes: int
    seconds: float


def _products(op: HessianOperator, vectors: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([op.matmat(v) for v in vectors.split(batch)])


def _sample_stats(samples: torch.Tensor) -> tuple[float, float]:
    n = len(samples)
    se = samples.std().item() / math.sqrt(n) if n > 1 else math.inf
    return samples.mean().item(), se


def estimate_trace_of(
    op: HessianOperator,
    quadratic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    probes: int,
    *,
    method: str = "hutch++",
    batch: int = 16,
    seed: int = 0,
) -> tuple[float, float]:
    """``Tr A`` where ``quadratic(Z, HZ)`` gives ``z^T A z`` for each row of Z; (estimate, stderr).

    ``probes`` is the budget in products with H.
    """
    if method not in METHODS:
        raise unknown("method", method, METHODS)
    if not isinstance(probes, int) or probes < (3 if method == "hutch++" else 1):
        need = 3 if method == "hutch++" else 1
        raise FlatnessError(
            f"probes must be an integer of at least {need} for {method}, got {probes!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    if method == "hutchinson":
        z = op.rademacher(probes, gen)
        samples = quadratic(z, _products(op, z, batch)).double()
        return _sample_stats(samples)
    sketch = probes // 3
    rest = probes - 2 * sketch
    s = op.rademacher(sketch, gen)
    q, _ = torch.linalg.qr(_products(op, s, batch).double().T)  # (P, sketch), orthonormal
    q_rows = q.T.to(s)
    exact_part = quadratic(q_rows, _products(op, q_rows, batch)).double().sum().item()
    g = op.rademacher(rest, gen).double()
    g = (g - (g @ q) @ q.T).to(s)  # deflated probes (I - Q Q^T) g
    mean, se = _sample_stats(quadratic(g, _products(op, g, batch)).double())
    return exact_part + mean, se


def _estimate(op: HessianOperator, quadratic, probes, *, method, batch, seed):
    """(value, stderr, work) for ``Tr A`` with ``z^T A z = quadratic(z, Hz)``; work as in Estimate."""
    start, hvps0, passes0 = time.perf_counter(), op.hvps, op.passes
    value, se = estimate_trace_of(op, quadratic, probes, method=method, batch=batch, seed=seed)
    return value, se, (method, op.hvps - hvps0, op.passes - passes0, time.perf_counter() - start)


def trace_estimate(
    op: HessianOperator, probes: int = 60, *, method="hutch++", batch=16, seed=0
) -> Estimate:
    """``Tr H`` with a fixed budget of ``probes`` products."""
    value, se, work = _estimate(
        op, lambda z, hz: (z * hz).sum(dim=1), probes, method=method, batch=batch, seed=seed
    )
    return Estimate(value, se, *work)


def frobenius_estimate(
    op: HessianOperator, probes: int = 60, *, method="hutch++", batch=16, seed=0
) -> Estimate:
    """``||H||_F = sqrt(Tr H^2)``; the standard error follows by the delta method."""
    value, se, work = _estimate(
        op, lambda z, hz: (hz * hz).sum(dim=1), probes, method=method, batch=batch, seed=seed
    )
    root = math.sqrt(max(value, 0.0))
    return Estimate(root, se / (2 * root) if root > 0 else math.inf, *work)
