"""Exact answers: dense Hessians of small models in float64, closed forms, measures, ranks.

Softmax regression's Hessian has a closed Kronecker form. With zero weights, two classes and
one example ``x = 0`` (so ``x~ = [0, 1]`` and ``p = (1/2, 1/2)``), only the bias block is
non-zero and it equals ``diag(p) - p p^T``:

>>> import torch
>>> model = torch.nn.Linear(1, 2)
>>> _ = torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
>>> h = softmax_regression_hessian(model, torch.zeros(1, 1))
>>> h[2:, 2:].tolist()
[[0.25, -0.25], [-0.25, 0.25]]
>>> h[:2].abs().sum().item()
0.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flatness.errors import FlatnessError, unknown
from flatness.hessian.checks import (
    Output,
    batches,
    check_functional,
    check_model,
    check_module,
    check_options,
    curvature_modes,
    functional_forward,
    probe_batch,
    require_loss,
    require_module,
    select_output,
    tensors,
    with_autograd,
)
from flatness.hessian.operator import CURVATURES
from flatness.hessian.softmax import SoftmaxSpectrum as SoftmaxSpectrum
from flatness.hessian.softmax import softmax_regression_hessian as softmax_regression_hessian
from flatness.hessian.softmax import softmax_regression_spectrum as softmax_regression_spectrum

#: torch's messages for two floating dtypes meeting in one operation
_DTYPE_CLASH = re.compile(r"dtype|Double|Float|Half|BFloat16")

#: Beyond this many parameters a dense Hessian is refused (P^2 float64 numbers).
MAX_EXACT_PARAMS = 12_000


@dataclass(frozen=True)
class Measures:
    """The flatness measures of one symmetric matrix."""

    lambda_max: float
    lambda_min: float
    trace: float
    frobenius: float

    @classmethod
    def of(cls, hessian: torch.Tensor) -> Measures:
        """Measures of a dense symmetric matrix (eigenvalues in float64)."""
        h = hessian.double()
        evals = torch.linalg.eigvalsh(h)
        return cls(
            lambda_max=evals[-1].item(),
            lambda_min=evals[0].item(),
            trace=torch.trace(h).item(),
            frobenius=torch.linalg.matrix_norm(h).item(),
        )


def weight_norm(model: nn.Module) -> float:
    """The L2 norm over all parameters (biases and the final layer included).

    Raises:
        FlatnessError: ``model`` is not a ``torch.nn.Module``.
    """
    require_module(model)
    with torch.no_grad():
        return torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters())).item()


@with_autograd
def exact_hessian(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data,
    *,
    curvature: str = "hessian",
    bn_mode: str = "eval",
    l2: float = 0.0,
    output: Output = None,
    max_params: int = MAX_EXACT_PARAMS,
) -> torch.Tensor:
    """The dense (P, P) Hessian (or GGN, or residual) of the mean data loss, in float64.

    The variables are the parameters with ``requires_grad`` (P numbers in all), in
    ``model.parameters()`` order, each flattened row-major; frozen parameters are constants.
    The model is not changed: its parameters (frozen ones too) and floating buffers are
    promoted to float64 and passed to ``torch.func.functional_call``, as are floating inputs.
    The Hessian is reverse-over-reverse; the Gauss-Newton part is ``J^T H_z J`` from the
    logits' Jacobian ``J``. Both are independent of the HVP code the estimators use.

    Args:
        model: any module.
        loss_fn: a mean-reduced loss returning a scalar (a sum is refused).
        data: an ``(inputs, targets)`` batch or a DataLoader (batches weighted by size).
        curvature: ``"hessian"``, ``"ggn"`` or ``"residual"`` (Hessian minus GGN).
        bn_mode: BatchNorm with running (``"eval"``) or batch (``"train"``) statistics.
        l2: add ``l2 * I`` (default 0: the data loss alone).
        output: which model output the loss is taken of (see :mod:`flatness.hessian.checks`).
        max_params: refuse larger models (the matrix has P^2 entries); a positive integer.

    Raises:
        FlatnessError: more than ``max_params`` variables, a ``max_params`` that is not a
            positive integer, or any input the checks refuse (a model that is not a module,
            a loss that is not callable among them).

    Works under ``torch.no_grad()`` and ``torch.inference_mode()`` as well (gradients are
    turned on inside).
    """
    if curvature not in CURVATURES:
        raise unknown("curvature", curvature, CURVATURES)
    check_options(l2=l2)
    if not isinstance(max_params, int) or isinstance(max_params, bool) or max_params < 1:
        raise FlatnessError(
            f"max_params must be a positive integer (the most variables whose dense Hessian "
            f"may be formed; default {MAX_EXACT_PARAMS:,}), got {max_params!r}"
        )
    check_module(model)
    require_loss(loss_fn)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if count > max_params:
        gib = count**2 * 8 / 2**30
        raise FlatnessError(
            f"the model has {count:,} parameters: a dense Hessian needs {gib:.1f} GiB "
            f"(limit max_params={max_params:,}); estimate its spectrum with top_eigenvalues, "
            "trace, frobenius_norm or spectral_density instead, or raise max_params"
        )
    named, _ = check_model(model, loss_fn, data, bn_mode=bn_mode, output=output)
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    device = named[0][1].device
    flat0 = torch.cat([p.detach().double().reshape(-1) for _, p in named])
    # every tensor the forward pass reads, promoted: frozen parameters and buffers too
    constants = {
        n: (t.detach().double() if t.is_floating_point() else t)
        for n, t in [*model.named_parameters(), *model.named_buffers()]
        if n not in set(names)
    }

    def unflatten(flat):
        pieces = torch.split(flat, [s.numel() for s in shapes])
        return {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes)} | constants

    total = torch.zeros(count, count, dtype=torch.float64, device=device)
    examples = 0
    with curvature_modes(model, bn_mode):
        x, y = probe_batch(*next(batches(data, device))[:2])
        check_functional(model, loss_fn, x, y, named, output, f"the exact {curvature}")
        for x, y, n in batches(data, device):
            x = tensors(lambda t: t.double() if t.is_floating_point() else t, x)
            y = y.double() if y.is_floating_point() else y

            def call(flat, x=x):
                outputs = functional_forward(model, unflatten(flat), (x,))
                return select_output(outputs, output)

            try:
                part = _batch_curvature(call, lambda z, y=y: loss_fn(z, y), flat0, curvature)
            except RuntimeError as err:
                if not _DTYPE_CLASH.search(str(err)):
                    raise
                raise FlatnessError(
                    "the model's forward pass fixes its own dtype (a .float() or a float32 "
                    "constant inside it), so it cannot run in float64, where exact_hessian "
                    f"computes ({str(err).splitlines()[0]}); let the forward follow its "
                    "input's dtype (x.to(self.weight.dtype)), or use the estimators, which "
                    "run at the model's own precision"
                ) from None
            total += n * part
            examples += n
    total /= examples
    asymmetry = (total - total.T).abs().max().item()
    if asymmetry > 1e-8 * max(total.abs().max().item(), 1e-300):
        raise FlatnessError(
            f"the {curvature} came out asymmetric (largest |H - H^T| {asymmetry:.3g}, largest "
            f"|H| {total.abs().max().item():.3g}): torch's second derivative of some operation "
            "in this model is wrong, so no Hessian of it can be trusted"
        )
    return total + l2 * torch.eye(count, dtype=total.dtype, device=device) if l2 else total


def _batch_curvature(
    logits_of: Callable, loss_of_logits: Callable, flat0: torch.Tensor, curvature: str
):
    """The dense curvature of one batch's mean loss at ``flat0``."""

    def loss_of(flat):
        return loss_of_logits(logits_of(flat))

    loss = loss_of(flat0).detach()
    if loss.dim() != 0:
        raise FlatnessError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    if not torch.isfinite(loss):
        raise FlatnessError(f"the loss is {loss.item()} (not finite) at these parameters")
    if curvature == "hessian":
        # reverse-over-reverse, independent of the estimators' forward-over-reverse HVPs. Not
        # torch.func.hessian or jacrev(jacrev): on torch 2.14 both give a wrong, asymmetric
        # matrix for BatchNorm with batch statistics (tests/test_estimators.py catches it).
        return torch.func.jacrev(torch.func.grad(loss_of))(flat0).detach()
    z = logits_of(flat0).detach()
    if curvature == "residual":
        # its own derivative, not Hessian minus GGN: the Hessian of <dL/dz, z(w)> with dL/dz
        # held at its value, sum_k dL/dz_k d2 z_k; so GGN + residual = Hessian is a real check
        dz = torch.func.grad(loss_of_logits)(z).detach()
        linear = lambda flat: (dz * logits_of(flat)).sum()  # noqa: E731
        return torch.func.jacrev(torch.func.grad(linear))(flat0).detach()
    jac = torch.func.jacrev(logits_of)(flat0).detach().reshape(-1, len(flat0))  # (M, P)
    grad_z = torch.func.grad(lambda zf: loss_of_logits(zf.reshape(z.shape)))
    # reverse-over-reverse (H_z is symmetric): several losses (MSE, Huber) lack forward AD
    pull = torch.func.vjp(grad_z, z.reshape(-1))[1]
    hz_jac = torch.func.vmap(lambda col: pull(col)[0])(jac.T)
    return hz_jac @ jac  # (H_z J)^T J = J^T H_z J, H_z symmetric


@dataclass(frozen=True)
class Rank:
    """Numerical ranks of a symmetric matrix at several relative tolerances."""

    #: relative tolerance -> number of eigenvalues with ``|lambda| > tol * max |lambda|``
    ranks: dict[float, int]
    size: int
    eigenvalues: torch.Tensor


def hessian_rank(hessian: torch.Tensor, rtols=(1e-4, 1e-6, 1e-8, 1e-10)) -> Rank:
    """The rank of a dense (exact) Hessian at each relative tolerance.

    ``rtols`` is one tolerance or a sequence of them, each in (0, 1). The matrix (a tensor or a
    numpy array) must be
    square, non-empty, finite and symmetric up to rounding: ``|H - H^T|`` at most 1e-8 of its
    largest entry (as :func:`exact_hessian` checks its own), or ``1000 eps`` of a lower
    precision's (1.2e-4 in float32); ``torch.linalg.eigvalsh`` would silently read only the
    lower triangle of anything else.

    >>> hessian_rank(torch.diag(torch.tensor([2.0, 1.0, 1e-7, 0.0], dtype=torch.float64))).ranks
    {0.0001: 2, 1e-06: 2, 1e-08: 3, 1e-10: 3}
    >>> hessian_rank(torch.eye(3), rtols=1e-3).ranks
    {0.001: 3}

    Raises:
        FlatnessError: a matrix that is not a non-empty, square, finite, symmetric tensor, or
            a tolerance that is not a number in (0, 1).
    """
    if isinstance(hessian, np.ndarray):  # a dense Hessian often arrives from numpy or scipy
        hessian = torch.from_numpy(hessian)
    if not torch.is_tensor(hessian) or hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        shape = tuple(hessian.shape) if torch.is_tensor(hessian) else type(hessian).__name__
        raise FlatnessError(
            f"hessian_rank takes a square matrix (a torch.Tensor or numpy array), got {shape}"
        )
    if hessian.numel() == 0:
        raise FlatnessError("hessian_rank takes a non-empty matrix, got one of shape (0, 0)")
    if not bool(torch.isfinite(hessian).all()):
        raise FlatnessError("hessian_rank takes a finite matrix; this one has NaN or inf entries")
    tolerances = _rtols(rtols)
    h = hessian.double()
    asymmetry = (h - h.T).abs().max().item()
    size = h.abs().max().item()
    precision = torch.finfo(hessian.dtype).eps if hessian.is_floating_point() else 0.0
    if asymmetry > max(1e-8, 1e3 * precision) * size:
        raise FlatnessError(
            f"hessian_rank takes a symmetric matrix; this one has |H - H^T| up to "
            f"{asymmetry:.3g} against entries up to {size:.3g}, more than rounding: a Hessian "
            "is symmetric, so check how the matrix was formed (or pass (h + h.T) / 2)"
        )
    evals = torch.linalg.eigvalsh(h)
    scale = evals.abs().max().item()
    ranks = {t: int((evals.abs() > t * scale).sum()) for t in tolerances}
    return Rank(ranks=ranks, size=hessian.shape[0], eigenvalues=evals)


def _rtols(rtols) -> list[float]:
    """The tolerances as floats, one given alone included; each must be in (0, 1)."""
    items = [rtols] if isinstance(rtols, (int, float)) else rtols
    try:
        items = list(items)
    except TypeError:
        items = None
    bad = (
        items is None
        or not items
        or any(
            isinstance(t, bool)
            or not isinstance(t, (int, float))
            or not (math.isfinite(t) and 0 < t < 1)
            for t in items
        )
    )
    if bad:
        raise FlatnessError(
            f"rtols must be a relative tolerance in (0, 1) or a sequence of them, e.g. "
            f"(1e-4, 1e-8), got {rtols!r}"
        )
    return [float(t) for t in items]
