"""Runs on demand: the published run, else the stored one, else trained and stored.

:func:`load_or_run` reads the published layer (:mod:`flatness.results.published`), then the
local store (:mod:`flatness.results.store`), and trains what neither holds
(:func:`flatness.training.loop.train`). It lives here, above both the store and training, so that
the store knows nothing of how a run is made. :func:`recording` collects the runs a block of
code asks for (a chapter's grid at a profile).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from filelock import Timeout

from flatness.errors import RunDiverged, RunMissing
from flatness.provenance import provenance
from flatness.results.entries import Run
from flatness.results.published import Published
from flatness.results.store import Store, refusal
from flatness.training.config import RunConfig


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

    The published layer (:mod:`flatness.results.published`) is read first, then the local store.

    Several processes asking for the same run at once train it once: the others wait for the
    run's lock and then reuse the stored run.

    Args:
        store: a :class:`Store` or its folder (default :func:`flatness.paths.results_root`).
        retrain: replace a damaged folder or a recorded failure by training again (a good run
            is always reused).
        train_fn: called as ``train_fn(config, data_root=, device=, progress=, checkpoint=)``
            and returning an object with ``.metrics`` (a JSON-able dict) and ``.arrays`` (a dict
            of numpy arrays); default :func:`flatness.training.loop.train`. ``checkpoint`` is a path in
            the store's ``.checkpoints`` folder where training keeps a resumable state; it is
            deleted once the run is saved.
        published: a :class:`~flatness.results.published.Published` layer or its folder; default
            :func:`~flatness.results.published.published_root`; ``False`` skips the layer.
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
        raise refusal(found)
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
                raise refusal(found)
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
#: (:func:`flatness.book.build._this_python`), as their notebooks would keep every redraw
PROGRESS_ENV = "FLATNESS_PROGRESS"


def _train_and_save(config, store, data_root, device, progress, train_fn) -> Run:
    progress = progress and os.environ.get(PROGRESS_ENV) != "0"
    if train_fn is None:
        from flatness.training.loop import train as train_fn
    if device is None:
        from flatness.training.loop import default_device

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
