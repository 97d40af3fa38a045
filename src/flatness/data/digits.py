"""scikit-learn's bundled 8x8 handwritten digits: the data set that needs no files and no network."""

from __future__ import annotations

import torch

from flatness.data.dataset import Dataset

#: The splits are fixed by this seed and stratified by class.
DIGITS_SPLIT_SEED = 0
#: The test split comes off first: 20 % of 1,797 images, 360 (unchanged from earlier releases).
DIGITS_TEST_FRACTION = 0.2
#: Then the validation split, from the remaining 1,437: as large as the test split (60/20/20).
DIGITS_VALIDATION_SIZE = 360


def read() -> Dataset:
    """1,077 / 360 / 360 images of shape (1, 8, 8), pixels 0..16 mapped to x / 8 - 1 in [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 8.0 - 1.0
    x_rest, x_te, y_rest, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    x_tr, x_val, y_tr, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=DIGITS_VALIDATION_SIZE,
        random_state=DIGITS_SPLIT_SEED,
        stratify=y_rest,
    )
    # load_digits gives each image as its 64 pixels in row-major order
    images = lambda a: torch.as_tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)
    labels = lambda a: torch.as_tensor(a, dtype=torch.int64)
    return Dataset(
        "digits",
        images(x_tr),
        labels(y_tr),
        images(x_val),
        labels(y_val),
        images(x_te),
        labels(y_te),
        num_classes=10,
        augment=False,
    )
