"""Sweeps: train a grid's missing runs in parallel, on this machine or as a Slurm job array.

Each point of a :class:`~flatness.results.grids.Grid` is one
:func:`~flatness.results.runs.load_or_run`, so the store's guarantees carry over: a published or
stored point is skipped; two processes given the same point train it once (a lock per run); a
run is renamed into place whole, so a reader never sees half of it; a killed point resumes from
its checkpoint when the sweep is run again; a point whose loss becomes NaN is recorded as failed
with its message and the others carry on.

- ``local``: a pool of ``max_parallel`` worker processes, one point each at a time, each given
  an equal share of the CPU cores (``OMP_NUM_THREADS``) or one GPU (``CUDA_VISIBLE_DEVICES``,
  round robin). Each point's output goes to ``<store>/.logs/<key>.log``.
- ``slurm``: :class:`submitit.AutoExecutor` submits one job array with at most ``max_parallel``
  jobs running; a preempted or timed-out job is requeued by submitit and resumes from the run's
  checkpoint (:class:`TrainPoint` is :class:`submitit.helpers.Checkpointable`). The store must be
  on a file system every node sees; locks are ``fcntl`` locks, which NFSv4 and Lustre honour.
  ``cluster="local"`` or ``"debug"`` runs the same path on this machine (the tests do).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass

import submitit

from flatness.errors import FlatnessError
from flatness.results.entries import Damaged, Failed, Run, one_line
from flatness.results.grids import Grid
from flatness.results.published import Published
from flatness.results.store import Store
from flatness.training.config import RunConfig

STATES = ("published", "done", "running", "failed", "damaged", "missing")
EXECUTORS = ("local", "slurm")
CLUSTERS = ("slurm", "local", "debug")


@dataclass(frozen=True)
class PointStatus:
    """Where one point of a grid stands; ``message`` says why a point failed or is damaged,
    or when a missing point's checkpoint was last written."""

    config: RunConfig
    state: str
    message: str = ""


def _running(store: Store, config: RunConfig) -> bool:
    from filelock import Timeout

    if not (store.root / ".locks" / f"{config.key()}.lock").exists():
        return False
    lock = store.lock(config)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def status(grid: Grid, store: Store, published: Published) -> list[PointStatus]:
    """One :class:`PointStatus` per point of ``grid``, in the grid's order."""
    return [point_status(c, store, published) for c in grid.configs]


def point_status(config: RunConfig, store: Store, published: Published) -> PointStatus:
    """Where ``config`` stands: published (or damaged there), else what ``store`` holds."""
    try:
        if published.find(config) is not None:
            return PointStatus(config, "published")
    except FlatnessError as err:
        return PointStatus(config, "damaged", str(err))
    found = store.inspect(config)
    if isinstance(found, Run):
        return PointStatus(config, "done")
    if isinstance(found, Failed):
        return PointStatus(config, "failed", found.message)
    if isinstance(found, Damaged):
        return PointStatus(config, "damaged", found.reason)
    if _running(store, config):
        return PointStatus(config, "running")
    checkpoint = store.checkpoint_path(config)
    note = ""
    if checkpoint.is_file():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(checkpoint.stat().st_mtime))
        note = f"resumes from a checkpoint written {when}"
    return PointStatus(config, "missing", note)


def trains(state: str, *, retry_failed: bool = False) -> bool:
    """Whether a point in ``state`` is trained: missing (or partly trained) and running points
    always, failed and damaged ones with ``retry_failed``."""
    return state in ("missing", "running") or (retry_failed and state in ("failed", "damaged"))


def train_point(
    config: dict, store: str, data_root: str | None, retrain: bool = False, locked: bool = False
) -> dict:
    """Train (or load) one point; returns ``{"key", "state", "message", "seconds"}``.

    ``state`` is ``done``, ``failed`` (a FlatnessError, recorded where it is a diverged run) or
    ``error`` (any other exception, named in the message, its traceback in the point's log;
    nothing is recorded, so the next sweep tries the point again from its checkpoint). Runs in
    a worker process (``locked``: its parent holds the run's lock) or a Slurm job."""
    from flatness.results.runs import load_or_run

    cfg = RunConfig(**config)
    start = time.perf_counter()
    try:
        load_or_run(
            cfg,
            store=Store(store),
            data_root=data_root,
            retrain=retrain,
            train_fn=_announced,
            lock=not locked,
        )
        state, message = "done", ""
    except FlatnessError as err:  # diverged (recorded by the store), or refused
        state, message = "failed", str(err)
        print(f"failed: {message}", file=sys.stderr, flush=True)
    except Exception as err:  # not ours: a bug, out of memory; the log keeps the traceback
        traceback.print_exc(file=sys.stderr)
        state = "error"
        message = type(err).__name__ + (f": {one_line(err)}" if str(err).strip() else "")
    return {
        "key": cfg.key(),
        "state": state,
        "message": message,
        "seconds": time.perf_counter() - start,
    }


def _announced(config: RunConfig, **kwargs):
    """:func:`flatness.training.loop.train`, saying first (in the point's log) that it trains."""
    from flatness.training.loop import train

    print(f"training {config.label()} ({config.key()})", file=sys.stderr, flush=True)
    return train(config, **kwargs)


class TrainPoint(submitit.helpers.Checkpointable):
    """A Slurm job's callable: :func:`train_point`, requeued as is when preempted (the run's own
    checkpoint in the store carries the progress)."""

    def __call__(self, config: dict, store: str, data_root: str | None, retrain: bool) -> dict:
        return train_point(config, store, data_root, retrain)


@dataclass(frozen=True)
class Outcome:
    """What a sweep did: per point key, ``done``, ``failed`` (recorded, with message),
    ``error`` (it raised an exception that is not flatness's, named in the message),
    ``interrupted`` (its worker or job died without an answer: killed, out of time; it resumes
    next time), ``skipped`` (published, stored, or failed before the sweep) or ``elsewhere``
    (being trained by another process)."""

    states: dict[str, str]
    messages: dict[str, str]
    seconds: float
    jobs: tuple = ()

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s == state)


def refused(configs, data_root=None) -> dict[str, str]:
    """Why a sweep refuses some of ``configs`` before training any, by key: their data set
    cannot be read here (missing offline, a data root that is no folder), or their
    ``train_size`` is more than its training split holds. Each data set is read once; points
    not named are not refused."""
    from flatness import data as datasets

    by_dataset: dict[str, list[RunConfig]] = {}
    for c in configs:
        by_dataset.setdefault(c.dataset, []).append(c)
    out = {}
    for name, group in by_dataset.items():
        try:
            available = len(datasets.load(name, data_root=data_root).y_train)
        except FlatnessError as err:
            out |= {c.key(): str(err) for c in group}
            continue
        for c in group:
            if c.train_size is not None and c.train_size > available:
                out[c.key()] = (
                    f"train_size={c.train_size} is more than the {available} examples of "
                    f"{name}'s training split; pass at most {available}, or null for all of "
                    "them"
                )
    return out


def refusal(reasons: dict[str, str], configs) -> str:
    """The message for the points of ``configs`` that :func:`refused` names, one block per
    reason; empty when none is refused."""
    blocks: dict[str, list[str]] = {}
    for c in configs:
        if c.key() in reasons:
            blocks.setdefault(reasons[c.key()], []).append(f"    {c.key()}  {c.label()}")
    if not blocks:
        return ""
    count = sum(len(v) for v in blocks.values())
    return f"{count} point(s) refused, so nothing was trained:\n" + "\n".join(
        f"  {reason}\n" + "\n".join(points) for reason, points in blocks.items()
    )


def to_train(grid: Grid, store: Store, published: Published, *, retry_failed=False):
    """The points a sweep trains: missing (or partly trained) ones, and failed or damaged ones
    with ``retry_failed``, and running ones (the run's lock then decides: a point another
    process trains is skipped when its turn comes); published and stored points are not."""
    return [p for p in status(grid, store, published) if trains(p.state, retry_failed=retry_failed)]


def _local_worker_env(slot: int, max_parallel: int, gpus: int) -> dict:
    """A worker's environment: one GPU each (round robin), and its share of the CPU cores,
    unless ``OMP_NUM_THREADS`` is set already (several sweeps on one machine must share it out
    themselves: more OpenMP threads than cores slow every process down many times)."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max_parallel))
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    return env


def _die_with_parent() -> None:
    """In a local worker: die when the sweep that started it dies (Linux), so that no worker
    trains on without the lock its sweep held (its checkpoint stays for the next sweep)."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the sweep died before the line above
        os._exit(1)


def _run_local(points, store, data_root, retry_failed, max_parallel, gpus, progress):
    """Each point in its own process, ``max_parallel`` at a time; a killed worker loses only
    its own point (which resumes from its checkpoint next time)."""
    from tqdm import tqdm

    logs = store.root / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    slots = list(range(max_parallel))
    states, messages = {}, {}

    def one(point: PointStatus) -> dict:
        from filelock import Timeout

        key = point.config.key()
        # the run's lock is taken here, before a worker starts: another sweep of the same grid
        # then skips the point at once instead of starting a worker that would only wait
        lock = store.lock(point.config)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return {"key": key, "state": "elsewhere", "message": "trained by another process"}
        try:
            if isinstance(store.inspect(point.config), Run):
                return {"key": key, "state": "done", "message": ""}
            return _start_worker(point, key)
        finally:
            lock.release()

    def _start_worker(point: PointStatus, key: str) -> dict:
        slot = slots.pop()
        try:
            args = [json.dumps(point.config.to_dict()), str(store.root), data_root or ""]
            args += ["retrain" if retry_failed else "", "locked"]
            with open(logs / f"{key}.log", "ab") as log:
                done = subprocess.run(
                    [sys.executable, "-m", "flatness.results.sweep", *args],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=_local_worker_env(slot, max_parallel, gpus),
                )
            lines = done.stdout.decode().strip().splitlines()
            if done.returncode == 0 and lines:
                return json.loads(lines[-1])
            return {
                "key": key,
                "state": "interrupted",
                "message": f"the worker exited with code {done.returncode} (see {logs / key}.log); "
                "the run resumes from its checkpoint when the sweep is run again",
            }
        finally:
            slots.append(slot)

    with concurrent.futures.ThreadPoolExecutor(max_parallel) as pool:
        futures = [pool.submit(one, p) for p in points]
        bar = tqdm(
            concurrent.futures.as_completed(futures),
            total=len(futures),
            desc="sweep",
            disable=not progress,
        )
        for future in bar:
            result = future.result()
            states[result["key"]] = result["state"]
            messages[result["key"]] = result["message"]
    return states, messages


def _run_slurm(points, store, data_root, retry_failed, options: dict, wait: bool):
    cluster = options.pop("cluster", None) or "slurm"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        # submitit would quietly run the jobs here instead
        raise FlatnessError(
            "--executor slurm: Slurm's sbatch is not on this machine's PATH; use --executor "
            "local here (or --cluster local / debug to try the Slurm path on this machine)"
        )
    executor = submitit.AutoExecutor(folder=store.root / ".submitit" / "%j", cluster=cluster)
    executor.update_parameters(
        name=options.pop("name"),
        timeout_min=options.pop("time_min"),
        slurm_array_parallelism=options.pop("max_parallel"),
        gpus_per_node=options.pop("gpus_per_job"),
        **({"slurm_partition": options.pop("partition")} if options.get("partition") else {}),
        **(options.get("extra") or {}),
    )
    n = len(points)
    try:
        jobs = executor.map_array(
            TrainPoint(),
            [p.config.to_dict() for p in points],
            [str(store.root)] * n,
            [data_root] * n,
            [retry_failed] * n,
        )
    except (FileNotFoundError, RuntimeError, submitit.core.utils.FailedJobError) as err:
        raise FlatnessError(
            f"cannot submit to Slurm ({err}); on a machine without Slurm use --executor local"
        ) from None
    states, messages = {}, {}
    if wait:
        for job, point in zip(jobs, points):
            try:
                result = job.result()
            except submitit.core.utils.UncompletedJobError as err:
                # killed, out of time, or it raised before train_point could answer
                result = {
                    "key": point.config.key(),
                    "state": "interrupted",
                    "message": f"Slurm job {job.job_id} ended without an answer ({one_line(err)}; see "
                    f"{job.paths.stderr}); the run resumes from its checkpoint when the sweep is "
                    "run again",
                }
            states[result["key"]] = result["state"]
            messages[result["key"]] = result["message"]
    return states, messages, tuple(jobs)


def sweep(
    grid: Grid,
    *,
    executor: str = "local",
    store: Store | None = None,
    published: Published | None = None,
    data_root=None,
    max_parallel: int | None = None,
    retry_failed: bool = False,
    partition: str | None = None,
    gpus_per_job: int = 1,
    time_min: int = 72 * 60,
    cluster: str | None = None,
    submitit_parameters: dict | None = None,
    wait: bool = True,
    progress: bool = False,
    checked: bool = False,
) -> Outcome:
    """Train every point of ``grid`` that is neither published nor stored.

    Args:
        executor: ``local`` (worker processes here) or ``slurm`` (a submitit job array).
        max_parallel: workers (local; default one per GPU, else one per CPU core) or the
            array's cap on running jobs (slurm; default all).
        retry_failed: train failed and damaged points again (otherwise they are skipped).
        partition, gpus_per_job, time_min: the Slurm job's partition, GPUs and time limit.
        cluster: submitit's cluster for ``slurm``: ``slurm`` (default, as detected), or
            ``local`` / ``debug`` to run the Slurm path on this machine.
        submitit_parameters: more :meth:`submitit.AutoExecutor.update_parameters` arguments,
            e.g. ``{"slurm_account": "abc", "slurm_constraint": "a100"}``.
        wait: for ``slurm``, wait for the jobs and collect their outcomes.
        checked: the caller has already refused the points :func:`refused` names (skips
            reading every data set again).

    Raises:
        FlatnessError: an unknown executor or cluster, a ``max_parallel`` below 1, Slurm
            absent for ``slurm``, or a store that cannot be written; before any training,
            points whose data cannot be read here or whose ``train_size`` exceeds their data
            set (:func:`refused`, naming them).
    """
    from flatness.errors import unknown

    if executor not in EXECUTORS:
        raise unknown("executor", executor, EXECUTORS)
    if cluster is not None and cluster not in CLUSTERS:
        raise unknown("cluster", cluster, CLUSTERS)
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise FlatnessError(f"max_parallel must be a whole number >= 1, got {max_parallel!r}")
    store = store or Store()
    published = published or Published.default()
    points = to_train(grid, store, published, retry_failed=retry_failed)
    skipped = {c.key(): "skipped" for c in grid.configs}
    start = time.perf_counter()
    data_root = str(data_root) if data_root is not None else None
    if not points:
        return Outcome(skipped, {}, 0.0)
    store.check_writable()  # one message, not one per point
    # what killed writers left, of runs no process trains now (SIGKILL in a final save)
    store.remove_stale_leftovers()
    if not checked:  # the command line has refused these already, reading the data once
        configs = [p.config for p in points]
        problem = refusal(refused(configs, data_root), configs)
        if problem:
            raise FlatnessError(problem)
    if executor == "local":
        gpus = _gpu_count()
        max_parallel = max_parallel or gpus or os.cpu_count() or 1
        states, messages = _run_local(
            points, store, data_root, retry_failed, max_parallel, gpus, progress
        )
        jobs = ()
    else:
        options = dict(
            cluster=cluster,
            name=f"flatness-{grid.name}",
            time_min=time_min,
            max_parallel=max_parallel or len(points),
            gpus_per_job=gpus_per_job,
            partition=partition,
            extra=submitit_parameters,
        )
        states, messages, jobs = _run_slurm(points, store, data_root, retry_failed, options, wait)
    return Outcome(skipped | states, messages, time.perf_counter() - start, jobs)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _main(argv: list[str]) -> int:
    """A local worker: ``python -m flatness.results.sweep CONFIG_JSON STORE DATA_ROOT RETRAIN LOCKED``
    (``retrain`` or empty; ``locked``: the parent holds the run's lock); prints the outcome as
    JSON on its last line."""
    config, store, data_root, retrain, locked = argv
    if locked == "locked":
        _die_with_parent()
    result = train_point(
        json.loads(config), store, data_root or None, retrain == "retrain", locked == "locked"
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
