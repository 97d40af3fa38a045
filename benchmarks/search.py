"""Equal achieved accuracy: for each tool, its cheapest setting that meets the target, timed.

- Eigenvalues: the tool's accuracy knob from loose to tight; the first setting whose top-k
  values are all within ``EIG_RTOL`` (relative) of the reference; timed best of 3.
- Trace / Frobenius norm, to a ``SE_TARGET`` relative standard error, by the estimator's kind:
  ``adaptive``: the tool stops at the requested rtol itself; timed best of 3 (same seed).
  ``reported``: the smallest budget whose own standard error (the tool's) is within target.
  ``samples``: Hutchinson; probes needed ``(sd / (target |mean|))^2`` from the per-probe
  spread, times the tool's per-probe time on real runs of up to ``run_s`` seconds (exactly
  the needed probes when they fit). The spread is pooled over every Hutchinson run of the
  problem (all tools, both data modes: one distribution), ``|mean|`` is the reference value.
  ``actual``: deterministic-like estimators without a standard error (XTrace, curvlinops'
  Hutch++): the smallest budget whose RMS relative error over 3 seeds, against the
  reference, is within the target; the time is the best of those 3 runs.
  Budget searches start at flatness's own HVP count for the cell and move by ~1.5x.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

EIG_RTOL = 1e-3
SE_TARGET = 0.01
#: per method and cell: search cap, longest real Hutchinson run, runs longer than long_s are
#: repeated fewer times (best of 2 or 1), Hutchinson pilot probes; full and quick
SETTINGS = {
    False: {"cap_s": 30.0, "run_s": 4.0, "long_s": 5.0, "pilot": 32},
    True: {"cap_s": 2.0, "run_s": 0.5, "long_s": 0.5, "pilot": 16},
}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def best_of(fn, first: float, long_s: float, repeats: int = 3) -> tuple[float, int]:
    """The fastest of ``repeats`` runs (the first already made); fewer when they are long."""
    times = [first]
    while len(times) < repeats and sum(times) < long_s * len(times):
        times.append(timed(fn)[1])
    return min(times), len(times)


def _eig_error(values, truth) -> float:
    values = np.asarray(values, dtype=np.float64)[: len(truth)]
    if len(values) < len(truth) or not np.all(np.isfinite(values)):
        return math.inf
    return float(np.max(np.abs(values - truth) / np.abs(truth)))


def eigen_cell(method, problem, mode: str, k: int, truth, cfg: dict) -> dict:
    truth = np.asarray(truth[:k], dtype=np.float64)
    tried, spent = [], 0.0
    grid = [g for g in method.grid if method.knob != "steps" or g >= k]
    for knob in grid:
        run = lambda knob=knob: method.run(problem, mode, k, knob)
        (values, hvps, capped), seconds = timed(run)
        spent += seconds
        err = _eig_error(values, truth)
        tried.append({"knob": knob, "error": err, "seconds": seconds, "hvps": hvps})
        if err <= EIG_RTOL:
            best, runs = best_of(run, seconds, cfg["long_s"])
            return {
                "reached": True,
                "setting": f"{method.knob}={knob}",
                "error": err,
                "seconds": best,
                "runs": runs,
                "hvps": hvps,
                "tried": tried,
            }
        if capped:
            why = f"iteration cap at {method.knob}={knob}"
            break
        if spent > cfg["cap_s"]:
            why = f"search cap {cfg['cap_s']:.0f}s at {method.knob}={knob}"
            break
    else:
        why = f"{method.knob} grid exhausted at {grid[-1]}"
    return {"reached": False, "why": why, "error": tried[-1]["error"], "tried": tried}


def _round_up(budget: float, multiple: int) -> int:
    return multiple * max(1, math.ceil(budget / multiple))


def _cheapest(check, start: int, multiple: int, size: int, cap_s: float):
    """The smallest budget (on a grid growing ~1.5x) that passes ``check``, searched from
    ``start`` (flatness's own HVP count for the cell) down while it passes, else up until it
    passes, the search time passes ``cap_s`` or the budget reaches P. ``check(budget)`` gives
    (passed, payload, seconds). Returns (budget, payload) of the cheapest pass, or
    (None, payload of the last budget tried)."""
    budget, spent = min(_round_up(start, multiple), size - 1), 0.0
    passed, payload, seconds = check(budget)
    spent += seconds
    if passed:
        best = (budget, payload)
        while True:
            smaller = multiple * math.floor(budget / 1.5 / multiple)
            if smaller < multiple or smaller >= budget:
                return best
            ok, pay, seconds = check(smaller)
            if not ok:
                return best
            budget, best = smaller, (smaller, pay)
    while spent <= cap_s:
        budget = max(budget + multiple, _round_up(1.5 * budget, multiple))
        if budget >= size:
            break
        passed, payload, seconds = check(budget)
        spent += seconds
        if passed:
            return budget, payload
    return None, payload


def trace_cell(
    method, problem, mode: str, truth: float, cfg: dict, anchor: int = 30, seeds: int = 0
) -> dict:
    """One estimator on one cell; ``anchor``: where budget searches start (flatness's HVPs);
    ``seeds``: added to every seed, so that no two estimators draw the same probes."""
    scale = 2.0 if method.quantity == "frobenius" else 1.0  # se of sqrt(x): half of x's
    size, kind = problem.parameters, method.kind
    run_at = lambda budget, seed=0: lambda: method.run(problem, mode, budget, seeds + seed)
    cap = f"search cap {cfg['cap_s']:.0f}s or P"

    def result(r, seconds, runs, setting, rel_se, **extra):
        out = {"reached": rel_se <= SE_TARGET * (1 + 1e-9), "setting": setting, "rel_se": rel_se}
        out.update(estimate=r["estimate"], error=abs(r["estimate"] - truth) / abs(truth))
        out.update(seconds=seconds, runs=runs, hvps=r.get("hvps"), **extra)
        if not out["reached"]:
            out["why"] = f"relative standard error {rel_se:.4f} > {SE_TARGET}"
        return out

    if kind == "adaptive":
        r, seconds = timed(run_at(None))
        best, runs = best_of(run_at(None), seconds, cfg["long_s"])
        extra = {"converged": r.get("converged"), "estimator": r.get("method")}
        return result(r, best, runs, "rtol=0.01", r["stderr"] / abs(r["estimate"]), **extra)

    if kind == "reported":  # the tool's own standard error

        def check(budget):
            r, seconds = timed(run_at(budget))
            rel = r["stderr"] / abs(r["estimate"])
            return rel <= SE_TARGET, (r, seconds, rel), seconds

        budget, (r, seconds, rel) = _cheapest(check, anchor, method.multiple, size, cfg["cap_s"])
        if budget is None:
            out = result(r, seconds, 1, "", rel)
            out["why"] += f" at {r['hvps']} HVPs ({cap})"
            return out
        best, runs = best_of(run_at(budget), seconds, cfg["long_s"])
        return result(r, best, runs, f"{budget} HVPs", rel)

    if kind == "samples":
        # a pilot for the spread and the per-probe time, then real runs of the probes needed
        # (at most run_s seconds of them), each with its own seed; the probes needed are
        # settled later from every Hutchinson sample of the problem (pool_hutchinson)
        center = truth if method.quantity == "trace" else truth**2
        pilot = cfg["pilot"]
        r, seconds = timed(run_at(pilot, 0))
        pool, need = [r["samples"]], _needed(r["samples"], center, scale)
        probes = int(min(need, max(pilot, cfg["run_s"] * pilot / seconds), size - 1))
        if probes > 1.25 * pilot:
            r, seconds = timed(run_at(probes, 1))
            pool = [r["samples"]]
        else:
            probes = pilot
        times = [seconds]
        while len(times) < 3 and sum(times) < cfg["long_s"] * len(times):
            r, t = timed(run_at(probes, len(times) + 1))
            pool.append(r["samples"])
            times.append(t)
        out = result(r, math.nan, len(times), "", math.nan)
        out.update(probes_timed=probes, per_probe_s=min(times) / probes, center=center)
        out.update(scale=scale, _samples=torch.cat(pool))
        return settle(out, out["_samples"], "its own")

    # kind == "actual": smallest budget whose RMS error over 3 seeds is within the target
    # (seed 0 alone first: a budget whose error there exceeds 1.5x the target is not run twice
    # more)
    tried = []

    def check(budget):
        runs = [timed(run_at(budget, 0))]
        if abs(runs[0][0]["estimate"] - truth) <= 1.5 * SE_TARGET * abs(truth):
            runs += [timed(run_at(budget, seed)) for seed in (1, 2)]
        rms = math.sqrt(sum(((r["estimate"] - truth) / truth) ** 2 for r, _ in runs) / len(runs))
        tried.append({"budget": budget, "seeds": len(runs), "rms_error": rms})
        return len(runs) == 3 and rms <= SE_TARGET, (runs, rms), sum(t for _, t in runs)

    budget, (runs, rms) = _cheapest(check, anchor, method.multiple, size, cfg["cap_s"])
    if budget is None:
        last = tried[-1]
        why = f"error {last['rms_error']:.4f} at {last['budget']} HVPs ({cap})"
        return {"reached": False, "why": why, "error": last["rms_error"], "tried": tried}
    out = result(runs[0][0], min(t for _, t in runs), 3, f"{budget} HVPs", rms)
    out.update(error=rms, tried=tried)
    return out


def settle(row: dict, samples: torch.Tensor, source: str) -> dict:
    """A Hutchinson row's probes needed, time and standard error from a given spread."""
    need = _needed(samples, row["center"], row["scale"])
    sd_rel = samples.std().item() / abs(row["center"]) / row["scale"]
    row.update(probes_needed=need, per_probe_rel_sd=sd_rel, spread_from=f"{len(samples)} {source}")
    row.update(seconds=row["per_probe_s"] * need, rel_se=sd_rel / math.sqrt(need), reached=True)
    timed_on = row["probes_timed"]
    row["setting"] = f"{need} probes" + ("" if need == timed_on else f" (timed on {timed_on})")
    row.pop("why", None)
    return row


def pool_hutchinson(rows: list[dict]) -> None:
    """Settle every Hutchinson row from the pooled per-probe values of all of them for the same
    quantity (every tool draws Rademacher probes of the same H, in both data modes, so their
    values share one distribution; a spread from a few dozen probes alone is too noisy)."""
    for quantity in ("trace", "Frobenius"):
        group = [r for row in rows for r in row["cells"][quantity] if "_samples" in r]
        if group:
            pooled = torch.cat([r["_samples"] for r in group])
            for r in group:
                r["own_rel_sd"] = r["per_probe_rel_sd"]
                settle(r, pooled, f"pooled from {len(group)} runs")


def _needed(samples, center: float, scale: float) -> int:
    """Probes for a ``SE_TARGET`` relative standard error: ``(sd / (target |center|))^2``, the
    center being the reference value (the same for every tool, and less noisy than a mean)."""
    return max(2, math.ceil((samples.std().item() / (scale * SE_TARGET * abs(center))) ** 2))
