"""The published layer: stored runs committed with the book, read before the local store.

A published run is a run folder of the results store (``config.json``, ``metrics.json``,
``arrays.npz``, ``provenance.json``) plus ``hashes.json``, the SHA-256 of each of those files.
:func:`flatness.results.runs.load_or_run` looks a config up here first; a published folder whose files
do not match their recorded hashes is refused with a message naming the run, never used.
Nothing writes here but :func:`publish` (``python -m flatness publish GRID``).

Weights (the ``state.*`` arrays) are published only for runs whose weights take at most
:data:`WEIGHTS_LIMIT_BYTES`; larger runs keep their metrics, per-epoch series and spectra, and
``provenance.json`` says the weights were left out. A chapter that needs such a run's weights
must train it (``--train-missing``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatness.errors import DIVERGED_MULTIPLE, FlatnessError
from flatness.results.entries import FILES, Damaged, Run, examine, folder_problem
from flatness.training.config import RunConfig

PUBLISHED_ENV = "FLATNESS_PUBLISHED"
HASHES = "hashes.json"
#: The largest weights (sum of the ``state.*`` arrays' bytes) a published run keeps: 4 MiB
#: (softmax regression on MNIST: 31 kB; the 784-512-256-10 MLP: 2.1 MB, kept; VGG-16 and the
#: residual nets on CIFAR, tens of MB, left out: their runs record every measure instead).
#: It was 1 MiB until the sharpness measures needed the MLP's weights.
WEIGHTS_LIMIT_BYTES = 1 << 22
_KEY = re.compile(r"[0-9a-f]{16}")


def published_root() -> Path | None:
    """``$FLATNESS_PUBLISHED``, else ``<checkout>/published``; ``None`` outside a checkout."""
    from flatness.paths import project_root

    env = os.environ.get(PUBLISHED_ENV)
    if env:
        return Path(env).expanduser()
    root = project_root()
    return root / "published" if root is not None else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Published:
    """The read-only layer of published runs at ``root`` (default :func:`published_root`).

    A missing folder is an empty layer. A damaged run is refused with a fix: ``git checkout``
    where git tracks the run's folder, else publishing it again.

    Raises:
        FlatnessError: when ``root`` can never be a folder (a file, or a path below one).
    """

    root: Path | None = None

    def __post_init__(self):
        if self.root is None:
            return
        object.__setattr__(self, "root", Path(self.root))
        problem = folder_problem(self.root)
        if problem is not None:
            raise FlatnessError(
                f"the published layer {self.root} cannot be a folder ({problem}); point "
                f"--published, publish's --to or ${PUBLISHED_ENV} at a folder"
            )

    @classmethod
    def default(cls) -> Published:
        return cls(published_root())

    def path(self, config: RunConfig) -> Path | None:
        return self.root / config.key() if self.root is not None else None

    def find(self, config: RunConfig) -> Run | None:
        """The published run of ``config``, or ``None`` if it is not published.

        Raises:
            FlatnessError: the folder exists but is damaged or its files do not match
                ``hashes.json`` (naming the run, the file and the fix).
        """
        path = self.path(config)
        if path is None or not path.is_dir():
            return None
        return self._verified(path, config.label())

    def _verified(self, path: Path, label: str) -> Run:
        def refused(problem: str) -> FlatnessError:
            # the fix asks git, so only for a refusal
            return FlatnessError(f"the published run {label} ({path}) {problem}; {_repair(path)}")

        try:
            recorded = json.loads((path / HASHES).read_text())
        except (OSError, ValueError) as err:
            raise refused(f"has no readable {HASHES} ({err})") from None
        for name in FILES:
            file = path / name
            if not file.is_file() or _sha256(file) != recorded.get(name):
                raise refused(f"is refused: {name} does not match the SHA-256 recorded in {HASHES}")
        found = examine(path)
        if isinstance(found, Damaged) or not isinstance(found, Run):
            reason = found.reason if isinstance(found, Damaged) else "it records a failure"
            raise refused(f"is damaged ({reason})")
        return found

    def runs(self) -> list[Run]:
        """Every published run (each verified against its hashes)."""
        if self.root is None or not self.root.is_dir():
            return []
        # hidden entries are folders being written or replaced by publish, never runs
        folders = sorted(
            p for p in self.root.iterdir() if _KEY.fullmatch(p.name) and (p / HASHES).is_file()
        )
        return [self._verified(p, p.name) for p in folders]


def _repair(path: Path) -> str:
    """How to repair the damaged published run ``path``: from git where it is tracked there,
    else by publishing it again."""
    again = (
        "publish it again from a store that holds it with "
        f"`python -m flatness publish GRID --to {path.parent}`"
    )
    if _tracked_in_git(path):
        return f"restore it with `git -C {path.parent} checkout -- {path.name}`, or {again}"
    return again


def _tracked_in_git(path: Path) -> bool:
    """Whether git tracks files under ``path`` (it is in a checkout and committed)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(path.parent), "ls-files", "--error-unmatch", "--", path.name],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


#: a run has collapsed when its final training loss is at least this share of ln(classes), the
#: loss of predicting every class alike (dead ReLUs, a diverged lr)
COLLAPSED_SHARE = 0.95


def _chance_loss(run: Run) -> float:
    from flatness.data import num_classes

    return math.log(num_classes(run.config.dataset))


def collapsed(run: Run) -> bool:
    """Whether ``run`` ended at the loss of a network that has learnt nothing (see
    :data:`COLLAPSED_SHARE`): at about ln K (K classes, every class predicted alike) or far
    above it (diverged)."""
    loss = float(run.metrics.get("train_loss", 0.0))
    return not loss < COLLAPSED_SHARE * _chance_loss(run)  # a NaN loss has collapsed too


def collapse_reason(run: Run) -> str:
    """What a :func:`collapsed` run's final training loss says, by how it compares with ln K:
    far above it (diverged), above it (worse than predicting every class alike), or about it
    (within 5 %: every class predicted alike)."""
    loss = float(run.metrics.get("train_loss", 0.0))
    chance = _chance_loss(run)
    if not loss <= DIVERGED_MULTIPLE * chance:
        return f"training loss {loss:.4g}, far above ln K = {chance:.4g}: it diverged"
    if loss > 1.05 * chance:
        return (
            f"training loss {loss:.4g}, above ln K = {chance:.4g} (the loss of predicting "
            "every class alike): it learnt nothing"
        )
    return f"training loss {loss:.4g}, about ln K = {chance:.4g}: it predicts every class alike"


def publish(
    runs: list[Run], layer: Published, *, allow_collapsed: bool = False, weights: bool = True
) -> list[Path]:
    """Copy good runs of a local store into ``layer``, each written whole and then renamed.

    Weights above :data:`WEIGHTS_LIMIT_BYTES` are left out (recorded in ``provenance.json``);
    with ``weights=False`` every run's are, for grids whose pages read only the metrics and
    test predictions the runs recorded (hundreds of runs' weights would swell the checkout).
    A run already published (and matching its hashes) is left as it is; a damaged one is
    replaced. Returns the folders written.

    What a publish killed half-way left of a run it writes (``.tmp-<key>-*``, ``.old-<key>``)
    is removed first.

    Raises:
        FlatnessError: when the layer has no root, or one that cannot be created or written
            (nothing is written); when some run has :func:`collapsed` (naming them, with what
            their loss says: diverged or predicting every class alike; nothing is written)
            unless ``allow_collapsed``.
    """
    if layer.root is None:
        raise FlatnessError(
            f"no published layer outside a checkout; set ${PUBLISHED_ENV} or pass --to"
        )
    problem = folder_problem(layer.root, write=True)
    if problem is not None:
        raise FlatnessError(f"cannot publish into {layer.root} ({problem}); pass --to a folder")
    bad = [r for r in runs if collapsed(r)]
    if bad and not allow_collapsed:
        named = "; ".join(f"{r.config.label()} ({r.key}, {collapse_reason(r)})" for r in bad)
        raise FlatnessError(
            f"{len(bad)} run(s) learnt nothing (a final training loss at or above ln K, the loss "
            f"of predicting each of K classes alike), so nothing was published: {named}. Check "
            "their learning rate (choose it on validation data), or publish them anyway with "
            "--allow-collapsed"
        )
    try:
        layer.root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FlatnessError(f"cannot create the published folder {layer.root} ({err})") from None
    out = []
    for run in runs:
        target = layer.root / run.key
        _remove_leftovers(layer.root, run.key)
        try:
            if layer.find(run.config) is not None:
                continue
        except FlatnessError:
            pass  # damaged: written again below
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{run.key}-", dir=layer.root))
        try:
            _fill(run, tmp, WEIGHTS_LIMIT_BYTES if weights else -1)
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the run from others on a shared disk
            if target.is_dir():
                aside = layer.root / f".old-{run.key}"
                os.rename(target, aside)
                os.rename(tmp, target)
                shutil.rmtree(aside)
            else:
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        out.append(target)
    return out


def _remove_leftovers(root: Path, key: str) -> None:
    """Remove what a publish of ``key`` killed half-way left in the layer: its folder being
    written (``.tmp-<key>-*``) and the old copy being replaced (``.old-<key>``), which git would
    otherwise commit and which would block the next replacement. One publish into a layer at a
    time, as with any commit."""
    for entry in root.iterdir():
        if entry.name.startswith(f".tmp-{key}-") or entry.name == f".old-{key}":
            shutil.rmtree(entry, ignore_errors=True)


def _fill(run: Run, tmp: Path, limit: int) -> None:
    arrays = run.arrays
    weights = sum(v.nbytes for k, v in arrays.items() if k.startswith("state."))
    provenance = dict(run.provenance)
    if weights > limit:
        arrays = {k: v for k, v in arrays.items() if not k.startswith("state.")}
        provenance["weights_published"] = False
        provenance["weights_bytes"] = int(weights)
    else:
        provenance["weights_published"] = True
    shutil.copyfile(run.path / "config.json", tmp / "config.json")
    shutil.copyfile(run.path / "metrics.json", tmp / "metrics.json")
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
    np.savez_compressed(tmp / "arrays.npz", **arrays)
    hashes = {name: _sha256(tmp / name) for name in FILES}
    (tmp / HASHES).write_text(json.dumps(hashes, indent=2))
