"""Cached computations: a chapter's expensive results that are not training runs.

Exact Hessians and spectra, L2 paths, estimator studies and rank tables are computed once, kept
beside the runs in the results store and publishable like them. :func:`cached` looks a
computation up by its key, the hash of

- its ``name`` (what is computed, e.g. ``"theory.separating_scaling"``),
- its ``inputs`` (every setting it reads: profile, data set, sizes, the runs it reads by key),
- and the code of the modules it runs (``code``; their syntax trees, so comments, docstrings and
  formatting do not count): change what one runs and the computation is redone,

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
``None``, numpy arrays, torch tensors and pandas DataFrames or Series (numeric, boolean,
datetime, text or object columns, one level of row index). A value is written, read back and
compared with what was computed before it is kept: one that would not come back identical
(categorical or nullable columns, a MultiIndex on the rows, masked arrays, named tuples,
bfloat16 tensors) is refused with the difference named, and nothing is kept. numpy scalars
come back as the Python numbers they equal. The first call returns the value read back, as
every later call does. Stored entries carry the SHA-256 of their files (``hashes.json``), so an
edit is damage too. One process computes a key at a time (a lock per key); the others wait and
read its entry.

Inputs are JSON-like data with string keys: a tuple counts as the list it equals, a path as
its text and a numpy array as its list of numbers, as they mean the same settings.

Why not joblib's ``Memory`` or jupyter-cache: ``Memory`` keys a call by the source of the
called function alone, so a change in the functions it calls serves a stale value, and it
stores pickles, which a published layer read by other versions of numpy and pandas should not
rely on and which a reviewer cannot read; jupyter-cache caches whole notebooks, which the book
already reuses by fingerprint, while the verdict page needs single values of other chapters.
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
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
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from flatness.errors import FlatnessError
from flatness.paths import results_root
from flatness.results.entries import folder_problem
from flatness.results.published import HASHES, _sha256, published_root

#: the subfolder of the store and of the published layer that holds computations
FOLDER = "computations"
FILES = ("inputs.json", "value.json", "arrays.npz", "provenance.json")
#: nested inputs or values deeper than this are refused (a structure that contains itself)
MAX_DEPTH = 64
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
    #: the hash of each module's code when it was computed (:func:`code_hashes`)
    code: dict

    def value(self):
        """The stored value, read from disk."""
        return _read_value(self.path)

    def current(self) -> bool:
        """Whether the code it was computed by is today's: if not, no call asks for its key
        again and it is dead weight."""
        try:
            return code_hashes(list(self.code)) == self.code
        except FlatnessError:  # a module since removed
            return False


# -- keys ---------------------------------------------------------------------------------------
def _canonical(obj, depth: int = 0) -> Any:
    """``obj`` as plain JSON data with a fixed form, for hashing and for ``inputs.json``."""
    if depth > MAX_DEPTH:
        raise FlatnessError(f"a computation's inputs nest deeper than {MAX_DEPTH} levels")
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise FlatnessError(
                f"a computation's inputs must have text keys, got {bad[0]!r} "
                f"({type(bad[0]).__name__})"
            )
        return {k: _canonical(v, depth + 1) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        return _canonical(obj.tolist(), depth + 1)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return _canonical(obj.item(), depth + 1)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"float": repr(obj)}  # not the text "nan"
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise FlatnessError(
        f"a computation's inputs must be numbers, strings, booleans, None, paths, or lists and "
        f"dicts of them; got {type(obj).__name__} ({obj!r:.60})"
    )


def code_hashes(modules: Sequence[str]) -> dict[str, str]:
    """The hash (16 hex digits) of each named module's code (its source file found, not
    imported): a SHA-256 of its syntax tree with docstrings left out, so that a comment, a
    docstring or a reformatting leaves the key alone and published computations stay valid,
    while any change to what runs changes it."""
    out = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not Path(spec.origin).is_file():
            raise FlatnessError(f"module {name} has no source file to hash")
        stat = Path(spec.origin).stat()
        out[name] = _tree_hash(spec.origin, stat.st_mtime_ns, stat.st_size)
    return out


@functools.lru_cache(maxsize=1024)
def _tree_hash(path: str, mtime_ns: int, size: int) -> str:
    """The hash of one source file's tree; a page asks for the same modules' hashes dozens of
    times, and parsing them each time took seconds, so it is kept per file version."""
    digest = hashlib.sha256()
    _feed(ast.parse(Path(path).read_bytes()), digest)
    return digest.hexdigest()[:16]


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _feed(node, digest) -> None:
    """Feeds ``node``'s tree to ``digest``: node types, field names and constants, without
    positions, docstrings or empty fields; leaving empty fields out keeps the text the same on
    Python versions that add fields (``type_params`` in 3.12)."""
    if isinstance(node, list):
        digest.update(b"[")
        for item in node:
            _feed(item, digest)
        digest.update(b"]")
        return
    if not isinstance(node, ast.AST):
        digest.update(f"{type(node).__name__}:{node!r};".encode())
        return
    digest.update(f"({type(node).__name__}".encode())
    for field in node._fields:
        value = getattr(node, field, None)
        if field == "body" and isinstance(node, _DOCUMENTED) and _docstring(value):
            value = value[1:]
        if value is None or value == []:
            continue
        digest.update(f" {field}=".encode())
        _feed(value, digest)
    digest.update(b")")


def _docstring(body) -> bool:
    first = body[0] if body else None
    return (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )


def package_modules(package: str) -> tuple[str, ...]:
    """``package`` and every module in it, for ``code=`` of a computation that runs them."""
    import pkgutil

    spec = importlib.util.find_spec(package)
    paths = spec.submodule_search_locations if spec is not None else None
    if not paths:
        raise FlatnessError(f"{package} is not a package")
    return (package, *sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(paths)))


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
    return _hash_record(record), record


def _hash_record(record: Mapping) -> str:
    text = json.dumps(
        {k: record.get(k) for k in ("name", "inputs", "code")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_name(name: str) -> None:
    if (
        not isinstance(name, str)
        or not name[:1].isalpha()
        or not all(c.isalnum() or c in "._" for c in name)
    ):
        raise FlatnessError(
            f"a computation's name starts with a letter and holds letters, digits, '.' and '_', "
            f"got {name!r}"
        )


# -- values -------------------------------------------------------------------------------------
class _Writer:
    """Encodes a value as JSON structure plus arrays."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> str:
        if type(a) is not np.ndarray or a.dtype == object:
            raise FlatnessError(
                f"a {type(a).__name__} of dtype {a.dtype} cannot be stored exactly; store a "
                "plain numpy array or a list"
            )
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a
        return key

    def encode(self, v, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise FlatnessError(f"a computation's value nests deeper than {MAX_DEPTH} levels")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            if isinstance(v, np.floating) and v.dtype.itemsize > 8:
                raise FlatnessError(f"a {v.dtype} number would lose precision as a float")
            v = float(v)
            return v if math.isfinite(v) else {"float": repr(v)}
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            return {"tensor": self.array(t.numpy()), "dtype": str(t.dtype)}
        if isinstance(v, np.ndarray):
            return {"array": self.array(v)}
        if isinstance(v, pd.DataFrame):
            if v.columns.has_duplicates:
                raise FlatnessError("a DataFrame with duplicate column names cannot be stored")
            return {
                "frame": [[self.encode(c, depth + 1), self.column(v[c], depth)] for c in v.columns],
                "columns": {"dtype": str(v.columns.dtype), "name": self.encode(v.columns.name)},
                "index": self.index(v.index, depth),
                "rows": len(v),
            }
        if isinstance(v, pd.Series):
            return {"series": self.column(v, depth), "index": self.index(v.index, depth)}
        if isinstance(v, list):
            return [self.encode(x, depth + 1) for x in v]
        if type(v) is tuple:
            return {"tuple": [self.encode(x, depth + 1) for x in v]}
        if type(v) is dict:
            return {
                "dict": [
                    [self.encode(k, depth + 1), self.encode(x, depth + 1)] for k, x in v.items()
                ]
            }
        raise FlatnessError(
            f"a computation's value cannot hold a {type(v).__name__}: store numbers, strings, "
            "arrays, tensors, DataFrames, and dicts, lists or tuples of them"
        )

    def index(self, index: pd.Index, depth: int):
        if isinstance(index, pd.MultiIndex):
            raise FlatnessError("a MultiIndex on the rows cannot be stored; reset_index() first")
        default = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
        return {
            "values": None if default else self.column(index.to_series(), depth),
            "name": self.encode(index.name),
        }

    def column(self, s: pd.Series, depth: int) -> dict:
        if isinstance(s.dtype, np.dtype) and s.dtype.kind in "biufM":
            values = {"values": self.array(s.to_numpy())}
        else:
            values = {"list": [self.encode(x, depth + 1) for x in s.tolist()]}
        return values | {"dtype": str(s.dtype), "name": self.encode(s.name)}


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
            index = self.index(v["index"], v["rows"])
            columns = {
                self.decode(name): self.column(col).set_axis(index) for name, col in v["frame"]
            }
            frame = pd.DataFrame(columns, index=index) if columns else pd.DataFrame(index=index)
            frame.columns = pd.Index(
                list(frame.columns),
                dtype=v["columns"]["dtype"],
                name=self.decode(v["columns"]["name"]),
            )
            return frame
        if "series" in v:
            series = self.column(v["series"])
            index = self.index(v["index"], len(series))
            return pd.Series(series.to_numpy(), index=index, dtype=series.dtype, name=series.name)
        if "tuple" in v:
            return tuple(self.decode(x) for x in v["tuple"])
        if "dict" in v:
            return {self.decode(k): self.decode(x) for k, x in v["dict"]}
        raise ValueError(f"unknown entry {sorted(v)}")

    def index(self, v: dict, rows: int) -> pd.Index:
        if v["values"] is None:
            return pd.RangeIndex(rows, name=self.decode(v["name"]))
        return pd.Index(self.column(v["values"]), name=self.decode(v["name"]))

    def column(self, c: dict) -> pd.Series:
        if "values" in c:
            values = np.array(self.arrays[c["values"]])
        else:
            values = [self.decode(x) for x in c["list"]]
        return pd.Series(values, dtype=c["dtype"], name=self.decode(c["name"]))


def _read_value(path: Path):
    structure = json.loads((path / "value.json").read_text())
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return _Reader(arrays).decode(structure)


def _difference(a, b, where: str = "the value") -> str | None:
    """Where ``b`` (read back) differs from ``a`` (computed), or None if it is the same."""
    if isinstance(a, (pd.DataFrame, pd.Series)):
        frame = isinstance(a, pd.DataFrame)
        check = pd.testing.assert_frame_equal if frame else pd.testing.assert_series_equal
        if type(b) is not type(a):
            return f"{where} comes back as a {type(b).__name__}"
        try:
            check(a, b, check_exact=True, check_freq=True, check_flags=True)
        except AssertionError as err:
            return f"{where}: {' '.join(str(err).split())[:200]}"
        return None
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if type(b) is not torch.Tensor or a.dtype != b.dtype or a.shape != b.shape:
            return f"{where} comes back as {type(b).__name__} {getattr(b, 'dtype', '')}"
        if torch.equal(a, b):
            return None
        if a.is_floating_point() or a.is_complex():
            nan = a.isnan()
            if torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan]):
                return None
        return f"{where}: values differ"
    if isinstance(a, np.ndarray):
        if type(a) is not np.ndarray or a.dtype != b.dtype or a.shape != b.shape:
            return f"{where} comes back as a {b.dtype} array of shape {b.shape}"
        nan = a.dtype.kind in "fc"
        return None if np.array_equal(a, b, equal_nan=nan) else f"{where}: values differ"
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{where} comes back as a {type(b).__name__} of {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = _difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, dict):
        if type(a) is not type(b) or list(a) != list(b):
            return f"{where} comes back with other keys"
        for k in a:
            found = _difference(a[k], b[k], f"{where}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(a, float) and math.isnan(a):
        return None if isinstance(b, float) and math.isnan(b) else f"{where} is {b!r}"
    return (
        None
        if a == b and isinstance(b, type(a).__mro__[-2] if False else object)
        else f"{where} is {b!r}, not {a!r}"
    )


# -- the layers ---------------------------------------------------------------------------------
def store_folder(root: Path | None = None) -> Path:
    return Path(root if root is not None else results_root()) / FOLDER


def published_folder(root: Path | None = None) -> Path | None:
    base = Path(root) if root is not None else published_root()
    return base / FOLDER if base is not None else None


def _examine(path: Path, key: str) -> Computation:
    """The computation in ``path``; raises ``ValueError`` with a one-line reason if damaged:
    a file missing or not matching ``hashes.json``, unreadable JSON, inputs of another key."""
    for name in (*FILES, HASHES):
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
    try:
        recorded = json.loads((path / HASHES).read_text())
        for name in FILES:
            if _sha256(path / name) != recorded.get(name):
                raise ValueError(f"{name} does not match the SHA-256 in {HASHES}")
        record = json.loads((path / "inputs.json").read_text())
        provenance = json.loads((path / "provenance.json").read_text())
    except (OSError, AttributeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable ({err})") from None
    if not isinstance(record, dict) or not isinstance(provenance, dict):
        raise ValueError("inputs.json or provenance.json is not a mapping")
    if _hash_record(record) != key:
        raise ValueError("inputs.json hashes to another key")
    code = record.get("code")
    if not isinstance(code, dict):
        raise ValueError("inputs.json names no code hashes")
    return Computation(record["name"], key, path, record["inputs"], provenance, code)


#: what :func:`_lookup` returns when there is no good entry
_MISSING = object()


def _lookup(folder: Path | None, name: str, key: str, layer: str):
    """The value of the entry ``NAME-KEY`` in ``folder``, else :data:`_MISSING`; damage is
    reported (:class:`DamagedWarning`)."""
    if folder is None:
        return _MISSING
    path = folder / f"{name}-{key}"
    if not path.is_dir():
        return _MISSING
    try:
        _examine(path, key)
        return _read_value(path)
    except Exception as err:  # whatever fails to read, the entry is not served
        fix = "restore it with git, or publish it again" if layer == "published" else "replaced"
        warnings.warn(
            f"the {layer} computation {name} ({path}) is damaged ({err}); it is computed again "
            f"({fix})",
            DamagedWarning,
            stacklevel=4,
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
    stored (see the module's docstring for the key, the layers and what a value may hold).

    Args:
        name: what is computed: starts with a letter; letters, digits, ``.`` and ``_``.
        inputs: everything ``compute`` reads that can change its value, as JSON-like data.
        compute: makes the value, without arguments.
        code: modules whose source is part of the key (those that compute the value); the
            module that defines ``compute`` is always included.
        results, published: the store's and the published layer's folders (default
            :func:`flatness.paths.results_root` and :func:`published_root`).

    Raises:
        FlatnessError: a bad name or inputs; a store that cannot be written (before anything is
            computed); a value that cannot be stored exactly (nothing is kept).
    """
    _check_name(name)
    modules = sorted({*code, getattr(compute, "__module__", None) or "__main__"} - {"__main__"})
    key, record = key_of(name, inputs, modules)
    refresh = os.environ.get(REFRESH_ENV) == "1"
    if not refresh:
        value = _lookup(published_folder(published), name, key, "published")
        if value is not _MISSING:
            return value
    folder = store_folder(results)
    problem = folder_problem(folder, write=True)
    if problem is not None:
        raise FlatnessError(
            f"cannot store the computation {name} in {folder} ({problem}); point --results or "
            "$FLATNESS_RESULTS at a folder that can be written"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".locks").mkdir(exist_ok=True)
    # one process computes a key; the others wait here and then read its entry
    with FileLock(str(folder / ".locks" / f"{name}-{key}.lock")):
        if not refresh:
            value = _lookup(folder, name, key, "stored")
            if value is not _MISSING:
                return value
        start = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - start
        return _write(folder, folder / f"{name}-{key}", record, value, seconds)


def _write(folder: Path, path: Path, record: dict, value, seconds: float):
    """Write the entry whole in a hidden folder, check that it reads back identical, rename it
    into place; returns the value read back."""
    writer = _Writer()
    try:
        structure = writer.encode(value)
    except FlatnessError:
        raise
    except Exception as err:  # a tensor or frame numpy cannot hold: say so, keep nothing
        raise FlatnessError(
            f"the computation {record['name']}'s value cannot be stored: {type(err).__name__}: "
            f"{err}"
        ) from None
    provenance = {
        "seconds": seconds,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    for leftover in folder.glob(f".tmp-{path.name}-*"):  # from a writer killed half-way
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=folder))
    try:
        (tmp / "inputs.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        (tmp / "value.json").write_text(json.dumps(structure))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **writer.arrays)
        (tmp / "arrays.npz").write_bytes(buffer.getvalue())
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
        hashes = {file: _sha256(tmp / file) for file in FILES}
        (tmp / HASHES).write_text(json.dumps(hashes, indent=2))
        back = _read_value(tmp)
        different = _difference(value, back)
        if different:
            raise FlatnessError(
                f"the computation {record['name']}'s value would not come back as computed "
                f"({different}); store plain numbers, arrays, tensors or DataFrames"
            )
        tmp.chmod(0o755)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():  # damaged or refreshed: set aside, then replaced in one rename
            aside = folder / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
            os.rename(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return back


def stored(results: str | Path | None = None) -> tuple[list[Computation], list[tuple[Path, str]]]:
    """The computations in the store, and its damaged entries with a reason each."""
    return _entries(store_folder(results))


def published_entries(
    published: str | Path | None = None,
) -> tuple[list[Computation], list[tuple[Path, str]]]:
    """The computations in the published layer, and its damaged entries with a reason each."""
    return _entries(published_folder(published))


def withdraw(computations: Sequence[Computation], published: str | Path | None = None) -> None:
    """Remove published computations (those of code changed since, which nothing reads)."""
    folder = published_folder(published)
    for c in computations:
        if folder is None or c.path.parent.resolve() != folder.resolve():
            raise FlatnessError(f"{c.path} is not in the published layer {folder}")
        shutil.rmtree(c.path)


def _entries(folder: Path | None) -> tuple[list[Computation], list[tuple[Path, str]]]:
    good, damaged = [], []
    if folder is None:
        return good, damaged
    if not folder.is_dir():
        return good, damaged
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        name, _, key = path.name.rpartition("-")
        try:
            if not path.is_dir():
                raise ValueError("not a folder")
            good.append(_examine(path, key))
        except ValueError as err:
            damaged.append((path, str(err)))
    return good, damaged


def publish(computations: Sequence[Computation], published: str | Path | None = None) -> list[Path]:
    """Copy stored computations into the published layer, written whole and renamed into
    place. Returns the folders written (an entry already published whole is left as it is)."""
    folder = published_folder(published)
    if folder is None:
        raise FlatnessError("no published layer outside a checkout; pass --to a folder")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in computations:
        _examine(c.path, c.key)  # damaged since it was listed: refused
        target = folder / c.path.name
        try:
            _examine(target, c.key)
            continue  # published whole already
        except ValueError:
            pass
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{c.path.name}-", dir=folder))
        try:
            for file in (*FILES, HASHES):
                shutil.copyfile(c.path / file, tmp / file)
            tmp.chmod(0o755)
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.append(target)
    return out
