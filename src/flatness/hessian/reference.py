"""PyHessian 0.1 (``pyhessian==0.1`` on PyPI), the reference the book compares against.

Used as its authors intended, with its defects contained: ``cuda`` follows the model's device,
the global random state is left alone, the gradient graph it keeps in ``.grad`` is freed, and
the model's train/eval mode is restored (PyHessian calls ``model.eval()`` and leaves it so).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.hessian.checks import (
    Output,
    at_model_precision,
    check_model,
    check_options,
    dense_embeddings,
    is_batch,
    left_alone,
    select_output,
    usable,
)


@contextlib.contextmanager
def pyhessian_engine(
    model: nn.Module, loss_fn: Callable, data, *, seed: int = 0, output: Output = None
):
    """A ``pyhessian.hessian`` on a batch or a DataLoader, cleaned up on exit.

    The same checks as flatness's own functions run first (PyHessian's own failures are bare
    assertions); PyHessian's convention is BatchNorm in eval mode, and its variables are the
    parameters with ``requires_grad``, as flatness's are.

    Gradients are on inside the block (under ``torch.no_grad()`` or
    ``torch.inference_mode()`` too): PyHessian differentiates. The caller's autocast is off
    inside it, so that PyHessian runs at the model's own precision, as flatness does.

    Raises:
        FlatnessError: for any input :func:`flatness.hessian.checks.check_model` refuses.
    """
    with torch.inference_mode(False), torch.enable_grad(), at_model_precision():
        with left_alone(model), _engine(model, loss_fn, data, seed=seed, output=output) as engine:
            yield engine


@contextlib.contextmanager
def _engine(model, loss_fn, data, *, seed, output):
    from pyhessian import hessian as PyHessian

    check_options(seed=seed)
    check_model(model, loss_fn, data, bn_mode="eval", output=output)

    def criterion(outputs, targets):
        return loss_fn(select_output(outputs, output), targets)

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    saved = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]  # the user's, put back after
    model.zero_grad(set_to_none=True)
    try:
        with (
            torch.random.fork_rng(devices=[device] if cuda else []),
            warnings.catch_warnings(),
            dense_embeddings(model),
        ):
            # its backward(create_graph=True) warns of a reference cycle, which we break below
            warnings.filterwarnings("ignore", message=".*create_graph=True.*")
            torch.manual_seed(seed)
            if is_batch(data):
                inputs, targets = data
                pair = (usable(inputs.to(device)), usable(targets.to(device)))
                engine = PyHessian(model, criterion, data=pair, cuda=cuda)
            else:
                engine = PyHessian(model, criterion, dataloader=data, cuda=cuda)
            yield engine
    finally:
        model.zero_grad(set_to_none=True)  # drops the create_graph gradients, freeing the graph
        for p, g in grads:
            p.grad = g
        for m, training in saved:
            m.train(training)


def pyhessian_hvp(
    model: nn.Module, loss_fn: Callable, data, vector: torch.Tensor, *, output: Output = None
) -> torch.Tensor:
    """PyHessian's Hessian-vector product for one flat (P,) vector (trainable parameters in
    model order); returns (P,). Raises FlatnessError where flatness's own checks do."""
    from pyhessian.utils import hessian_vector_product

    with pyhessian_engine(model, loss_fn, data, output=output) as engine:
        size = sum(p.numel() for p in engine.params)
        if not torch.is_tensor(vector) or vector.shape != (size,):
            shape = tuple(vector.shape) if torch.is_tensor(vector) else type(vector).__name__
            raise FlatnessError(f"vector must have shape ({size},), got {shape}")
        pieces = torch.split(
            usable(vector.to(engine.params[0])), [p.numel() for p in engine.params]
        )
        v = [t.reshape(p.shape) for t, p in zip(pieces, engine.params)]
        if engine.full_dataset:
            _, hv = engine.dataloader_hv_product(v)
        else:
            hv = hessian_vector_product(engine.gradsH, engine.params, v)
        return torch.cat([h.detach().reshape(-1) for h in hv])


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
    output: Output = None,
) -> PyHessianEstimate:
    """PyHessian's power-iteration top eigenvalue and Hutchinson trace, run as it ships.

    Raises FlatnessError where flatness's own checks do (before PyHessian runs).
    """
    if not isinstance(max_iter, int) or max_iter < 1:
        raise FlatnessError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not isinstance(tol, (int, float)) or not tol >= 0:
        raise FlatnessError(f"tol must be a non-negative number, got {tol!r}")
    start = time.perf_counter()
    with pyhessian_engine(model, loss_fn, data, seed=seed, output=output) as engine:
        eigenvalues, _ = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
        samples = engine.trace(maxIter=max_iter, tol=tol)
    return PyHessianEstimate(
        top_eigenvalue=float(eigenvalues[0]),
        trace=float(sum(samples) / len(samples)),
        trace_probes=len(samples),
        seconds=time.perf_counter() - start,
    )
