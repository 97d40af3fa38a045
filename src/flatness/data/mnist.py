"""MNIST and Fashion-MNIST: 28x28 grey images read by torchvision from raw IDX files."""

from __future__ import annotations

import gzip
import math
import shutil
import struct
from pathlib import Path

import torch

from flatness.data.dataset import offline_error
from flatness.errors import FlatnessError

#: The raw files torchvision reads, uncompressed, under ``<root>/<folder>/raw``.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: name -> (folder under the data root, torchvision class)
TORCHVISION = {"mnist": ("MNIST", "MNIST"), "fashion-mnist": ("FashionMNIST", "FashionMNIST")}
#: Debian's package dataset-fashion-mnist ships the real files here, gzipped.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 28
_IDX_UBYTE = b"\x00\x00\x08"  # IDX magic: two zero bytes, then type 0x08 (unsigned byte)


def raw_folder(name: str, root: Path) -> Path:
    return Path(root) / TORCHVISION[name][0] / "raw"


def missing_files(name: str, root: Path) -> list[Path]:
    """The raw files of ``name`` that are absent under ``root``."""
    raw = raw_folder(name, root)
    return [raw / f for f in IDX_FILES if not (raw / f).is_file()]


def read(
    name: str, root: Path, *, download: bool, offline_reason: str, debian: Path
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official training and test sets of ``name`` (``mnist`` or ``fashion-mnist``).

    Returns:
        x_train (60000, 1, 28, 28) and x_test (10000, 1, 28, 28) float32, mapped from [0, 1] by
        x -> (x - 0.5) / 0.5 (the authors' MNIST transform); y_train, y_test int64 in 0..9.
        Smaller files in the same format give correspondingly fewer images.

    Files are downloaded only when ``download``; otherwise a missing file raises an error quoting
    ``offline_reason``. Fashion-MNIST is first copied from Debian's folder ``debian`` when there.

    Raises:
        FlatnessError: files missing where they cannot be downloaded, or damaged.
    """
    import torchvision

    folder, cls_name = TORCHVISION[name]
    raw = raw_folder(name, root)
    if name == "fashion-mnist" and missing_files(name, root) and Path(debian).is_dir():
        _copy_debian(Path(debian), raw)
    cls = getattr(torchvision.datasets, cls_name)
    reason = offline_reason
    if missing_files(name, root) and download:
        try:
            cls(str(root), train=True, download=True)
        except Exception as err:  # any network or mirror failure ends the same way
            reason = f"the download failed: {err}"
    missing = missing_files(name, root)
    if missing:
        how = ", uncompressed,"
        if name == "fashion-mnist":
            how += f" (apt-get install dataset-fashion-mnist puts them, gzipped, in {debian})"
        raise offline_error(name, reason, raw, missing, how)
    _check_sizes(name, raw)
    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)
    for labels, file in ((train.targets, IDX_FILES[1]), (test.targets, IDX_FILES[3])):
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
            raise _damaged(name, raw, [f"{file} holds labels outside 0..9"])
    return _images(train.data), train.targets.long(), _images(test.data), test.targets.long()


def _images(pixels: torch.Tensor) -> torch.Tensor:
    # the authors' MNIST transform: ToTensor (to [0, 1]) then Normalize((0.5,), (0.5,))
    return pixels.unsqueeze(1).float().div_(255.0).sub_(0.5).div_(0.5)


def _copy_debian(debian: Path, raw: Path) -> None:
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for f in IDX_FILES:
            src = debian / f"{f}.gz"
            if src.is_file() and not (raw / f).is_file():
                tmp = raw / f".{f}.part"
                with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                tmp.rename(raw / f)
    except OSError as err:
        raise FlatnessError(
            f"cannot copy Fashion-MNIST from {debian} into {raw}: {err}. "
            "Point data_root / $FLATNESS_DATA at a writable folder."
        ) from None


def _header(path: Path) -> tuple[tuple[int, ...], str | None]:
    """The dimensions an IDX file declares, and what is wrong with it (None when nothing)."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:3] != _IDX_UBYTE or not 1 <= magic[3] <= 3:
            return (), f"{path.name} does not start with an IDX header of unsigned bytes"
        ndim = magic[3]
        packed = f.read(4 * ndim)
    if len(packed) < 4 * ndim:
        return (), f"{path.name} ends inside its header"
    dims = struct.unpack(f">{ndim}I", packed)
    expected = 4 + 4 * ndim + math.prod(dims)
    size = path.stat().st_size
    if size != expected:
        return dims, f"{path.name} has {size} bytes where its header {dims} promises {expected}"
    return dims, None


def _check_sizes(name: str, raw: Path) -> None:
    problems = []
    for images_file, labels_file in (IDX_FILES[:2], IDX_FILES[2:]):
        images, bad_images = _header(raw / images_file)
        labels, bad_labels = _header(raw / labels_file)
        problems += [p for p in (bad_images, bad_labels) if p]
        if bad_images or bad_labels:
            continue
        if len(images) != 3 or images[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            problems.append(f"{images_file} holds images of shape {images[1:]}, not (28, 28)")
        elif len(labels) != 1 or labels[0] != images[0]:
            problems.append(f"{labels_file} holds {labels} labels for {images[0]} images")
    if problems:
        raise _damaged(name, raw, problems)


def _damaged(name: str, raw: Path, problems: list[str]) -> FlatnessError:
    listing = "\n".join(f"  {p}" for p in problems)
    return FlatnessError(
        f"{name}: damaged files under {raw}:\n{listing}\n"
        "Delete them and load with download=True (online), or place fresh copies of the "
        "original files there."
    )
