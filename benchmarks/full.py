"""The bench's rows beyond the four cells: a full measurement against the peers' calls, its cost
in training epochs, product cost by block size, and the exact softmax-regression path.

- full measurement: :func:`flatness.hessian.measure_all` with the cheapest ``tol`` (searched
  as for top-1) whose ``lambda_max`` is within ``EIG_RTOL`` of the reference while its trace
  and Frobenius norm reach ``SE_TARGET``; against the sum of the fastest peer times of the
  top-1, trace and Frobenius cells (the calls that give the same three numbers);
- epochs: that measurement's seconds over one epoch of SGD (batches of 128) on the same model
  and data;
- block cost: seconds per vector of ``HessianOperator.matmat`` for blocks of 1, 4 and 16;
- exact: one exact softmax-regression measurement (``softmax_regression_spectrum``, which the
  training runs use) at the digits size, quiet and beside one busy process, and at the MNIST
  size (real MNIST from ``../shared/data`` if present, else random rows of that shape).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import search
import torch
from problems import ce

from flatness import data as datasets
from flatness import hessian as H

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def full_cell(problem, mode: str, ref: dict, cfg: dict) -> dict:
    """measure_all at the cheapest tol that meets every target, timed best of 3."""
    truth = ref["eigenvalues"][0]
    tried = []
    for tol in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5):
        run = lambda tol=tol: H.measure_all(
            problem.model, ce, problem.data(mode), tol=tol, rtol=search.SE_TARGET, seed=0
        )
        m, seconds = _timed(run)
        err = abs(m.lambda_max - truth) / abs(truth)
        tr_se = m.trace.stderr / abs(m.trace.estimate)
        fro_se = m.frobenius.stderr / m.frobenius.estimate
        tried.append(tol)
        if err <= search.EIG_RTOL and max(tr_se, fro_se) <= search.SE_TARGET * (1 + 1e-9):
            best, runs = search.best_of(run, seconds, cfg["long_s"])
            return {
                "reached": True,
                "setting": f"tol={tol:g}, rtol={search.SE_TARGET:g}",
                "seconds": best,
                "runs": runs,
                "hvps": m.hvps,
                "krylov_dimension": m.krylov_dimension,
                "probes": m.trace.probes,
                "lambda_error": err,
                "trace_error": abs(m.trace.estimate - ref["trace"]) / abs(ref["trace"]),
                "frobenius_error": abs(m.frobenius.estimate - ref["frobenius"]) / ref["frobenius"],
                "trace_rel_se": tr_se,
                "frobenius_rel_se": fro_se,
            }
    return {"reached": False, "why": f"tol grid exhausted at {tried[-1]:g}"}


def peers_sum(summary: dict) -> tuple[float | None, str]:
    """The fastest peer times of the top-1, trace and Frobenius cells, added up."""
    parts = [summary[c] for c in ("top-1", "trace", "Frobenius")]
    if any(p["peer_seconds"] is None for p in parts):
        return None, "no peer reached every cell"
    return sum(p["peer_seconds"] for p in parts), " + ".join(p["peer"] for p in parts)


def epoch_seconds(problem) -> float:
    """One epoch of SGD in batches of 128 over the problem's data, on a copy of its model,
    in the mode the bench measures in (eval: BatchNorm's running statistics)."""
    model = copy.deepcopy(problem.model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = list(zip(problem.x.split(128), problem.y.split(128)))

    def epoch():
        for x, y in batches:
            opt.zero_grad()
            ce(model(x), y).backward()
            opt.step()

    epoch()  # warm-up
    return min(_timed(epoch)[1] for _ in range(3))


def block_cost(problem) -> dict:
    """Seconds per vector of one block product, by block size, in both data modes."""
    out = {}
    for mode in ("one batch", "loader"):
        op = H.HessianOperator(problem.model, ce, problem.data(mode))
        gen = torch.Generator().manual_seed(0)
        for b in (1, 4, 16):
            v = op.rademacher(b, gen)
            op.matmat(v)  # warm-up
            times = [_timed(lambda op=op, v=v: op.matmat(v))[1] for _ in range(3)]
            out[f"{mode}, block {b}"] = min(times) / b
    return out


def ggn_cost(problem) -> dict:
    """The exact Gauss-Newton trace (``flatness.hessian.ggn_trace``, best of 3) in seconds
    and in single Hessian-vector products of the same data (``gauss_newton.cheap`` calls
    it cheap against the 16 or more products that probing takes)."""
    out = {}
    for mode in ("one batch", "loader"):
        data = problem.data(mode)
        H.ggn_trace(problem.model, ce, data)  # warm-up
        seconds = min(_timed(lambda d=data: H.ggn_trace(problem.model, ce, d))[1] for _ in range(3))
        op = H.HessianOperator(problem.model, ce, data)
        v = op.rademacher(1, torch.Generator().manual_seed(0))
        op.matmat(v)
        product = min(_timed(lambda op=op, v=v: op.matmat(v))[1] for _ in range(3))
        out[mode] = {"seconds": seconds, "products": seconds / product}
    return out


BUSY = "while True: pass"


def exact_rows() -> dict:
    """Seconds of one exact softmax-regression measurement at the digits and MNIST sizes."""
    digits = datasets.load("digits")
    x = digits.x_train.reshape(len(digits.x_train), -1)
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 10)

    def digits_once():
        return min(_timed(lambda: H.softmax_regression_spectrum(model, x))[1] for _ in range(5))

    out = {"digits_examples": len(x), "digits_parameters": 10 * (x.shape[1] + 1)}
    out["digits_seconds"] = digits_once()
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(0.5)
        out["digits_seconds_beside_one_busy_process"] = digits_once()
    finally:
        busy.kill()
    try:
        mnist = datasets.load("mnist", data_root=SHARED, download=False)
        xm, source = mnist.x_train.reshape(len(mnist.x_train), -1), "MNIST"
    except Exception:  # no MNIST files here: rows of its shape stand in
        xm, source = torch.rand(60_000, 784) * 2 - 1, "random rows (MNIST absent)"
    big = torch.nn.Linear(784, 10)
    out["mnist_source"] = source
    out["mnist_seconds"] = _timed(lambda: H.softmax_regression_spectrum(big, xm))[1]
    return out


def describe_full(full: dict, peer: tuple) -> str:
    if not full.get("reached"):
        return f"not reached ({full.get('why')})"
    total, names = peer
    ratio = f" = {full['seconds'] / total:.2f}" if total else ""
    return (
        f"{full['seconds']:.3f}s / {total:.3f}s{ratio} ({full['setting']}: {full['hvps']} HVPs, "
        f"Krylov dimension {full['krylov_dimension']}, {full['probes']} probes; errors: "
        f"lambda_max {full['lambda_error']:.1e}, trace {full['trace_error']:.1e}, Frobenius "
        f"{full['frobenius_error']:.1e}) against {names}"
        if total
        else f"{full['seconds']:.3f}s ({names})"
    )
