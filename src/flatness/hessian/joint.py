"""Every measure of a Hessian from one stream of products: top eigenvalues, trace and
Frobenius norm with standard errors, and optionally an SLQ density.

A block Lanczos run (:func:`flatness.hessian.lanczos.block_krylov`) finds the top eigenvalues.
The space it built, with orthonormal rows ``Q`` and projector ``Pi = Q^T Q``, then serves as
Hutch++'s sketch (Meyer, Musco, Musco and Woodruff, 2021) in its Krylov form (Chen and Hallman,
2023): the products already made give, without further work::

    Tr(Pi H Pi) = Tr(Q H Q^T),          ||H Pi||_F^2 = sum_i ||H q_i||^2,

and since ``Tr H = Tr(Pi H Pi) + Tr((I - Pi) H (I - Pi))`` and
``||H||_F^2 = ||H Pi||_F^2 + ||H (I - Pi)||_F^2``, one product ``h = H g`` of each deflated
Rademacher probe ``g = (I - Pi) z`` gives a sample of both remainders: ``g^T h`` and ``||h||^2``.
The probes are drawn after the space is fixed and independently of it, so both estimates are
unbiased, and their standard errors are the spread of those samples. Deflating the top of the
spectrum leaves samples of far smaller spread than plain Hutchinson's, so a requested
precision is reached with fewer probes; with ``slq_steps`` the same Lanczos run also gives
the spectral density, as the authors took theirs.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch

from flatness.errors import FlatnessError
from flatness.hessian.checks import ConvergenceWarning, check_options, with_autograd
from flatness.hessian.estimates import Estimate, with_rounding
from flatness.hessian.lanczos import SpectralDensity, block_krylov, default_max_steps
from flatness.hessian.operator import HessianOperator

#: fewest deflated probes behind a reported standard error. The error is the spread of the
#: probes' samples, itself uncertain when they are few: with 16, a normal error lies beyond 3
#: reported standard errors with probability 0.009 (Student's t, 15 degrees of freedom),
#: against 0.0027 for a known spread, and it was within them in over 90 % of 50 seeds on every
#: model of ``tests/test_joint.py``; with 4 probes that probability is 0.058.
MIN_PROBES = 16
#: vectors per block when none is asked for: block products share each batch's gradient graph
#: (a DataLoader's pass serves the whole block), and a wider space deflates more
DEFAULT_BLOCK = 4
#: the method the estimates report (and :func:`flatness.hessian.trace` takes)
METHOD = "krylov"


@dataclass(frozen=True)
class Measurement:
    """Every measure of one Hessian, from one stream of products.

    ``trace`` and ``frobenius`` are :class:`~flatness.hessian.Estimate` objects
    whose ``hvps``, ``passes`` and ``seconds`` are the whole measurement's (the products are
    shared), ``probes`` the deflated probes behind their standard errors and ``exact_part``
    what the Krylov space gave exactly.
    """

    #: the top k eigenvalues, descending, float64
    eigenvalues: torch.Tensor
    #: ``||H y - theta y||`` of each of their Ritz pairs, as in :class:`Eigenpairs`
    residuals: torch.Tensor
    trace: Estimate
    frobenius: Estimate
    #: SLQ density from the Lanczos run's first block (None without ``slq_steps``)
    density: SpectralDensity | None
    #: the eigenvalues reached ``tol`` and both estimates ``rtol``
    converged: bool
    #: Lanczos block steps, and the dimension of the space deflated
    steps: int
    krylov_dimension: int
    hvps: int
    passes: int
    seconds: float

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[0])


def _density(krylov) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature of the Lanczos run for each vector of its first (Haar-random) block:
    nodes the Ritz values, weights the squared first-block components of the Ritz vectors."""
    b = krylov.block
    nodes = krylov.theta[None, :].expand(b, -1).clone()
    weights = krylov.ritz_vectors[:b, :] ** 2
    return nodes, weights


def _check(k, tol, rtol, block, max_probes, slq_steps, seed, size):
    check_options(seed=seed)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= size:
        raise FlatnessError(f"k must be an integer from 1 to {size}, got {k!r}")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 < tol < math.inf:
        raise FlatnessError(f"tol must be a positive finite number, got {tol!r}")
    if not isinstance(rtol, (int, float)) or isinstance(rtol, bool) or not 0 < rtol < 1:
        raise FlatnessError(f"rtol must be a number between 0 and 1, got {rtol!r}")
    if block is not None and (
        not isinstance(block, int) or isinstance(block, bool) or not k <= block <= size
    ):
        raise FlatnessError(
            f"block must be None or an integer from k={k} to P={size} (so that eigenvalues "
            f"repeated up to k times are all found), got {block!r}"
        )
    if not isinstance(max_probes, int) or isinstance(max_probes, bool) or max_probes < MIN_PROBES:
        raise FlatnessError(
            f"max_probes must be an integer of at least {MIN_PROBES}, got {max_probes!r}"
        )
    if not isinstance(slq_steps, int) or isinstance(slq_steps, bool) or slq_steps < 0:
        raise FlatnessError(f"slq_steps must be a non-negative integer, got {slq_steps!r}")


def _probes_needed(sd: float, target_se: float) -> float:
    """Probes for a standard error of ``target_se`` at a per-probe spread ``sd``: none more
    where the samples do not vary (a remainder that is exactly 0)."""
    if sd == 0:
        return 0.0
    return (sd / target_se) ** 2 if target_se > 0 else math.inf


def _spread(samples: torch.Tensor) -> tuple[float, float]:
    n = len(samples)
    return samples.mean().item(), (samples.std().item() if n > 1 else math.inf)


@with_autograd
def joint_measurement(
    op: HessianOperator,
    *,
    k: int = 1,
    tol: float = 1e-3,
    rtol: float = 0.05,
    block: int | None = None,
    max_probes: int = 1000,
    slq_steps: int = 0,
    seed: int = 0,
    targets: tuple[str, ...] = ("trace", "frobenius"),
    warn: bool = True,
) -> Measurement:
    """All measures of ``op``; see :func:`flatness.hessian.measure_all`. ``targets``: the
    estimates whose relative standard errors must reach ``rtol`` (the others come along);
    ``warn=False`` leaves the warning to a caller that reports one estimate."""
    _check(k, tol, rtol, block, max_probes, slq_steps, seed, op.size)
    start, hvps0, passes0 = time.perf_counter(), op.hvps, op.passes
    gen = torch.Generator().manual_seed(seed)
    # a density is one Lanczos run per start vector: a single vector (block 1) costs
    # slq_steps products, as the authors' SLQ did, and still finds the top k when k is 1
    b = block if block is not None else (k if slq_steps else max(k, DEFAULT_BLOCK))
    b = min(b, op.size)
    min_steps = slq_steps  # block steps: the density's Lanczos steps per start vector
    max_steps = max(default_max_steps(op, k, b), min_steps)
    krylov = block_krylov(
        op, op.gaussian(b, gen), k, tol, max_steps=max_steps, gen=gen, min_steps=min_steps
    )
    basis = krylov.basis
    exact_trace = float(torch.diagonal(krylov.t).sum())
    exact_square = krylov.squared_norms
    spans = len(basis) >= op.size

    def deflate(z: torch.Tensor) -> torch.Tensor:
        for _ in range(2):  # twice is enough (Kahan), as for the Lanczos basis
            z = z - (z @ basis.T) @ basis
        return z

    traces: list[torch.Tensor] = []
    squares: list[torch.Tensor] = []
    target = MIN_PROBES
    reached = spans
    while not spans:
        count = min(target, max_probes) - sum(len(x) for x in traces)
        if count > 0:
            g = deflate(op.rademacher(count, gen))
            h = op.matmat(g)
            traces.append((g * h).sum(dim=1).double().cpu())
            squares.append((h * h).sum(dim=1).double().cpu())
        t_samples, s_samples = torch.cat(traces), torch.cat(squares)
        n = len(t_samples)
        t_mean, t_sd = _spread(t_samples)
        s_mean, s_sd = _spread(s_samples)
        square_value = abs(exact_square + s_mean)
        # a trace near 0 has no relative precision to reach: its error is measured against
        # the larger of |Tr H| and ||H||_F, the Hessian's own scale
        trace_value = max(abs(exact_trace + t_mean), math.sqrt(square_value))
        # the norm's relative standard error is half its square's (delta method)
        needs = {
            "trace": _probes_needed(t_sd, rtol * trace_value),
            "frobenius": _probes_needed(s_sd, 2 * rtol * square_value),
        }
        need = max(needs[t] for t in targets)
        if n >= need:
            reached = True
            break
        if n >= max_probes:
            break
        # the probes the spread says are still needed plus a tenth, in whole blocks, at most
        # doubling: the spread of a few samples is itself rough
        more = min(max(need * 1.1 - n, 1), n)
        target = n + b * math.ceil(more / b)
    if spans:  # the space is everything: nothing left to sample
        t_mean = s_mean = t_se = s_se = 0.0
        n = 0
    else:
        t_se, s_se = t_sd / math.sqrt(n), s_sd / math.sqrt(n)
    squared = exact_square + s_mean
    norm = math.sqrt(max(squared, 0.0))
    hvps, passes, seconds = op.hvps - hvps0, op.passes - passes0, time.perf_counter() - start
    shared = dict(
        method=METHOD, hvps=hvps, passes=passes, seconds=seconds, probes=n, converged=reached
    )
    value = exact_trace + t_mean
    trace = Estimate(
        estimate=value,
        stderr=with_rounding(t_se, value, op.dtype),
        exact_part=exact_trace,
        **shared,
    )
    frobenius = Estimate(
        estimate=norm,
        stderr=with_rounding(
            s_se / (2 * norm) if norm > 0 else (0.0 if s_se == 0 else math.inf), norm, op.dtype
        ),
        exact_part=math.sqrt(max(exact_square, 0.0)),
        **shared,
    )
    density = None
    if slq_steps:
        nodes, weights = _density(krylov)
        density = SpectralDensity(nodes, weights, op.size, hvps, seconds)
    if warn and not (krylov.converged and reached):
        parts = []
        if not krylov.converged:
            parts.append(f"the top {k} eigenvalues missed tol={tol:g} after {krylov.steps} steps")
        if not reached:
            parts.append(f"the estimates missed rtol={rtol:g} at max_probes={max_probes}")
        warnings.warn(
            f"measure_all: {' and '.join(parts)} (converged=False); raise the limits or the "
            "tolerances",
            ConvergenceWarning,
            stacklevel=4,  # the caller of flatness.hessian.measure_all
        )
    return Measurement(
        eigenvalues=krylov.values,
        residuals=krylov.residuals,
        trace=trace,
        frobenius=frobenius,
        density=density,
        converged=bool(krylov.converged and reached),
        steps=krylov.steps,
        krylov_dimension=len(basis),
        hvps=hvps,
        passes=passes,
        seconds=seconds,
    )
