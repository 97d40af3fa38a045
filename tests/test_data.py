"""Data sets: the offline digits split, MNIST from raw files, and the offline error."""

import struct

import numpy as np
import pytest
import torch

from flatness import data
from flatness.errors import FlatnessError


def test_digits_shapes_scale_and_fixed_stratified_split():
    d = data.load("digits")
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.min() == -1.0 and d.x_train.max() == 1.0
    assert d.num_classes == 10 and d.input_dim == 64
    counts = np.bincount(d.y_test.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 +- 1 per class
    again = data.load("digits")
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)


def test_train_size_keeps_a_fixed_subset_and_the_whole_test_set():
    small = data.load("digits", train_size=100)
    assert small.x_train.shape == (100, 64) and small.x_test.shape == (360, 64)
    assert torch.equal(small.y_train, data.load("digits", train_size=100).y_train)


def write_idx(path, array: np.ndarray):
    """Write an array in the IDX format MNIST ships in (big-endian header, then uint8 data)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_style_data_read_from_raw_files(tmp_path, name, folder, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, (12, 28, 28)),
        "t10k": rng.integers(0, 256, (5, 28, 28)),
    }
    images["train"][0, 0, :2] = (0, 255)
    labels = {"train": rng.integers(0, 10, 12), "t10k": rng.integers(0, 10, 5)}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    d = data.load(name, data_root=tmp_path, download=False)
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (5, 784)
    assert d.x_train[0, 0] == -1.0 and d.x_train[0, 1] == 1.0  # (x - 0.5) / 0.5 on [0, 1]
    expected = (images["t10k"].reshape(5, -1) / 255.0 - 0.5) / 0.5
    assert np.allclose(d.x_test.numpy(), expected, atol=1e-6)
    assert d.y_train.tolist() == labels["train"].tolist()


def test_missing_mnist_offline_names_the_files_and_the_alternative(tmp_path):
    with pytest.raises(FlatnessError) as err:
        data.load("mnist", data_root=tmp_path, download=False)
    message = str(err.value)
    for f in data.IDX_FILES:
        assert f in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "dataset='digits'" in message and "FLATNESS_DATA" in message


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(
        FlatnessError, match="unknown dataset 'cifar'.*'digits', 'mnist', 'fashion-mnist'"
    ):
        data.load("cifar")
