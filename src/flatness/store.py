"""The results store: one folder per run, named by the hash of its semantic config.

Each run folder holds ``config.json``, ``metrics.json``, ``arrays.npz`` and ``provenance.json``.
A run is written into a hidden temporary folder and renamed into place in one step, so a
reader sees a whole run or none; an interrupted write leaves no run behind.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from flatness.config import RunConfig
from flatness.paths import results_root

FILES = ("config.json", "metrics.json", "arrays.npz", "provenance.json")


@dataclass(frozen=True)
class Run:
    """One stored run."""

    key: str
    path: Path
    config: RunConfig
    metrics: dict
    provenance: dict

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The run's arrays, read from disk on each access."""
        with np.load(self.path / "arrays.npz") as npz:
            return {k: npz[k] for k in npz.files}


class Store:
    """A folder of runs (default :func:`flatness.paths.results_root`)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else results_root()

    def path(self, config: RunConfig) -> Path:
        return self.root / config.key()

    def load(self, config: RunConfig) -> Run | None:
        """The stored run for ``config``, or ``None``."""
        return self._read(self.path(config))

    def _read(self, path: Path) -> Run | None:
        if not all((path / f).is_file() for f in FILES):
            return None
        read = lambda name: json.loads((path / name).read_text())  # noqa: E731
        return Run(
            key=path.name,
            path=path,
            config=RunConfig(**read("config.json")),
            metrics=read("metrics.json"),
            provenance=read("provenance.json"),
        )

    def runs(self) -> list[Run]:
        """Every complete run, oldest first (temporary and foreign folders are skipped)."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue
            try:
                run = self._read(path)
            except (ValueError, TypeError, json.JSONDecodeError):
                continue  # a folder from an older format or someone else
            if run is not None:
                found.append(run)
        return sorted(found, key=lambda r: r.provenance.get("finished", ""))

    def save(self, config: RunConfig, metrics: dict, arrays: dict, provenance: dict) -> Run:
        """Write a run atomically; if another writer got there first, keep theirs."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(config)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{config.key()}-", dir=self.root))
        try:
            (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
            try:
                os.rename(tmp, target)
            except OSError:
                if self.load(config) is None:
                    raise
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.load(config)


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for pkg in ("flatness", "torch", "numpy", "pyhessian", "scikit-learn", "torchvision"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def provenance(device, wall_seconds: float) -> dict:
    """Where, when and with what a run was made."""
    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {
        "git_commit": _git_commit(),
        "versions": _versions(),
        "device": f"{dev.type}: {name}",
        "platform": platform.platform(),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": wall_seconds,
    }


def load_or_run(
    config: RunConfig,
    *,
    store: Store | None = None,
    data_root=None,
    device=None,
    progress: bool = False,
) -> Run:
    """The stored run for ``config``; trained and stored first if absent."""
    from flatness.train import default_device, train

    store = store or Store()
    found = store.load(config)
    if found is not None:
        return found
    device = device if device is not None else default_device()
    start = time.perf_counter()
    result = train(config, data_root=data_root, device=device, progress=progress)
    return store.save(
        config, result.metrics, result.arrays, provenance(device, time.perf_counter() - start)
    )
