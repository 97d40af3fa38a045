"""CIFAR-10 and CIFAR-100: 32x32 colour images from the python version of the archives.

The batches are the pickled dictionaries described at https://www.cs.toronto.edu/~kriz/cifar.html:
``data`` a uint8 array (N, 3072) holding each image as its red, green and blue 32x32 planes in
row-major order, and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). They are read here
directly; torchvision supplies the file names, md5 sums and download.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from flatness.data.dataset import offline_error
from flatness.errors import FlatnessError

#: Per-channel (R, G, B) mean and standard deviation on [0, 1] pixels, as in the authors'
#: PreResNet and WideResNet transforms for both CIFAR-10 and CIFAR-100 (diegogranziol/GadamX,
#: curvature/models/preresnet.py and wide_resnet.py: ``Normalize((0.4914, 0.4822, 0.4465),
#: (0.2023, 0.1994, 0.2010))``). The stds are the widely copied values, not the pixel std
#: (about 0.25), kept so inputs match the authors'.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
#: The authors' VGG-16 and All-CNN transforms use ImageNet's statistics instead (GadamX,
#: curvature/models/vgg.py, all_cnn.py); listed for reference, not applied.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: name -> (torchvision class, label key, classes)
TORCHVISION = {"cifar10": ("CIFAR10", "labels", 10), "cifar100": ("CIFAR100", "fine_labels", 100)}
_PIXELS = 3 * 32 * 32


def _torchvision_class(name: str):
    import torchvision

    return getattr(torchvision.datasets, TORCHVISION[name][0])


def folder(name: str, root: Path) -> Path:
    """``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``."""
    return Path(root) / _torchvision_class(name).base_folder


def checksums(name: str) -> list[tuple[str, str]]:
    """(file name, md5) of every file torchvision requires: training, test, then metadata."""
    cls = _torchvision_class(name)
    listed = [tuple(entry) for entry in cls.train_list + cls.test_list]
    return listed + [(cls.meta["filename"], cls.meta["md5"])]


def missing_files(name: str, root: Path) -> list[Path]:
    """The files of ``name`` that are absent under ``root``."""
    base = folder(name, root)
    return [base / f for f, _ in checksums(name) if not (base / f).is_file()]


def failing_checksum(name: str, root: Path) -> list[Path]:
    """The files of ``name`` whose md5 sum is not the official one (torchvision's check)."""
    from torchvision.datasets.utils import check_integrity

    base = folder(name, root)
    return [base / f for f, md5 in checksums(name) if not check_integrity(str(base / f), md5)]


def read(
    name: str, root: Path, *, download: bool, offline_reason: str, verify: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official training and test sets of ``name`` (``cifar10`` or ``cifar100``).

    Files are downloaded only when ``download``; otherwise a missing file raises an error quoting
    ``offline_reason``. With ``verify`` every file must pass torchvision's md5 check; without it
    files are read unchecked (small files made in the same format, e.g. for tests).

    Returns:
        x_train (50000, 3, 32, 32) and x_test (10000, 3, 32, 32) float32, each channel mapped from
        [0, 1] by (x - CIFAR_MEAN[c]) / CIFAR_STD[c]; y_train, y_test int64 (fine labels for
        CIFAR-100). The training batches are concatenated in file order (data_batch_1..5).

    Raises:
        FlatnessError: files missing where they cannot be downloaded, failing the checksum (with
            ``verify``), or damaged.
    """
    cls = _torchvision_class(name)
    base = folder(name, root)
    reason = offline_reason
    if missing_files(name, root) and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except Exception as err:  # any network or mirror failure ends the same way
            reason = f"the download failed: {err}"
    missing = missing_files(name, root)
    if missing:
        how = f" (the python version, {cls.url}, unpacked)"
        raise offline_error(name, reason, base, missing, how)
    if verify:
        failing = failing_checksum(name, root)
        if failing:
            listing = "\n".join(f"  {p.name}" for p in failing)
            raise FlatnessError(
                f"{name}: these files under {base} fail torchvision's md5 checksum:\n{listing}\n"
                "They are damaged or not the official files: delete them and load with "
                "download=True, or, for files you made yourself in this format, load with "
                "verify=False to read them unchecked."
            )
    _, label_key, classes = TORCHVISION[name]
    train = [_read_batch(base / f, label_key, classes) for f, _ in cls.train_list]
    test = [_read_batch(base / f, label_key, classes) for f, _ in cls.test_list]
    x_train, y_train = (np.concatenate(parts) for parts in zip(*train))
    x_test, y_test = (np.concatenate(parts) for parts in zip(*test))
    return _images(x_train), torch.from_numpy(y_train), _images(x_test), torch.from_numpy(y_test)


def _images(rows: np.ndarray) -> torch.Tensor:
    # the authors' transform: ToTensor (to [0, 1]) then per-channel Normalize(CIFAR_MEAN, CIFAR_STD)
    x = torch.from_numpy(rows).reshape(-1, 3, 32, 32).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def _read_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (N, 3072), labels int64 (N,)) of one pickled batch."""
    try:
        with open(path, "rb") as f:
            # latin1 as torchvision: the official pickles come from Python 2
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # a damaged pickle can fail in many ways
        raise _damaged(path, f"it cannot be unpickled ({type(err).__name__}: {err})") from None
    if not isinstance(entry, dict):
        raise _damaged(path, f"it holds a {type(entry).__name__}, not a dictionary")
    # keys are str in the official (Python 2) pickles, bytes in ones written by Python 3
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise _damaged(path, f"it lacks the keys 'data' and {label_key!r}")
    data = entry["data"]
    labels = np.asarray(entry[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise _damaged(path, "its 'data' is not a two-dimensional uint8 array")
    if data.shape[1] != _PIXELS:
        raise _damaged(path, f"its images have {data.shape[1]} values, not 3 x 32 x 32 = 3072")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise _damaged(path, f"it holds {labels.shape} labels for {len(data)} images")
    if len(labels) and not 0 <= labels.min() <= labels.max() < classes:
        raise _damaged(path, f"its labels leave 0..{classes - 1}")
    return data, labels.astype(np.int64)


def _damaged(path: Path, problem: str) -> FlatnessError:
    return FlatnessError(
        f"{path} is damaged: {problem}. Delete the folder {path.parent} and load with "
        "download=True, or unpack the official archive there again."
    )
