"""Data sets as in-memory image tensors (N, C, H, W), split and normalised as the paper's authors did.

================  ==========  =======  =======================  ===========================
name              (C, H, W)   classes  train / val / test       inputs
================  ==========  =======  =======================  ===========================
``digits``        (1, 8, 8)   10       1,077 / 360 / 360        x / 8 - 1 on pixels 0..16
``mnist``         (1, 28, 28) 10       55,000 / 5,000 / 10,000  (x - 0.5) / 0.5 on [0, 1]
``fashion-mnist`` (1, 28, 28) 10       55,000 / 5,000 / 10,000  (x - 0.5) / 0.5 on [0, 1]
``cifar10``       (3, 32, 32) 10       45,000 / 5,000 / 10,000  per channel (x - mean) / std
``cifar100``      (3, 32, 32) 100      45,000 / 5,000 / 10,000  per channel (x - mean) / std
================  ==========  =======  =======================  ===========================

``digits`` is scikit-learn's bundled 8x8 handwritten digits: no files, no network, the default.
Its splits are stratified and fixed by a seed (:mod:`flatness.data.digits`).

The others come from a data root (``data_root=``, else ``$FLATNESS_DATA``, else ``<checkout>/data``)
in torchvision's layout: ``MNIST/raw/``, ``FashionMNIST/raw/`` (four uncompressed IDX files each),
``cifar-10-batches-py/``, ``cifar-100-python/`` (the python version of the archives). Missing files
are downloaded only when allowed (``download=True``, or by default unless ``$FLATNESS_OFFLINE`` is
1/true/yes); Fashion-MNIST is first copied from Debian's ``/usr/share/datasets/fashion-mnist``
(package ``dataset-fashion-mnist``) when that is installed. Otherwise one error names the files to
place and the offline alternative.

Validation split: the *last* :func:`validation_size` images of the official training set, the rest
in file order for training, as the authors' loader does (diegogranziol/GadamX,
curvature/data.py: ``val_size=5000``, ``train_data[:-val_size]`` for training and
``train_data[-val_size:]`` for validation). Where the training files hold 5,000 images or fewer
(small files made in the format, for tests) a tenth of them is held out instead, at least one.

Normalisation: the authors' transforms, ``Normalize((0.5,), (0.5,))`` for MNIST and
:data:`CIFAR_MEAN`, :data:`CIFAR_STD` for both CIFARs (see :mod:`flatness.data.cifar`).
CIFAR's training recipe adds :func:`augment` (``Dataset.augment`` is True); the splits themselves
hold the un-augmented images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flatness.data import cifar, digits, mnist
from flatness.data.augmentation import augment
from flatness.data.cifar import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from flatness.data.dataset import Dataset, check_train_size, validation_count
from flatness.data.digits import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, DIGITS_VALIDATION_SIZE
from flatness.data.mnist import DEBIAN_FASHION_MNIST, IDX_FILES
from flatness.errors import FlatnessError, unknown
from flatness.paths import DATA_ENV
from flatness.paths import data_root as default_data_root

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "DIGITS_VALIDATION_SIZE",
    "IDX_FILES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dataset",
    "augment",
    "input_shape",
    "load",
    "missing_files",
    "num_classes",
    "validation_size",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
OFFLINE_ENV = "FLATNESS_OFFLINE"


@dataclass(frozen=True)
class _Facts:
    shape: tuple[int, int, int]
    classes: int
    validation: int
    augment: bool


_FACTS = {
    "digits": _Facts((1, 8, 8), 10, DIGITS_VALIDATION_SIZE, False),
    "mnist": _Facts((1, 28, 28), 10, 5000, False),
    "fashion-mnist": _Facts((1, 28, 28), 10, 5000, False),
    "cifar10": _Facts((3, 32, 32), 10, 5000, True),
    "cifar100": _Facts((3, 32, 32), 100, 5000, True),
}


def _facts(name: str) -> _Facts:
    if name not in _FACTS:
        raise unknown("dataset", name, DATASETS)
    return _FACTS[name]


def input_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) of one image of ``name``, without reading any data.

    Raises:
        FlatnessError: for a name not in :data:`DATASETS`.
    """
    return _facts(name).shape


def num_classes(name: str) -> int:
    """The number of classes of ``name``, without reading any data.

    Raises:
        FlatnessError: for a name not in :data:`DATASETS`.
    """
    return _facts(name).classes


def validation_size(name: str, available: int | None = None) -> int:
    """How many official training images of ``name`` form the validation split.

    360 for ``digits`` (as many as its test split), 5,000 for the others (the authors' split).
    With ``available``, the number of official training images actually read: 5,000 when more
    than that are there, else ``available // 10`` but at least 1 (e.g. 10 of a 100-image file).

    Raises:
        FlatnessError: for an unknown name, or ``available`` below 2.
    """
    nominal = _facts(name).validation
    return nominal if available is None else validation_count(name, nominal, available)


def missing_files(name: str, root: str | Path) -> list[Path]:
    """The files of ``name`` absent under the data root ``root`` (none for ``digits``)."""
    _facts(name)
    if name in mnist.TORCHVISION:
        return mnist.missing_files(name, Path(root))
    if name in cifar.TORCHVISION:
        return cifar.missing_files(name, Path(root))
    return []


def load(
    name: str,
    *,
    data_root: str | Path | None = None,
    train_size: int | None = None,
    download: bool | None = None,
    verify: bool = True,
) -> Dataset:
    """Load a data set by name, in its three splits (see the table above).

    Args:
        name: one of :data:`DATASETS`.
        data_root: the folder holding the torchvision-layout data sets (default
            ``$FLATNESS_DATA``, else ``<checkout>/data``). Given explicitly, it must exist.
        train_size: keep only this many training images, a fixed subset
            (:meth:`Dataset.subset`); validation and test splits are kept whole.
        download: fetch missing files; default yes unless ``$FLATNESS_OFFLINE`` is 1/true/yes.
        verify: check CIFAR files against torchvision's md5 sums. ``False`` reads files made in
            the same format (e.g. test fixtures) unchecked.

    Returns:
        A :class:`Dataset` with float32 images (N, C, H, W) and int64 labels.

    Raises:
        FlatnessError: unknown name; ``train_size`` below 2, not whole, or above the training
            split; a data root that does not exist; files missing where they cannot be
            downloaded; files failing the checksum (with ``verify``) or damaged.
    """
    facts = _facts(name)
    check_train_size(train_size)
    if download not in (None, True, False) or verify not in (True, False):
        raise FlatnessError(
            f"download must be True, False or None and verify True or False; "
            f"got download={download!r}, verify={verify!r}"
        )
    if name == "digits":
        return digits.read().subset(train_size)
    root = _data_root(data_root)
    if download is None:
        offline = os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")
        download, reason = not offline, f"${OFFLINE_ENV} is set"
    else:
        reason = "download=False"
    if name in mnist.TORCHVISION:
        x, y, x_test, y_test = mnist.read(
            name, root, download=download, offline_reason=reason, debian=DEBIAN_FASHION_MNIST
        )
    else:
        x, y, x_test, y_test = cifar.read(
            name, root, download=download, offline_reason=reason, verify=verify
        )
    held = validation_size(name, len(y))
    data = Dataset(
        name,
        x[:-held],
        y[:-held],
        x[-held:],
        y[-held:],
        x_test,
        y_test,
        num_classes=facts.classes,
        augment=facts.augment,
    )
    return data.subset(train_size)


def _data_root(data_root: str | Path | None) -> Path:
    """The data root to read; one named by the caller or ``$FLATNESS_DATA`` must exist."""
    if data_root is None and not os.environ.get(DATA_ENV):
        return default_data_root()
    if data_root is not None and not isinstance(data_root, (str, os.PathLike)):
        raise FlatnessError(
            f"data_root must be a folder path (a string) or None, got {data_root!r}"
        )
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if not root.is_dir():
        source = "data_root" if data_root is not None else f"${DATA_ENV}"
        raise FlatnessError(
            f"the data root {root} ({source}) does not exist or is not a folder; create it, "
            f"or point data_root / ${DATA_ENV} at the folder that holds the data sets, "
            "or use dataset='digits', which works offline (bundled with scikit-learn)"
        )
    return root
