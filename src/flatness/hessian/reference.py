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

from flatness.hessian.operator import _is_batch, check_data


@contextlib.contextmanager
def pyhessian_engine(model: nn.Module, loss_fn: Callable, data, *, seed: int = 0):
    """A ``pyhessian.hessian`` on a batch or a DataLoader, cleaned up on exit."""
    from pyhessian import hessian as PyHessian

    check_data(data)
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    saved = [(m, m.training) for m in model.modules()]
    model.zero_grad(set_to_none=True)
    try:
        with torch.random.fork_rng(devices=[device] if cuda else []), warnings.catch_warnings():
            # its backward(create_graph=True) warns of a reference cycle, which we break below
            warnings.filterwarnings("ignore", message=".*create_graph=True.*")
            torch.manual_seed(seed)
            if _is_batch(data):
                inputs, targets = data
                engine = PyHessian(
                    model, loss_fn, data=(inputs.to(device), targets.to(device)), cuda=cuda
                )
            else:
                engine = PyHessian(model, loss_fn, dataloader=data, cuda=cuda)
            yield engine
    finally:
        model.zero_grad(set_to_none=True)  # drops the create_graph gradients, freeing the graph
        for m, training in saved:
            m.training = training


def pyhessian_hvp(model: nn.Module, loss_fn: Callable, data, vector: torch.Tensor) -> torch.Tensor:
    """PyHessian's Hessian-vector product for one flat vector (parameters in model order)."""
    from pyhessian.utils import hessian_vector_product

    with pyhessian_engine(model, loss_fn, data) as engine:
        pieces = torch.split(vector.to(engine.params[0]), [p.numel() for p in engine.params])
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
) -> PyHessianEstimate:
    """PyHessian's power-iteration top eigenvalue and Hutchinson trace, run as it ships."""
    start = time.perf_counter()
    with pyhessian_engine(model, loss_fn, data, seed=seed) as engine:
        eigenvalues, _ = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
        samples = engine.trace(maxIter=max_iter, tol=tol)
    return PyHessianEstimate(
        top_eigenvalue=float(eigenvalues[0]),
        trace=float(sum(samples) / len(samples)),
        trace_probes=len(samples),
        seconds=time.perf_counter() - start,
    )
