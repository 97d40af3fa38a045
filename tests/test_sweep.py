"""Sweeps: local worker processes and the Slurm path (submitit's local and debug executors),
skipping, failures, kills and preemption, and many sweeps on one store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flatness.chapters import grids
from flatness.errors import FlatnessError
from flatness.results import sweep
from flatness.results.published import Published
from flatness.results.store import Store
from flatness.training.config import RunConfig

TINY = dict(
    model="logreg", dataset="digits", epochs=2, train_size=200, batch_size=64, hessian_every=0
)


def _grid(*configs, name="test"):
    return grids.Grid(name, "smoke", tuple(configs))


def _tiny(n, **extra):
    return [RunConfig(weight_decay=1e-4 * i, seed=i, **{**TINY, **extra}) for i in range(n)]


def _no_published(tmp_path):
    return Published(tmp_path / "no-published")


def _trainings(store: Store) -> dict[str, int]:
    """How many times each point was trained, from the workers' logs."""
    counts: dict[str, int] = {}
    for log in (store.root / ".logs").glob("*.log"):
        counts[log.stem] = log.read_text().count("training ")
    return counts


def _whole(store: Store, configs) -> None:
    """Every config stored once, readable, and no temporary folder left behind."""
    assert sorted(r.key for r in store.runs()) == sorted(c.key() for c in configs)
    assert not store.damaged() and not store.failed()
    assert not list(store.root.glob(".tmp-*"))
    for r in store.runs():
        assert len(r.arrays["test_loss"]) == r.config.epochs


def test_a_local_sweep_trains_each_point_once_and_skips_it_next_time(tmp_path):
    store, configs = Store(tmp_path / "store"), _tiny(3)
    out = sweep.sweep(
        _grid(*configs), store=store, published=_no_published(tmp_path), max_parallel=2
    )
    assert out.count("done") == 3
    _whole(store, configs)
    assert _trainings(store) == {c.key(): 1 for c in configs}
    again = sweep.sweep(_grid(*configs), store=store, published=_no_published(tmp_path))
    assert again.count("skipped") == 3 and again.seconds == 0.0
    states = [p.state for p in sweep.status(_grid(*configs), store, _no_published(tmp_path))]
    assert states == ["done"] * 3


def test_a_nan_point_is_recorded_failed_with_its_message_and_the_rest_complete(tmp_path):
    store = Store(tmp_path / "store")
    good = _tiny(2)
    bad = RunConfig(weight_decay=1e6, seed=9, **TINY)  # coupled L2 of 1e6 overflows
    grid = _grid(good[0], bad, good[1])
    out = sweep.sweep(grid, store=store, published=_no_published(tmp_path), max_parallel=1)
    assert out.states[bad.key()] == "failed" and "diverged" in out.messages[bad.key()]
    assert out.count("done") == 2
    status = {p.config.key(): p for p in sweep.status(grid, store, _no_published(tmp_path))}
    assert status[bad.key()].state == "failed"
    assert "diverged" in status[bad.key()].message
    # a failed point is skipped until asked for again
    assert sweep.to_train(grid, store, _no_published(tmp_path)) == []
    retry = sweep.to_train(grid, store, _no_published(tmp_path), retry_failed=True)
    assert [p.config for p in retry] == [bad]


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_the_slurm_path_runs_on_submitits_test_executors(tmp_path, cluster):
    store, configs = Store(tmp_path / "store"), _tiny(2)
    out = sweep.sweep(
        _grid(*configs),
        executor="slurm",
        cluster=cluster,
        store=store,
        published=_no_published(tmp_path),
        time_min=5,
        max_parallel=1,
    )
    assert out.count("done") == 2 and len(out.jobs) == 2
    _whole(store, configs)


def _wait_for(path: Path, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not path.exists():
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.2)


def test_a_preempted_slurm_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    """Slurm signals a job it preempts (USR2 with submitit's defaults); the job checkpoints and
    is requeued, and the run resumes from its own checkpoint in the store."""
    from submitit.local.local import LocalJobEnvironment

    store = Store(tmp_path / "store")
    cfg = RunConfig(weight_decay=0.0, seed=0, **{**TINY, "epochs": 3000})
    out = sweep.sweep(
        _grid(cfg),
        executor="slurm",
        cluster="local",
        store=store,
        published=_no_published(tmp_path),
        time_min=10,
        wait=False,
    )
    (job,) = out.jobs
    _wait_for(store.checkpoint_path(cfg))
    # the task runs under submitit's local controller, as a job step runs under Slurm
    tasks = subprocess.run(
        ["pgrep", "-P", str(job._process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(tasks) == 1
    os.kill(int(tasks[0]), LocalJobEnvironment._usr_sig())
    assert job.result()["state"] == "done"
    log = job.stderr()
    assert "resuming" in log, log[-2000:]
    epoch = int(log.split("resuming ")[1].split("at epoch ")[1].split()[0])
    assert 5 <= epoch < 3000
    _whole(store, [cfg])


def _cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "flatness", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kwargs,
    )


def _sweep_args(tmp_path: Path, store: Store) -> tuple:
    """``flatness sweep`` of ``tmp_path/g.yaml`` into ``store``, one worker, nothing published."""
    return ("sweep", str(tmp_path / "g.yaml"), "--profile", "smoke", "--results", str(store.root),
            "--published", str(tmp_path / "none"), "--max-parallel", "1")  # fmt: skip


def _write_grid(path: Path, n: int, epochs: int) -> list[RunConfig]:
    points = [{**TINY, "epochs": epochs, "weight_decay": 1e-4 * i, "seed": i} for i in range(n)]
    path.write_text(json.dumps({"runs": points}))  # JSON is YAML
    return grids.load(str(path), "smoke").configs


def _sweep_until_checkpoint(tmp_path):
    """A sweep of one 400-epoch point, left running until the point has a checkpoint: its
    store, config, command-line arguments, process and the pgrep pattern of its worker."""
    store = Store(tmp_path / "store")
    (cfg,) = _write_grid(tmp_path / "g.yaml", 1, 400)
    args = _sweep_args(tmp_path, store)
    first = _cli(*args)
    _wait_for(store.checkpoint_path(cfg))
    return store, cfg, args, first, f"flatness[.]results[.]sweep .*{store.root}"


def _rerun_resumes(store, cfg, args):
    """Sweep again: the point resumes from its checkpoint and is stored whole."""
    second = _cli(*args)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    log = (store.root / ".logs" / f"{cfg.key()}.log").read_text()
    assert "resuming" in log and log.count("training ") == 2
    _whole(store, [cfg])


def test_a_killed_worker_loses_only_its_point_which_resumes_on_the_next_sweep(tmp_path):
    store, cfg, args, first, pattern = _sweep_until_checkpoint(tmp_path)
    worker = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert len(worker) == 1
    os.kill(int(worker[0]), signal.SIGKILL)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 2 and "1 point(s) interrupted" in err
    assert "the worker exited with code -9" in err and "recorded" not in err
    assert store.inspect(cfg) is None and store.checkpoint_path(cfg).exists()
    _rerun_resumes(store, cfg, args)
    assert not store.checkpoint_path(cfg).exists()


def test_eight_sweeps_of_one_grid_at_once_store_every_point_exactly_once(tmp_path):
    store = Store(tmp_path / "store")
    configs = _write_grid(tmp_path / "g.yaml", 16, 2)
    args = _sweep_args(tmp_path, store)
    procs = [_cli(*args) for _ in range(8)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(out)
    _whole(store, configs)
    # each point's worker ran in one sweep; the others found it stored or being trained
    assert sum(int(o.split(" trained or found")[0].split()[-1]) for o in outs) >= 16
    assert _trainings(store) == {c.key(): 1 for c in configs}
    assert not list(store.root.glob(".trash-*"))


def test_a_bad_executor_or_parallelism_is_one_message(tmp_path):
    from flatness.errors import FlatnessError

    grid = _grid(*_tiny(1))
    with pytest.raises(FlatnessError, match="unknown executor 'pbs'.*'local', 'slurm'"):
        sweep.sweep(grid, executor="pbs", store=Store(tmp_path))
    with pytest.raises(FlatnessError, match="max_parallel must be a whole number >= 1"):
        sweep.sweep(grid, max_parallel=0, store=Store(tmp_path))
    with pytest.raises(FlatnessError, match="unknown cluster 'aws'"):
        sweep.sweep(grid, executor="slurm", cluster="aws", store=Store(tmp_path))


def test_a_killed_sweep_takes_its_worker_with_it_and_a_rerun_resumes(tmp_path):
    store, cfg, args, first, pattern = _sweep_until_checkpoint(tmp_path)
    worker = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    assert len(worker.split()) == 1
    first.kill()  # SIGKILL of the sweep itself
    first.communicate(timeout=60)
    start = time.monotonic()
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
        assert time.monotonic() - start < 30, "the worker outlived its sweep"
        time.sleep(0.2)
    status = sweep.status(_grid(cfg), store, _no_published(tmp_path))
    assert status[0].state == "missing" and "resumes from a checkpoint" in status[0].message
    _rerun_resumes(store, cfg, args)


def test_a_rerun_says_which_failed_points_it_skipped(tmp_path):
    bad = {**TINY, "epochs": 6, "weight_decay": 1e6, "seed": 0}
    (tmp_path / "g.yaml").write_text(json.dumps({"runs": [bad, {**TINY, "weight_decay": 0}]}))
    args = ("sweep", str(tmp_path / "g.yaml"), "--profile", "smoke")
    args += ("--results", str(tmp_path / "s"), "--published", str(tmp_path / "none"))
    key = RunConfig(**bad).key()
    for expected, other in (
        ("1 point(s) failed (recorded", "skipped"),  # failed in this sweep: reported once
        ("1 failed or damaged point(s) skipped", "failed (recorded"),
    ):
        p = _cli(*args, "--max-parallel", "1")
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2 and expected in err, err
        assert "diverged" in err and other not in err and err.count(key) == 1, err
        if other == "skipped":
            assert "1 trained or found, 1 failed, 0 skipped" in out, out


def test_slurm_is_asked_for_by_name_and_its_absence_is_one_message(tmp_path, monkeypatch):
    from flatness.errors import FlatnessError

    monkeypatch.setattr(sweep.shutil, "which", lambda name: None)
    with pytest.raises(FlatnessError, match="sbatch is not on this machine's PATH"):
        sweep.sweep(
            _grid(*_tiny(1)),
            executor="slurm",
            store=Store(tmp_path),
            published=_no_published(tmp_path),
        )
    assert not (tmp_path / ".submitit").exists()


def test_workers_share_the_cores_unless_the_threads_are_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 8)
    assert sweep._local_worker_env(0, 4, 0)["OMP_NUM_THREADS"] == "2"
    assert sweep._local_worker_env(0, 16, 0)["OMP_NUM_THREADS"] == "1"
    env = sweep._local_worker_env(5, 2, 2)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["MKL_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # several sweeps on one machine
    assert sweep._local_worker_env(0, 1, 0)["OMP_NUM_THREADS"] == "1"


def _main(capsys, *args):
    from flatness.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_dry_run_and_the_status_refuse_what_the_sweep_refuses(tmp_path, capsys):
    good, big = {**TINY, "weight_decay": 0, "seed": 0}, {**TINY, "weight_decay": 0, "seed": 1}
    big["train_size"] = 100_000  # digits' training split holds 1077
    (tmp_path / "g.yaml").write_text(json.dumps({"runs": [good, big]}))
    store = Store(tmp_path / "s")
    args = [tmp_path / "g.yaml", "--profile", "smoke", "--results", store.root]
    args += ["--published", tmp_path / "none"]
    big_key = RunConfig(**big).key()
    refusal = "train_size=100000 is more than the 1077 examples of digits's training split"
    for dry in (["--dry-run"], []):
        code, out, err = _main(capsys, "sweep", *args, *dry)
        assert code == 2 and "1 point(s) refused, so nothing was trained" in err, err
        assert refusal in err and f"{big_key}  {RunConfig(**big).label()}" in err
        assert "Traceback" not in err
    assert "2 point(s), 1 to train, 1 refused" in out
    assert _main(capsys, "sweep", *args, "--dry-run")[1].splitlines()[-1].startswith("1 run(s)")
    # the refused sweep created no store, and sweep-status refuses a --results that is missing
    store.root.mkdir()
    code, out, _ = _main(capsys, "sweep-status", *args)
    assert code == 0 and f"{big_key}  missing   {RunConfig(**big).label()}" in out
    assert "\n      the sweep refuses it (reason 1)\n" in out
    assert "the sweep refuses 1 missing point(s), training none of the grid:" in out
    assert f"  reason 1: {refusal}" in out
    assert not store.root.exists() or store.runs() == []
    # the library's sweep refuses before any worker starts, too
    with pytest.raises(FlatnessError, match=refusal):
        sweep.sweep(grids.load(str(tmp_path / "g.yaml"), "smoke"), store=store)
    assert not (store.root / ".logs").exists()


def test_a_refused_point_is_not_counted_as_one_to_train(tmp_path, capsys):
    only = {**TINY, "weight_decay": 0, "seed": 0, "train_size": 100_000}  # digits holds 1077
    (tmp_path / "g.yaml").write_text(json.dumps({"runs": [only]}))
    args = ["sweep", tmp_path / "g.yaml", "--profile", "smoke", "--results", tmp_path / "s"]
    args += ["--published", tmp_path / "none"]
    for dry in (["--dry-run"], []):
        code, out, err = _main(capsys, *args, *dry)
        assert code == 2 and "1 point(s) refused, so nothing was trained" in err, err
        assert "1 point(s), 0 to train, 1 refused; store: " in out, out
    code, out, _ = _main(capsys, *args, "--dry-run")
    assert out.splitlines()[-1].startswith("0 run(s), 0 GPU-hours")
    assert not (tmp_path / "s").exists()


def test_a_dry_run_names_the_failed_and_damaged_points_the_sweep_skips(tmp_path, capsys):
    points = [{**TINY, "weight_decay": 0, "seed": s} for s in (0, 1, 2)]
    (tmp_path / "g.yaml").write_text(json.dumps({"runs": points}))
    store = Store(tmp_path / "s")
    failed, damaged, fine = (RunConfig(**p) for p in points)
    store.record_failure(failed, "the training loss is nan after epoch 2")
    store.save(damaged, {}, {"x": np.zeros(1)}, {})
    (store.path(damaged) / "metrics.json").write_text("{")
    store.save(fine, {}, {"x": np.zeros(1)}, {})
    args = ["sweep", tmp_path / "g.yaml", "--profile", "smoke", "--results", store.root]
    args += ["--published", tmp_path / "none"]
    dry = _main(capsys, *args, "--dry-run")
    real = _main(capsys, *args)
    for code, out, err in (dry, real):
        assert code == 2 and "3 point(s), 0 to train" in out
        assert "2 failed or damaged point(s) skipped (`--retry-failed` trains them again)" in err
        assert f"{failed.key()}  failed: the training loss is nan after epoch 2" in err
        assert f"{damaged.key()}  damaged: metrics.json is not valid JSON" in err
    assert "0 run(s), 0 GPU-hours" in dry[1]


SITECUSTOMIZE = """
import os
if os.environ.get("FLATNESS_TEST_BUG"):
    import flatness.training.loop as loop
    real = loop.train
    def train(config, **kwargs):
        if config.seed == 7:
            raise RuntimeError("an injected bug")
        return real(config, **kwargs)
    loop.train = train
"""


def _with_a_bug(monkeypatch, tmp_path):
    """Seed 7 raises a RuntimeError in training, in this process and in every worker."""
    from flatness.training import loop

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FLATNESS_TEST_BUG", "1")
    real = loop.train

    def train(config, **kwargs):
        if config.seed == 7:
            raise RuntimeError("an injected bug")
        return real(config, **kwargs)

    monkeypatch.setattr(loop, "train", train)


def test_a_point_raising_an_error_not_ours_is_named_not_called_interrupted(tmp_path, monkeypatch):
    _with_a_bug(monkeypatch, tmp_path)
    store, good = Store(tmp_path / "store"), _tiny(1)[0]
    bad = RunConfig(weight_decay=0.0, seed=7, **TINY)
    out = sweep.sweep(
        _grid(good, bad), store=store, published=_no_published(tmp_path), max_parallel=1
    )
    assert out.states == {good.key(): "done", bad.key(): "error"}
    assert out.messages[bad.key()] == "RuntimeError: an injected bug"
    log = (store.root / ".logs" / f"{bad.key()}.log").read_text()
    assert "Traceback" in log and "an injected bug" in log
    assert not store.failed()  # not recorded: the next sweep tries it again


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_a_slurm_sweep_that_waits_summarises_a_point_that_raised(
    tmp_path, monkeypatch, capsys, cluster
):
    from flatness.cli import main

    _with_a_bug(monkeypatch, tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "runs: [{model: logreg, dataset: digits, epochs: 2, train_size: 200, batch_size: 64,"
        " hessian_every: 0, weight_decay: 0, seed: [0, 7]}]"
    )
    code = main(
        ["sweep", str(grid), "--profile", "smoke", "--executor", "slurm", "--cluster", cluster]
        + ["--wait", "--results", str(tmp_path / "store"), "--time-min", "5"]
        + ["--published", str(tmp_path / "no-published"), "--max-parallel", "1"]
    )
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "1 trained or found, 0 failed, 1 raised an error" in out
    # the command's own answer: one message and exit 2, not an escaped FailedJobError
    assert "flatness: error: 1 point(s) raised an error" in err
    assert err.rstrip().splitlines()[-1].endswith("RuntimeError: an injected bug")
    if cluster == "local":  # a job of its own: the traceback stays in the job's log
        assert "Traceback" not in err
