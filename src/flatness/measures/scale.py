"""Hessian measures made aware of the weight scale: ``lambda_max ||w||^2`` and ``Tr H ||w||^2``,
and the Fisher-Rao norm.

Under cross-entropy, multiplying a ReLU network's last layer by ``a`` makes the raw Hessian
measures shrink while the weights grow (the paper's point); a product with ``||w||^2`` is
the simplest correction, which the ICLR 2021 version of the paper hints at ("in conjunction
with the weight scale"). ``||w||^2`` is over the variables (parameters with ``requires_grad``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.hessian.checks import (
    Output,
    batches,
    check_functional,
    check_mean_loss,
    check_model,
    curvature_modes,
    examples_interact,
    functional_forward,
    probe_batch,
    select_output,
    with_autograd,
)
from flatness.hessian.joint import joint_measurement
from flatness.hessian.operator import HessianOperator
from flatness.measures.perturbation import resolve_mode


@dataclass(frozen=True)
class ScaledSharpness:
    """``lambda_max``, ``Tr H`` (with its standard error) and ``||w||^2``, and their products."""

    lambda_max: float
    trace: float
    trace_stderr: float
    weight_norm_squared: float
    converged: bool
    hvps: int
    passes: int

    @property
    def scaled_lambda_max(self) -> float:
        """``lambda_max ||w||^2``."""
        return self.lambda_max * self.weight_norm_squared

    @property
    def scaled_trace(self) -> float:
        """``Tr H ||w||^2``."""
        return self.trace * self.weight_norm_squared

    @property
    def scaled_trace_stderr(self) -> float:
        return self.trace_stderr * self.weight_norm_squared


@with_autograd
def scaled_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    tol: float = 1e-3,
    rtol: float = 0.05,
    seed: int = 0,
    bn_mode: str | None = None,
    output: Output = None,
) -> ScaledSharpness:
    """``lambda_max ||w||^2`` and ``Tr H ||w||^2`` (:class:`ScaledSharpness`), the Hessian's
    from one stream of products (:func:`flatness.hessian.measure_all`, ``tol`` and ``rtol`` as
    there).

    Raises:
        FlatnessError: bad options or input the Hessian functions refuse.
    """
    bn_mode = resolve_mode(model, bn_mode)
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, output=output)
    m = joint_measurement(op, k=1, tol=tol, rtol=rtol, seed=seed)
    w2 = float(sum(p.double().pow(2).sum() for p in op.params.values()))
    return ScaledSharpness(
        lambda_max=m.lambda_max,
        trace=m.trace.estimate,
        trace_stderr=m.trace.stderr,
        weight_norm_squared=w2,
        converged=m.converged,
        hvps=m.hvps,
        passes=m.passes,
    )


@dataclass(frozen=True)
class FisherRao:
    """The empirical Fisher-Rao norm ``mean_i <w, grad_w l_i>^2`` over the examples
    (Liang et al. 2019, Definition 2, with the data's labels), and the examples and passes."""

    value: float
    examples: int
    forward_passes: int


@with_autograd
def fisher_rao_norm(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    bn_mode: str | None = None,
    output: Output = None,
) -> FisherRao:
    """The squared Fisher-Rao norm ``mean_i <w, grad_w l_i(w)>^2`` of Liang et al. 2019, over
    every example of ``data``; ``l_i`` is example i's loss and ``w`` the variables.

    ``<w, grad_w l_i>`` is the derivative of ``l_i`` along ``w`` itself, so one forward-mode
    pass per batch gives it for every example: ``n <dL/dz_i, J_i w>`` for a mean loss ``L`` of
    the outputs ``z``. For a bias-free ReLU network of ``L`` layers it equals
    ``(L + 1) <dl_i/dz_i, z_i>`` (Liang et al., Lemma 2.1), which the tests check. Examples
    must not interact (no BatchNorm with batch statistics).

    Raises:
        FlatnessError: input the Hessian functions refuse, or examples that interact.
    """
    bn_mode = resolve_mode(model, bn_mode)
    named, _ = check_model(model, loss_fn, data, bn_mode=bn_mode, output=output)
    params = {n: p.detach() for n, p in named}
    buffers = dict(model.named_buffers())
    device = next(iter(params.values())).device
    total, examples, passes = 0.0, 0, 0

    def moved(xb):
        """The outputs, and their derivative along the weights themselves (forward mode)."""

        def forward(ps):
            return select_output(functional_forward(model, (ps, buffers), (xb,)), output)

        return torch.func.jvp(forward, (params,), (params,))

    with curvature_modes(model, bn_mode):
        x, y = probe_batch(*next(batches(data, device))[:2])
        check_functional(model, loss_fn, x, y, named, output, "the Fisher-Rao norm")
        check_mean_loss(
            loss_fn, select_output(model(x), output), y, per_example="the Fisher-Rao norm"
        )
        if examples_interact(model, x, output):
            raise FlatnessError(
                "the model's outputs for one example depend on other examples (BatchNorm with "
                "batch statistics, or the like), so per-example gradients and the Fisher-Rao "
                "norm are not defined; measure with running statistics (bn_mode='eval', and "
                "track_running_stats=True for every BatchNorm layer)"
            )
        try:
            moved(x)
        except (NotImplementedError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FlatnessError(
                "the model cannot be differentiated in forward mode, which the Fisher-Rao norm "
                f"uses ({reason}); a custom torch.autograd.Function needs a jvp method for it"
            ) from None
        for xb, yb, n in batches(data, device):
            z, z_dot = moved(xb)
            z = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(z, yb), z)
            along = n * (g * z_dot).reshape(n, -1).sum(1).double()
            total += float(along.pow(2).sum())
            examples += n
            passes += 1
    return FisherRao(value=total / examples, examples=examples, forward_passes=passes)
