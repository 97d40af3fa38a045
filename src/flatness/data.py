"""Data sets as in-memory tensors, inputs flattened and scaled to [-1, 1].

``digits`` (scikit-learn's bundled 8x8 handwritten digits) needs no network and is the default.
``mnist`` and ``fashion-mnist`` come through torchvision from a data root
(``data_root=`` or ``$FLATNESS_DATA``); they are downloaded only when the network allows
(never with ``download=False`` or ``$FLATNESS_OFFLINE=1``), and fail with one message naming
the files to place otherwise.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from flatness.errors import FlatnessError, unknown
from flatness.paths import data_root as default_data_root

DATASETS = ("digits", "mnist", "fashion-mnist")

#: The raw files torchvision reads, uncompressed, under ``<root>/<folder>/raw``.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TORCHVISION = {"mnist": ("MNIST", "MNIST"), "fashion-mnist": ("FashionMNIST", "FashionMNIST")}
#: Debian's package dataset-fashion-mnist ships the real files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: digits: the split is fixed by this seed, 20 % held out, stratified by class.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """A classification data set held as tensors (inputs float32 in [-1, 1], labels int64)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    def to(self, device) -> Dataset:
        move = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return Dataset(name=self.name, num_classes=self.num_classes, **move)

    def subset(self, train_size: int | None) -> Dataset:
        """The first ``train_size`` training examples of a fixed shuffle (the test set is kept)."""
        if train_size is None or train_size >= len(self.y_train):
            return self
        order = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(0))
        keep = order[:train_size]
        return Dataset(
            name=self.name,
            x_train=self.x_train[keep],
            y_train=self.y_train[keep],
            x_test=self.x_test,
            y_test=self.y_test,
            num_classes=self.num_classes,
        )


def load(
    name: str,
    *,
    data_root: str | Path | None = None,
    train_size: int | None = None,
    download: bool | None = None,
) -> Dataset:
    """Load a data set by name.

    Args:
        name: one of :data:`DATASETS`.
        data_root: where torchvision data sets live (default ``$FLATNESS_DATA`` or ``./data``).
        train_size: keep only this many training examples (a fixed subset).
        download: try to download missing files; default yes unless ``$FLATNESS_OFFLINE=1``.
    """
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    if name == "digits":
        data = _digits()
    else:
        root = Path(data_root) if data_root is not None else default_data_root()
        if download is None:
            download = os.environ.get("FLATNESS_OFFLINE", "") not in ("1", "true", "yes")
        data = _torchvision_idx(name, root, download)
    return data.subset(train_size)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 8.0 - 1.0  # pixel values are 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return Dataset("digits", as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), num_classes=10)


def missing_files(name: str, root: Path) -> list[Path]:
    """The raw files of ``name`` that are absent under ``root``."""
    raw = Path(root) / _TORCHVISION[name][0] / "raw"
    return [raw / f for f in IDX_FILES if not (raw / f).is_file()]


def _copy_debian_fashion_mnist(root: Path) -> None:
    raw = root / _TORCHVISION["fashion-mnist"][0] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        src = DEBIAN_FASHION_MNIST / f"{f}.gz"
        if src.is_file() and not (raw / f).is_file():
            tmp = raw / f".{f}.part"
            with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            tmp.rename(raw / f)


def _torchvision_idx(name: str, root: Path, download: bool) -> Dataset:
    import torchvision

    folder, cls_name = _TORCHVISION[name]
    if name == "fashion-mnist" and missing_files(name, root) and DEBIAN_FASHION_MNIST.is_dir():
        _copy_debian_fashion_mnist(root)
    cls = getattr(torchvision.datasets, cls_name)
    reason = "download=False"
    if missing_files(name, root) and download:
        try:
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
        except Exception as err:  # any network or mirror failure ends the same way
            reason = f"the download failed: {err}"
    missing = missing_files(name, root)
    if missing:
        listing = "\n".join(f"  {p}" for p in missing)
        raise FlatnessError(
            f"{name} is not available offline ({reason}).\n"
            f"Place these files, uncompressed, under {root / folder / 'raw'}:\n{listing}\n"
            "or point data_root / $FLATNESS_DATA at a folder that holds them, "
            "or use dataset='digits', which works offline (bundled with scikit-learn)."
        )
    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)

    def flat(images: torch.Tensor) -> torch.Tensor:
        # the authors' MNIST transform: x -> (x - 0.5) / 0.5 on pixels in [0, 1]
        return (images.reshape(len(images), -1).float() / 255.0 - 0.5) / 0.5

    return Dataset(
        name,
        flat(train.data),
        train.targets.long(),
        flat(test.data),
        test.targets.long(),
        num_classes=10,
    )
