"""Data sets: shapes, splits and normalisation against hand computations; files in the real formats
(IDX for MNIST, Python 2 pickles for CIFAR); the errors; the crop-and-flip augmentation."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import (
    write_cifar10,
    write_cifar100,
    write_idx,
    write_mnist_files,
    write_python2_pickle,
)

from flatness import data
from flatness.errors import FlatnessError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data
# from ../shared/data/README.md
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

# ---------------------------------------------------------------- names and sizes without data


def test_shapes_classes_and_validation_sizes_need_no_data():
    table = {
        "digits": ((1, 8, 8), 10, 360),
        "mnist": ((1, 28, 28), 10, 5000),
        "fashion-mnist": ((1, 28, 28), 10, 5000),
        "cifar10": ((3, 32, 32), 10, 5000),
        "cifar100": ((3, 32, 32), 100, 5000),
    }
    assert tuple(table) == data.DATASETS
    for name, (shape, classes, held) in table.items():
        assert data.input_shape(name) == shape
        assert data.num_classes(name) == classes
        assert data.validation_size(name) == held
    # small training files: a tenth held out, at least one; the full 5,000 once more remain
    sizes = {n: data.validation_size("cifar10", n) for n in (100, 12, 2, 5000, 5001, 50000)}
    assert sizes == {100: 10, 12: 1, 2: 1, 5000: 500, 5001: 5000, 50000: 5000}
    with pytest.raises(FlatnessError, match="at least 2"):
        data.validation_size("mnist", 1)
    for ask in (data.input_shape, data.num_classes, data.validation_size):
        with pytest.raises(FlatnessError, match="unknown dataset 'svhn'"):
            ask("svhn")


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(
        FlatnessError,
        match="unknown dataset 'cifar'.*'digits', 'mnist', 'fashion-mnist', 'cifar10', 'cifar100'",
    ):
        data.load("cifar")


# ---------------------------------------------------------------- digits


def test_digits_shapes_scale_and_fixed_stratified_splits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = data.load("digits")
    assert d.x_train.shape == (1077, 1, 8, 8)
    assert d.x_val.shape == (360, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.input_shape == (1, 8, 8) and d.input_dim == 64 and d.num_classes == 10
    assert not d.augment
    assert d.x_train.min() == -1.0 and d.x_train.max() == 1.0  # pixels 0..16 -> x / 8 - 1
    for y in (d.y_val, d.y_test):
        counts = np.bincount(y.numpy(), minlength=10)
        assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 +- 1 per class
    # the three splits partition the 1,797 images, kept as 8x8 grids
    images, labels = load_digits(return_X_y=False).images, load_digits().target
    union = torch.cat([d.x_train, d.x_val, d.x_test]).numpy()[:, 0]
    union_y = torch.cat([d.y_train, d.y_val, d.y_test]).numpy()
    order = np.lexsort(union.reshape(len(union), -1).T)
    reference = np.lexsort(images.reshape(len(images), -1).T)
    assert np.array_equal(union[order], images[reference] / 8 - 1)
    assert np.array_equal(np.bincount(union_y), np.bincount(labels))
    # the test split is the one of earlier releases: 20 %, stratified, seed 0, split off first
    flat_x, flat_y = load_digits(return_X_y=True)
    _, old_test, _, old_y = train_test_split(
        flat_x, flat_y, test_size=0.2, random_state=0, stratify=flat_y
    )
    assert np.array_equal(d.x_test.reshape(360, 64).numpy(), (old_test / 8 - 1).astype(np.float32))
    assert np.array_equal(d.y_test.numpy(), old_y)
    again = data.load("digits")
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_val, again.y_val)


def test_train_size_keeps_a_fixed_prefix_of_a_shuffle_and_the_other_splits():
    full = data.load("digits")
    small = data.load("digits", train_size=100)
    smaller = data.load("digits", train_size=50)
    assert small.x_train.shape == (100, 1, 8, 8)
    assert torch.equal(small.x_val, full.x_val) and torch.equal(small.y_test, full.y_test)
    assert torch.equal(smaller.x_train, small.x_train[:50])  # subsets nest
    assert torch.equal(small.y_train, data.load("digits", train_size=100).y_train)
    rows = {(x.numpy().tobytes(), int(y)) for x, y in zip(full.x_train, full.y_train)}
    assert all((x.numpy().tobytes(), int(y)) in rows for x, y in zip(small.x_train, small.y_train))
    assert np.bincount(small.y_train.numpy(), minlength=10).min() >= 3  # shuffled, not sorted
    assert full.subset(1077) is full and full.subset(None) is full


@pytest.mark.parametrize(
    "train_size,message",
    [
        (1, "at least 2"),
        (0, "at least 2"),
        (1078, "more than the 1077 examples of digits's training split"),
        (10.5, "whole number"),
        (True, "whole number"),
    ],
)
def test_train_size_out_of_range_is_refused(train_size, message):
    with pytest.raises(FlatnessError, match=message):
        data.load("digits", train_size=train_size)


def test_to_moves_every_split_and_keeps_the_rest():
    d = data.load("digits", train_size=20).to("meta")
    tensors = [d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test]
    assert all(t.device.type == "meta" for t in tensors)
    assert (d.name, d.num_classes, d.augment, d.input_shape) == ("digits", 10, False, (1, 8, 8))


def test_a_dataset_with_inconsistent_splits_is_refused():
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(FlatnessError, match="x_val must have shape"):
        data.Dataset("toy", x, y, x.reshape(4, 64), y, x, y, num_classes=10)
    with pytest.raises(FlatnessError, match="different shapes"):
        data.Dataset("toy", x, y, torch.zeros(4, 1, 9, 9), y, x, y, num_classes=10)


# ---------------------------------------------------------------- MNIST-format files


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_style_data_read_from_raw_files(tmp_path, name, folder, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    images, labels = write_mnist_files(tmp_path / folder / "raw")
    d = data.load(name, data_root=tmp_path, download=False)
    # 12 training images: one (a tenth) held out, the last
    assert d.x_train.shape == (11, 1, 28, 28) and d.x_val.shape == (1, 1, 28, 28)
    assert d.x_test.shape == (5, 1, 28, 28) and d.input_shape == (1, 28, 28) and not d.augment
    # (x - 0.5) / 0.5 on [0, 1]: pixel 0 -> -1, 255 -> 1
    assert d.x_train[0, 0, 0, 0] == -1.0 and d.x_train[0, 0, 0, 1] == 1.0
    normalised = lambda a: ((a / 255.0 - 0.5) / 0.5)[:, None].astype(np.float32)
    assert np.allclose(d.x_train.numpy(), normalised(images["train"][:11]), atol=1e-6)
    assert np.allclose(d.x_val.numpy(), normalised(images["train"][11:]), atol=1e-6)
    assert np.allclose(d.x_test.numpy(), normalised(images["t10k"]), atol=1e-6)
    assert d.y_train.tolist() == labels["train"][:11].tolist()
    assert d.y_val.tolist() == labels["train"][11:].tolist()
    assert d.y_test.tolist() == labels["t10k"].tolist() and d.y_test.dtype == torch.int64


def test_missing_mnist_offline_names_the_files_and_the_alternative(tmp_path):
    with pytest.raises(FlatnessError) as err:
        data.load("mnist", data_root=tmp_path, download=False)
    message = str(err.value)
    for f in data.IDX_FILES:
        assert f in message
    assert str(tmp_path / "MNIST" / "raw") in message and "download=False" in message
    assert "dataset='digits'" in message and "FLATNESS_DATA" in message
    assert data.missing_files("mnist", tmp_path) == [
        tmp_path / "MNIST" / "raw" / f for f in data.IDX_FILES
    ]


@pytest.mark.parametrize("name,file", [("mnist", "train-images-idx3-ubyte"), ("cifar100", "meta")])
def test_a_failed_download_is_reported_with_the_files(tmp_path, monkeypatch, name, file):
    import torchvision.datasets.utils

    def unreachable(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", unreachable)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", unreachable)
    with pytest.raises(FlatnessError, match="the download failed: network unreachable") as err:
        data.load(name, data_root=tmp_path, download=True)
    assert f"  {file}\n" in str(err.value)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", r"train-images-idx3-ubyte has 9316 bytes where its header .* promises 9424"),
        ("labels", r"train-labels-idx1-ubyte holds \(11,\) labels for 12 images"),
        ("header", "t10k-images-idx3-ubyte does not start with an IDX header"),
        ("size", r"t10k-images-idx3-ubyte holds images of shape \(14, 56\)"),
    ],
)
def test_damaged_mnist_files_are_named(tmp_path, damage, message):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_files(raw)
    if damage == "truncate":
        path = raw / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-108])
    elif damage == "labels":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(11))
    elif damage == "header":
        (raw / "t10k-images-idx3-ubyte").write_bytes(b"<html>not found</html>")
    else:
        write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((5, 14, 56)))
    with pytest.raises(FlatnessError, match=message) as err:
        data.load("mnist", data_root=tmp_path, download=False)
    assert "damaged files under" in str(err.value) and "download=True" in str(err.value)


def test_a_data_root_that_does_not_exist_is_refused(tmp_path, monkeypatch):
    absent = tmp_path / "nowhere"
    with pytest.raises(FlatnessError, match=f"data root {absent} \\(data_root\\) does not exist"):
        data.load("mnist", data_root=absent)
    monkeypatch.setenv("FLATNESS_DATA", str(absent))
    with pytest.raises(FlatnessError, match=r"\(\$FLATNESS_DATA\) does not exist"):
        data.load("cifar10")


def test_real_mnist_splits_labels_and_pixels():
    raw = SHARED_MNIST / "MNIST" / "raw"
    if not all((raw / f).is_file() for f in data.IDX_FILES):
        pytest.skip(f"the real MNIST files are not in {raw} on this machine")
    d = data.load("mnist", data_root=SHARED_MNIST, download=False)
    assert d.x_train.shape == (55000, 1, 28, 28) and d.x_val.shape == (5000, 1, 28, 28)
    assert d.x_test.shape == (10000, 1, 28, 28)
    # facts from ../shared/data/README.md
    assert d.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert d.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(torch.cat([d.y_train, d.y_val])).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(d.y_test).tolist() == MNIST_TEST_COUNTS
    # mean training pixel 33.318 of 255 -> 2 * 33.318 / 255 - 1 after (x - 0.5) / 0.5
    mean = torch.cat([d.x_train, d.x_val]).double().mean().item()
    assert abs(mean - (2 * 33.318 / 255 - 1)) < 1e-5
    # validation = the last 5,000 training images, read here straight from the IDX files
    labels = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    pixels = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8)
    assert np.array_equal(d.y_val.numpy(), labels[-5000:])
    last = pixels[-784:].reshape(28, 28) / 127.5 - 1
    assert np.allclose(d.x_val[-1, 0].numpy(), last, atol=1e-6)


def debian_fashion_mnist() -> Path:
    """Debian's Fashion-MNIST folder; installed first under CI, else the test is skipped."""
    folder = data.DEBIAN_FASHION_MNIST
    if not folder.is_dir():
        if os.environ.get("CI") != "true":
            pytest.skip(
                f"no {folder} here (apt-get update && apt-get install dataset-fashion-mnist); "
                "CI installs it"
            )
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True)
    return folder


def test_real_fashion_mnist_from_debian(tmp_path):
    debian_fashion_mnist()
    d = data.load("fashion-mnist", data_root=tmp_path, download=False)
    assert d.x_train.shape == (55000, 1, 28, 28) and d.x_val.shape == (5000, 1, 28, 28)
    assert d.x_test.shape == (10000, 1, 28, 28)
    assert d.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert d.y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(torch.cat([d.y_train, d.y_val])).tolist() == [6000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    # the usual mean training pixel 0.2860 on [0, 1]
    mean = torch.cat([d.x_train, d.x_val]).double().mean().item()
    assert abs(mean - (2 * 0.2860 - 1)) < 2e-4
    assert not data.missing_files("fashion-mnist", tmp_path)  # copied, uncompressed


# ---------------------------------------------------------------- CIFAR-format files

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])  # the authors' Normalize for PreResNet / WRN
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010])


def normalised_cifar(x: np.ndarray) -> np.ndarray:
    return (x / 255.0 - CIFAR_MEAN[:, None, None]) / CIFAR_STD[:, None, None]


def test_cifar_fixture_files_are_python2_pickles_of_row_major_planes(tmp_path):
    written = write_cifar10(tmp_path, n_train_per_batch=20, n_test=10)
    with open(written.folder / "data_batch_2", "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")  # as the CIFAR page reads them
    with open(written.folder / "data_batch_2", "rb") as f:
        as_str = pickle.load(f, encoding="latin1")  # as torchvision reads them
    assert set(as_bytes) == {b"batch_label", b"data", b"filenames", b"labels"}
    assert set(as_str) == {"batch_label", "data", "filenames", "labels"}
    rows = as_bytes[b"data"]
    assert rows.dtype == np.uint8 and rows.shape == (20, 3072)
    # image 3 of batch 2, channel 1 (green), row 2, column 5: 1024 + 32 * 2 + 5
    assert rows[3, 1024 + 69] == written.x_train[23, 1, 2, 5]
    assert as_str["labels"] == written.y_train[20:40].tolist()
    with open(written.folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"][0] == "airplane"
    hundred = write_cifar100(tmp_path, n_train=30, n_test=7)
    with open(hundred.folder / "train", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert entry[b"fine_labels"] == hundred.y_train.tolist()
    assert entry[b"coarse_labels"] == hundred.coarse_train.tolist()


def test_cifar10_reads_splits_and_normalises_per_channel(tmp_path):
    written = write_cifar10(tmp_path, n_train_per_batch=20, n_test=10)
    d = data.load("cifar10", data_root=tmp_path, download=False, verify=False)
    # 100 training images: a tenth, the last 10, held out
    assert d.x_train.shape == (90, 3, 32, 32) and d.x_val.shape == (10, 3, 32, 32)
    assert d.x_test.shape == (10, 3, 32, 32) and d.x_train.dtype == torch.float32
    assert d.num_classes == 10 and d.augment and d.input_shape == (3, 32, 32)
    first = (written.x_train[0, 1, 0, 0] / 255 - 0.4822) / 0.1994  # green channel, first pixel
    assert abs(d.x_train[0, 1, 0, 0].item() - first) < 1e-5
    assert np.allclose(d.x_train.numpy(), normalised_cifar(written.x_train[:90]), atol=1e-5)
    assert np.allclose(d.x_val.numpy(), normalised_cifar(written.x_train[90:]), atol=1e-5)
    assert np.allclose(d.x_test.numpy(), normalised_cifar(written.x_test), atol=1e-5)
    assert d.y_train.tolist() == written.y_train[:90].tolist() and d.y_train.dtype == torch.int64
    assert d.y_val.tolist() == written.y_train[90:].tolist()
    assert d.y_test.tolist() == written.y_test.tolist()
    small = data.load("cifar10", data_root=tmp_path, download=False, verify=False, train_size=40)
    assert small.x_train.shape == (40, 3, 32, 32) and torch.equal(small.x_val, d.x_val)


def test_cifar100_reads_fine_labels(tmp_path):
    written = write_cifar100(tmp_path, n_train=100, n_test=10, seed=3)
    d = data.load("cifar100", data_root=tmp_path, download=False, verify=False)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (90, 10, 10)
    assert d.num_classes == 100 and d.augment
    assert d.y_train.tolist() == written.y_train[:90].tolist()
    assert d.y_test.tolist() == written.y_test.tolist()
    assert np.allclose(d.x_val.numpy(), normalised_cifar(written.x_train[90:]), atol=1e-5)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_files_failing_the_checksum_are_named_with_the_way_out(tmp_path, name):
    written = (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path)
    with pytest.raises(FlatnessError, match="fail torchvision's md5 checksum") as err:
        data.load(name, data_root=tmp_path, download=False)
    message = str(err.value)
    names = sorted(p.name for p in written.folder.iterdir())
    assert len(names) == (7 if name == "cifar10" else 3)
    assert all(f"  {n}\n" in message + "\n" for n in names)
    assert "verify=False" in message and str(written.folder) in message


def test_missing_cifar_offline_names_the_files_and_the_alternative(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def no_network(*args, **kwargs):
        raise AssertionError("no download may be attempted offline")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", no_network)
    monkeypatch.setenv("FLATNESS_OFFLINE", "1")
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FlatnessError) as err:
        data.load("cifar10", data_root=tmp_path)
    message = str(err.value)
    assert "$FLATNESS_OFFLINE is set" in message and "data_batch_4" in message
    assert "data_batch_3" not in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "dataset='digits'" in message and "cifar-10-python.tar.gz" in message
    with pytest.raises(FlatnessError) as err:
        data.load("cifar100", data_root=tmp_path, download=False)
    for f in ("train", "test", "meta", "cifar-100-python"):
        assert f in str(err.value)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("width", "its images have 3000 values, not 3 x 32 x 32 = 3072"),
        ("labels", r"it holds \(19,\) labels for 20 images"),
        ("range", "its labels leave 0..9"),
        ("truncated", "it cannot be unpickled"),
    ],
)
def test_damaged_cifar_files_are_named(tmp_path, damage, message):
    written = write_cifar10(tmp_path)
    path = written.folder / "data_batch_3"
    rows = np.zeros((20, 3072), dtype=np.uint8)
    entry = {b"data": rows, b"labels": [0] * 20}
    if damage == "width":
        entry[b"data"] = rows[:, :3000].copy()
    elif damage == "labels":
        entry[b"labels"] = [0] * 19
    elif damage == "range":
        entry[b"labels"] = [10] * 20
    write_python2_pickle(path, entry)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FlatnessError, match=message) as err:
        data.load("cifar10", data_root=tmp_path, download=False, verify=False)
    assert str(path) in str(err.value) and "download=True" in str(err.value)


@pytest.mark.parametrize("bad", [5, 1.5, ["a"]])
def test_a_data_root_that_is_not_a_path_is_one_clear_message(bad):
    # plain papermill injects `-p data_root 5` as the integer 5
    with pytest.raises(FlatnessError, match="data_root must be a folder path"):
        data.load("mnist", data_root=bad)
