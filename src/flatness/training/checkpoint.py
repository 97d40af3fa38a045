"""Training checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings and (nested) lists, dicts and tuples of
them: a model's and an optimiser's ``state_dict()``, a ``torch.Generator``'s ``get_state()``,
per-epoch series and :func:`rng_state`. It is read with ``torch.load(weights_only=True)``,
which refuses any other pickled object, so a checkpoint file cannot run code.

A checkpoint that cannot be read (truncated, or holding an object ``weights_only`` refuses) is
reported by a :class:`CheckpointWarning` and treated as absent: training then restarts from
scratch, which costs time but never gives a wrong result.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from flatness.errors import FlatnessError

_RNG_KEYS = ("torch", "cuda", "numpy", "python")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and is ignored."""


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: the old file, if any, stays until the new is whole.

    The state is written to a hidden temporary file in the same folder (``.<name>.tmp-*``),
    flushed to disk and renamed over ``path`` in one step. If writing fails (for instance an
    object that cannot be pickled), the temporary file is removed and the error propagates.
    Once the new checkpoint is in place, temporary files of ``path`` left by an earlier writer
    that was killed mid-write are removed too (:func:`remove_temporaries`): ``path`` must have
    one writer at a time, as the results store's lock per run ensures.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _interrupted(err):
            # Ctrl-C inside torch.save leaves its zip writer half-done, and closing it raises
            # "unexpected pos" over the KeyboardInterrupt: the interruption is what happened
            raise KeyboardInterrupt from None
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
    remove_temporaries(path)


def _interrupted(err: BaseException) -> bool:
    """Whether ``err`` is a KeyboardInterrupt, or was raised while handling one."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__context__
    return False


def remove_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files of ``path``'s checkpoint (``.<name>.tmp-*``) and return them.

    :func:`save_checkpoint` removes its own temporary file unless its process is killed
    (SIGKILL, a power cut); such a file is never read and would stay forever. Call this only
    as ``path``'s one writer (e.g. holding the run's lock in the results store): another
    writer's file being written would be removed too.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(_temporary_prefix(path))}*"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | Path) -> dict | None:
    """The state saved at ``path`` (tensors on the CPU), or ``None`` if there is none.

    A file that cannot be read as a checkpoint (truncated, not a torch file, holding objects
    ``weights_only`` refuses, not a dict) gives a :class:`CheckpointWarning` naming the file and
    the reason, and ``None``. An ``OSError`` opening the file (e.g. no permission) propagates.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        warnings.warn(
            f"ignoring the damaged checkpoint {path} ({_reason(err)}); "
            "training restarts from scratch",
            CheckpointWarning,
            stacklevel=2,
        )
        return None
    if not isinstance(state, dict):
        warnings.warn(
            f"ignoring the checkpoint {path}: it holds a {type(state).__name__}, not a dict; "
            "training restarts from scratch",
            CheckpointWarning,
            stacklevel=2,
        )
        return None
    return state


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, pickle.UnpicklingError):
        # torch's message suggests weights_only=False, which would run the file's code; name
        # only what was refused
        for line in lines:
            if "Unsupported global" in line:
                refused = line.split("Unsupported global: ")[-1].split(" was not")[0]
                return f"it holds {refused}, which weights_only loading refuses"
        return "it is not a weights_only checkpoint"
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def rng_state() -> dict:
    """Every random state training draws from, in a form ``weights_only`` loading accepts.

    Keys: ``torch`` (the CPU generator's byte tensor), ``cuda`` (a list with one byte tensor per
    CUDA device; empty while this process has not used CUDA), ``numpy`` (the global
    ``np.random`` MT19937 state as a dict) and ``python`` (the ``random`` module's state as a
    dict).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # only if CUDA is in use: asking would otherwise create a context on every GPU
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "name": str(name),
            # uint32 words held as int64: every value fits and int64 tensors load everywhere
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    """Restore the random states captured by :func:`rng_state`.

    CUDA states are restored for the devices present (a resume on fewer devices restores the
    first ones).

    Raises:
        FlatnessError: when ``state`` lacks one of the keys ``torch``, ``cuda``, ``numpy`` or
            ``python``.
    """
    missing = [k for k in _RNG_KEYS if k not in state]
    if missing:
        raise FlatnessError(
            f"the random state lacks {', '.join(missing)}; it must come from rng_state() "
            f"(keys: {', '.join(_RNG_KEYS)})"
        )
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    n = state["numpy"]
    keys = np.asarray(n["keys"].cpu().numpy(), dtype=np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"]), p["gauss_next"]))
