"""Relative flatness (Petzka et al. 2021, Definition 3) of one linear layer.

For a layer ``z = W phi`` with weight ``W`` (``d`` rows ``w_s``, each a neuron's incoming
weights), ``kappa = sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'})``, where ``H_{s,s'}`` is the block of the
loss's Hessian between rows ``s`` and ``s'``. It is ``Tr(H M)`` for the matrix ``M`` that maps a
direction ``V`` of ``W`` to ``G V`` with the Gram matrix ``G = W W^T``, so Hutchinson's samples
``<Z, [H (G Z)]_W>`` over random sign matrices ``Z`` estimate it without bias. Multiplying the
layer by ``a`` and dividing the features ``phi`` it reads by ``a`` (the layer before a ReLU, as
Dinh et al. rescale) leaves ``kappa`` unchanged: ``G`` grows by ``a^2`` and the Hessian block
shrinks by as much. That invariance is what the measure was built for.

Its estimate here is the trace of the symmetric ``S H_WW S`` with ``S = G^{1/2}`` acting on
each column of ``W``, whose trace is the same ``Tr(H M)``; samples of ``<Z, [H (G Z)]_W>``
would be unbiased too, but far noisier.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from flatness.errors import FlatnessError
from flatness.hessian.checks import Output, check_options, require_module, with_autograd
from flatness.hessian.joint import joint_measurement
from flatness.hessian.operator import HessianOperator
from flatness.measures.operators import Layer
from flatness.measures.perturbation import resolve_mode


@dataclass(frozen=True)
class RelativeFlatness:
    """``kappa`` of layer ``layer`` with its standard error over ``probes`` samples."""

    value: float
    stderr: float
    layer: str
    probes: int
    converged: bool
    hvps: int
    passes: int


def default_layer(model: nn.Module) -> str:
    """The name of the last ``nn.Linear`` with a trainable weight (the penultimate-to-output
    layer of a classifier).

    Raises:
        FlatnessError: when the model has none.
    """
    found = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad
    ]
    if not found:
        raise FlatnessError(
            "relative flatness needs a linear layer with a trainable weight, and the model has "
            "none; pass layer= the name of one"
        )
    return found[-1]


@with_autograd
def relative_flatness(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    layer: str | None = None,
    rtol: float = 0.05,
    max_probes: int = 1024,
    seed: int = 0,
    bn_mode: str | None = None,
    output: Output = None,
) -> RelativeFlatness:
    """``kappa^phi_Tr`` of Petzka et al. 2021 for the ``nn.Linear`` named ``layer`` (default
    :func:`default_layer`), as the trace of ``S H_WW S`` (``S = G^{1/2}`` on each column of
    ``W``) by :func:`flatness.hessian.measure_all`'s estimator: a short block Lanczos run taken
    exactly, and deflated Rademacher probes until the standard error is at most ``rtol`` times
    the value or ``max_probes`` are spent.

    Each product is one with the whole Hessian, the direction zero outside the layer.

    Raises:
        FlatnessError: an unknown ``layer`` (the valid ones named), one that is not a trainable
            ``nn.Linear``, bad options, or input the Hessian functions refuse.
    """
    check_options(seed=seed)
    require_module(model)
    # every name a module is registered under, a layer shared by two names included
    modules = dict(model.named_modules(remove_duplicate=False))
    layer = default_layer(model) if layer is None else layer
    linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if layer not in modules or not isinstance(modules[layer], nn.Linear):
        raise FlatnessError(
            f"layer must name an nn.Linear of the model, got {layer!r}; the model's are: "
            + (", ".join(repr(n) for n in linear) or "none")
        )
    bn_mode = resolve_mode(model, bn_mode)
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, output=output)
    # the weight's own name among the variables: a weight tied to another layer's (an output
    # layer sharing the embedding's) is listed once, under its first name
    weight = modules[layer].weight
    name = next((n for n, p in model.named_parameters() if p is weight), None)
    if name not in op.names:
        raise FlatnessError(f"the weight of layer {layer!r} is frozen; it has no Hessian block")
    offsets = dict(zip(op.names, itertools.accumulate([s.numel() for s in op.shapes], initial=0)))
    w = op.params[name]
    layer_op = Layer(op, offsets[name], w)
    # only the trace is wanted: the Lanczos run's space, taken exactly, deflates the probes
    # however loosely its top eigenvalue has settled, so a loose tol spends fewer products
    m = joint_measurement(layer_op, k=1, tol=1e-2, rtol=rtol, max_probes=max_probes, seed=seed)
    return RelativeFlatness(
        value=m.trace.estimate,
        stderr=m.trace.stderr,
        layer=layer,
        probes=m.trace.probes,
        converged=m.converged,
        hvps=m.hvps,
        passes=m.passes,
    )
