"""flatness.hessian against PyHessian, hessian-eigenthings and curvlinops at equal accuracy.

``make bench`` (``--quick`` for a smaller CNN data set and shorter searches). Two briefly
trained models (problems.py), each with its data as one batch and as an 8-batch DataLoader;
every tool runs the float32 model in eval mode. Each tool's answer is scored against a float64
reference computed here without any of the tools (reference.py). Cells:

- top-1 / top-5 eigenvalues to a relative error of 1e-3: each tool's cheapest setting that
  gets there (its tol, or its number of Lanczos steps), timed best of 3;
- trace / Frobenius norm to a 1 % relative standard error, per estimator (search.py);
- a full measurement (all three measures to those targets, ``measure_all``) against the sum
  of the fastest peer calls for the same numbers, with its cost in training epochs; HVP cost
  per vector by block size; one exact softmax-regression measurement at the digits size
  (quiet and beside one busy process) and at the MNIST size (full.py).

The table gives, per cell, flatness's time, the best peer's time and name, and their ratio
(below 1: flatness is faster); the detail block lists every tool's setting, achieved error and
time. Results also go to ``_build/bench/hessian.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import time
import warnings
from pathlib import Path

import extras
import full
import peers
import search
import torch
from problems import MODES, ce, problems
from reference import reference

CELLS = ("top-1", "top-5", "trace", "Frobenius")
OUT = Path("_build/bench/hessian.json")


def fmt_s(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return f"{seconds:.3f}s" if seconds < 10 else f"{seconds:.1f}s"


def describe(row: dict) -> str:
    if not row["reached"]:
        return f"not reached ({row['why']})"
    text = f"{row['setting']}, {fmt_s(row['seconds'])} (best of {row['runs']})"
    if row.get("estimator"):
        text += f", {row['estimator']}" + ("" if row.get("converged", True) else " (NOT converged)")
    if row.get("hvps") is not None and row.get("kind") != "samples":
        text += f", {row['hvps']} HVPs"
    if row.get("kind") == "actual":
        return text + f", RMS error over 3 seeds {row['error']:.2e}"
    if "rel_se" in row:
        text += f", rel. s.e. {row['rel_se']:.4f}"
    if row.get("kind") == "samples":
        text += f" (per-probe rel. sd {row['per_probe_rel_sd']:.3f} from {row['spread_from']}"
        if "own_rel_sd" in row:
            text += f"; its own {row['own_rel_sd']:.3f}"
        text += ")"
        if row["probes_timed"] != row["probes_needed"]:
            return text + f", error of a {row['probes_timed']}-probe run {row['error']:.2e}"
    return text + f", error {row['error']:.2e}"


def guarded(fn, *args) -> dict:
    """A cell's measurement, or a "not reached" row saying how the tool failed."""
    try:
        return fn(*args)
    except Exception as e:  # a peer's failure is a result, not the end of the bench
        return {"reached": False, "why": f"failed: {type(e).__name__}: {str(e)[:80]}"}


def measure_row(problem, mode: str, ref: dict, cfg: dict) -> dict:
    """Every tool on every cell of one (model, data mode)."""
    cells = {}
    for k, cell in ((1, "top-1"), (5, "top-5")):
        cells[cell] = []
        for m in peers.eigen_methods():
            r = guarded(search.eigen_cell, m, problem, mode, k, ref["eigenvalues"], cfg)
            r.update(tool=m.tool, method=m.method)
            cells[cell].append(r)
            print(f"  {cell:9} {m.tool:11} {m.method:22} {describe(r)}", flush=True)
    for quantity, cell in (("trace", "trace"), ("frobenius", "Frobenius")):
        cells[cell] = []
        anchor = 30
        for i, m in enumerate(peers.trace_methods()):
            if m.quantity != quantity:
                continue
            seeds = 1000 * i + 100 * MODES.index(mode)  # distinct probes for every run
            r = guarded(search.trace_cell, m, problem, mode, ref[quantity], cfg, anchor, seeds)
            if m.tool == "flatness" and r.get("hvps"):
                anchor = r["hvps"]  # the peers' budget searches start where flatness stopped
            r.update(tool=m.tool, method=m.method, kind=m.kind)
            cells[cell].append(r)
            print(f"  {cell:9} {m.tool:11} {m.method:22} {describe(r)}", flush=True)
        for missing in peers.MISSING.get(quantity, []):
            cells[cell].append(
                {
                    "tool": missing.split()[0],
                    "method": "no estimator",
                    "reached": False,
                    "why": "no estimator",
                }
            )
    return cells


def summarise(cells: dict) -> dict:
    """Per cell: flatness's time, the best peer (fastest that reached the target), the ratio."""
    out = {}
    for cell, rows in cells.items():
        # flatness's default; its block=k row is a comparison for the detail block only
        ours = [
            r
            for r in rows
            if r["tool"] == "flatness" and r["reached"] and "block=" not in r["method"]
        ]
        theirs = [r for r in rows if r["tool"] != "flatness" and r["reached"]]
        best = min(theirs, key=lambda r: r["seconds"]) if theirs else None
        t_ours = ours[0]["seconds"] if ours else None
        out[cell] = {
            "flatness_seconds": t_ours,
            "peer_seconds": best["seconds"] if best else None,
            "peer": f"{best['tool']} {best['method']}" if best else None,
            "peer_projected": bool(
                best and best.get("probes_timed", 0) != best.get("probes_needed", 0)
            ),
            "ratio": t_ours / best["seconds"] if (ours and best) else None,
        }
    return out


def print_table(rows: list[dict]) -> None:
    """One row per (model, data); under each cell's times, the best peer's name."""
    width = 38
    head = f"{'model, data':26}" + "".join(f"| {c:{width - 2}}" for c in CELLS)
    sub = f"{'':26}" + "".join(f"| {'flatness / best peer = ratio':{width - 2}}" for _ in CELLS)
    print("\n" + head + "\n" + sub + "\n" + "-" * len(head))
    for row in rows:
        times, names = f"{row['model'] + ', ' + row['mode']:26}", f"{'':26}"
        for cell in CELLS:
            s = row["summary"][cell]
            ours = fmt_s(s["flatness_seconds"]) if s["flatness_seconds"] else "not reached"
            theirs = fmt_s(s["peer_seconds"]) + ("~" if s["peer_projected"] else "")
            if s["peer_seconds"] is None:
                theirs = "no peer reached"
            ratio = f" = {s['ratio']:.2f}" if s["ratio"] is not None else ""
            times += f"| {ours + ' / ' + theirs + ratio:{width - 2}}"
            names += f"|   {s['peer'] or '':{width - 4}}"
        print(times + "\n" + names)
    print(
        "~ projected: Hutchinson's probes needed (from the pooled per-probe spread) x its "
        "per-probe time on real runs"
    )


def print_full(rows: list[dict], exact: dict | None) -> None:
    """The full measurement against the peers' three calls, and its cost in training epochs."""
    print(
        "\nfull measurement (lambda_max to the eigenvalue target, trace and Frobenius norm to "
        "the standard-error target) = flatness.hessian.measure_all / the fastest peer calls "
        "for the same three numbers:"
    )
    for row in rows:
        f = row["full"]
        epochs = (
            f", {f['seconds'] / row['epoch_seconds']:.1f} training epochs "
            f"(one epoch {fmt_s(row['epoch_seconds'])})"
            if f.get("reached")
            else ""
        )
        line = full.describe_full(f, row["full_peers"])
        print(f"  {row['model'] + ', ' + row['mode']:26} {line}{epochs}")
    if exact:
        print(
            f"exact softmax regression, one measurement: digits ({exact['digits_parameters']} "
            f"parameters, {exact['digits_examples']} examples) {fmt_s(exact['digits_seconds'])}, "
            f"beside one busy process {fmt_s(exact['digits_seconds_beside_one_busy_process'])}; "
            f"MNIST size (7,850 parameters, 60,000 examples of {exact['mnist_source']}) "
            f"{fmt_s(exact['mnist_seconds'])}"
        )


def print_detail(rows: list[dict]) -> None:
    print("\ndetail (setting, time, HVPs, relative standard error, error against the reference):")
    for row in rows:
        print(f"\n{row['model']}, {row['mode']}")
        for cell in CELLS:
            for r in row["cells"][cell]:
                print(f"  {cell:9} {r['tool']:11} {r['method']:26} {describe(r)}")


def _plain(row: dict) -> dict:
    """A row without its raw per-probe tensors, for the JSON file."""
    cells = {
        c: [{k: v for k, v in r.items() if k != "_samples"} for r in rs]
        for c, rs in row["cells"].items()
    }
    return {**row, "cells": cells}


def print_reference(ref: dict) -> None:
    when = "cached" if ref["cached"] else f"{ref['seconds']:.0f}s"
    print(f"reference ({when}): {ref['how']}")
    eig = ", ".join(f"{v:.6g}" for v in ref["eigenvalues"])
    tr_se = ref["trace_stderr"] / abs(ref["trace"])
    fro_se = ref["frobenius_stderr"] / ref["frobenius"]
    print(
        f"  top-5 {eig}; trace {ref['trace']:.6g} (rel. s.e. {tr_se:.1e}), "
        f"Frobenius {ref['frobenius']:.6g} (rel. s.e. {fro_se:.1e})",
        flush=True,
    )


def main() -> None:
    # backpack (under curvlinops) uses torch.jit.script, deprecated in this torch
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller CNN data, shorter searches")
    parser.add_argument(
        "--no-extras", action="store_true", help="skip loader HVP cost and SLQ memory"
    )
    args = parser.parse_args()
    cfg = search.SETTINGS[args.quick]
    start = time.perf_counter()
    if not peers.flatness_has_rtol():
        print("NOTE: flatness.hessian.trace has no rtol yet: flatness uses fixed probe budgets")
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    rows, side = [], []
    for problem in problems(args.quick):
        with torch.no_grad():
            loss = ce(problem.model(problem.x), problem.y).item()
        print(
            f"\n== {problem.name}: {problem.parameters:,} parameters, {len(problem.x)} examples "
            f"(trained, eval-mode loss {loss:.3g}), loader of {problem.loader_batch}-example batches",
            flush=True,
        )
        ref = reference(problem, **({"probes": 64, "sketch": 20} if args.quick else {}))
        print_reference(ref)
        ours = []
        for mode in MODES:
            print(f"-- {mode} (at {time.perf_counter() - start:.0f}s)", flush=True)
            cells = measure_row(problem, mode, ref, cfg)
            ours.append({"model": problem.name, "mode": mode, "cells": cells})
            ours[-1].update(parameters=problem.parameters, examples=len(problem.x))
        search.pool_hutchinson(ours)  # Hutchinson's probes needed from all its samples here
        epoch = full.epoch_seconds(problem)
        for row in ours:
            row["summary"] = summarise(row["cells"])
            row["full"] = full.full_cell(problem, row["mode"], ref, cfg)
            row["full_peers"] = full.peers_sum(row["summary"])
            row["epoch_seconds"] = epoch
            print(f"  full      {full.describe_full(row['full'], row['full_peers'])}", flush=True)
        rows += ours
        extra = {
            "model": problem.name,
            "reference": {k: v for k, v in ref.items() if k != "cached"},
        }
        if not args.no_extras:
            extra["loader_hvp_cost"] = c = extras.hvp_cost(problem)
            print(
                f"loader HVP in gradient passes: PyHessian {c['pyhessian_passes_per_hvp']:.2f}, "
                f"flatness one vector {c['flatness_passes_per_hvp_single']:.2f}, "
                f"16 per pass {c['flatness_passes_per_hvp_batched16']:.2f}",
                flush=True,
            )
            extra["block_cost"] = b = full.block_cost(problem)
            print(
                "HVP seconds per vector: "
                + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in b.items()),
                flush=True,
            )
            extra["ggn_cost"] = g = full.ggn_cost(problem)
            print(
                "exact GGN trace: "
                + ", ".join(
                    f"{k} {fmt_s(v['seconds'])} = {v['products']:.1f} products"
                    for k, v in g.items()
                ),
                flush=True,
            )
            extra["slq_memory"] = m = extras.slq_memory(problem)
            print(
                f"SLQ 30 steps x 4 probes: peak extra RSS {m['peak_extra_mib']:.1f} MiB "
                f"(bases alone {m['basis_mib']:.1f} MiB)",
                flush=True,
            )
        side.append(extra)
    if peers._COUNTER is not None:
        peers._COUNTER.close()
    exact = None if args.no_extras else full.exact_rows()
    print_table(rows)
    print_full(rows, exact)
    print_detail(rows)
    total = time.perf_counter() - start
    print(
        f"\ntargets: eigenvalues within {search.EIG_RTOL:g} relative; trace and Frobenius to "
        f"{search.SE_TARGET:.0%} relative standard error. Ratio < 1: flatness faster. "
        f"Whole run {total:.0f}s, torch threads {torch.get_num_threads()}, peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB, "
        f"load average at the end {os.getloadavg()[0]:.2f}."
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "seconds": total,
                "platform": platform.platform(),
                "torch_threads": torch.get_num_threads(),
                "rows": [_plain(row) for row in rows],
                "side": side,
                "exact": exact,
            },
            indent=2,
            default=str,
        )
    )
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
