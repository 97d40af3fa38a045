"""Randomised trace estimators that stop at a requested relative standard error.

Hutchinson: ``Tr A = E[z^T A z]`` for Rademacher ``z``; its variance is
``2 (||A||_F^2 - sum a_ii^2)`` per probe, small when the diagonal dominates. Hutch++ (Meyer,
Musco, Musco and Woodruff, 2021) sketches A's range with ``s`` products, takes ``Tr(Q^T A Q)``
exactly (``s`` more) and Hutchinson only on the deflated rest, which wins when a few
eigenvalues dominate. For the Hessian's trace the Gauss-Newton part is taken exactly
(:mod:`flatness.hessian.gauss_newton`) and only the residual is probed, from
:data:`RESIDUAL_MIN_PROBES` probes on.

Applied to ``A = H`` (trace) and ``A = H^2`` (squared Frobenius norm, as ``||H z||^2``).
``"krylov"`` deflates the probes against a block Lanczos space instead of a random sketch
(:mod:`flatness.hessian.joint`).
Probes go through the operator in blocks (one pass over the data per block); with ``rtol``
the next block is sized from the spread so far, and sampling stops once the standard error is
at most ``rtol`` times the estimate (after at least ``MIN_PROBES``), or at ``max_probes``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch

from flatness.errors import FlatnessError, unknown
from flatness.hessian.checks import ConvergenceWarning, check_options, with_autograd
from flatness.hessian.estimates import Estimate, with_rounding
from flatness.hessian.joint import joint_measurement
from flatness.hessian.operator import HessianOperator

METHODS = ("auto", "hutchinson", "hutch++", "ggn+hutchinson", "ggn+hutch++", "krylov")
#: the methods that take the Gauss-Newton part's trace exactly and probe the rest
SPLIT_METHODS = ("ggn+hutchinson", "ggn+hutch++")
#: fewest random probes behind a reported standard error
MIN_PROBES = 32
#: fewest Hutchinson probes of the residual ``H - G`` once the Gauss-Newton part's trace is
#: taken exactly. Near a minimum the residual is a small part of the trace, so a few probes
#: reach ``rtol`` of the whole; below :data:`MIN_PROBES` sampling stops only when the standard
#: error is within ``rtol`` even with the spread at its upper 95 % confidence bound
#: (:func:`_caution`), and with 8 probes a normal error lies beyond 3 reported standard errors
#: with probability 0.02 (Student's t, 7 degrees of freedom; ``tests/test_gauss_newton_split.py``
#: checks the coverage near a minimum, where the floor is reached).
RESIDUAL_MIN_PROBES = 8
#: the Krylov estimator's Lanczos run: block size and the relative residual of its top Ritz
#: pair at which its space is fixed (on the bench's BatchNorm CNN, a trace to 1 % took 40 to
#: 72 HVPs this way, against 96 for Hutch++ after a Hutchinson pilot: ``make bench``)
KRYLOV_BLOCK, KRYLOV_TOL = 8, 0.03


def _krylov(op, quantity: str, *, rtol: float, max_probes: int, seed: int) -> Estimate:
    """The trace or the Frobenius norm by Hutchinson on probes deflated against a block Krylov
    space taken exactly (:func:`flatness.hessian.joint.joint_measurement`)."""
    m = joint_measurement(
        op,
        tol=KRYLOV_TOL,
        rtol=rtol,
        block=min(KRYLOV_BLOCK, op.size),
        max_probes=max_probes,
        seed=seed,
        targets=(quantity,),
        warn=False,
    )
    return getattr(m, quantity)


Quadratic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _products(op: HessianOperator, vectors: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([op.matmat(v) for v in vectors.split(batch)])


def _stats(samples: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(samples, dtype=torch.float64)
    n = len(t)
    sd = t.std().item() if n > 1 else math.inf
    return t.mean().item(), sd / math.sqrt(n), sd


def _caution(n: int) -> float:
    """1 from :data:`MIN_PROBES` samples on; below, the factor by which the spread of n
    samples may be larger than the one seen: ``sqrt((n - 1) / q)`` for ``q`` the 5 % quantile
    of chi-squared with ``n - 1`` degrees of freedom."""
    if n >= MIN_PROBES:
        return 1.0
    if n < 2:
        return math.inf
    from scipy.special import chdtri  # not scipy.stats, far slower to import

    return math.sqrt((n - 1) / chdtri(n - 1, 0.95))


def _sample(
    op,
    quadratic,
    project,
    *,
    exact,
    probes,
    rtol,
    max_probes,
    batch,
    gen,
    initial=(),
    floor=MIN_PROBES,
):
    """Hutchinson samples of ``quadratic`` on (projected) Rademacher probes, after ``initial``
    ones: a fixed number ``probes``, or adaptively (at least ``floor``) until the relative
    standard error of ``exact + mean`` is at most ``rtol`` (with :func:`_caution` below
    :data:`MIN_PROBES`). Returns (mean, stderr, samples used, converged)."""
    samples: list[float] = list(initial)
    target = probes if probes is not None else max(floor, len(samples))
    while True:
        count = min(target, max_probes) - len(samples)
        if count > 0:
            z = project(op.rademacher(count, gen))
            samples += quadratic(z, _products(op, z, batch)).double().tolist()
        mean, se, sd = _stats(samples)
        if probes is not None:
            return mean, se, len(samples), None
        value = abs(exact + mean)
        if se * _caution(len(samples)) <= rtol * value:
            return mean, se, len(samples), True
        if len(samples) >= max_probes:
            return mean, se, len(samples), False
        # probes the spread says are still needed, plus a tenth, at most four blocks of
        # ``batch`` (one pass over the data each)
        need = (sd * _caution(len(samples)) / (rtol * value)) ** 2 if value > 0 else math.inf
        more = min(max(need * 1.1 - len(samples), 1), 4 * batch)
        target = len(samples) + math.ceil(more)


def _pilot(op, quadratic, exact, rtol, floor, block, max_probes, batch, gen):
    """Hutchinson samples from ``floor`` probes on, stopping early where they reach ``rtol``
    (with :func:`_caution`), else at a full ``block``: the samples, their products (a sketch
    for Hutch++) and whether they reached ``rtol``."""
    samples: list[float] = []
    products: list[torch.Tensor] = []
    last = min(block, max_probes)
    target = min(floor, last)
    while True:
        z = op.rademacher(target - len(samples), gen)
        products.append(_products(op, z, batch))
        samples += quadratic(z, products[-1]).double().tolist()
        n = len(samples)
        mean, se, sd = _stats(samples)
        value = abs(exact + mean)
        if se * _caution(n) <= rtol * value:
            return samples, torch.cat(products), True
        if n >= last or not value > 0:
            return samples, torch.cat(products), False
        need = (sd * _caution(n) / (rtol * value)) ** 2
        target = min(last, n + math.ceil(max(need * 1.1 - n, 1)))


def estimate_trace_of(
    op: HessianOperator,
    quadratic: Quadratic,
    *,
    method: str,
    probes: int | None,
    rtol: float,
    max_probes: int,
    batch: int,
    seed: int,
    exact: float = 0.0,
    floor: int = MIN_PROBES,
):
    """``exact + Tr A`` where ``quadratic(Z, HZ)`` gives ``z^T A z`` for each row of Z.

    ``method`` is "hutchinson", "hutch++" or "auto": a first block of Hutchinson probes, kept
    when its spread says at most four full blocks reach ``rtol`` (and then continued up to
    that many), and otherwise reused as Hutch++'s sketch. ``floor``: the fewest Hutchinson
    probes behind a standard error (:data:`RESIDUAL_MIN_PROBES` for the residual).
    Returns (estimate, stderr, method, random probes, converged, exact part).
    """
    gen = torch.Generator().manual_seed(seed)
    if method == "auto" and probes is not None:
        method = "hutch++"  # a fixed budget: nothing to choose from as it samples
    common = dict(rtol=rtol, max_probes=max_probes, batch=batch, gen=gen)
    block = max(MIN_PROBES, batch)
    initial: list[float] = []
    if method == "auto":
        initial, hz, done = _pilot(op, quadratic, exact, rtol, floor, block, max_probes, batch, gen)
        if done:
            mean, se, _ = _stats(initial)
            return exact + mean, se, "hutchinson", len(initial), True, exact
        mean, _, sd = _stats(initial)
        value = abs(exact + mean)
        if not (value > 0 and (sd / (rtol * value)) ** 2 <= 4 * block):
            initial = []  # too many probes ahead: straight to Hutch++
    if method == "hutchinson":
        mean, se, n, ok = _sample(
            op,
            quadratic,
            lambda z: z,
            exact=exact,
            probes=probes,
            initial=initial,
            floor=floor,
            **common,
        )
        return exact + mean, se, "hutchinson", n, ok, exact
    if initial and method == "auto":
        # Hutchinson looked cheap: give it up to four blocks' worth before switching
        capped = dict(common, max_probes=min(max_probes, 4 * block))
        mean, se, n, ok = _sample(
            op,
            quadratic,
            lambda z: z,
            exact=exact,
            probes=None,
            initial=initial,
            floor=floor,
            **capped,
        )
        if ok or n >= max_probes:
            return exact + mean, se, "hutchinson", n, ok, exact
    if method == "auto":
        # many probes would be needed: the pilot's products (a block's worth) sketch the range
        extra = block - len(hz)
        sketch = (
            hz if extra <= 0 else torch.cat([hz, _products(op, op.rademacher(extra, gen), batch)])
        )
    else:
        if probes is not None:
            size = probes // 3
            probes -= 2 * size
        else:
            size = max(MIN_PROBES, batch)
        sketch = _products(op, op.rademacher(size, gen), batch)
    q, _ = torch.linalg.qr(sketch.double().T)  # (P, s), orthonormal
    rows = q.T.to(sketch)
    exact_part = exact + quadratic(rows, _products(op, rows, batch)).double().sum().item()

    def deflate(g):
        g = g.double()
        return (g - (g @ q) @ q.T).to(sketch)

    mean, se, n, ok = _sample(op, quadratic, deflate, exact=exact_part, probes=probes, **common)
    return exact_part + mean, se, "hutch++", n, ok, exact_part


def _check(method, probes, rtol, max_probes, batch, seed):
    check_options(seed=seed)
    if method not in METHODS:
        raise unknown("method", method, METHODS)
    least = 3 if method in ("hutch++", "ggn+hutch++", "auto") else 2
    if probes is not None and (
        not isinstance(probes, int) or isinstance(probes, bool) or probes < least
    ):
        raise FlatnessError(
            f"probes must be an integer of at least {least} for {method}, or None to stop at "
            f"rtol; got {probes!r}"
        )
    if method == "krylov" and probes is not None:
        raise FlatnessError(
            "method='krylov' stops at rtol (its Lanczos run sets its own size): pass "
            "probes=None, or a budget with 'hutchinson' or 'hutch++'"
        )
    if not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise FlatnessError(f"rtol must be a number between 0 and 1, got {rtol!r}")
    if not isinstance(max_probes, int) or max_probes < MIN_PROBES:
        raise FlatnessError(f"max_probes must be an integer of at least {MIN_PROBES}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise FlatnessError(f"batch must be a positive integer, got {batch!r}")


def _warn_if_short(est: Estimate, name: str, rtol: float, max_probes: int) -> Estimate:
    if est.converged is False:
        relative = est.stderr / abs(est.estimate) if est.estimate else math.inf
        warnings.warn(
            f"{name}: {est.method} stopped at max_probes={max_probes} with a relative standard "
            f"error of {relative:.3g}, above rtol={rtol:g} (converged=False); raise max_probes "
            "or rtol",
            ConvergenceWarning,
            stacklevel=5,  # the caller of flatness.hessian.trace (through with_autograd)
        )
    return est


def _run(op, quadratic, *, exact=0.0, extra_hvps=0, **kwargs) -> Estimate:
    start, hvps0, passes0 = time.perf_counter(), op.hvps, op.passes
    value, se, method, n, ok, exact_part = estimate_trace_of(op, quadratic, exact=exact, **kwargs)
    return Estimate(
        estimate=value,
        stderr=with_rounding(se, value, op.dtype),
        method=method,
        hvps=op.hvps - hvps0 + extra_hvps,
        passes=op.passes - passes0,
        seconds=time.perf_counter() - start,
        probes=n,
        converged=ok,
        exact_part=exact_part,
    )


def _cheap_ggn(op: HessianOperator) -> bool:
    """Is the exact GGN trace about as cheap as a few products (no batch statistics, layers
    :func:`flatness.hessian.gauss_newton.cheap` accepts)?"""
    from flatness.hessian.gauss_newton import cheap
    from flatness.hessian.loaders import uses_batch_statistics

    return not uses_batch_statistics(op.model, op.bn_mode) and cheap(op.model)


def _quadratic_form(z, hz):
    return (z * hz).sum(dim=1)


@with_autograd
def trace_estimate(
    op: HessianOperator,
    probes: int | None = None,
    *,
    rtol: float = 0.01,
    max_probes: int = 1000,
    method: str = "auto",
    batch: int = 32,
    seed: int = 0,
) -> Estimate:
    """``Tr H``: a fixed budget of ``probes`` products, or (``probes=None``) until the standard
    error is at most ``rtol`` times the estimate. See :func:`flatness.hessian.trace`, also for
    how few random probes a fixed budget leaves behind the standard error."""
    _check(method, probes, rtol, max_probes, batch, seed)
    kwargs = dict(probes=probes, rtol=rtol, max_probes=max_probes, batch=batch, seed=seed)
    if op.curvature == "hessian" and (
        method in SPLIT_METHODS or (method == "auto" and probes is None and _cheap_ggn(op))
    ):
        from flatness.hessian.gauss_newton import NotSeparable, checked_ggn_trace

        start = time.perf_counter()
        try:
            # the operator's checks passed on this model and data: only separability is left
            exact = checked_ggn_trace(op.model, op.loss_fn, op.data, op.bn_mode, op.output)
        except NotSeparable:
            if method != "auto":
                raise
        else:
            est = _run(
                op.residual(),
                _quadratic_form,
                exact=exact + op.l2 * op.size,
                method=method.removeprefix("ggn+"),
                floor=RESIDUAL_MIN_PROBES,
                **kwargs,
            )
            seconds = time.perf_counter() - start
            est = Estimate(**{**est.__dict__, "method": f"ggn+{est.method}", "seconds": seconds})
            return _warn_if_short(est, "trace", rtol, max_probes)
    if method in SPLIT_METHODS:
        raise FlatnessError(
            f"method={method!r} splits the Hessian itself; curvature={op.curvature!r} "
            "needs 'hutchinson', 'hutch++', 'krylov' or 'auto'"
        )
    if method == "krylov" or (method == "auto" and probes is None):
        est = _krylov(op, "trace", rtol=rtol, max_probes=max_probes, seed=seed)
        return _warn_if_short(est, "trace", rtol, max_probes)
    est = _run(op, _quadratic_form, method=method, **kwargs)
    return _warn_if_short(est, "trace", rtol, max_probes)


@with_autograd
def frobenius_estimate(
    op: HessianOperator,
    probes: int | None = None,
    *,
    rtol: float = 0.01,
    max_probes: int = 1000,
    method: str = "auto",
    batch: int = 32,
    seed: int = 0,
) -> Estimate:
    """``||H||_F = sqrt(Tr H^2)`` from ``||H z||^2``; ``rtol`` bounds the relative standard
    error of the norm (half that of ``Tr H^2``, by the delta method). A fixed budget of
    ``probes`` leaves Hutch++ ``probes - 2 (probes // 3)`` random probes behind the standard
    error, as for :func:`flatness.hessian.trace`.

    ``method="auto"`` is ``"krylov"`` when stopping at ``rtol`` (Hutchinson on probes deflated
    against a block Lanczos space taken exactly) and Hutch++ on a fixed budget: squaring
    weights the few largest eigenvalues, which both take exactly, and plain Hutchinson's samples
    of ``||H z||^2`` are then so skewed that 32 of them understate their own spread (softmax
    regression on 5,000 MNIST images: 3.8 standard errors from the exact norm;
    ``tests/test_coverage.py``)."""
    if method in SPLIT_METHODS:
        raise FlatnessError(
            f"method={method!r} is for the trace; use 'auto', 'hutchinson', 'hutch++' or 'krylov'"
        )
    _check(method, probes, rtol, max_probes, batch, seed)
    if method == "krylov" or (method == "auto" and probes is None):
        est = _krylov(op, "frobenius", rtol=rtol, max_probes=max_probes, seed=seed)
        return _warn_if_short(est, "frobenius_norm", rtol, max_probes)
    method = "hutch++" if method == "auto" else method
    est = _run(
        op,
        lambda z, hz: (hz * hz).sum(dim=1),
        probes=probes,
        rtol=2 * rtol,
        max_probes=max_probes,
        batch=batch,
        seed=seed,
        method=method,
    )
    root = math.sqrt(max(est.estimate, 0.0))
    se = est.stderr / (2 * root) if root > 0 else math.inf
    est = Estimate(
        **{
            **est.__dict__,
            "estimate": root,
            "stderr": se,
            "exact_part": math.sqrt(max(est.exact_part, 0.0)),
        }
    )
    return _warn_if_short(est, "frobenius_norm", rtol, max_probes)
