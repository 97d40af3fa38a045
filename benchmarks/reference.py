"""The float64 truth every tool is scored against, computed without any of the tools.

The model is copied to float64 (eval mode: BatchNorm with running statistics) and
Hessian-vector products are plain PyTorch, written here: forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``) of the mean loss over all the data, vmapped over a
block of vectors.

- P <= ``DENSE_MAX``: the dense Hessian, P products (one per basis vector); trace and
  Frobenius norm are exact and the top 5 eigenvalues come from ARPACK on the dense matrix.
- larger P: ARPACK (``scipy.sparse.linalg.eigsh``, ``tol=1e-10``) on the HVP operator for the
  top 5; trace and Frobenius norm exact on a subspace Q (ARPACK's eigenvectors and a
  randomised range sketch of H^2) plus a long Hutchinson estimate on the
  complement, with its standard error:
  ``Tr H = Tr(Q'HQ) + E z'P H P z`` and ``||H||_F^2 = 2||HQ||^2 - ||Q'HQ||^2 + E ||P H P z||^2``
  with ``P = I - QQ'``.

Results are cached in ``_build/bench/`` under a hash of the model's parameters and the data.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from problems import Problem, ce
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call, grad, jvp, vmap

DENSE_MAX = 8000
CACHE = Path("_build/bench")


class Float64Hvp:
    """``H V`` for the mean loss over all of ``problem``'s data, in float64."""

    def __init__(self, problem: Problem):
        model = copy.deepcopy(problem.model).double().eval()
        named = [(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.size = sum(p.numel() for _, p in named)
        params, buffers = dict(named), dict(model.named_buffers())
        x, y = problem.x.double(), problem.y

        def loss(ps):
            return ce(functional_call(model, (ps, buffers), (x,)), y)

        self._hvp = vmap(lambda v: jvp(grad(loss), (params,), (v,))[1])
        # activations per example, for a block size that keeps memory to about a GiB
        acts = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: acts.append(o.numel())) for m in model.modules()
        ]
        with torch.no_grad():
            model(x[:1])
        for h in hooks:
            h.remove()
        self.block = int(max(1, min(64, 2**30 / (8 * 4 * sum(acts) * len(x)))))
        self.hvps = 0

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """(k, P) float64 rows in, (k, P) rows out."""
        out = []
        for block in vectors.split(self.block):
            pieces = torch.split(block, [s.numel() for s in self.shapes], dim=1)
            tangents = {
                n: t.reshape(len(block), *s) for n, t, s in zip(self.names, pieces, self.shapes)
            }
            hv = self._hvp(tangents)
            out.append(torch.cat([hv[n].reshape(len(block), -1) for n in self.names], dim=1))
            self.hvps += len(block)
        return torch.cat(out)

    def scipy(self) -> LinearOperator:
        def matmat(x):
            x = np.asarray(x, dtype=np.float64).reshape(self.size, -1)
            return self(torch.from_numpy(np.ascontiguousarray(x.T))).numpy().T

        return LinearOperator(
            (self.size, self.size), matvec=matmat, matmat=matmat, dtype=np.float64
        )


def _dense(hvp: Float64Hvp) -> np.ndarray:
    step = 4 * hvp.block
    eye = torch.eye(hvp.size, dtype=torch.float64)
    dense = torch.cat([hvp(eye[i : i + step]) for i in range(0, hvp.size, step)]).numpy()
    return (dense + dense.T) / 2


def _subspace_hutchinson(hvp: Float64Hvp, vectors: np.ndarray, probes: int, sketch: int, seed=0):
    """(trace, stderr), (||H||_F^2, stderr): exact on span(vectors + sketch), Hutchinson off it."""
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(sketch, hvp.size, generator=gen, dtype=torch.float64)
    y = hvp(hvp(omega))  # range of H^2 Omega: the top of the spectrum, by magnitude
    q = torch.linalg.qr(torch.cat([torch.from_numpy(vectors.T.copy()), y]).T).Q  # (P, m)
    hq = hvp(q.T.contiguous())  # (m, P)
    qhq = hq @ q
    tr_exact = torch.trace(qhq).item()
    fro_exact = 2 * (hq * hq).sum().item() - (qhq * qhq).sum().item()
    tr_s, fro_s = [], []
    for start in range(0, probes, 64):
        z = 2 * torch.randint(0, 2, (min(64, probes - start), hvp.size), generator=gen) - 1
        z = z.double()
        z = z - (z @ q) @ q.T
        hz = hvp(z)
        hz = hz - (hz @ q) @ q.T
        tr_s.append((z * hz).sum(1))
        fro_s.append((hz * hz).sum(1))
    tr_s, fro_s = torch.cat(tr_s), torch.cat(fro_s)
    n = len(tr_s)
    return (
        (tr_exact + tr_s.mean().item(), tr_s.std().item() / math.sqrt(n)),
        (fro_exact + fro_s.mean().item(), fro_s.std().item() / math.sqrt(n)),
    )


def _key(problem: Problem, probes: int, sketch: int) -> str:
    h = hashlib.sha256()
    for t in list(problem.model.state_dict().values()) + [problem.x, problem.y]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    dense = sum(p.numel() for p in problem.model.parameters()) <= DENSE_MAX
    h.update(("dense" if dense else f"{sketch} {probes}").encode())
    return h.hexdigest()[:16]


def reference(problem: Problem, probes: int = 128, sketch: int = 40) -> dict:
    """{'eigenvalues' (top 5, descending), 'trace', 'frobenius', their stderrs, 'how'}."""
    path = CACHE / f"reference-{_key(problem, probes, sketch)}.pt"
    if path.exists():
        return {**torch.load(path, weights_only=False), "cached": True}
    start = time.perf_counter()
    hvp = Float64Hvp(problem)
    v0 = np.random.default_rng(0).standard_normal(hvp.size)
    if hvp.size <= DENSE_MAX:
        dense = _dense(hvp)
        values = eigsh(dense, k=5, which="LA", tol=1e-13, v0=v0, return_eigenvectors=False)
        ref = {
            "trace": float(np.trace(dense)),
            "trace_stderr": 0.0,
            "frobenius": float(np.linalg.norm(dense)),
            "frobenius_stderr": 0.0,
            "how": f"dense float64 Hessian ({hvp.hvps} HVPs): trace and Frobenius exact",
        }
    else:
        values, vectors = eigsh(hvp.scipy(), k=5, which="LA", tol=1e-10, v0=v0)
        arpack = hvp.hvps
        (tr, tr_se), (fro2, fro2_se) = _subspace_hutchinson(hvp, vectors, probes, sketch)
        fro = math.sqrt(fro2)
        ref = {
            "trace": tr,
            "trace_stderr": tr_se,
            "frobenius": fro,
            "frobenius_stderr": fro2_se / (2 * fro),
            "how": (
                f"float64 HVPs, ARPACK top 5 (tol 1e-10, {arpack} HVPs); trace and Frobenius "
                f"exact on a {sketch + 5}-dim subspace + {probes}-probe Hutchinson off it"
            ),
        }
    ref["eigenvalues"] = sorted(map(float, values), reverse=True)[:5]
    ref["hvps"] = hvp.hvps
    ref["seconds"] = time.perf_counter() - start
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(ref, path)
    return {**ref, "cached": False}
