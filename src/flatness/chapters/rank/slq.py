"""The SLQ part of the chapter "Is the Hessian low-rank?" (claim C6).

A network too large for a dense Hessian gets stochastic Lanczos quadrature (SLQ): its mass near
zero, bracketed by the Chebyshev-Markov-Stieltjes inequalities (:func:`slq_fraction`), is first
checked against the exact fraction on the small nets (:func:`slq_check`), then measured on the
large ReLU net (:func:`large_net`) and judged against each bound per seed (:func:`slq_cases`)
and over seeds (:func:`slq_verdicts`).
Every name here is also served by :mod:`flatness.chapters.rank`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from flatness import hessian, models
from flatness.chapters.rank.design import ACTIVATIONS, BOUNDS, RankSettings
from flatness.chapters.rank.exact import CODE, Spectrum, network_inputs
from flatness.chapters.rank.networks import Architecture, bounds, ce, data_rank, trained_model
from flatness.errors import RunMissing
from flatness.results.computations import cached
from flatness.results.runs import load_or_run
from flatness.training.loop import load_model


def near_zero_fraction(eigenvalues: torch.Tensor, tol: float) -> float:
    """The fraction of eigenvalues with |lambda| <= tol."""
    return float((eigenvalues.abs() <= tol).double().mean())


def slq_fraction(density: hessian.SpectralDensity, tol: float) -> dict[str, float]:
    """SLQ's mass within |lambda| <= tol, averaged over probes.

    ``slq``: the Gauss rule's, sum_j w_j [|theta_j| <= tol]. ``low`` and ``high``: the bracket
    the Chebyshev-Markov-Stieltjes inequalities give each probe's exact spectral measure mu
    (Golub and Meurant, *Matrices, Moments and Quadrature*, 2010): with ascending nodes,
    sum_{j<k} w_j <= mu(-inf, theta_k) and mu(-inf, theta_k] <= sum_{j<=k} w_j, so the CDF at t
    lies between the weight of the nodes below t less the nearest one and the weight of the
    nodes up to t plus the next one. ``slq_se``: standard error of ``slq`` over probes.
    """
    nodes, weights = density.nodes, density.weights
    order = nodes.argsort(dim=1)
    nodes, weights = nodes.gather(1, order), weights.gather(1, order)
    cum = torch.cat([torch.zeros(len(nodes), 1, dtype=weights.dtype), weights.cumsum(1)], dim=1)

    def cdf_bounds(t: float):
        count = (nodes <= t).sum(dim=1, keepdim=True)  # nodes at or below t
        low = cum.gather(1, (count - 1).clamp(min=0))
        high = cum.gather(1, (count + 1).clamp(max=nodes.shape[1]))
        return low.squeeze(1), high.squeeze(1)

    low_t, high_t = cdf_bounds(tol)
    low_m, high_m = cdf_bounds(-tol)
    per_probe = (weights * (nodes.abs() <= tol)).sum(dim=1)
    low, high = (low_t - high_m).clamp(min=0), (high_t - low_m).clamp(max=1)
    n = len(per_probe)

    def se(values):
        return values.std().item() / math.sqrt(n) if n > 1 else math.nan

    return {
        "slq": per_probe.mean().item(),
        "slq_se": se(per_probe),
        "low": low.mean().item(),
        "low_se": se(low),
        "high": high.mean().item(),
        "high_se": se(high),
    }


def tolerances(s: RankSettings, scale: float) -> dict[str, float]:
    """Absolute thresholds: each ``rtol * scale`` (scale = max |lambda|) and ``atol``."""
    return {f"rel {t:g}": t * scale for t in s.rtols} | {f"abs {s.atol:g}": s.atol}


def density(
    model, data, s: RankSettings, seed: int, *, profile: str | None = None
) -> hessian.SpectralDensity:
    """SLQ of the Hessian in float64 (float32 products would blur the smallest eigenvalues),
    computed once and kept in the results store, keyed by the network, its weights, the sample,
    the steps, probes and seed."""
    model = model.double()
    x, y = data.x_train.double(), data.y_train

    def compute():
        d = hessian.spectral_density(model, ce, (x, y), s.slq_steps, s.slq_probes, seed=seed)
        return {
            "nodes": d.nodes,
            "weights": d.weights,
            "size": d.size,
            "hvps": d.hvps,
            "seconds": d.seconds,
        }

    inputs = network_inputs(model, x, y, profile) | {
        "steps": s.slq_steps,
        "probes": s.slq_probes,
        "seed": seed,
    }
    found = cached("rank.slq_density", inputs, compute, code=CODE)
    # hvps and seconds are those of the computation, whenever it ran
    return hessian.SpectralDensity(
        found["nodes"], found["weights"], found["size"], found["hvps"], found["seconds"]
    )


def slq_check(
    s: RankSettings, data, results: list[Spectrum], *, store=None, data_root=None, profile=None
):
    """Near-zero mass by SLQ against the exact fraction, for each net trained without weight
    decay (first seed), at every tolerance."""
    wd, seed = min(s.weight_decays), s.seeds[0]
    rows = []
    for activation in ACTIVATIONS:
        exact = next(
            r
            for r in results
            if (r.activation, r.state, r.weight_decay, r.seed) == (activation, "trained", wd, seed)
        )
        model = trained_model(s, activation, wd, seed, data, store=store, data_root=data_root)
        dens = density(model, data, s, seed, profile=profile)
        for tol, value in tolerances(s, exact.hessian.abs().max().item()).items():
            exact_fraction = near_zero_fraction(exact.hessian, value)
            row = {"activation": activation, "tolerance": tol, "exact": exact_fraction}
            rows.append(row | slq_fraction(dens, value))
    out = pd.DataFrame(rows)
    out["error"] = out.slq - out.exact
    out["bracketed"] = (out.low <= out.exact) & (out.exact <= out.high)
    return out


def large_net(
    s: RankSettings, data, *, store=None, data_root=None, train_missing=True, profile=None
) -> pd.DataFrame:
    """SLQ's near-zero mass of the large ReLU net at initialisation and trained, per seed, beside
    the fraction each bound predicts, 1 - bound / P."""
    runs, missing = {}, []
    for seed in s.seeds:  # every lookup first: all missing runs are named at once
        for wd in s.weight_decays:
            cfg = s.run_config("relu", wd, seed, large=True)
            try:
                runs[cfg.key()] = load_or_run(
                    cfg, store=store, data_root=data_root, device="cpu", train_missing=train_missing
                )
            except RunMissing as err:
                missing += err.configs
    if missing:
        raise RunMissing(missing)
    rows = []
    for seed in s.seeds:
        torch.manual_seed(seed)
        states = [
            (
                "initial",
                math.nan,
                models.build(s.slq_model, data.input_shape, data.num_classes, width=s.slq_width),
            )
        ]
        for wd in s.weight_decays:
            cfg = s.run_config("relu", wd, seed, large=True)
            run = runs[cfg.key()]
            states.append(
                ("trained", wd, load_model(cfg, run.arrays, data.input_shape, data.num_classes))
            )
        for state, wd, model in states:
            dens = density(model, data, s, seed, profile=profile)
            for tol, value in tolerances(s, dens.nodes.abs().max().item()).items():
                row = {"state": state, "weight_decay": wd, "seed": seed, "tolerance": tol}
                rows.append(row | slq_fraction(dens, value))
    out = pd.DataFrame(rows)
    arch = Architecture.of(
        models.build(s.slq_model, data.input_shape, data.num_classes, width=s.slq_width)
    )
    values = bounds(arch, len(data.y_train), data_rank(data.x_train))
    for b, v in values.items():
        out[f"predicted_{b}"] = max(0.0, 1 - v / arch.parameters)
    out.attrs |= {"parameters": arch.parameters, "ceiling": arch.ceiling, "bounds": values}
    return out


def judge_case(row, bound: str) -> str:
    """One SLQ measurement against one bound: *fails* where the bound's predicted zero
    fraction 1 - bound/P is above the bracket's upper end by more than two standard errors
    (then rank > bound), *holds* where it is below the lower end by as much, *undecided*
    otherwise."""
    p = row[f"predicted_{bound}"]
    if p > row["high"] + 2 * np.nan_to_num(row["high_se"]):
        return "fails"
    if p < row["low"] - 2 * np.nan_to_num(row["low_se"]):
        return "holds"
    return "undecided"


def slq_cases(large: pd.DataFrame) -> pd.DataFrame:
    """:func:`large_net`'s rows (one per state, weight decay, seed and tolerance) with each
    bound's :func:`judge_case` in a column named after the bound."""
    out = large.copy()
    for b in BOUNDS:
        out[b] = [judge_case(r, b) for _, r in large.iterrows()]
    return out


def slq_verdicts(large: pd.DataFrame) -> pd.DataFrame:
    """Per state, weight decay and tolerance, each bound's :func:`judge_case` over the seeds:
    their common verdict, else "mixed"; with the bracket and the Gauss rule averaged over
    seeds."""
    t = slq_cases(large).fillna({"weight_decay": -1.0})
    rows = []
    for key, group in t.groupby(["state", "weight_decay", "tolerance"], sort=False):
        row = dict(zip(["state", "weight_decay", "tolerance"], key))
        row |= {
            "low": group.low.mean(),
            "high": group.high.mean(),
            "slq": group.slq.mean(),
            "slq_sd": group.slq.std(ddof=1),
        }
        for b in BOUNDS:
            verdicts = set(group[b])
            row[b] = verdicts.pop() if len(verdicts) == 1 else "mixed"
        rows.append(row)
    out = pd.DataFrame(rows)
    out["weight_decay"] = out["weight_decay"].where(out["weight_decay"] >= 0)
    return out
