"""The checks of the measures' options: one clear error naming the option and its range."""

from __future__ import annotations

import math
import numbers

import torch

from flatness.errors import FlatnessError


def positive(value, what: str) -> float:
    """``value`` as a float: a positive finite real number (numpy's and 0-dim tensors' too),
    small enough that ``value^2`` is finite; otherwise a FlatnessError naming ``what``."""
    if torch.is_tensor(value) and value.dim() == 0 and value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FlatnessError(f"{what} must be a positive number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise FlatnessError(f"{what} must be a positive finite number, got {value!r}")
    if not math.isfinite(value * value):
        raise FlatnessError(f"{what} is too large: {value!r} squared is not finite")
    return value


def count(value, what: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise FlatnessError(f"{what} must be an integer of at least {least}, got {value!r}")
    return int(value)
