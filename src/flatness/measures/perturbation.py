"""The perturbation set of the sharpness measures, and the loss at perturbed weights.

Which parameters are perturbed: every variable of the Hessian functions, the parameters with
``requires_grad`` (weights, biases and BatchNorm's scale and shift alike), so that a
second-order form is exactly a function of the Hessian that :mod:`flatness.hessian` measures.
Freeze a parameter (``requires_grad=False``) to leave it out. Biases are kept because the
invariance that makes adaptive sharpness worth having, to Dinh et al.'s rescaling of one
layer's weights *and biases* by ``a`` and the next layer's weights by ``1/a``, needs each bias's
perturbation to scale with it, which the elementwise ``|w|`` gives; a bias left out would
break it. BatchNorm's parameters are kept for the same reason and because the layer before a
BatchNorm is scale-invariant, so its weights' perturbation alone says little.

Adaptive perturbations are ``delta = |w| * u`` elementwise (Kwon et al. 2021's ``T_w = |w|``,
without their ``eta``, as Andriushchenko et al. 2023 measure): a parameter that is exactly 0 is
not moved. The loss is the model's mean data loss over ``data`` (the whole of a batch or of
a loader's pass), of raw logits (not normalised), with BatchNorm in ``bn_mode``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.hessian.checks import (
    Output,
    batches,
    check_functional,
    check_model,
    curvature_modes,
    functional_forward,
    probe_batch,
    select_output,
    warn_if_batchnorm_trains,
)


def resolve_mode(model: nn.Module, bn_mode: str | None) -> str:
    """``bn_mode`` as given; left unset, ``"eval"`` with the Hessian functions'
    :class:`~flatness.hessian.ModeWarning` where a BatchNorm layer is in training mode."""
    if bn_mode is None:
        # frames: the warning's function, this, the public function, its wrapper, the caller
        warn_if_batchnorm_trains(model, stacklevel=4)
        return "eval"
    return bn_mode


class PerturbedLoss:
    """``L(w + delta)`` and its gradient in ``delta`` for flat vectors ``delta`` of the
    variables; built once, it runs the checks of :mod:`flatness.hessian` (the same refusals).

    Attributes:
        weights: the variables ``w`` as one flat float vector (detached).
        base: ``L(w)``.
        examples: the examples in one pass over the data.
        forward_passes: passes over the data made so far (each loss or gradient is one).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data,
        *,
        bn_mode: str = "eval",
        output: Output = None,
    ):
        named, _ = check_model(model, loss_fn, data, bn_mode=bn_mode, output=output)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.bn_mode, self.output = bn_mode, output
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.params = {n: p.detach() for n, p in named}
        self.weights = torch.cat([p.reshape(-1) for p in self.params.values()])
        self.device, self.dtype = self.weights.device, self.weights.dtype
        self.size = self.weights.numel()
        self.buffers = dict(model.named_buffers())
        with curvature_modes(model, bn_mode):
            x, y = probe_batch(*next(batches(data, self.device))[:2])
            check_functional(model, loss_fn, x, y, named, output, "a perturbed loss")
        self.forward_passes = 0
        #: the examples in one pass over ``data``, counted by the first
        self.examples = 0
        self.base = self.loss(torch.zeros_like(self.weights))

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(flat, [s.numel() for s in self.shapes])
        return {n: t.reshape(s) for n, t, s in zip(self.names, pieces, self.shapes)}

    def _mean(self, delta: torch.Tensor, *, grad: bool) -> tuple[float, torch.Tensor | None]:
        if delta.shape != self.weights.shape:
            raise FlatnessError(
                f"a perturbation must be a flat vector of {self.size} numbers, got "
                f"{tuple(delta.shape)}"
            )
        delta = delta.to(self.device, self.dtype).detach().requires_grad_(grad)
        total, examples = 0.0, 0
        gradient = torch.zeros_like(self.weights) if grad else None
        with curvature_modes(self.model, self.bn_mode), torch.set_grad_enabled(grad):
            moved = self._unflatten(self.weights + delta)
            for x, y, n in batches(self.data, self.device):
                out = functional_forward(self.model, (moved, self.buffers), (x,))
                loss = self.loss_fn(select_output(out, self.output), y)
                if grad:
                    (g,) = torch.autograd.grad(loss, delta, retain_graph=True)
                    gradient += n * g
                total += n * float(loss.detach())
                examples += n
        self.forward_passes += 1
        self.examples = examples
        if grad:
            gradient /= examples
        value = total / examples
        if not math.isfinite(value):
            raise FlatnessError(
                "the loss at the perturbed weights is not finite (NaN or inf); use a smaller rho"
            )
        return value, gradient

    def accuracy(self, delta: torch.Tensor) -> float:
        """The fraction of examples whose largest output at ``w + delta`` is their label.

        Raises:
            FlatnessError: targets that are not class labels for the outputs' rows.
        """
        delta = delta.to(self.device, self.dtype)
        correct, examples = 0, 0
        with curvature_modes(self.model, self.bn_mode), torch.no_grad():
            moved = self._unflatten(self.weights + delta)
            for x, y, n in batches(self.data, self.device):
                out = select_output(
                    functional_forward(self.model, (moved, self.buffers), (x,)), self.output
                )
                if y.is_floating_point() or out.dim() != 2 or y.shape != out.shape[:1]:
                    raise FlatnessError(
                        "an accuracy needs class scores of shape (examples, classes) and integer "
                        f"labels of shape (examples,); got outputs {tuple(out.shape)} and targets "
                        f"{tuple(y.shape)} {y.dtype}"
                    )
                correct += int((out.argmax(1) == y).sum())
                examples += n
        self.forward_passes += 1
        return correct / examples

    def loss(self, delta: torch.Tensor) -> float:
        """The mean data loss at ``w + delta``."""
        return self._mean(delta, grad=False)[0]

    def loss_and_gradient(self, delta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The mean data loss at ``w + delta`` and its gradient."""
        return self._mean(delta, grad=True)
