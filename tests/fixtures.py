"""Small MNIST, CIFAR-10 and CIFAR-100 files in their real on-disk formats, for tests.

The official "python version" archives hold dictionaries pickled by Python 2: their keys and
strings are Python 2 ``str``, so Python 3 reads them as ``str`` with ``encoding="latin1"`` (as
torchvision does) and as ``bytes`` with ``encoding="bytes"`` (as the CIFAR page shows:
``dict[b"data"]``). The files written here are made the same way, with the byte strings pickled
as Python 2 ``str``. ``data`` is uint8 (N, 3072): the red, green and blue 32x32 planes of each image,
row-major. Pixels and labels are random; md5 sums differ from the official ones, so these files
load with ``verify=False`` only.

Use::

    written = write_cifar10(tmp_path)          # 5 x 20 training images, 10 test images
    d = data.load("cifar10", data_root=tmp_path, download=False, verify=False)
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_LABEL_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
CIFAR100_FINE_LABEL_NAMES = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm
""".split()
CIFAR100_COARSE_LABEL_NAMES = """
aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
household_furniture insects large_carnivores large_man-made_outdoor_things
large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals
non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2
""".split()


@dataclass(frozen=True)
class Written:
    """What a writer put on disk, in file order (CIFAR-10: data_batch_1..5 concatenated).

    Attributes:
        folder: ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``.
        x_train, x_test: uint8 images (N, 3, 32, 32), channels R, G, B.
        y_train, y_test: int64 labels (N,) (fine labels for CIFAR-100).
        coarse_train, coarse_test: CIFAR-100's coarse labels (fine // 5, not the real grouping);
            None for CIFAR-10.
    """

    folder: Path
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    coarse_train: np.ndarray | None = None
    coarse_test: np.ndarray | None = None


class _Python2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (the STRING opcodes), as the official files were."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str


def write_python2_pickle(path: Path, obj) -> None:
    """Pickle ``obj`` (protocol 2) with every ``bytes`` written as a Python 2 ``str``."""
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _batch(label: str, images: np.ndarray, labels: dict[bytes, np.ndarray]) -> dict:
    entry = {
        b"batch_label": label.encode(),
        # row-major (N, 3, 32, 32) flattens to R plane, G plane, B plane per row
        b"data": np.ascontiguousarray(images.reshape(len(images), 3072)),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))],
    }
    entry.update({k: [int(v) for v in values] for k, values in labels.items()})
    return entry


def write_cifar10(
    root: str | Path, n_train_per_batch: int = 20, n_test: int = 10, seed: int = 0
) -> Written:
    """Write ``<root>/cifar-10-batches-py``: data_batch_1..5, test_batch and batches.meta.

    Returns the images and labels written; 5 * ``n_train_per_batch`` training images.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for b in range(1, 6):
        x, y = _images(rng, n_train_per_batch), rng.integers(0, 10, n_train_per_batch)
        name = f"training batch {b} of 5"
        write_python2_pickle(folder / f"data_batch_{b}", _batch(name, x, {b"labels": y}))
        xs.append(x)
        ys.append(y)
    x_test, y_test = _images(rng, n_test), rng.integers(0, 10, n_test)
    write_python2_pickle(
        folder / "test_batch", _batch("testing batch 1 of 1", x_test, {b"labels": y_test})
    )
    meta = {
        b"label_names": [n.encode() for n in CIFAR10_LABEL_NAMES],
        b"num_cases_per_batch": n_train_per_batch,
        b"num_vis": 3072,
    }
    write_python2_pickle(folder / "batches.meta", meta)
    return Written(folder, np.concatenate(xs), np.concatenate(ys), x_test, y_test)


def write_cifar100(
    root: str | Path, n_train: int = 100, n_test: int = 10, seed: int = 0
) -> Written:
    """Write ``<root>/cifar-100-python``: train, test and meta (fine and coarse labels).

    Returns the images and labels written.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, fine = _images(rng, n), rng.integers(0, 100, n)
        labels = {b"fine_labels": fine, b"coarse_labels": fine // 5}
        write_python2_pickle(folder / split, _batch(split, x, labels))
        written[split] = (x, fine)
    meta = {
        b"fine_label_names": [n.encode() for n in CIFAR100_FINE_LABEL_NAMES],
        b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_LABEL_NAMES],
    }
    write_python2_pickle(folder / "meta", meta)
    (x_train, y_train), (x_test, y_test) = written["train"], written["test"]
    return Written(folder, x_train, y_train, x_test, y_test, y_train // 5, y_test // 5)


def write_idx(path, array: np.ndarray):
    """Write an array in the IDX format MNIST ships in (big-endian header, then uint8 data)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_files(raw: Path, n_train: int = 12, n_test: int = 5, seed: int = 0):
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = {
        "train": rng.integers(0, 256, (n_train, 28, 28)),
        "t10k": rng.integers(0, 256, (n_test, 28, 28)),
    }
    images["train"][0, 0, :2] = (0, 255)
    labels = {"train": rng.integers(0, 10, n_train), "t10k": rng.integers(0, 10, n_test)}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    return images, labels
