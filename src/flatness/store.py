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

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from flatness.config import RunConfig
from flatness.entries import FAILED, Damaged, Failed, Run, examine, folder_problem, one_line
from flatness.errors import FlatnessError, RunDiverged, RunMissing
from flatness.paths import results_root
from flatness.provenance import provenance
from flatness.published import Published

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
        folder = self.root / ".locks"
        self._make(folder)
        return FileLock(folder / f"{config.key()}.lock")

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
        :func:`load_or_run` calls this as it starts training a run and when it has saved it,
        holding the run's lock (:meth:`lock`), when no other process writes those entries; call
        it only under that lock.
        """
        from flatness.checkpoint import remove_temporaries

        key = config.key()
        removed = remove_temporaries(self.checkpoint_path(config))
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith((f".tmp-{key}-", f".trash-{key}-")):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
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
        lines += [f"  {d.key}  {d.reason}" for d in damaged]
    if failed:
        lines.append(f"{len(failed)} failed run(s), never used as results (to try again, {_FIX}):")
        lines += [f"  {f.key}  {f.config.label()}  {f.time}  {f.message}" for f in failed]
    return "\n".join(lines)


def _refusal(found: Damaged | Failed) -> FlatnessError:
    if isinstance(found, Damaged):
        return FlatnessError(
            f"the stored run {found.path} is damaged ({found.reason}) and is never used; {_FIX}"
        )
    return FlatnessError(
        f"the run {found.config.label()} ({found.key}) failed on {found.time}: {found.message} "
        f"(recorded in {found.path}); to try again, {_FIX}"
    )


def load_or_run(
    config: RunConfig,
    *,
    store: Store | str | Path | None = None,
    data_root=None,
    device=None,
    progress: bool = False,
    retrain: bool = False,
    train_fn=None,
    published=None,
    train_missing: bool = True,
    lock: bool = True,
) -> Run:
    """The published or stored run for ``config``; trained and stored first if absent.

    The published layer (:mod:`flatness.published`) is read first, then the local store.

    Several processes asking for the same run at once train it once: the others wait for the
    run's lock and then reuse the stored run.

    Args:
        store: a :class:`Store` or its folder (default :func:`flatness.paths.results_root`).
        retrain: replace a damaged folder or a recorded failure by training again (a good run
            is always reused).
        train_fn: called as ``train_fn(config, data_root=, device=, progress=, checkpoint=)``
            and returning an object with ``.metrics`` (a JSON-able dict) and ``.arrays`` (a dict
            of numpy arrays); default :func:`flatness.train.train`. ``checkpoint`` is a path in
            the store's ``.checkpoints`` folder where training keeps a resumable state; it is
            deleted once the run is saved.
        published: a :class:`~flatness.published.Published` layer or its folder; default
            :func:`~flatness.published.published_root`; ``False`` skips the layer.
        train_missing: with ``False``, a run found in neither layer raises :class:`RunMissing`
            instead of training.
        lock: ``False`` when the caller already holds the run's lock (:meth:`Store.lock`), as a
            sweep does for the worker process it starts.

    Raises:
        RunMissing: the run is absent and ``train_missing`` is false.
        FlatnessError: without ``retrain``, when the run's folder is damaged (naming the folder,
            the reason and the fix) or its training failed before (with the recorded message);
            when training raises :class:`FlatnessError`, which is first recorded as a failed run.
            Any other exception leaves only the checkpoint behind, so a rerun resumes.
    """
    _record(config)
    if published is not False:
        layer = published if isinstance(published, Published) else None
        if layer is None:
            layer = Published(Path(published)) if published is not None else Published.default()
        run = layer.find(config)
        if run is not None:
            return run
    store = store if isinstance(store, Store) else Store(store)
    found = store.inspect(config)
    if isinstance(found, Run):
        return found
    if found is not None and not retrain:
        raise _refusal(found)
    if not train_missing:
        raise RunMissing(config)
    held = store.lock(config) if lock else contextlib.nullcontext()
    if lock:
        try:
            held.acquire(timeout=0)
        except Timeout:
            if progress:
                print(f"waiting for another process to train {config.label()}", file=sys.stderr)
            held.acquire()
    try:
        found = store.inspect(config)  # whoever held the lock may have stored it
        if isinstance(found, Run):
            return found
        if found is not None:
            if not retrain:
                raise _refusal(found)
            store.discard(found.path)
        return _train_and_save(config, store, data_root, device, progress, train_fn)
    finally:
        if lock:
            held.release()


#: (list, dry) pairs collecting every config asked of :func:`load_or_run` in :func:`recording`
_RECORDERS: list[tuple[list[RunConfig], bool]] = []


def _record(config: RunConfig) -> None:
    for found, _ in _RECORDERS:
        found.append(config)
    if any(dry for _, dry in _RECORDERS):
        raise RunMissing(config)


@contextlib.contextmanager
def recording(*, dry: bool = False):
    """Collect every config :func:`load_or_run` is asked for inside the block (a list).

    With ``dry``, every lookup is recorded and then answered with :class:`RunMissing`, as if
    no run were published or stored and training were not asked for: the lookups of a chapter
    at a profile, without training or reading anything.

    >>> with recording() as asked:
    ...     pass
    >>> asked
    []
    """
    found: list[RunConfig] = []
    entry = (found, dry)
    _RECORDERS.append(entry)
    try:
        yield found
    finally:
        _RECORDERS.remove(entry)


#: ``0`` here trains without progress bars whatever ``progress`` says: chapter kernels set it
#: (:func:`flatness.book._this_python`), as their notebooks would keep every redraw
PROGRESS_ENV = "FLATNESS_PROGRESS"


def _train_and_save(config, store, data_root, device, progress, train_fn) -> Run:
    progress = progress and os.environ.get(PROGRESS_ENV) != "0"
    if train_fn is None:
        from flatness.train import train as train_fn
    if device is None:
        from flatness.train import default_device

        device = default_device()
    checkpoint = store.checkpoint_path(config)
    store._make(checkpoint.parent)
    # the caller holds the run's lock: whatever a killed writer of this run left is stale
    store.remove_leftovers(config)
    start = time.perf_counter()
    try:
        result = train_fn(
            config, data_root=data_root, device=device, progress=progress, checkpoint=checkpoint
        )
    except RunDiverged as err:
        store.record_failure(config, str(err), provenance(device, time.perf_counter() - start))
        # a retrain starts afresh rather than resuming into the same failure
        checkpoint.unlink(missing_ok=True)
        store.remove_leftovers(config)
        raise
    # a resumed run's time includes its earlier sittings (not the epochs an interruption lost)
    # (a train_fn of the caller's may return any object with metrics and arrays)
    wall = getattr(result, "earlier_wall_seconds", 0.0) + time.perf_counter() - start
    sittings = getattr(result, "sittings", 1)
    run = store.save(
        config, result.metrics, result.arrays, provenance(device, wall, sittings=sittings)
    )
    checkpoint.unlink(missing_ok=True)
    store.remove_leftovers(config)
    return run
