"""A known-answer anchor: adaptive sharpness against test loss for diagonal linear networks.

Andriushchenko et al. 2023 ("A modern look at the relationship between sharpness and
generalization", ICML) report, for diagonal linear networks trained on sparse regression to a
training loss of about 1e-5 (about 50 networks differing in initialisation scale and learning
rate), a Kendall tau of about -0.68 between worst-case adaptive sharpness and the test loss:
the sharper networks generalise *better*. Their public code (github tml-epfl/
sharpness-vs-generalization) has no diagonal-network experiment, only a linear-model
notebook, so the authors' own protocol is not available; this module reconstructs it from the
usual setting of the diagonal-network literature, and every choice below is ours.

The setting:

- data: ``x ~ N(0, I_d)``, a ``k``-sparse ground truth ``w*`` (``k`` coordinates drawn at
  random, each ``+1`` or ``-1`` at random, the rest 0), ``y = <w*, x>`` without noise;
  ``samples`` training points (fewer than ``d``: many interpolators exist, and which one
  gradient descent finds is what the initialisation scale decides) and 2,000 test points, all
  float64 and drawn from one generator seeded by ``seed``;
- the network ``f(x) = <u * v, x>``, ``u, v`` in ``R^d`` (``2d`` parameters), initialised at
  ``u = sqrt(2) alpha 1``, ``v = 0``, as Even, Pesme, Gunasekar and Flammarion 2023 ("(S)GD
  over diagonal linear networks") and Andriushchenko, Varre, Pillaud-Vivien and Flammarion
  2023 ("SGD with large step sizes learns sparse features", the same first author and year)
  parametrise it. Why this one: it is the form the anchor's first author and group used the
  same year (the anchor's own is not in its public code), and with ``a = (u + v)/sqrt 2``,
  ``b = (u - v)/sqrt 2`` it is exactly Woodworth et al. 2020's ``w = (a*a - b*b)/2`` started
  at ``a = b = alpha``, so ``alpha`` has the usual meaning (small: the sparse, "rich" regime,
  near the minimum-l1 interpolator; large: the kernel regime, near the minimum-l2 one). The two
  parametrisations train identically but their adaptive sharpness differs, since ``|w|``
  scales each coordinate of *its own* parameters: the choice matters for the measure;
- the loss ``0.5 * mean((f(x) - y)^2)``; full-batch gradient descent at a constant step size
  until the training loss is below ``target_loss`` (each network stops at its first step
  below it, so every kept network ends just under it). A run that diverges, or does not reach
  the target within ``max_steps``, is excluded and listed in :attr:`Anchor.excluded`, never
  used;
- the grid: ``count`` networks, every combination of ``count / 5`` initialisation scales
  ``alpha`` log-spaced over [0.01, 1] and five step sizes ``eta = f / lambda_max(X^T X / n)``,
  ``f`` in :data:`STEP_FRACTIONS`. At ``alpha = 1`` both the Hessian at initialisation and at
  the kernel-regime interpolator have top eigenvalue about ``2 lambda_max(X^T X / n)``, so
  ``f < 1`` keeps every step size under the stability limit ``2 / lambda_max(H)``;
- the measures, on the training set, of the concatenated parameters ``w = (u, v)``: the top
  eigenvalue and trace of the dense Hessian (``torch.autograd.functional.hessian``, float64),
  and worst-case adaptive sharpness ``max L(w + |w| * e) - L(w)`` over ``||e||_2 <= rho``
  by the package's :func:`~flatness.measures.worst_sharpness` (projected gradient ascent) at
  the package's settings (:data:`~flatness.measures.suite.RHO_WORST_L2` = 0.5,
  :data:`~flatness.measures.suite.RESTARTS` restarts of
  :data:`~flatness.measures.suite.STEPS` steps), on an :class:`nn.Module` holding ``(u, v)``.
  The paper's radius for this experiment is not recoverable from the public code, so the
  package's radius is used, fixed before any network was measured;
- the test loss is the same loss on the test points; Kendall's tau-b by
  :func:`flatness.analysis.ranking.kendall_tau`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from flatness.analysis.ranking import kendall_tau
from flatness.errors import FlatnessError
from flatness.measures.adaptive import worst_sharpness
from flatness.measures.suite import RESTARTS, RHO_WORST_L2, STEPS

#: the step sizes, as fractions of ``1 / lambda_max(X^T X / n)`` (module text)
STEP_FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8)
#: the range of the initialisation scale ``alpha``, log-spaced
ALPHA_RANGE = (0.01, 1.0)
#: test points
TEST_SAMPLES = 2000
#: a training loss this many times the initial one counts as divergence
DIVERGED = 1e6


@dataclass(frozen=True, eq=False)
class Anchor:
    """The networks of :func:`diagonal_networks` that reached the target loss, one entry each
    in every array (same order), their measures and the rank correlations.

    ``excluded`` lists ``(alpha, lr, reason)`` for every network left out (``"diverged"`` or
    ``"unfinished"``, the latter still above ``target_loss`` after ``max_steps``)."""

    #: the final parameters, one row per kept network
    u: np.ndarray
    v: np.ndarray
    alpha: np.ndarray
    lr: np.ndarray
    #: gradient-descent steps taken to reach the target loss
    steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    #: worst-case adaptive sharpness, l2, radius ``rho``
    adaptive_worst_l2: np.ndarray
    lambda_max: np.ndarray
    trace: np.ndarray
    #: Kendall's tau-b of each measure with the test loss, over the kept networks
    tau_adaptive: float
    tau_lambda_max: float
    tau_trace: float
    excluded: tuple[tuple[float, float, str], ...]
    #: everything the result depends on: the arguments, the grid and the measures' settings
    settings: dict = field(default_factory=dict)
    #: wall time of the whole call
    seconds: float = math.nan

    @property
    def kept(self) -> int:
        return len(self.alpha)


class DiagonalNetwork(nn.Module):
    """``f(x) = <u * v, x>``: a diagonal linear network, its parameters ``u`` then ``v``."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.u = nn.Parameter(u.detach().clone())
        self.v = nn.Parameter(v.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.u * self.v)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean((out - y)^2)``."""
    return 0.5 * (out - y).pow(2).mean()


def loss_of(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss at the flat parameters ``w = (u, v)``."""
    d = x.shape[1]
    return mse(x @ (w[:d] * w[d:]), y)


def hessian(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The dense ``2d x 2d`` Hessian of the loss in ``(u, v)``, by autograd."""
    w = torch.cat([u, v]).detach().to(torch.float64)
    return torch.autograd.functional.hessian(
        lambda p: loss_of(p, x.to(torch.float64), y.to(torch.float64)), w
    )


def sparse_regression(seed: int, dimension: int, samples: int, sparsity: int):
    """``(x_train, y_train, x_test, y_test, w_star)``, float64, from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.zeros(dimension, dtype=torch.float64)
    support = torch.randperm(dimension, generator=gen)[:sparsity]
    signs = torch.randint(0, 2, (sparsity,), generator=gen).to(torch.float64) * 2 - 1
    w_star[support] = signs
    x = torch.randn(samples, dimension, generator=gen, dtype=torch.float64)
    x_test = torch.randn(TEST_SAMPLES, dimension, generator=gen, dtype=torch.float64)
    return x, x @ w_star, x_test, x_test @ w_star, w_star


def _train(x, y, alpha, lr, target_loss, max_steps):
    """Full-batch gradient descent of every network at once (rows of ``u``, ``v``); each
    network stops at its first iterate below ``target_loss``. Returns ``u, v``, the loss at
    them, the steps taken and a status per network (0 reached, 1 diverged, 2 unfinished)."""
    m, (n, d) = len(alpha), x.shape
    u = (math.sqrt(2) * alpha)[:, None] * torch.ones(m, d, dtype=torch.float64)
    v = torch.zeros(m, d, dtype=torch.float64)
    eta = lr[:, None]
    active = torch.ones(m, dtype=torch.bool)
    status = torch.full((m,), 2, dtype=torch.long)
    steps = torch.zeros(m, dtype=torch.long)
    loss = torch.full((m,), math.nan, dtype=torch.float64)
    start = 0.5 * y.pow(2).mean()
    for step in range(max_steps + 1):
        r = (u * v) @ x.T - y  # (m, n)
        current = 0.5 * r.pow(2).mean(1)
        loss = torch.where(active, current, loss)
        done = active & (current < target_loss)
        bad = active & (~torch.isfinite(current) | (current > DIVERGED * start))
        status[done], status[bad] = 0, 1
        steps[done | bad] = step
        active &= ~(done | bad)
        if not active.any() or step == max_steps:
            break
        g = (r @ x) / n  # (m, d): the gradient in w = u * v
        a = active[:, None]
        u, v = torch.where(a, u - eta * v * g, u), torch.where(a, v - eta * u * g, v)
    steps[active] = max_steps
    return u, v, loss, steps, status


def diagonal_networks(
    *,
    seed: int,
    count: int = 50,
    dimension: int = 100,
    samples: int = 40,
    sparsity: int = 5,
    target_loss: float = 1e-5,
    max_steps: int = 100_000,
) -> Anchor:
    """Train ``count`` diagonal linear networks on one sparse regression problem and rank
    their test losses by adaptive sharpness, ``lambda_max`` and the trace (module text).

    Raises:
        FlatnessError: ``count`` not a positive multiple of ``len(STEP_FRACTIONS)``, bad
            sizes, or fewer than two networks reaching ``target_loss``.
    """
    started = time.perf_counter()
    fractions = len(STEP_FRACTIONS)
    if count < fractions or count % fractions:
        raise FlatnessError(f"count must be a positive multiple of {fractions}, got {count}")
    if not 0 < sparsity <= dimension or samples < 1 or target_loss <= 0 or max_steps < 1:
        raise FlatnessError(
            "need 0 < sparsity <= dimension, samples >= 1, target_loss > 0, max_steps >= 1"
        )
    x, y, x_test, y_test, _ = sparse_regression(seed, dimension, samples, sparsity)
    top = float(torch.linalg.eigvalsh(x.T @ x / samples)[-1])
    alphas = np.geomspace(*ALPHA_RANGE, count // fractions)
    grid = [(a, f / top) for a in alphas for f in STEP_FRACTIONS]
    alpha = torch.tensor([a for a, _ in grid], dtype=torch.float64)
    lr = torch.tensor([e for _, e in grid], dtype=torch.float64)
    u, v, loss, steps, status = _train(x, y, alpha, lr, target_loss, max_steps)

    kept = [i for i in range(count) if status[i] == 0]
    reasons = {1: "diverged", 2: "unfinished"}
    excluded = tuple(
        (float(alpha[i]), float(lr[i]), reasons[int(status[i])])
        for i in range(count)
        if status[i] != 0
    )
    if len(kept) < 2:
        raise FlatnessError(
            f"only {len(kept)} of {count} networks reached the training loss {target_loss:g}"
        )
    test, sharp, lam, tr = [], [], [], []
    for i in kept:
        test.append(float(mse(x_test @ (u[i] * v[i]), y_test)))
        h = hessian(u[i], v[i], x, y)
        lam.append(float(torch.linalg.eigvalsh(h)[-1]))
        tr.append(float(torch.diagonal(h).sum()))
        model = DiagonalNetwork(u[i], v[i])
        result = worst_sharpness(
            model,
            mse,
            (x, y),
            RHO_WORST_L2,
            norm="l2",
            restarts=RESTARTS,
            steps=STEPS,
            seed=seed,
        )
        sharp.append(result.value)
    test, sharp, lam, tr = map(np.array, (test, sharp, lam, tr))
    settings = dict(
        seed=seed,
        count=count,
        dimension=dimension,
        samples=samples,
        sparsity=sparsity,
        target_loss=target_loss,
        max_steps=max_steps,
        test_samples=TEST_SAMPLES,
        alphas=tuple(float(a) for a in alphas),
        step_fractions=STEP_FRACTIONS,
        lambda_max_data=top,
        lrs=tuple(f / top for f in STEP_FRACTIONS),
        init="u = sqrt(2) alpha, v = 0 (Even et al. 2023)",
        rho=RHO_WORST_L2,
        restarts=RESTARTS,
        ascent_steps=STEPS,
    )
    return Anchor(
        u=u.numpy()[kept],
        v=v.numpy()[kept],
        alpha=alpha.numpy()[kept],
        lr=lr.numpy()[kept],
        steps=steps.numpy()[kept],
        train_loss=loss.numpy()[kept],
        test_loss=test,
        adaptive_worst_l2=sharp,
        lambda_max=lam,
        trace=tr,
        tau_adaptive=kendall_tau(sharp, test),
        tau_lambda_max=kendall_tau(lam, test),
        tau_trace=kendall_tau(tr, test),
        excluded=excluded,
        settings=settings,
        seconds=time.perf_counter() - started,
    )
