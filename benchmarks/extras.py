"""Two cheap side measurements kept from the first bench: a DataLoader HVP in gradient passes
(flatness, one vector and 16 per pass, against PyHessian) and SLQ's peak extra memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from problems import Problem, ce

from flatness import hessian as H
from flatness.hessian.reference import pyhessian_engine


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hvp_cost(p: Problem) -> dict:
    """Seconds of one full-data HVP over the 8-batch loader, in units of one gradient pass."""
    loader = p.data("loader")

    def gradient_pass():
        p.model.zero_grad(set_to_none=True)
        for xb, yb in loader:
            (ce(p.model(xb), yb) * len(xb) / len(p.x)).backward()
        p.model.zero_grad(set_to_none=True)

    reps = 5
    gradient_pass()
    t_grad = _timed(lambda: [gradient_pass() for _ in range(reps)]) / reps
    op = H.HessianOperator(p.model, ce, loader)
    v1, v16 = torch.randn(1, op.size), torch.randn(16, op.size)
    op.matmat(v1)  # warm-up
    t1 = _timed(lambda: [op.matmat(v1) for _ in range(reps)]) / reps
    t16 = _timed(lambda: op.matmat(v16)) / 16
    with pyhessian_engine(p.model, ce, loader) as engine:
        v = [torch.randn_like(q) for q in engine.params]
        engine.dataloader_hv_product(v)  # warm-up
        tph = _timed(lambda: [engine.dataloader_hv_product(v) for _ in range(reps)]) / reps
    return {
        "gradient_pass_seconds": t_grad,
        "pyhessian_passes_per_hvp": tph / t_grad,
        "flatness_passes_per_hvp_single": t1 / t_grad,
        "flatness_passes_per_hvp_batched16": t16 / t_grad,
    }


SLQ_CHILD = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from problems import ce
from flatness import hessian as H
p = torch.load({path!r}, weights_only=False)
def rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
H.top_eigenvalues(p.model, ce, (p.x, p.y), k=1, tol=1e-1)  # warm up: graph built, kernels loaded
base = rss_kib("VmRSS")
H.spectral_density(p.model, ce, (p.x, p.y), steps={steps}, probes={probes})
print(json.dumps(dict(peak_extra_mib=(rss_kib("VmHWM") - base) / 1024,
                      basis_mib={probes} * ({steps} + 1) * p.parameters * 4 / 2**20)))
"""


def slq_memory(p: Problem, steps: int = 30, probes: int = 4) -> dict:
    """Peak extra resident memory of SLQ on the one-batch problem, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "problem.pt")
        torch.save(p, path)
        code = SLQ_CHILD.format(
            bench=str(Path(__file__).parent), path=path, steps=steps, probes=probes
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
    return json.loads(out.stdout.strip().splitlines()[-1])
