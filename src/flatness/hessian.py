"""Hessians of the data loss (the L2 term is never included) and the flatness measures.

First cut: the exact dense Hessian of small models in float64, the closed form for softmax
regression, and PyHessian's (``pyhessian==0.1``) estimates with its device handling and its
habit of leaving the model in eval mode fixed around it.

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

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flatness.errors import FlatnessError

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
    """The L2 norm over all parameters (biases and the final layer included)."""
    with torch.no_grad():
        return torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters())).item()


def _check_batch(data) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise FlatnessError("data must be an (inputs, targets) pair of tensors")
    inputs, targets = data
    if len(inputs) == 0:
        raise FlatnessError("data is empty: the Hessian of a loss over no examples is undefined")
    return inputs, targets


def exact_hessian(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data,
    *,
    max_params: int = MAX_EXACT_PARAMS,
) -> torch.Tensor:
    """The dense Hessian of ``loss_fn(model(inputs), targets)`` in float64.

    Parameters are ordered as ``model.parameters()``, each flattened row-major. The model
    itself is not changed: a float64 copy of its parameters is differentiated.

    Args:
        model: any module; it is called with its current train/eval mode.
        loss_fn: a mean-reduced loss returning a scalar.
        data: an ``(inputs, targets)`` batch, taken as the whole data set.
        max_params: refuse larger models (the matrix has P^2 entries).
    """
    inputs, targets = _check_batch(data)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    if count > max_params:
        gib = count**2 * 8 / 2**30
        raise FlatnessError(
            f"the model has {count:,} parameters: a dense Hessian needs {gib:.1f} GiB "
            f"(limit max_params={max_params:,}); estimate its spectrum with Lanczos or "
            "Hutchinson instead (top eigenvalues, trace) or raise max_params"
        )
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().double().reshape(-1) for p in params])
    buffers = {n: b.double() if b.is_floating_point() else b for n, b in model.named_buffers()}
    x = inputs.double() if inputs.is_floating_point() else inputs

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(flat, [s.numel() for s in shapes])
        tensors = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes)}
        out = torch.func.functional_call(model, (tensors, buffers), (x,))
        loss = loss_fn(out, targets)
        if loss.dim() != 0:
            raise FlatnessError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        return loss

    with torch.no_grad():
        if not torch.isfinite(loss_of(flat0)):
            raise FlatnessError("the loss is not finite (NaN or inf) at these parameters")
    return torch.func.hessian(loss_of)(flat0).detach()


def softmax_regression_hessian(
    model: nn.Linear, inputs: torch.Tensor, *, max_chunk_elements: int = 2**24
) -> torch.Tensor:
    """The closed-form Hessian of mean cross-entropy for softmax regression, in float64.

    ``H = (1/N) sum_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T`` with ``x~ = [x; 1]``, returned in
    the order of ``model.parameters()`` (the weight row-major, then the bias). It does not
    depend on the labels. Samples are summed in chunks of at most ``max_chunk_elements``
    outer-product entries, so that MNIST-sized data fits in memory.
    """
    weight, bias = model.weight.detach().double(), model.bias.detach().double()
    k, d = weight.shape
    total = torch.zeros(k * k, (d + 1) ** 2, dtype=torch.float64, device=weight.device)
    n = len(inputs)
    chunk = max(1, max_chunk_elements // (d + 1) ** 2)
    for start in range(0, n, chunk):
        x = inputs[start : start + chunk].double().to(weight.device)
        p = torch.softmax(x @ weight.T + bias, dim=1)
        curvature = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (n, K, K)
        xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        outer = (xt[:, :, None] * xt[:, None, :]).reshape(len(x), -1)  # (n, (d+1)^2)
        total += curvature.reshape(len(x), k * k).T @ outer
    # (k, l, a, b) -> rows (k, a), columns (l, b)
    h = (total / n).reshape(k, k, d + 1, d + 1).permute(0, 2, 1, 3).reshape(k * (d + 1), -1)
    index = torch.arange(k * (d + 1), device=h.device).reshape(k, d + 1)
    order = torch.cat([index[:, :d].reshape(-1), index[:, d]])  # weight entries, then biases
    return h[order][:, order]


@dataclass(frozen=True)
class PyHessianEstimate:
    """PyHessian 0.1's power-iteration top eigenvalue and Hutchinson trace, as it returns them."""

    top_eigenvalue: float
    trace: float
    #: how many Hutchinson probes PyHessian used before its stopping rule fired
    trace_probes: int
    seconds: float


def pyhessian_estimate(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> PyHessianEstimate:
    """Run ``pyhessian.hessian`` on one batch, as its authors intended, with its defects contained.

    ``cuda`` follows the model's device, the global random state is left untouched, the
    retained gradient graph is freed and the model's train/eval mode is restored.
    """
    from pyhessian import hessian as PyHessian

    inputs, targets = _check_batch(data)
    device = next(model.parameters()).device
    was_training = model.training
    cuda = device.type == "cuda"
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    try:
        with torch.random.fork_rng(devices=[device] if cuda else []), warnings.catch_warnings():
            # its backward(create_graph=True) warns of a reference cycle, which we break below
            warnings.filterwarnings("ignore", message=".*create_graph=True.*")
            torch.manual_seed(seed)
            engine = PyHessian(
                model, loss_fn, data=(inputs.to(device), targets.to(device)), cuda=cuda
            )
            eigenvalues, _ = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
            samples = engine.trace(maxIter=max_iter, tol=tol)
    finally:
        # PyHessian keeps the create_graph gradients in .grad: drop them to free the graph
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return PyHessianEstimate(
        top_eigenvalue=float(eigenvalues[0]),
        trace=float(sum(samples) / len(samples)),
        trace_probes=len(samples),
        seconds=time.perf_counter() - start,
    )
