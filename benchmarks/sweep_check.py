"""Reliability numbers of sweeps and published runs, measured on this machine.

    python benchmarks/sweep_check.py [--points 16] [--sweeps 8] [--epochs 30]

1. One sweep of a grid of tiny runs with one worker (sequential), then ``--sweeps`` sweeps of the
   same grid started at once on a fresh store, one worker each: every point stored exactly once
   (trainings counted from the workers' logs), every folder whole, and the wall time beside the
   ideal, the sequential time divided by min(workers, cores).
2. A worker killed with SIGKILL mid-run, and the sweep run again: the epoch it resumed at.
3. A point whose loss becomes NaN among good ones: its state and message; the others' states.
4. A published run with one byte changed: the refusal.

Everything runs in a temporary folder; nothing in the checkout is written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flatness.chapters import grids
from flatness.results.published import Published, publish
from flatness.results.runs import load_or_run
from flatness.results.store import Store

TINY = dict(model="logreg", dataset="digits", train_size=600, batch_size=32, hessian_every=0)


def _grid(path: Path, points: int, epochs: int, **extra) -> tuple:
    runs = [
        {**TINY, "epochs": epochs, "weight_decay": 1e-4 * i, "seed": i, **extra}
        for i in range(points)
    ]
    path.write_text(json.dumps({"runs": runs}))
    return grids.load(str(path), "smoke").configs


def _sweep(grid: Path, store: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "flatness", "sweep", str(grid), "--profile", "smoke"]
    command += ["--results", str(store), "--published", str(store.parent / "none")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "--max-parallel", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _trainings(store: Path) -> dict[str, int]:
    return {p.stem: p.read_text().count("training ") for p in (store / ".logs").glob("*.log")}


def concurrency(tmp: Path, points: int, sweeps: int, epochs: int) -> None:
    configs = _grid(tmp / "grid.yaml", points, epochs)
    start = time.perf_counter()
    p = _sweep(tmp / "grid.yaml", tmp / "sequential")
    p.communicate()
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    procs = [_sweep(tmp / "grid.yaml", tmp / "shared") for _ in range(sweeps)]
    codes = [q.wait() for q in procs]
    together = time.perf_counter() - start
    store = Store(tmp / "shared")
    runs, counts = store.runs(), _trainings(tmp / "shared")
    cores = os.cpu_count() or 1
    ideal = sequential / min(sweeps, cores)
    print(f"1. {sweeps} sweeps of {points} points at once: exit codes {sorted(set(codes))}")
    print(f"   runs stored {len(runs)} of {points}, keys distinct {len({r.key for r in runs})}")
    print(f"   trainings per point {sorted(set(counts.values()))} (want [1])")
    print(
        f"   damaged {len(store.damaged())}, failed {len(store.failed())}, leftovers "
        f"{len(list((tmp / 'shared').glob('.tmp-*')) + list((tmp / 'shared').glob('.trash-*')))}"
    )
    print(
        f"   wall {together:.1f} s; one sweep, one worker: {sequential:.1f} s; ideal on {cores} "
        f"cores {ideal:.1f} s; ratio {together / ideal:.2f}"
    )
    assert len(runs) == points and set(counts.values()) == {1} and len(configs) == points


def kill_and_resume(tmp: Path, epochs: int) -> None:
    (cfg,) = _grid(tmp / "long.yaml", 1, epochs)
    store = Store(tmp / "killed")
    first = _sweep(tmp / "long.yaml", store.root)
    while not store.checkpoint_path(cfg).exists():
        time.sleep(0.1)
    time.sleep(1.0)
    found = subprocess.run(
        ["pgrep", "-f", f"flatness[.]results[.]sweep .*{store.root}"],
        capture_output=True,
        text=True,
    )
    os.kill(int(found.stdout.split()[0]), signal.SIGKILL)
    _, err = first.communicate()
    start = time.perf_counter()
    second = _sweep(tmp / "long.yaml", store.root)
    second.communicate()
    log = (store.root / ".logs" / f"{cfg.key()}.log").read_text()
    resumed = log.split("resuming ")[1].split("at epoch ")[1].split()[0]
    print(
        f"2. SIGKILL of the worker: first sweep exit {first.returncode} "
        f"({err.strip().splitlines()[-1][:90]}...)"
    )
    print(
        f"   rerun: exit {second.returncode}, resumed at epoch {resumed} of {epochs}, "
        f"{time.perf_counter() - start:.1f} s; runs stored {len(store.runs())}, trainings "
        f"{log.count('training ')}, checkpoint left {store.checkpoint_path(cfg).exists()}"
    )


def nan_point(tmp: Path) -> None:
    good = _grid(tmp / "nan.yaml", 3, 2)
    runs = json.loads((tmp / "nan.yaml").read_text())["runs"]
    runs[1]["weight_decay"] = 1e6  # coupled L2 of 1e6: the weights overflow
    (tmp / "nan.yaml").write_text(json.dumps({"runs": runs}))
    p = _sweep(tmp / "nan.yaml", tmp / "nan")
    out, err = p.communicate()
    status = subprocess.run(
        [sys.executable, "-m", "flatness", "sweep-status", str(tmp / "nan.yaml"), "--profile",
         "smoke", "--results", str(tmp / "nan"), "--published", str(tmp / "none")],
        capture_output=True, text=True,
    )  # fmt: skip
    print(
        f"3. a NaN point among {len(good)}: sweep exit {p.returncode}; {out.strip().splitlines()[-1]}"
    )
    print("   " + status.stdout.strip().splitlines()[0])
    failed = [line for line in status.stdout.splitlines() if "failed" in line]
    print("   " + "\n   ".join(failed[1:3]))


def tampered(tmp: Path) -> None:
    (cfg,) = _grid(tmp / "pub.yaml", 1, 2)
    run = load_or_run(cfg, store=Store(tmp / "pub-local"), published=False)
    layer = Published(tmp / "published")
    publish([run], layer)
    metrics = layer.root / cfg.key() / "metrics.json"
    metrics.write_bytes(metrics.read_bytes().replace(b"0", b"1", 1))
    try:
        load_or_run(cfg, store=Store(tmp / "empty"), published=layer)
    except Exception as err:  # noqa: BLE001 - the message is the result
        print(f"4. a changed published file: {type(err).__name__}: {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--sweeps", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        concurrency(tmp, args.points, args.sweeps, args.epochs)
        kill_and_resume(tmp, 20 * args.epochs)
        nan_point(tmp)
        tampered(tmp)


if __name__ == "__main__":
    main()
