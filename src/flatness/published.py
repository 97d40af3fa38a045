"""The published layer: stored runs committed with the book, read before the local store.

A published run is a run folder of the results store (``config.json``, ``metrics.json``,
``arrays.npz``, ``provenance.json``) plus ``hashes.json``, the SHA-256 of each of those files.
:func:`flatness.store.load_or_run` looks a config up here first; a published folder whose files
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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatness.config import RunConfig
from flatness.entries import FILES, Damaged, Run, examine
from flatness.errors import FlatnessError

PUBLISHED_ENV = "FLATNESS_PUBLISHED"
HASHES = "hashes.json"
#: The largest weights (sum of the ``state.*`` arrays' bytes) a published run keeps: 1 MiB
#: (softmax regression on MNIST: 31 kB; the 784-512-256-10 MLP: 2.1 MB, left out).
WEIGHTS_LIMIT_BYTES = 1 << 20


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

    A missing folder is an empty layer.
    """

    root: Path | None = None

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
        fix = (
            "restore it with `git checkout -- published/` or publish it again with "
            "`python -m flatness publish GRID`"
        )
        try:
            recorded = json.loads((path / HASHES).read_text())
        except (OSError, ValueError) as err:
            raise FlatnessError(
                f"the published run {label} ({path}) has no readable {HASHES} ({err}); {fix}"
            ) from None
        for name in FILES:
            file = path / name
            if not file.is_file() or _sha256(file) != recorded.get(name):
                raise FlatnessError(
                    f"the published run {label} ({path}) is refused: {name} does not match the "
                    f"SHA-256 recorded in {HASHES}; {fix}"
                )
        found = examine(path)
        if isinstance(found, Damaged) or not isinstance(found, Run):
            reason = found.reason if isinstance(found, Damaged) else "it records a failure"
            raise FlatnessError(f"the published run {label} ({path}) is damaged ({reason}); {fix}")
        return found

    def runs(self) -> list[Run]:
        """Every published run (each verified against its hashes)."""
        if self.root is None or not self.root.is_dir():
            return []
        folders = sorted(p for p in self.root.iterdir() if (p / HASHES).is_file())
        return [self._verified(p, p.name) for p in folders]


#: a run has collapsed when its final training loss is at least this share of ln(classes), the
#: loss of predicting every class alike (dead ReLUs, a diverged lr)
COLLAPSED_SHARE = 0.95


def collapsed(run: Run) -> bool:
    """Whether ``run`` ended at the loss of a network that has learnt nothing (see
    :data:`COLLAPSED_SHARE`)."""
    from flatness.data import num_classes

    loss = float(run.metrics.get("train_loss", 0.0))
    return loss >= COLLAPSED_SHARE * math.log(num_classes(run.config.dataset))


def publish(runs: list[Run], layer: Published, *, allow_collapsed: bool = False) -> list[Path]:
    """Copy good runs of a local store into ``layer``, each written whole and then renamed.

    Weights above :data:`WEIGHTS_LIMIT_BYTES` are left out (recorded in ``provenance.json``).
    A run already published (and matching its hashes) is left as it is; a damaged one is
    replaced. Returns the folders written.

    Raises:
        FlatnessError: when the layer has no root, or some run has :func:`collapsed` (naming
            them; nothing is written) unless ``allow_collapsed``.
    """
    if layer.root is None:
        raise FlatnessError(
            f"no published layer outside a checkout; set ${PUBLISHED_ENV} or pass --to"
        )
    bad = [r for r in runs if collapsed(r)]
    if bad and not allow_collapsed:
        named = "; ".join(
            f"{r.config.label()} ({r.key}, training loss {r.metrics['train_loss']:.4g})"
            for r in bad
        )
        raise FlatnessError(
            f"{len(bad)} run(s) ended at the loss of a network that predicts every class alike, "
            f"so nothing was published: {named}. Check their learning rate (train on validation "
            "data to choose it), or publish them anyway with --allow-collapsed"
        )
    layer.root.mkdir(parents=True, exist_ok=True)
    out = []
    for run in runs:
        target = layer.root / run.key
        try:
            if layer.find(run.config) is not None:
                continue
        except FlatnessError:
            pass  # damaged: written again below
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{run.key}-", dir=layer.root))
        try:
            _fill(run, tmp)
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


def _fill(run: Run, tmp: Path) -> None:
    arrays = run.arrays
    weights = sum(v.nbytes for k, v in arrays.items() if k.startswith("state."))
    provenance = dict(run.provenance)
    if weights > WEIGHTS_LIMIT_BYTES:
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
