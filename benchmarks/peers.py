"""The four tools behind one interface: top-k eigenvalue solvers and trace/Frobenius estimators.

Every ``run`` builds the tool's operator itself (graph building and data passes are part of
the time, as they are for a user) and returns what the tool returns plus the HVPs it spent.
The peers are pinned in ``requirements.txt`` (the estimators chapter compares them too, in
``flatness.chapters.estimators.peers``, the only module of the package that imports them); this
module is the benchmark's own wrapper, and nothing in ``src/`` imports it. The model is in eval
mode for every tool (PyHessian sets it itself; the others use the module as given).

Quirks handled here:
- hessian-eigenthings averages a loader's batches with equal weights; the digits loader's
  last batch is smaller, so its loss is reweighted by ``batch size x batches / N`` to give
  the same operator as the others. It rebuilds the gradient graph at every product, even for
  one batch.
- curvlinops wants an ``nn.Module`` loss with ``.reduction`` and an iterable of batches (a
  one-batch list works); its constructor by default makes two extra data passes and two
  products to check determinism and one pass to count the data: turned off here
  (``check_deterministic=False, num_data=N``), which only favours it. Its estimators return
  a bare number (no standard error; the per-probe values of its Hutchinson are read off the
  one ``A @ G`` product it makes) and multiply all probe vectors in one vmapped pass.
- PyHessian computes in float32 whatever the model's dtype, and calls ``model.eval()``.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from problems import Problem, ce
from torch import nn

from flatness import hessian as H
from flatness.hessian.reference import pyhessian_engine

#: PyHessian's and eigenthings' power iteration: iterations per eigenvalue at most
POWER_MAX_ITER = 400
TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
STEPS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 21, 24, 28, 32, 37, 43, 50, 60, 70, 85, 100, 120)


def flatness_has_rtol() -> bool:
    return "rtol" in inspect.signature(H.trace).parameters


@dataclass
class EigenMethod:
    tool: str
    method: str
    knob: str
    grid: tuple
    #: (problem, mode, k, knob value) -> (descending values, hvps, hit its iteration cap)
    run: Callable = field(repr=False)


@dataclass
class TraceMethod:
    tool: str
    method: str
    quantity: str  # "trace" or "frobenius"
    #: adaptive: stops at rtol itself; reported: the tool's own stderr over a budget search;
    #: samples: per-probe spread -> probes needed x per-probe time; actual: RMS error over seeds
    kind: str
    #: (problem, mode, budget, seed) -> dict(estimate, stderr?, samples?, hvps?, ...)
    run: Callable = field(repr=False)
    #: allowed budgets (kind "actual"/"reported"): a budget must be a multiple of this
    multiple: int = 1


# -- flatness ----------------------------------------------------------------------------------
def _flatness_top(p: Problem, mode: str, k: int, tol: float, block: int | None = None):
    r = H.top_eigenvalues(p.model, ce, p.data(mode), k=k, tol=tol, block=block)
    return r.eigenvalues.numpy(), r.hvps, not r.converged


def _flatness_top_block_k(p: Problem, mode: str, k: int, tol: float):
    """A block of k throughout: the detail block's comparison for the default's block of 2."""
    return _flatness_top(p, mode, k, tol, block=k)


def _flatness_estimate(quantity: str, adaptive: bool):
    fn = H.trace if quantity == "trace" else H.frobenius_norm

    def run(p: Problem, mode: str, budget, seed: int):
        if adaptive:
            e = fn(p.model, ce, p.data(mode), rtol=0.01, seed=seed)
        else:
            e = fn(p.model, ce, p.data(mode), probes=budget, seed=seed)
        return {
            "estimate": e.estimate,
            "stderr": e.stderr,
            "hvps": e.hvps,
            "converged": getattr(e, "converged", None),
            "method": e.method,
        }

    return run


# -- PyHessian ---------------------------------------------------------------------------------
class PyHessianCounter:
    """Counts PyHessian's HVPs by wrapping the two functions it computes them with."""

    def __init__(self):
        import pyhessian  # noqa: F401  (its package name shadows the module with the class)

        self._ph = ph = sys.modules["pyhessian.hessian"]
        self.count = 0
        self._orig = (ph.hessian_vector_product, ph.hessian.dataloader_hv_product)

        def hvp(*args, **kwargs):
            self.count += 1
            return self._orig[0](*args, **kwargs)

        def loader_hvp(engine, v):
            self.count += 1
            return self._orig[1](engine, v)

        ph.hessian_vector_product = hvp
        ph.hessian.dataloader_hv_product = loader_hvp

    def close(self):
        self._ph.hessian_vector_product, self._ph.hessian.dataloader_hv_product = self._orig


_COUNTER: PyHessianCounter | None = None


def _ph_counter() -> PyHessianCounter:
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = PyHessianCounter()
    return _COUNTER


def _pyhessian_top(p: Problem, mode: str, k: int, tol: float):
    counter = _ph_counter()
    counter.count = 0
    with pyhessian_engine(p.model, ce, p.data(mode)) as engine:
        values, _ = engine.eigenvalues(maxIter=POWER_MAX_ITER, tol=tol, top_n=k)
    return np.sort(values)[::-1], counter.count, counter.count >= POWER_MAX_ITER * k


def _pyhessian_hutchinson(p: Problem, mode: str, budget: int, seed: int):
    counter = _ph_counter()
    counter.count = 0
    with pyhessian_engine(p.model, ce, p.data(mode), seed=seed) as engine:
        samples = engine.trace(maxIter=budget, tol=0.0)  # tol=0: its stopping rule never fires
    s = torch.tensor(samples, dtype=torch.float64)
    return {"estimate": s.mean().item(), "samples": s, "hvps": counter.count}


# -- hessian-eigenthings -----------------------------------------------------------------------
def _he_operator(p: Problem, mode: str):
    import hessian_eigenthings as he

    class Counting(he.HessianOperator):
        count = 0

        def matvec(self, v):
            self.count += 1
            return super().matvec(v)

    if mode == "one batch":
        loss = he.supervised_loss(ce)
    else:  # it averages batches with equal weights: weight each by its size
        nb, n = math.ceil(len(p.x) / p.loader_batch), len(p.x)
        loss = lambda model, batch: ce(model(batch[0]), batch[1]) * (len(batch[0]) * nb / n)
    return Counting(p.model, p.data(mode) if mode == "loader" else p.batches(mode), loss)


def _he_lanczos(p: Problem, mode: str, k: int, steps: int):
    import hessian_eigenthings as he

    op = _he_operator(p, mode)
    r = he.lanczos(
        op, k=k, max_iter=min(steps, op.size - 1), which="LA", reorthogonalize=True, seed=0
    )
    return np.sort(r.eigenvalues.double().numpy())[::-1], op.count, False


def _he_power(p: Problem, mode: str, k: int, tol: float):
    import hessian_eigenthings as he

    op = _he_operator(p, mode)
    r = he.deflated_power_iteration(op, k=k, max_iter=POWER_MAX_ITER, tol=tol, seed=0)
    return np.sort(r.eigenvalues.double().numpy())[::-1], op.count, not bool(r.converged.all())


def _he_trace(method: str):
    def run(p: Problem, mode: str, budget: int, seed: int):
        import hessian_eigenthings as he

        op = _he_operator(p, mode)
        r = he.trace(op, num_matvecs=budget, method=method, seed=seed)
        return {
            "estimate": r.estimate,
            "stderr": r.stderr,
            "samples": r.samples.double() if method == "hutchinson" else None,
            "hvps": op.count,
        }

    return run


# -- curvlinops --------------------------------------------------------------------------------
def _cl_operator(p: Problem, mode: str):
    from curvlinops import HessianLinearOperator

    class Counting(HessianLinearOperator):
        """Counts products and keeps the last (input, output) pair: a Hutchinson call is one
        ``A @ G``, so its per-probe values come free from the very run being timed."""

        count = 0
        last = None

        def _matmat(self, M):
            self.count += M[0].shape[-1]
            out = super()._matmat(M)
            self.last = (M, out)
            return out

    data = p.data(mode) if mode == "loader" else p.batches(mode)
    params = [q for q in p.model.parameters() if q.requires_grad]
    return Counting(
        p.model, nn.CrossEntropyLoss(), params, data, check_deterministic=False, num_data=len(p.x)
    )


def _cl_eigsh(p: Problem, mode: str, k: int, tol: float):
    """curvlinops has no eigensolver of its own: its documented route is SciPy's ARPACK on
    ``to_scipy()``. ``ncv=2k+1`` (SciPy's advice, ``ncv > 2k``) rather than its default of
    ``max(2k+1, 20)``, which costs 21 products even where 5 to 15 do."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    op = _cl_operator(p, mode)
    v0 = np.random.default_rng(0).standard_normal(op.shape[0])
    A = op.to_scipy()
    try:
        values = eigsh(A, k=k, which="LA", tol=tol, v0=v0, ncv=2 * k + 1, return_eigenvectors=False)
    except ArpackNoConvergence as e:
        return np.sort(e.eigenvalues)[::-1], op.count, True
    return np.sort(values)[::-1], op.count, False


def _cl_estimator(name: str):
    def run(p: Problem, mode: str, budget: int, seed: int):
        import curvlinops

        op = _cl_operator(p, mode)
        torch.manual_seed(seed)  # its probes come from the global generator
        value = getattr(curvlinops, name)(op, budget).item()
        out = {"estimate": value, "hvps": op.count}
        if name.startswith("hutchinson"):  # one A @ G: per-probe values from that product
            g, ag = (torch.cat([t.reshape(-1, budget) for t in m]).double() for m in op.last)
            out["samples"] = (g * ag).sum(0) if name == "hutchinson_trace" else (ag * ag).sum(0)
        if name == "hutchinson_squared_fro":
            out["estimate"] = math.sqrt(max(value, 0.0))
        return out

    return run


# -- the registry ------------------------------------------------------------------------------
def eigen_methods() -> list[EigenMethod]:
    return [
        EigenMethod("flatness", "Lanczos", "tol", TOLS, _flatness_top),
        EigenMethod("flatness", "Lanczos, block=k", "tol", TOLS, _flatness_top_block_k),
        EigenMethod("PyHessian", "power iteration", "tol", TOLS, _pyhessian_top),
        EigenMethod("eigenthings", "Lanczos", "steps", STEPS, _he_lanczos),
        EigenMethod("eigenthings", "power iteration", "tol", TOLS, _he_power),
        EigenMethod("curvlinops", "scipy eigsh ncv=2k+1", "tol", TOLS, _cl_eigsh),
    ]


def trace_methods() -> list[TraceMethod]:
    adaptive = flatness_has_rtol()
    kind = "adaptive" if adaptive else "reported"
    label = "rtol=0.01" if adaptive else "fixed probes (no rtol yet)"
    return [
        TraceMethod(
            "flatness", label, "trace", kind, _flatness_estimate("trace", adaptive), multiple=3
        ),
        TraceMethod("PyHessian", "Hutchinson", "trace", "samples", _pyhessian_hutchinson),
        TraceMethod("eigenthings", "Hutchinson", "trace", "samples", _he_trace("hutchinson")),
        TraceMethod(
            "eigenthings", "Hutch++", "trace", "reported", _he_trace("hutch++"), multiple=3
        ),
        TraceMethod(
            "curvlinops", "hutchinson_trace", "trace", "samples", _cl_estimator("hutchinson_trace")
        ),
        TraceMethod(
            "curvlinops",
            "hutchpp_trace",
            "trace",
            "actual",
            _cl_estimator("hutchpp_trace"),
            multiple=3,
        ),
        TraceMethod("curvlinops", "xtrace", "trace", "actual", _cl_estimator("xtrace"), multiple=2),
        TraceMethod(
            "flatness",
            label,
            "frobenius",
            kind,
            _flatness_estimate("frobenius", adaptive),
            multiple=3,
        ),
        TraceMethod(
            "curvlinops",
            "hutchinson_squared_fro",
            "frobenius",
            "samples",
            _cl_estimator("hutchinson_squared_fro"),
        ),
    ]


#: tools with no estimator for a quantity (listed as such in the detail block)
MISSING = {
    "frobenius": ["PyHessian (none)", "eigenthings (none)"],
}
