"""The peers of "Can we trust the estimates?": PyHessian 0.1, hessian-eigenthings 1.0 and
curvlinops 3.0 beside flatness, on the chapter's exact problem.

The only module of flatness that imports hessian-eigenthings or curvlinops (pinned in
``requirements.txt`` for this comparison). Three parts:

- :func:`eigen_runs` and :func:`estimate_runs`: the relative error of every tool's top
  eigenvalues, trace and Frobenius norm against the Hessian-vector products (HVPs) it spent,
  once per seed; :func:`reaches` reads off how many HVPs each needed for a given error;
- :func:`coverage_rows`: whether the standard errors a tool reports cover the truth as often
  as they claim (:mod:`~flatness.chapters.estimators.trace`'s coverage, over the seeds);
- :func:`misuse_runs`: the inputs that define no fixed mean-loss Hessian, or are easy to get
  wrong (:data:`KINDS`), each handed to every tool as a user would, the outcome classified by
  :func:`classify` as refused, silently wrong or right.

How each tool is called, and its quirks:

- PyHessian: through :func:`flatness.hessian.reference.pyhessian_engine` for the comparison
  (flatness's checks first, its random state and the model's mode left alone), raw where the
  question is what PyHessian itself does with an input. It calls ``model.eval()``.
- hessian-eigenthings: a :class:`hessian_eigenthings.HessianOperator` over a list of one
  batch (it averages a loader's batches with equal weights, right only where they are of one
  size: every loader here has batches of one size). Its Lanczos reorthogonalises by default
  only up to 50 steps, past which ghost copies of the top eigenvalue appear; here it always
  reorthogonalises (``reorthogonalize=True``), as the benchmark calls it.
- curvlinops: a :class:`curvlinops.HessianLinearOperator` with an ``nn.CrossEntropyLoss``
  (it reads ``.reduction``). Its constructor by default passes over the data three times to
  check determinism and count the examples; the comparison turns that off
  (``check_deterministic=False, num_data=N``), which only favours it, while the misuse probe
  keeps its defaults, the safeguard included. It has no eigensolver: its documented route is
  SciPy's ARPACK (``scipy.sparse.linalg.eigsh``) on ``to_scipy()``, whose HVPs are set by a
  tolerance, not a budget. Its estimators report no standard error and draw their probes from
  torch's global generator, seeded here inside :func:`torch.random.fork_rng`.

HVPs are counted where each tool computes them (a counting subclass of its operator, or the
iterations PyHessian is told to run with its stopping rule off).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness import hessian as H
from flatness.chapters.estimators.eigenvalues import Reach, shared_budgets
from flatness.chapters.estimators.exact import Problem
from flatness.chapters.estimators.trace import NOMINAL, Z, coverage_table
from flatness.errors import FlatnessError
from flatness.hessian.reference import pyhessian_engine

with warnings.catch_warnings():
    # curvlinops' dependencies call torch.jit.script at import: a warning nobody here can act on
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    import curvlinops
    import hessian_eigenthings as he

ce = nn.functional.cross_entropy
#: the tools, flatness first, in the order of the page's tables and legends
TOOLS = ("flatness", "PyHessian", "hessian-eigenthings", "curvlinops")
#: the tolerances SciPy's ARPACK (curvlinops' route to eigenvalues) runs with: its HVPs follow
EIGSH_TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def _worst(values, truth: torch.Tensor) -> float:
    """The largest relative error of ``values`` (descending) against ``truth``."""
    values = torch.tensor(np.array(values, dtype=np.float64))
    return ((values - truth).abs() / truth.abs()).max().item()


def _top(p: Problem, n: int) -> torch.Tensor:
    return p.eigenvalues.flip(0)[:n].double()


# -- counted operators -------------------------------------------------------------------------
class CountingEigenthings(he.HessianOperator):
    """hessian-eigenthings' Hessian operator, counting its products in ``count``."""

    count = 0

    def matvec(self, v):
        self.count += 1
        return super().matvec(v)


class CountingCurvlinops(curvlinops.HessianLinearOperator):
    """curvlinops' Hessian operator, counting its products (columns) in ``count``."""

    count = 0

    def _matmat(self, M):
        self.count += M[0].shape[-1]
        with warnings.catch_warnings():
            # torch's forward-mode AD scripts its decompositions on first use: a warning
            # about torch itself, nothing to act on here
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            return super()._matmat(M)


def _batches(data):
    """A batch as the list of one batch the two peers iterate; a loader as it is."""
    return [tuple(data)] if isinstance(data, (tuple, list)) else data


def eigenthings_operator(model: nn.Module, data, loss=ce) -> CountingEigenthings:
    return CountingEigenthings(model, _batches(data), he.supervised_loss(loss))


def curvlinops_operator(
    model: nn.Module, data, loss: nn.Module | None = None, *, checks: bool = True
) -> CountingCurvlinops:
    """curvlinops' operator; ``checks=False`` skips its determinism check and its pass counting
    the examples (the comparison's setting), ``True`` keeps its defaults."""
    loss = loss if loss is not None else nn.CrossEntropyLoss()
    params = [q for q in model.parameters() if q.requires_grad]
    extra = {} if checks else {"check_deterministic": False, "num_data": _examples(data)}
    return CountingCurvlinops(model, loss, params, _batches(data), **extra)


def _examples(data) -> int:
    return len(data[1]) if isinstance(data, (tuple, list)) else len(data.dataset)


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generator seeded inside, and left as it was outside."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# -- the top eigenvalues -----------------------------------------------------------------------
def eigenthings_lanczos_run(p: Problem, n: int, budget: int, *, seed: int) -> tuple[float, int]:
    """hessian-eigenthings' Lanczos for the top ``n`` on ``budget`` steps (one HVP each)."""
    op = eigenthings_operator(p.model, p.data)
    steps = min(budget, op.size - 1)
    r = he.lanczos(op, k=n, max_iter=steps, which="LA", reorthogonalize=True, seed=seed)
    return _worst(sorted(r.eigenvalues.tolist(), reverse=True), _top(p, n)), op.count


def eigenthings_power_run(p: Problem, n: int, budget: int, *, seed: int) -> tuple[float, int]:
    """hessian-eigenthings' deflated power iteration, ``budget // n`` iterations for each of the
    top ``n`` (``tol=0``: its stopping test never fires)."""
    op = eigenthings_operator(p.model, p.data)
    r = he.deflated_power_iteration(op, k=n, max_iter=budget // n, tol=0.0, seed=seed)
    return _worst(sorted(r.eigenvalues.tolist(), reverse=True), _top(p, n)), op.count


def arpack(op: CountingCurvlinops, n: int, tol: float, *, seed: int) -> np.ndarray:
    """SciPy's ``eigsh`` on curvlinops' operator: the ``n`` largest, descending. A run that
    stops short returns what converged (possibly fewer than ``n``).

    Its Krylov space holds ``ncv = 2n + 1`` vectors (SciPy asks for more than ``2n``), not
    SciPy's default of ``max(2n + 1, 20)``, which spends at least 21 HVPs where fewer do and
    leaves no HVPs for ``tol`` to set.
    """
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    try:
        values = eigsh(
            op.to_scipy(),
            k=n,
            which="LA",
            tol=tol,
            v0=v0,
            ncv=min(2 * n + 1, op.shape[0] - 1),
            return_eigenvectors=False,
        )
    except ArpackNoConvergence as err:
        values = err.eigenvalues
    return np.sort(np.asarray(values, dtype=np.float64))[::-1]


def curvlinops_eigsh_run(p: Problem, n: int, tol: float, *, seed: int) -> tuple[float, int]:
    """SciPy's ARPACK on curvlinops' operator for the top ``n`` at tolerance ``tol``."""
    op = curvlinops_operator(p.model, p.data, checks=False)
    values = arpack(op, n, tol, seed=seed)
    if len(values) < n:
        return math.inf, op.count
    return _worst(values, _top(p, n)), op.count


#: (tool, method) -> a run on a budget of HVPs, for the methods flatness's chapter does not run
BUDGET_EIGEN = {
    ("hessian-eigenthings", "Lanczos"): eigenthings_lanczos_run,
    ("hessian-eigenthings", "power iteration"): eigenthings_power_run,
}
#: the chapter's own eigenvalue methods, by the names of its ``eigenvalue_runs``
OURS_EIGEN = {
    "Lanczos": ("flatness", "block Lanczos"),
    "power iteration (PyHessian)": ("PyHessian", "power iteration"),
}


def eigen_runs(
    p: Problem, budgets, k: int, seeds, *, tols=EIGSH_TOLS, ours: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every tool's top 1 and top ``k`` eigenvalues, once per seed: the budgets of
    :func:`~flatness.chapters.estimators.eigenvalues.shared_budgets` for the methods run on a
    budget, the tolerances ``tols`` for ARPACK.

    ``ours``: the chapter's :func:`~flatness.chapters.estimators.eigenvalues.eigenvalue_runs`
    on the same budgets and seeds, whose flatness and PyHessian rows are taken over rather than
    run again. One row per run: ``quantity`` ("top-1" or "top-k"), ``tool``, ``method``,
    ``seed``, ``knob`` (the budget or the tolerance), ``hvps`` and ``rel error`` (the largest of
    the eigenvalues').
    """
    rows = []
    for n in dict.fromkeys((1, k)):
        for budget in shared_budgets(budgets, n):
            for (tool, method), run in BUDGET_EIGEN.items():
                for seed in seeds:
                    rel, hvps = run(p, n, budget, seed=seed)
                    rows.append(_eigen_row(f"top-{n}", tool, method, seed, budget, hvps, rel))
        for tol in tols:
            for seed in seeds:
                rel, hvps = curvlinops_eigsh_run(p, n, tol, seed=seed)
                rows.append(_eigen_row(f"top-{n}", "curvlinops", "ARPACK", seed, tol, hvps, rel))
    if ours is None:
        return pd.DataFrame(rows)
    tools = ours.method.map(lambda m: OURS_EIGEN[m][0])
    taken = pd.DataFrame(
        {
            "quantity": ours.eigenvalues,
            "tool": tools,
            "method": ours.method.map(lambda m: OURS_EIGEN[m][1]),
            "seed": ours.seed,
            "knob": ours.budget,
            "hvps": ours.hvps,
            "rel error": ours["rel error"],
        }
    )
    return pd.concat([taken, pd.DataFrame(rows)], ignore_index=True)


def _eigen_row(quantity, tool, method, seed, knob, hvps, rel) -> dict:
    return {
        "quantity": quantity,
        "tool": tool,
        "method": method,
        "seed": seed,
        "knob": knob,
        "hvps": int(hvps),
        "rel error": float(rel),
    }


# -- trace and Frobenius norm ------------------------------------------------------------------
def pyhessian_trace_run(p: Problem, budget: int, seed: int) -> dict:
    """PyHessian's Hutchinson trace on ``budget`` probes (``tol=0``: it never stops early); it
    returns the per-probe values and no standard error."""
    with pyhessian_engine(p.model, ce, p.data, seed=seed) as engine:
        samples = engine.trace(maxIter=budget, tol=0.0)
    return {"estimate": float(np.mean(samples)), "stderr": None, "hvps": len(samples)}


def _eigenthings_trace(method: str) -> Callable:
    def run(p: Problem, budget: int, seed: int) -> dict:
        op = eigenthings_operator(p.model, p.data)
        r = he.trace(op, num_matvecs=budget, method=method, seed=seed)
        return {"estimate": r.estimate, "stderr": r.stderr, "hvps": op.count}

    return run


def _curvlinops_estimate(name: str, multiple: int, squared: bool = False) -> Callable:
    """curvlinops' estimator ``name`` on the budget rounded down to a ``multiple`` (as it
    demands); a squared Frobenius norm is returned as the norm."""

    def run(p: Problem, budget: int, seed: int) -> dict:
        op = curvlinops_operator(p.model, p.data, checks=False)
        with _seeded(seed):
            value = getattr(curvlinops, name)(op, budget // multiple * multiple).item()
        estimate = math.sqrt(max(value, 0.0)) if squared else value
        return {"estimate": estimate, "stderr": None, "hvps": op.count}

    return run


#: (measure, tool, method) -> (run, the smallest budget it takes), for the peers' estimators
PEER_ESTIMATORS = {
    ("trace", "PyHessian", "Hutchinson"): (pyhessian_trace_run, 1),
    ("trace", "hessian-eigenthings", "Hutchinson"): (_eigenthings_trace("hutchinson"), 2),
    ("trace", "hessian-eigenthings", "Hutch++"): (_eigenthings_trace("hutch++"), 6),
    ("trace", "curvlinops", "Hutchinson"): (_curvlinops_estimate("hutchinson_trace", 1), 1),
    ("trace", "curvlinops", "Hutch++"): (_curvlinops_estimate("hutchpp_trace", 3), 3),
    ("trace", "curvlinops", "XTrace"): (_curvlinops_estimate("xtrace", 2), 2),
    ("frobenius", "curvlinops", "Hutchinson"): (
        _curvlinops_estimate("hutchinson_squared_fro", 1, squared=True),
        1,
    ),
}
#: the chapter's fixed-budget methods, by their ``method`` names in ``trace_runs``
OURS_ESTIMATORS = {"hutchinson": "Hutchinson", "hutch++": "Hutch++"}


def estimate_runs(p: Problem, budgets, seeds, *, ours: pd.DataFrame) -> pd.DataFrame:
    """The peers' trace and Frobenius estimators on each budget, once per seed, beside
    flatness's (``ours``: the chapter's :func:`~flatness.chapters.estimators.trace.trace_runs`
    on the same budgets and seeds).

    One row per run: ``measure``, ``tool``, ``method``, ``budget``, ``seed``, ``hvps``, ``rel
    error`` (signed), ``rel stderr`` (reported; NaN where the tool reports none) and
    ``covered`` (the truth within ``Z`` reported standard errors; None where none).
    (hessian-eigenthings reports no standard error for a Hutchinson run of one probe, nor for
    a Hutch++ run with one probe in its residual, hence their smallest budgets.)
    """
    truths = {"trace": p.trace, "frobenius": p.frobenius}
    columns = ["measure", "budget", "seed", "hvps", "rel error", "rel stderr"]
    taken = ours[columns].assign(
        tool="flatness",
        method=ours.method.map(OURS_ESTIMATORS),
        covered=ours.covered.astype(bool).astype(object),
    )
    rows = []
    for (measure, tool, method), (run, smallest) in PEER_ESTIMATORS.items():
        truth = truths[measure]
        for budget in budgets:
            if budget < smallest:
                continue
            for seed in seeds:
                out = run(p, budget, seed)
                se = out["stderr"]
                reported = se is not None and math.isfinite(se)
                rows.append(
                    {
                        "measure": measure,
                        "tool": tool,
                        "method": method,
                        "budget": budget,
                        "seed": seed,
                        "hvps": out["hvps"],
                        "rel error": out["estimate"] / truth - 1,
                        "rel stderr": se / abs(truth) if reported else math.nan,
                        "covered": abs(out["estimate"] - truth) <= Z * se if reported else None,
                    }
                )
    frame = pd.concat([taken, pd.DataFrame(rows)], ignore_index=True)
    return frame[["measure", "tool", "method", *columns[1:], "covered"]]


# -- the figure's curves and the HVPs to a given error -----------------------------------------
def comparison(eigen: pd.DataFrame, estimates: pd.DataFrame) -> pd.DataFrame:
    """:func:`eigen_runs` and :func:`estimate_runs` in one frame: ``quantity``, ``tool``,
    ``method``, ``seed``, ``knob`` (budget or tolerance), ``hvps`` and ``error`` (absolute
    relative error)."""
    est = estimates.rename(columns={"measure": "quantity", "budget": "knob"})
    both = pd.concat([eigen, est], ignore_index=True)
    both["error"] = both["rel error"].abs()
    return both[["quantity", "tool", "method", "seed", "knob", "hvps", "error"]]


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per quantity, tool, method and knob: the median HVPs over the seeds, and the median,
    minimum and maximum of the error; sorted by HVPs within each series."""
    keys = ["quantity", "tool", "method", "knob"]
    out = runs.groupby(keys, sort=False).agg(
        hvps=("hvps", "median"),
        median=("error", "median"),
        low=("error", "min"),
        high=("error", "max"),
    )
    return out.reset_index().sort_values(["quantity", "tool", "method", "hvps"], kind="stable")


def reach(runs: pd.DataFrame, quantity: str, tool: str, method: str, level: float) -> Reach:
    """The HVPs ``tool``'s ``method`` needed until every seed's error on ``quantity`` was at
    most ``level``: the most any seed spent at the cheapest knob (budget or tolerance) where
    all got there; if none did, the most any seed spent at the most expensive one."""
    rows = runs[(runs.quantity == quantity) & (runs.tool == tool) & (runs.method == method)]
    per = rows.groupby("knob").agg(worst=("error", "max"), spent=("hvps", "max"))
    per = per.sort_values("spent", kind="stable")
    hit = per[per.worst <= level]
    spent = int(hit.spent.iloc[0]) if len(hit) else int(per.spent.max())
    return Reach(f"{tool} ({method})", level, bool(len(hit)), spent)


def reaches(runs: pd.DataFrame, quantity: str, level: float) -> list[Reach]:
    """:func:`reach` for every tool and method that estimated ``quantity``, the cheapest
    first (those that got there before those that did not)."""
    series = runs[runs.quantity == quantity][["tool", "method"]].drop_duplicates()
    found = [reach(runs, quantity, t, m, level) for t, m in series.itertuples(index=False)]
    return sorted(found, key=lambda r: (not r.reached, r.hvps))


# -- coverage of the reported standard errors --------------------------------------------------
def coverage_rows(estimates: pd.DataFrame) -> pd.DataFrame:
    """Per measure, tool and method, at the largest budget: whether it reports a standard
    error (``reports``) and, where it does, the runs (seeds) whose ``estimate +- Z stderr``
    covered the truth, with the coverage's Clopper-Pearson interval (``covered``, ``runs``,
    ``low``, ``high``; NaN where none is reported)."""
    keys = ["measure", "tool", "method"]
    top = estimates.groupby(keys, sort=False).budget.transform("max")
    largest = estimates[estimates.budget == top]
    rows = []
    for key, group in largest.groupby(keys, sort=False):
        reported = group[group.covered.notna()]
        row = dict(zip(keys, key)) | {"budget": int(group.budget.iloc[0]), "reports": False}
        if len(reported) == len(group):
            cover = coverage_table(reported.assign(covered=reported.covered.astype(bool)), keys)
            row |= {"reports": True} | cover.iloc[0][["covered", "runs", "low", "high"]].to_dict()
        rows.append(row)
    out = pd.DataFrame(rows)
    for column in ("covered", "runs", "low", "high"):
        if column not in out:
            out[column] = math.nan
    out["honest"] = out.reports & (out.high >= NOMINAL)
    order = out.measure.map({"trace": 0, "frobenius": 1})
    return out.iloc[order.argsort(kind="stable")].reset_index(drop=True)


# -- what each tool does with inputs flatness refuses ------------------------------------------
#: the relative tolerance every eigensolver of the misuse probe is asked for
PROBE_TOL = 1e-6
#: hessian-eigenthings' Lanczos has no stopping rule: its steps double until it reports every
#: Ritz value converged (to PROBE_TOL), up to this many
PROBE_MAX_STEPS = 320
#: a tool is "silently wrong" when it is off by more than this multiple of its error on the
#: well-posed problem, and by more than PROBE_FLOOR
PROBE_MARGIN = 10.0
PROBE_FLOOR = 1e-6
#: the well-posed problem each tool's normal error is measured on
CONTROL = "control"
#: the inputs of the probe (the control first), as the table names them
KINDS = {
    CONTROL: "well-posed, for comparison",
    "repeated": "repeated eigenvalue, top 2",
    "shuffled": "shuffling loader, last batch dropped",
    "sum": "sum-reduced loss",
    "batchnorm": "BatchNorm, model in train mode",
    "tuple": "model returns a tuple",
}
#: the same, as a sentence names them
PHRASES = {
    CONTROL: "the well-posed problem",
    "repeated": "the repeated eigenvalue",
    "shuffled": "the shuffling loader",
    "sum": "the sum-reduced loss",
    "batchnorm": "BatchNorm in train mode",
    "tuple": "the tuple output",
}
#: warnings that say nothing about the input (PyHessian's graph kept in .grad, torch's own)
_NOISE = ("create_graph=True", "torch.jit.script", "reference cycle")


class Twins(nn.Module):
    """Two independent copies of one network side by side, each predicting the label: outputs
    (N, classes, 2), targets (N, 2). The mean cross-entropy is the average of the copies'
    losses, so the Hessian is block-diagonal with two equal blocks, half the network's own
    Hessian each: each of its eigenvalues appears twice, halved."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.a, self.b = copy.deepcopy(net), copy.deepcopy(net)

    def forward(self, x):
        return torch.stack([self.a(x), self.b(x)], dim=-1)


class WithFeatures(nn.Module):
    """The network, returning ``(logits, inputs)``: the loss is meant to be taken of the first."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x


def with_batchnorm(net: nn.Module, x: torch.Tensor) -> nn.Sequential:
    """The MLP ``Linear, activation, Linear`` with a BatchNorm1d after its first layer, whose
    running statistics are the data's (biased variance, as a batch normalises with), so that
    both modes compute the same outputs here; returned in train mode."""
    first, act, last = net[0], net[1], net[2]
    norm = nn.BatchNorm1d(first.out_features).to(x)
    model = nn.Sequential(nn.Flatten(), copy.deepcopy(first), norm, copy.deepcopy(act))
    model.append(copy.deepcopy(last))
    with torch.no_grad():
        h = model[1](x.flatten(1))
        norm.running_mean.copy_(h.mean(0))
        norm.running_var.copy_(h.var(0, unbiased=False))
    return model.train()


@dataclass
class Case:
    """One input of the probe: a model, data (a factory: a loader is made afresh for each
    tool), the loss as an ``nn.CrossEntropyLoss`` with its reduction, how many eigenvalues to
    ask for and the top eigenvalues of the mean-loss Hessian of the operator the input states
    (``truth``); ``eval_truth``, where BatchNorm makes the modes differ, the same in eval mode."""

    kind: str
    model: nn.Module
    data: Callable
    reduction: str
    k: int
    truth: torch.Tensor
    eval_truth: torch.Tensor | None = None


def shuffled_batch(n: int, batch_size: int) -> int:
    """The shuffling loader's batch for ``n`` examples: ``batch_size``, or one less where that
    divides ``n`` (a partial last batch must be left to drop), and at most ``n - 1``.

    Raises:
        FlatnessError: fewer than 3 examples, too few to drop a partial batch from.
    """
    if n < 3:
        raise FlatnessError(f"a shuffling loader needs at least 3 examples, got {n}")
    size = min(batch_size, n - 1)
    return size if n % size else size - 1


def cases(p: Problem, *, batch_size: int, seed: int = 0) -> list[Case]:
    """The control and every kind of :data:`KINDS` on the chapter's problem, in float64 (where
    rounding is too small to seed a second copy of a repeated eigenvalue into a Krylov space
    grown from one vector, as float32 rounding can). The shuffling loader's batch is
    ``batch_size`` (one less where that divides the examples, so that a partial batch is
    dropped)."""
    net = copy.deepcopy(p.model).double()
    x, y = p.data[0].double(), p.data[1]
    top2 = p.eigenvalues.flip(0)[:2].double()
    size = shuffled_batch(len(y), batch_size)

    def loader():
        generator = torch.Generator().manual_seed(seed)
        dataset = TensorDataset(x, y)
        return DataLoader(
            dataset, batch_size=size, shuffle=True, drop_last=True, generator=generator
        )

    bn = with_batchnorm(net, x)
    train = torch.linalg.eigvalsh(
        H.exact_hessian(bn, ce, (x, y), bn_mode="train", max_params=10**5)
    )
    evals = torch.linalg.eigvalsh(H.exact_hessian(bn, ce, (x, y), bn_mode="eval", max_params=10**5))
    batch = lambda: (x, y)  # noqa: E731
    return [
        Case(CONTROL, net, batch, "mean", 2, top2),
        Case(
            "repeated",
            Twins(net),
            lambda: (x, torch.stack([y, y], -1)),
            "mean",
            2,
            top2[[0, 0]] / 2,
        ),
        Case("shuffled", net, loader, "mean", 1, top2[:1]),
        Case("sum", net, batch, "sum", 1, top2[:1]),
        Case("batchnorm", bn, batch, "mean", 1, train.flip(0)[:1], evals.flip(0)[:1]),
        Case("tuple", WithFeatures(net), batch, "mean", 1, top2[:1]),
    ]


def _flatness_top(model, loss, data, k: int, seed: int, **options):
    return H.top_eigenvalues(
        model, loss, data, k=k, tol=PROBE_TOL, seed=seed, **options
    ).eigenvalues


def _pyhessian_top(model, loss, data, k: int, seed: int):
    """PyHessian as it ships (no flatness check before it): power iteration with deflation."""
    import pyhessian  # noqa: F401  (its package name shadows the module with the class)

    engine_class = sys.modules["pyhessian.hessian"].hessian
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        cuda = device.type == "cuda"
        if isinstance(data, DataLoader):
            engine = engine_class(model, loss, dataloader=data, cuda=cuda)
        else:
            engine = engine_class(model, loss, data=data, cuda=cuda)
        try:
            values, _ = engine.eigenvalues(tol=PROBE_TOL, top_n=k)
        finally:
            model.zero_grad(set_to_none=True)  # the graph PyHessian keeps in .grad
    return values


def _eigenthings_top(model, loss, data, k: int, seed: int):
    """hessian-eigenthings' Lanczos, its steps doubled until it reports every value converged."""
    steps = 4 * k
    while True:
        op = eigenthings_operator(model, data, loss)
        steps = min(steps, op.size - 1)
        r = he.lanczos(
            op, k=k, max_iter=steps, tol=PROBE_TOL, which="LA", reorthogonalize=True, seed=seed
        )
        if bool(r.converged.all()) or steps >= min(PROBE_MAX_STEPS, op.size - 1):
            return r.eigenvalues
        steps *= 2


def _curvlinops_top(model, loss, data, k: int, seed: int):
    """SciPy's ARPACK on curvlinops' operator, made with its defaults (its checks included)."""
    return arpack(curvlinops_operator(model, data, loss), k, PROBE_TOL, seed=seed)


#: tool -> its top-k call in the probe
PROBES = {
    "flatness": _flatness_top,
    "PyHessian": _pyhessian_top,
    "hessian-eigenthings": _eigenthings_top,
    "curvlinops": _curvlinops_top,
}


@dataclass(frozen=True)
class Outcome:
    """What one tool did with one input: the values it returned (descending) or the error it
    raised, and the warnings it gave that concern the input."""

    values: tuple[float, ...] | None
    error: str | None
    warned: tuple[str, ...] = ()


def probe(tool: str, case: Case, *, seed: int = 0, **options) -> Outcome:
    """Hand ``case`` to ``tool`` as a user would (a fresh copy of the model, fresh data)."""
    model = copy.deepcopy(case.model)
    loss = nn.CrossEntropyLoss(reduction=case.reduction)
    # curvlinops prints its failed determinism check; the page shows the error instead
    with warnings.catch_warnings(record=True) as seen, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        try:
            values = PROBES[tool](model, loss, case.data(), case.k, seed, **options)
        except Exception as err:  # whatever the tool raises is its refusal
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return Outcome(None, f"{type(err).__name__}: {first}"[:300])
    told = tuple(
        str(w.message).splitlines()[0]
        for w in seen
        if not any(noise in str(w.message) for noise in _NOISE)
    )
    if torch.is_tensor(values):
        values = values.detach().cpu().double().numpy()
    values = np.sort(np.array(values, dtype=np.float64))[::-1]
    return Outcome(tuple(float(v) for v in values), None, told)


def error_of(outcome: Outcome, truth: torch.Tensor) -> float:
    """The largest relative error of what a tool returned (inf where it returned too few)."""
    if outcome.values is None:
        return math.nan
    if len(outcome.values) < len(truth):
        return math.inf
    return _worst(outcome.values[: len(truth)], truth.cpu())


def classify(outcome: Outcome, truth: torch.Tensor, tolerance: float) -> str:
    """``"refused"`` (it raised an error), ``"silently wrong"`` (it returned numbers off by more
    than ``tolerance`` relative to ``truth`` and gave no warning; ``"wrong, with a warning"``
    where it gave one) or ``"right"``."""
    if outcome.values is None:
        return "refused"
    if error_of(outcome, truth) <= tolerance:
        return "right"
    return "wrong, with a warning" if outcome.warned else "silently wrong"


def tolerance(normal: float) -> float:
    """How far off a tool may be and still count as right: :data:`PROBE_MARGIN` times its
    error on the well-posed problem (``normal``), and at least :data:`PROBE_FLOOR`."""
    return max(PROBE_MARGIN * normal, PROBE_FLOOR)


def misuse_runs(p: Problem, *, batch_size: int, seed: int = 0) -> pd.DataFrame:
    """Every tool on every case of :func:`cases`. One row per (kind, tool): ``kind``, ``tool``,
    ``outcome`` (:func:`classify` against the tool's own tolerance, from the control),
    ``values`` (returned), ``truth``, ``eval truth`` (for BatchNorm, the eval-mode value),
    ``rel error``, ``tolerance``, ``error`` (what it raised),
    ``warned`` and ``eval mode`` (for BatchNorm: whether what it returned is the eval-mode
    value). A last row, tool ``"flatness (bn_mode='train')"``, asks flatness for BatchNorm's
    batch statistics explicitly."""
    found = cases(p, batch_size=batch_size, seed=seed)
    control = found[0]
    rows, tolerances = [], {}
    for tool in TOOLS:
        outcome = probe(tool, control, seed=seed)
        normal = error_of(outcome, control.truth)
        tolerances[tool] = tolerance(normal) if math.isfinite(normal) else PROBE_FLOOR
        rows.append(_misuse_row(control, tool, outcome, tolerances[tool]))
    for case in found[1:]:
        for tool in TOOLS:
            rows.append(_misuse_row(case, tool, probe(tool, case, seed=seed), tolerances[tool]))
    bn = next(c for c in found if c.kind == "batchnorm")
    asked = probe("flatness", bn, seed=seed, bn_mode="train")
    rows.append(_misuse_row(bn, "flatness (bn_mode='train')", asked, tolerances["flatness"]))
    return pd.DataFrame(rows)


def _misuse_row(case: Case, tool: str, outcome: Outcome, tol: float) -> dict:
    eval_mode = None
    if case.eval_truth is not None and outcome.values is not None:
        eval_mode = error_of(outcome, case.eval_truth) <= tol
    return {
        "kind": case.kind,
        "tool": tool,
        "outcome": classify(outcome, case.truth, tol),
        "values": outcome.values,
        "truth": tuple(case.truth.tolist()),
        "eval truth": None if case.eval_truth is None else tuple(case.eval_truth.tolist()),
        "rel error": error_of(outcome, case.truth),
        "tolerance": tol,
        "error": outcome.error,
        "warned": outcome.warned,
        "eval mode": eval_mode,
    }
