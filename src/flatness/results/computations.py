"""Cached computations: a chapter's expensive results that are not training runs.

Exact Hessians and spectra, L2 paths, estimator studies and rank tables are computed once, kept
beside the runs in the results store and publishable like them. :func:`cached` looks a
computation up by its key, the hash of

- its ``name`` (what is computed, e.g. ``"theory.separating_scaling"``),
- its ``inputs`` (every setting it reads: profile, data set, sizes, the runs it reads by key),
- and the source of the modules it runs (``code``): edit one and the computation is redone,

first in the published layer (``published/computations``), then in the store
(``results/computations``); otherwise it computes, stores and returns the value. A folder is
``NAME-KEY`` with ``inputs.json`` (name, inputs, code hashes), ``value.json`` (the value's
structure and its scalars), ``arrays.npz`` (its arrays) and ``provenance.json`` (when, how long,
on what); it is written in a hidden temporary folder and renamed into place. A stored entry
that cannot be read whole, or whose inputs hash to another key, is damaged: it is reported
(:class:`DamagedWarning`), computed again and replaced, never served. A published entry is
checked against the SHA-256 of its files in ``hashes.json``; one that does not match is
reported and left alone, and the value comes from the store or is computed.

Values are trees of dicts, lists and tuples whose leaves are numbers, strings, booleans,
``None``, numpy arrays, torch tensors and pandas DataFrames or Series (numeric, boolean, text
or object columns of such scalars); anything else is refused before any work is stored.

Why not joblib's ``Memory`` or jupyter-cache: ``Memory`` keys a call by the source of the
called function alone, so a change in the functions it calls serves a stale value, and it
stores pickles, which a published layer read by other versions of numpy and pandas should not
rely on and which a reviewer cannot read; jupyter-cache caches whole notebooks, which the book
already reuses by fingerprint, while the verdict page needs single values of other chapters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flatness.errors import FlatnessError
from flatness.paths import results_root
from flatness.results.published import HASHES, _sha256, published_root

#: the subfolder of the store and of the published layer that holds computations
FOLDER = "computations"
FILES = ("inputs.json", "value.json", "arrays.npz", "provenance.json")
#: set to ``1`` to compute everything afresh (nothing read, everything written again)
REFRESH_ENV = "FLATNESS_RECOMPUTE"


class DamagedWarning(UserWarning):
    """A stored computation could not be read whole; it is computed again."""


@dataclass(frozen=True)
class Computation:
    """One stored (or published) computation."""

    name: str
    key: str
    path: Path
    inputs: dict
    provenance: dict

    def value(self):
        """The stored value, read from disk."""
        return _read_value(self.path)


# -- keys ---------------------------------------------------------------------------------------
def _canonical(obj) -> Any:
    """``obj`` as plain JSON data with a fixed form, for hashing and for ``inputs.json``."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_canonical(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return _canonical(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise FlatnessError(
        f"a computation's inputs must be numbers, strings, booleans, None, paths, or lists and "
        f"dicts of them; got {type(obj).__name__} ({obj!r:.60})"
    )


def code_hashes(modules: Sequence[str]) -> dict[str, str]:
    """The SHA-256 (first 16 hex digits) of each named module's source file (found, not
    imported)."""
    out = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not Path(spec.origin).is_file():
            raise FlatnessError(f"module {name} has no source file to hash")
        out[name] = hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:16]
    return out


def data_hash(*tensors: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of tensors' shapes, dtypes and values: the sample a computation
    reads, for its inputs."""
    digest = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous().numpy()
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:16]


def key_of(name: str, inputs: Mapping, code: Sequence[str]) -> tuple[str, dict]:
    """The key of a computation and the record ``inputs.json`` holds."""
    record = {"name": name, "inputs": _canonical(inputs), "code": code_hashes(code)}
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16], record


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._" for c in name):
        raise FlatnessError(f"a computation's name is letters, digits, '.' and '_', got {name!r}")


# -- values -------------------------------------------------------------------------------------
class _Writer:
    """Encodes a value as JSON structure plus arrays."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> str:
        if a.dtype == object:
            raise FlatnessError("object arrays cannot be stored; store a list instead")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a
        return key

    def encode(self, v) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, np.integer)) and not isinstance(v, np.bool_):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, (float, np.floating)):
            v = float(v)
            return v if math.isfinite(v) else {"float": repr(v)}
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            return {"tensor": self.array(t.numpy()), "dtype": str(t.dtype)}
        if isinstance(v, np.ndarray):
            return {"array": self.array(v)}
        if isinstance(v, pd.DataFrame):
            if not isinstance(v.index, pd.RangeIndex) or v.index.start != 0 or v.index.step != 1:
                index = self.column(v.index.to_series())
            else:
                index = None
            return {
                "frame": [[self.encode(c), self.column(v[c])] for c in v.columns],
                "index": index,
                "rows": len(v),
            }
        if isinstance(v, pd.Series):
            return {"series": self.column(v), "name": self.encode(v.name)}
        if isinstance(v, tuple):
            return {"tuple": [self.encode(x) for x in v]}
        if isinstance(v, list):
            return [self.encode(x) for x in v]
        if isinstance(v, Mapping):
            return {"dict": [[self.encode(k), self.encode(x)] for k, x in v.items()]}
        raise FlatnessError(
            f"a computation's value cannot hold a {type(v).__name__}: store numbers, strings, "
            "arrays, tensors, DataFrames, and dicts, lists or tuples of them"
        )

    def column(self, s: pd.Series) -> dict:
        if s.dtype.kind in "biuf" or s.dtype.kind == "M":
            return {"values": self.array(s.to_numpy()), "name": self.encode(s.name)}
        values = [self.encode(x) for x in s.tolist()]
        return {"list": values, "dtype": str(s.dtype), "name": self.encode(s.name)}


class _Reader:
    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = arrays

    def decode(self, v):
        if v is None or isinstance(v, (bool, str, int, float)):
            return v
        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if "float" in v:
            return float(v["float"])
        if "tensor" in v:
            return torch.from_numpy(np.array(self.arrays[v["tensor"]]))
        if "array" in v:
            return np.array(self.arrays[v["array"]])
        if "frame" in v:
            columns = {self.decode(name): self.column(col) for name, col in v["frame"]}
            frame = pd.DataFrame(columns)
            if not columns:
                frame = pd.DataFrame(index=range(v["rows"]))
            if v["index"] is not None:
                index = v["index"]
                frame.index = pd.Index(self.column(index), name=self.decode(index["name"]))
            return frame
        if "series" in v:
            return pd.Series(self.column(v["series"]), name=self.decode(v["name"]))
        if "tuple" in v:
            return tuple(self.decode(x) for x in v["tuple"])
        if "dict" in v:
            return {self.decode(k): self.decode(x) for k, x in v["dict"]}
        raise ValueError(f"unknown entry {sorted(v)}")

    def column(self, c: dict):
        if "values" in c:
            return np.array(self.arrays[c["values"]])
        return pd.Series([self.decode(x) for x in c["list"]], dtype=c["dtype"]).to_numpy()


def _read_value(path: Path):
    structure = json.loads((path / "value.json").read_text())
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return _Reader(arrays).decode(structure)


# -- the layers ---------------------------------------------------------------------------------
def store_folder(root: Path | None = None) -> Path:
    return Path(root if root is not None else results_root()) / FOLDER


def published_folder(root: Path | None = None) -> Path | None:
    base = Path(root) if root is not None else published_root()
    return base / FOLDER if base is not None else None


def _examine(path: Path, key: str) -> Computation:
    """The computation in ``path``; raises ``ValueError`` with a one-line reason if damaged."""
    for name in FILES:
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
    try:
        record = json.loads((path / "inputs.json").read_text())
        provenance = json.loads((path / "provenance.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"unreadable JSON ({err})") from None
    text = json.dumps(
        {k: record.get(k) for k in ("name", "inputs", "code")},
        sort_keys=True,
        separators=(",", ":"),
    )
    if hashlib.sha256(text.encode()).hexdigest()[:16] != key:
        raise ValueError("inputs.json hashes to another key")
    return Computation(record["name"], key, path, record["inputs"], provenance)


#: what :func:`_published_value` returns when there is no good published entry
_MISSING = object()


def _published_value(folder: Path | None, name: str, key: str):
    """The value of a published computation whose files match ``hashes.json``, else
    :data:`_MISSING`; a mismatch or damage is reported."""
    if folder is None:
        return _MISSING
    path = folder / f"{name}-{key}"
    if not path.is_dir():
        return _MISSING
    try:
        recorded = json.loads((path / HASHES).read_text())
        for file in FILES:
            if not (path / file).is_file() or _sha256(path / file) != recorded.get(file):
                raise ValueError(f"{file} does not match the SHA-256 in {HASHES}")
        _examine(path, key)
        return _read_value(path)
    except Exception as err:  # whatever fails to read, the entry is not served
        warnings.warn(
            f"the published computation {name} ({path}) is refused ({err}); it is computed "
            "again (restore it with git, or publish it again)",
            DamagedWarning,
            stacklevel=3,
        )
        return _MISSING


def cached(
    name: str,
    inputs: Mapping,
    compute: Callable[[], Any],
    *,
    code: Sequence[str] = (),
    results: str | Path | None = None,
    published: str | Path | None = None,
):
    """The value of ``compute()`` for these ``inputs``: published, stored, or computed now and
    stored (see the module's docstring for the key and the layers).

    Args:
        name: what is computed, letters, digits, ``.`` and ``_`` (e.g. ``"theory.l2_path"``).
        inputs: everything ``compute`` reads that can change its value, as JSON-like data.
        compute: makes the value, without arguments.
        code: modules whose source is part of the key (those that compute the value); the
            module that defines ``compute`` is always included.
        results, published: the store's and the published layer's folders (default
            :func:`flatness.paths.results_root` and :func:`published_root`).

    Raises:
        FlatnessError: a bad name or inputs, a value that cannot be stored (nothing is stored).
    """
    _check_name(name)
    modules = sorted({*code, getattr(compute, "__module__", None) or "__main__"} - {"__main__"})
    key, record = key_of(name, inputs, modules)
    refresh = os.environ.get(REFRESH_ENV) == "1"
    if not refresh:
        value = _published_value(published_folder(published), name, key)
        if value is not _MISSING:
            return value
    folder = store_folder(results)
    path = folder / f"{name}-{key}"
    if path.is_dir() and not refresh:
        try:
            _examine(path, key)
            return _read_value(path)
        except Exception as err:  # whatever fails to read, the entry is not whole
            warnings.warn(
                f"the stored computation {name} ({path}) is damaged ({err}); computing it again",
                DamagedWarning,
                stacklevel=2,
            )
    start = time.perf_counter()
    value = compute()
    seconds = time.perf_counter() - start
    _write(folder, path, record, value, seconds)
    return value


def _write(folder: Path, path: Path, record: dict, value, seconds: float) -> None:
    writer = _Writer()
    structure = writer.encode(value)  # refuses what cannot be stored, before any file exists
    provenance = {
        "seconds": seconds,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=folder))
    except OSError as err:
        raise FlatnessError(
            f"cannot write the computation {record['name']} into {folder} ({err}); point "
            "--results or $FLATNESS_RESULTS at a folder that can be written"
        ) from None
    try:
        (tmp / "inputs.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        (tmp / "value.json").write_text(json.dumps(structure))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **writer.arrays)
        (tmp / "arrays.npz").write_bytes(buffer.getvalue())
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
        tmp.chmod(0o755)
        if path.exists():  # damaged or refreshed: set aside, then replaced in one rename
            aside = folder / f".trash-{path.name}-{os.getpid()}"
            os.rename(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():  # another process stored the same computation meanwhile
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stored(results: str | Path | None = None) -> tuple[list[Computation], list[tuple[Path, str]]]:
    """The computations in the store, and its damaged entries with a reason each."""
    folder = store_folder(results)
    good, damaged = [], []
    if not folder.is_dir():
        return good, damaged
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name, _, key = path.name.rpartition("-")
        try:
            good.append(_examine(path, key))
        except ValueError as err:
            damaged.append((path, str(err)))
    return good, damaged


def publish(computations: Sequence[Computation], published: str | Path | None = None) -> list[Path]:
    """Copy stored computations into the published layer, each with ``hashes.json``, written
    whole and renamed into place. Returns the folders written (an entry already published with
    matching hashes is left as it is)."""
    folder = published_folder(published)
    if folder is None:
        raise FlatnessError("no published layer outside a checkout; pass --to a folder")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in computations:
        target = folder / c.path.name
        if (target / HASHES).is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DamagedWarning)  # damaged: replaced below
                if _published_value(folder, c.name, c.key) is not _MISSING:
                    continue
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{c.path.name}-", dir=folder))
        try:
            for file in FILES:
                shutil.copyfile(c.path / file, tmp / file)
            hashes = {file: _sha256(tmp / file) for file in FILES}
            (tmp / HASHES).write_text(json.dumps(hashes, indent=2))
            tmp.chmod(0o755)
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.append(target)
    return out
