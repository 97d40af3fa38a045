"""The results store: one folder per run, named by the hash of its semantic config.

A good run folder holds ``config.json``, ``metrics.json``, ``arrays.npz`` and
``provenance.json``; a failed run holds ``failed.json``. Folders are written in a hidden
temporary folder and renamed into place in one step, so a reader sees a whole folder or none.
A folder that is not whole anyway (a missing file, invalid JSON, an unreadable ``arrays.npz``,
a ``config.json`` hashing to another name) is *damaged*. Neither damaged nor failed runs are
ever results: :meth:`Store.runs` and :meth:`Store.load` skip them, :meth:`Store.damaged` and
:meth:`Store.failed` list them.

Hidden entries: ``.locks/<key>.lock`` (one lock per run, so that processes sharing a store
train a run once), ``.checkpoints/<key>.pt`` (a training's resumable checkpoint, deleted once
the run is saved), ``.tmp-*`` (folders being written), ``.trash-*`` (folders being deleted).
A process killed while writing leaves its temporary entries behind; the next training of that
run removes them (:meth:`Store.remove_leftovers`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from flatness.errors import FlatnessError
from flatness.paths import results_root
from flatness.results.entries import FAILED, Damaged, Failed, Run, examine, folder_problem, one_line
from flatness.training.config import RunConfig

_KEY = re.compile(r"[0-9a-f]{16}")
_WHERE = "point --results or $FLATNESS_RESULTS at a folder that can be written"
_FIX = "retrain it with load_or_run(..., retrain=True) or the command line's --retrain"


def _unusable(root: Path, problem: str) -> str:
    if problem == f"{root} is not a folder":
        return f"the results store {root} is not a folder; {_WHERE}"
    if root.is_dir():
        return f"cannot write to the results store {root} ({problem}); {_WHERE}"
    return f"cannot create the results store's folder {root} ({problem}); {_WHERE}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """A folder of runs (default :func:`flatness.paths.results_root`).

    Raises:
        FlatnessError: when ``root`` can never be a folder (it is a file, or a path below
            one); when it cannot be created or written to (on the first write or lock, or
            up front with :meth:`check_writable`).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else results_root()
        # a path that can never be a folder (a file, or below one) is refused before any use
        problem = folder_problem(self.root)
        if problem is not None:
            raise FlatnessError(_unusable(self.root, problem))

    def check_writable(self) -> None:
        """Refuse, before anything is written, a store whose folder cannot be created or
        written to; creates nothing.

        Raises:
            FlatnessError: naming the folder, the reason and the fix.
        """
        problem = folder_problem(self.root, write=True)
        if problem is not None:
            raise FlatnessError(_unusable(self.root, problem))

    def _make(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FlatnessError(
                f"cannot create the results store's folder {folder} ({one_line(err)}); {_WHERE}"
            ) from None

    def path(self, config: RunConfig) -> Path:
        return self.root / config.key()

    def checkpoint_path(self, config: RunConfig) -> Path:
        """Where training keeps the resumable checkpoint of ``config``'s run."""
        return self.root / ".checkpoints" / f"{config.key()}.pt"

    def lock(self, config: RunConfig) -> FileLock:
        """The inter-process lock of ``config``'s run (``<root>/.locks/<key>.lock``)."""
        return self._lock(config.key())

    def _lock(self, key: str) -> FileLock:
        folder = self.root / ".locks"
        self._make(folder)
        return FileLock(folder / f"{key}.lock")

    def inspect(self, config: RunConfig) -> Run | Damaged | Failed | None:
        """What the store holds for ``config``: a good run, a damaged folder, a failure or nothing."""
        path = self.path(config)
        return examine(path) if path.is_dir() else None

    def load(self, config: RunConfig) -> Run | None:
        """The stored run for ``config``; ``None`` if absent, damaged or failed."""
        found = self.inspect(config)
        return found if isinstance(found, Run) else None

    def _entries(self) -> list[Run | Damaged | Failed]:
        if not self.root.is_dir():
            return []
        # hidden entries are locks, checkpoints and folders being written or deleted; other
        # names are not runs of this store
        paths = sorted(p for p in self.root.iterdir() if _KEY.fullmatch(p.name) and p.is_dir())
        return [examine(p) for p in paths]

    def runs(self) -> list[Run]:
        """Every good run, oldest first; damaged and failed ones are left out."""
        found = [e for e in self._entries() if isinstance(e, Run)]
        return sorted(found, key=lambda r: str(r.provenance.get("finished", "")))

    def damaged(self) -> list[Damaged]:
        """Every damaged run folder, by key."""
        return [e for e in self._entries() if isinstance(e, Damaged)]

    def failed(self) -> list[Failed]:
        """Every failed run, by key."""
        return [e for e in self._entries() if isinstance(e, Failed)]

    def save(self, config: RunConfig, metrics: dict, arrays: dict, provenance: dict) -> Run:
        """Write a run atomically and return it.

        If another writer stored a good run first, theirs is kept; a damaged folder or a
        failure recorded for ``config`` is replaced.

        Raises:
            FlatnessError: if the saved run cannot be read back as a good run.
        """

        def fill(tmp: Path) -> None:
            (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))

        self._write(config, fill)
        run = self.load(config)
        if run is None:  # only if someone damaged it in the meantime
            raise FlatnessError(f"the run just saved in {self.path(config)} cannot be read back")
        return run

    def record_failure(self, config: RunConfig, message: str, provenance: dict | None = None):
        """Record that training ``config`` failed with ``message``; returns the :class:`Failed`.

        A good run already stored for ``config`` is kept (and returned) instead.
        """
        record = {
            "message": message,
            "config": config.to_dict(),
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "provenance": provenance or {},
        }
        self._write(config, lambda tmp: (tmp / FAILED).write_text(json.dumps(record, indent=2)))
        return self.inspect(config)

    def discard(self, path: Path) -> None:
        """Delete a run folder: renamed aside in one step first, so it vanishes whole."""
        aside = self.root / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def remove_leftovers(self, config: RunConfig) -> list[Path]:
        """Delete what a killed writer of ``config``'s run left behind, and return it.

        A process killed while writing (SIGKILL, a power cut) cannot remove its own temporary
        entries: a run folder being written (``.tmp-<key>-*``), one being deleted
        (``.trash-<key>-*``) and a checkpoint being written (``.checkpoints/.<key>.pt.tmp-*``).
        :func:`~flatness.results.runs.load_or_run` calls this as it starts training a run and
        when it has saved it, holding the run's lock (:meth:`lock`), when no other process
        writes those entries; call it only under that lock.
        """
        from flatness.training.checkpoint import remove_temporaries

        key = config.key()
        removed = remove_temporaries(self.checkpoint_path(config))
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith((f".tmp-{key}-", f".trash-{key}-")):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed

    def leftovers(self) -> list[Path]:
        """Temporary entries a killed writer left behind (see :meth:`remove_leftovers`), of any
        run: never results, each removed when its run is next trained (or by
        :meth:`remove_stale_leftovers`)."""
        if not self.root.is_dir():
            return []
        found = [e for e in self.root.iterdir() if e.name.startswith((".tmp-", ".trash-"))]
        checkpoints = self.root / ".checkpoints"
        if checkpoints.is_dir():
            found += [e for e in checkpoints.iterdir() if ".pt.tmp-" in e.name]
        return sorted(found)

    def remove_stale_leftovers(self) -> list[Path]:
        """Remove the leftovers of every run whose lock is free at once (no process writes
        them), and return them; those of runs being trained stay."""
        removed = []
        for key in sorted({_leftover_key(e) for e in self.leftovers()} - {None}):
            try:
                lock = self._lock(key)
                lock.acquire(timeout=0)
            except (Timeout, OSError, FlatnessError):
                continue
            try:
                for entry in self.leftovers():
                    if _leftover_key(entry) == key:
                        if entry.is_dir():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            entry.unlink(missing_ok=True)
                        removed.append(entry)
            finally:
                lock.release()
        return removed

    def _write(self, config: RunConfig, fill) -> None:
        """Fill a temporary folder, make it durable, and rename it to ``config``'s folder."""
        self._make(self.root)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{config.key()}-", dir=self.root))
        target = self.path(config)
        try:
            fill(tmp)
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the run from others on a shared disk
            # durable before visible: a crash after the rename must not leave empty files
            for f in [*tmp.iterdir(), tmp]:
                _fsync(f)
            try:
                os.rename(tmp, target)
            except OSError:
                current = self.inspect(config)
                if current is None:
                    raise
                if isinstance(current, Run):
                    shutil.rmtree(tmp)  # another writer was first; theirs is as good
                    return
                self.discard(target)  # damaged, or a failure now superseded
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync(self.root)


def _leftover_key(entry: Path) -> str | None:
    """The run key in a leftover's name (``.tmp-<key>-*``, ``.trash-<key>-*``, ``.<key>.pt.tmp-*``)."""
    match = re.match(r"^\.(?:tmp-|trash-)?([0-9a-f]{16})[-.]", entry.name)
    return match.group(1) if match else None


def _advice(found: Damaged) -> str:
    """What fixes a damaged folder, where retraining cannot: a config.json that hashes to
    another name names no run whose retraining would write here."""
    if "hashes to" not in found.reason:
        return ""
    return (
        "; retraining the run its config.json names writes another folder, not this one: "
        "delete this folder, or restore the config.json it was written with"
    )


def describe_store(store: Store) -> str:
    """The lines ``flatness ls`` prints after the good runs: damaged folders and failed runs.

    Empty when there are neither. Each damaged folder gives its key and reason; each failed
    run its key, label, time and message.
    """
    lines = []
    damaged, failed = store.damaged(), store.failed()
    if damaged:
        lines.append(
            f"{len(damaged)} damaged run folder(s), never used as results "
            f"({_FIX}, or delete the folder):"
        )
        lines += [f"  {d.key}  {d.reason}{_advice(d)}" for d in damaged]
    leftovers = store.leftovers()
    if leftovers:
        lines.append(
            f"{len(leftovers)} temporary entr{'y' if len(leftovers) == 1 else 'ies'} left by a "
            "killed process, never used as results (each is removed when its run is next "
            "trained, or by the next sweep when no process trains that run):"
        )
        lines += [f"  {e.relative_to(store.root)}" for e in leftovers]
    if failed:
        lines.append(f"{len(failed)} failed run(s), never used as results (to try again, {_FIX}):")
        lines += [f"  {f.key}  {f.config.label()}  {f.time}  {f.message}" for f in failed]
    return "\n".join(lines)


def refusal(found: Damaged | Failed) -> FlatnessError:
    """The error for a damaged folder or a recorded failure: what it is and the fix."""
    if isinstance(found, Damaged):
        return FlatnessError(
            f"the stored run {found.path} is damaged ({found.reason}) and is never used; {_FIX}"
        )
    return FlatnessError(
        f"the run {found.config.label()} ({found.key}) failed on {found.time}: {found.message} "
        f"(recorded in {found.path}); to try again, {_FIX}"
    )
