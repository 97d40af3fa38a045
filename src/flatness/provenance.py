"""Where, when and with what a run was made: git commit, package versions, device, time."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _git_commit() -> str | None:
    here = str(Path(__file__).resolve().parent)
    command = ["git", "-C", here, "describe", "--always", "--dirty", "--abbrev=40"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for pkg in ("flatness", "torch", "numpy", "pyhessian", "scikit-learn", "torchvision"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def _cpu_name() -> str:
    """The CPU's model name (Linux), else what :func:`platform.processor` says, else ``cpu``."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def provenance(device, wall_seconds: float, *, sittings: int = 1) -> dict:
    """Where, when and with what a run was made; ``wall_seconds`` over all its ``sittings``
    (a run resumed from a checkpoint takes more than one)."""
    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    return {
        "git_commit": _git_commit(),
        "versions": _versions(),
        "device": f"{dev.type}: {name}",
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": wall_seconds,
        "sittings": sittings,
    }
