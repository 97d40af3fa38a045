"""PAC-Bayes flatness (Jiang et al. 2020, "Fantastic Generalization Measures", section 7 and
appendix C): the largest noise level ``sigma'`` the trained weights tolerate, found by bisection.

Plain: ``u ~ N(0, sigma^2 I)``. Magnitude-aware: ``u_i ~ N(0, sigma^2 w_i^2 + eps^2)``, so each
weight is disturbed in proportion to its size (``eps`` keeps a zero weight from being frozen).
``sigma'`` is the ``sigma`` at which the training accuracy, averaged over ``samples`` draws of
``u``, has fallen by ``target`` (0.1 in Jiang et al.), to within ``tolerance`` (0.01), by
bisection on ``[0, upper]`` (``upper = 2``, at most ``depth = 15`` halvings). The measures are
``1/sigma'^2`` and the bound's complexity terms, with ``m`` training examples and ``omega``
perturbed parameters:

- plain: ``||w - w0||^2 / (4 sigma'^2) + log(m / sigma') + 10`` (``w0`` the initial weights, or
  0 for the bound "orig" of Jiang et al.);
- magnitude-aware: ``1/4 sum_i log((eps^2 + (sigma'^2 + 1) ||w - w0||^2 / omega) /
  (eps^2 + sigma'^2 (w_i - w0_i)^2)) + log(m / sigma') + 10``.

A public reimplementation of these measures passes ``sigma^2`` where ``torch.normal`` takes the
standard deviation, so its noise has deviation ``sigma^2`` (and ``sigma^2 w_i^2 + eps^2`` in the
magnitude-aware form); here the noise has the variances above. The perturbed parameters are the
variables, as for every measure (:mod:`flatness.measures.perturbation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.hessian.checks import Output, check_options, with_autograd
from flatness.measures.options import count, positive
from flatness.measures.perturbation import PerturbedLoss, resolve_mode

#: Jiang et al.'s settings: the accuracy drop sought, how close counts, the bisection's bracket
TARGET, TOLERANCE, UPPER = 0.1, 0.01, 2.0


@dataclass(frozen=True)
class PacBayes:
    """``sigma'`` and the measures built on it (module text)."""

    sigma: float
    #: ``1 / sigma'^2``
    flatness: float
    #: the bound's complexity term, about ``w0`` (the initial weights if given, else 0)
    bound: float
    magnitude_aware: bool
    eps: float
    #: the training accuracy at the weights, and its mean drop at ``sigma'`` with the drop's
    #: standard error over the ``samples`` draws
    accuracy: float
    drop: float
    drop_stderr: float
    #: the drop came within ``tolerance`` of ``target``; else ``sigma'`` is where the bisection
    #: stopped after ``depth`` halvings (near ``upper`` when no noise level up to it reached
    #: ``target``)
    converged: bool
    halvings: int
    forward_passes: int


@with_autograd
def pac_bayes_flatness(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    magnitude_aware: bool = False,
    eps: float = 1e-3,
    initial: nn.Module | torch.Tensor | None = None,
    target: float = TARGET,
    tolerance: float = TOLERANCE,
    samples: int = 10,
    depth: int = 15,
    upper: float = UPPER,
    seed: int = 0,
    bn_mode: str | None = None,
    output: Output = None,
) -> PacBayes:
    """``sigma'``, PAC-Bayes flatness ``1/sigma'^2`` and the bound's term (module text), plain
    or ``magnitude_aware``, on the training accuracy over ``data`` (``loss_fn`` is used only by
    the checks every measure runs). ``initial``: the weights at initialisation, a module of the
    same structure or a flat vector of the variables, for the bound about them.

    Raises:
        FlatnessError: bad options, targets that are not class labels, or input the Hessian
            functions refuse.
    """
    for value, what in ((target, "target"), (tolerance, "tolerance"), (upper, "upper")):
        positive(value, what)
    if not 0 < target < 1 or not tolerance < target:
        raise FlatnessError(
            f"target must lie in (0, 1) and tolerance below it, got {target!r} and {tolerance!r}"
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise FlatnessError(f"eps must be a finite number of at least 0, got {eps!r}")
    samples = count(samples, "samples", 2)
    depth = count(depth, "depth")
    check_options(seed=seed)
    bn_mode = resolve_mode(model, bn_mode)
    f = PerturbedLoss(model, loss_fn, data, bn_mode=bn_mode, output=output)
    w = f.weights
    w0 = _initial(initial, f)
    base = f.accuracy(torch.zeros_like(w))
    gen = torch.Generator().manual_seed(seed)

    squares = w.double().cpu() ** 2

    def drops(sigma: float) -> torch.Tensor:
        scale = (sigma**2 * squares + eps**2).sqrt() if magnitude_aware else sigma
        out = []
        for _ in range(samples):
            z = torch.randn(f.size, generator=gen, dtype=torch.float64)
            out.append(base - f.accuracy((scale * z).to(f.device, f.dtype)))
        return torch.tensor(out, dtype=torch.float64)

    lower, high = 0.0, float(upper)
    sigma, found, converged, halvings = high, None, False, 0
    while halvings < depth:
        halvings += 1
        sigma = (lower + high) / 2
        found = drops(sigma)
        drop = float(found.mean())
        if abs(drop - target) < tolerance:
            converged = True
            break
        if drop > target:
            high = sigma
        else:
            lower = sigma
    drop = float(found.mean())
    m = f.examples
    distance = (w - w0).double()
    if magnitude_aware:
        numerator = eps**2 + (sigma**2 + 1) * float(distance.pow(2).sum()) / f.size
        denominator = eps**2 + sigma**2 * distance.pow(2)
        bound = float(0.25 * torch.log(numerator / denominator).sum()) + math.log(m / sigma) + 10
    else:
        bound = float(distance.pow(2).sum()) / (4 * sigma**2) + math.log(m / sigma) + 10
    return PacBayes(
        sigma=sigma,
        flatness=1 / sigma**2,
        bound=bound,
        magnitude_aware=magnitude_aware,
        eps=float(eps),
        accuracy=base,
        drop=drop,
        drop_stderr=float(found.std() / math.sqrt(samples)),
        converged=converged,
        halvings=halvings,
        forward_passes=f.forward_passes,
    )


def _initial(initial, f: PerturbedLoss) -> torch.Tensor:
    if initial is None:
        return torch.zeros_like(f.weights)
    if isinstance(initial, nn.Module):
        named = dict(initial.named_parameters())
        missing = [n for n in f.names if n not in named or named[n].shape != f.params[n].shape]
        if missing:
            raise FlatnessError(
                f"initial lacks parameter(s) {', '.join(missing[:3])} of the model's shapes: "
                "pass a module of the same structure, or a flat vector of the variables"
            )
        return torch.cat([named[n].detach().reshape(-1) for n in f.names]).to(f.weights)
    if torch.is_tensor(initial) and initial.shape == f.weights.shape:
        return initial.detach().to(f.weights)
    raise FlatnessError(
        f"initial must be a module of the model's structure or a flat vector of its {f.size} "
        f"variables, got {type(initial).__name__}"
    )
