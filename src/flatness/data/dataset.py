"""The in-memory data set every experiment reads: images as (N, C, H, W) tensors, three splits."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from flatness.errors import FlatnessError

#: :meth:`Dataset.subset` keeps a prefix of the permutation drawn from this seed.
SUBSET_SEED = 0
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """A classification data set held as tensors.

    Attributes:
        name: the name it was loaded by (see :data:`flatness.data.DATASETS`).
        x_train: float32 images, shape (N, C, H, W), normalised as :func:`flatness.data.load`
            documents for the data set.
        y_train: int64 class indices in [0, num_classes), shape (N,).
        x_val, y_val: the validation split, carved from the official training set.
        x_test, y_test: the official test set.
        num_classes: the number of classes.
        augment: whether the training recipe draws a random crop and flip of each training batch
            (:func:`flatness.data.augment`); True for CIFAR, as in the authors' transforms.

    Raises:
        FlatnessError: when built with images that are not (N, C, H, W), labels that are not (N,),
            or splits of different image shapes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: bool = False

    def __post_init__(self):
        for split in _SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
                raise FlatnessError(
                    f"{self.name}: x_{split} must have shape (N, C, H, W) and y_{split} shape (N,) "
                    f"with the same N; got {tuple(x.shape)} and {tuple(y.shape)}"
                )
        shapes = {tuple(getattr(self, f"x_{split}").shape[1:]) for split in _SPLITS}
        if len(shapes) != 1:
            raise FlatnessError(f"{self.name}: the splits hold images of different shapes {shapes}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def input_dim(self) -> int:
        """C * H * W, the length of a flattened image."""
        c, h, w = self.input_shape
        return c * h * w

    def to(self, device) -> Dataset:
        """The same data set with all six tensors on ``device``."""
        moved = {}
        for split in _SPLITS:
            for part in ("x", "y"):
                key = f"{part}_{split}"
                moved[key] = getattr(self, key).to(device)
        return replace(self, **moved)

    def subset(self, train_size: int | None) -> Dataset:
        """The first ``train_size`` training examples of a fixed shuffle; validation and test kept.

        The shuffle is ``torch.randperm`` from seed :data:`SUBSET_SEED`, so smaller subsets are
        prefixes of larger ones. ``None``, or the whole training split, returns the data set as is.

        Raises:
            FlatnessError: when ``train_size`` is not a whole number, is below 2, or exceeds the
                training split.
        """
        check_train_size(train_size)
        if train_size is None:
            return self
        available = len(self.y_train)
        if train_size > available:
            raise FlatnessError(
                f"train_size={train_size} is more than the {available} examples of {self.name}'s "
                f"training split; pass at most {available}, or None for all of them"
            )
        if train_size == available:
            return self
        order = torch.randperm(available, generator=torch.Generator().manual_seed(SUBSET_SEED))
        keep = order[:train_size].to(self.x_train.device)
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep])


def check_train_size(train_size) -> None:
    """Refuse a ``train_size`` that no data set could satisfy (see :meth:`Dataset.subset`)."""
    if train_size is None:
        return
    if isinstance(train_size, bool) or not isinstance(train_size, numbers.Integral):
        raise FlatnessError(f"train_size must be a whole number or None, not {train_size!r}")
    if train_size < 2:
        raise FlatnessError(
            f"train_size={train_size} is too small: a training split needs at least 2 examples"
        )


def validation_count(name: str, nominal: int, available: int) -> int:
    """How many of ``available`` official training examples to hold out for validation.

    ``nominal`` when more than that remain for training, else a tenth (at least one), so small
    files made in the real format (a few dozen images) still split.
    """
    if available < 2:
        raise FlatnessError(
            f"{name} has {available} training example(s); at least 2 are needed to hold one out "
            "for validation. Check the data files."
        )
    return nominal if available > nominal else max(1, available // 10)


def offline_error(
    name: str, reason: str, folder: Path, missing: list[Path], how: str
) -> FlatnessError:
    """The one message for data files that are absent and cannot be downloaded."""
    listing = "\n".join(f"  {p.name}" for p in missing)
    return FlatnessError(
        f"{name} is not available offline ({reason}).\n"
        f"Place these files{how} under {folder}:\n{listing}\n"
        "or point data_root / $FLATNESS_DATA at a folder that holds them, "
        "or use dataset='digits', which works offline (bundled with scikit-learn)."
    )
