"""Checks of the values users give, shared by every layer: numbers, lists, choices and YAML.

Each check returns the value it accepts (an ``int`` for a whole float, a ``float`` for an
``int``) or raises :class:`~flatness.errors.FlatnessError` naming the field and the fix. The YAML
helpers read text as a user typing it means (``1e-2`` is a number) and refuse a key given twice.

A leaf: it imports nothing of flatness but :mod:`flatness.errors`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import yaml

from flatness.errors import FlatnessError, unknown

#: a number as YAML 1.1 (PyYAML, papermill's -y) reads it, as text: ``1e-2``, ``5E3``
YAML_TEXT_NUMBER = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+$")


def number_text(value: object) -> object:
    """``value``, or the number a text such as ``"1e-2"`` means (YAML 1.1 keeps it text)."""
    if isinstance(value, str) and YAML_TEXT_NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    return value


def _above_bound(name: str, value, maximum, why: str | None) -> FlatnessError:
    reason = f" ({why})" if why else ""
    return FlatnessError(f"{name} must be at most {maximum:,}{reason}, got {value:,}")


def as_int(
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    why: str | None = None,
) -> int:
    """``value`` as an int in [``minimum``, ``maximum``]; ``why`` says where a bound comes from."""
    value = number_text(value)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise FlatnessError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise FlatnessError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _above_bound(name, value, maximum, why)
    return value


#: The largest and the smallest positive float32 (a subnormal): training computes in float32,
#: so a float field beyond them would overflow to infinity or round to 0 there.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.401298464324817e-45


def _beyond_float32(name: str, value: object) -> str:
    return (
        f"{name} must lie in float32's range, which training uses (at most {FLOAT32_MAX:.4g} "
        f"in size), got {value}"
    )


def as_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    why: str | None = None,
) -> float:
    """``value`` as a finite float32-representable number in its range; ``why`` says where
    ``maximum`` comes from."""
    value = number_text(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FlatnessError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float64
        raise FlatnessError(_beyond_float32(name, value)) from None
    if not math.isfinite(value):
        raise FlatnessError(f"{name} must be finite, got {value}")
    if abs(value) > FLOAT32_MAX:
        raise FlatnessError(_beyond_float32(name, f"{value:g}"))
    if 0 < abs(value) < FLOAT32_TINY:
        raise FlatnessError(
            f"{name}={value:g} is 0 in float32, which training uses; give 0 where allowed, or "
            f"a size of at least {FLOAT32_TINY:.4g}"
        )
    if minimum is not None and value < minimum:
        raise FlatnessError(f"{name} must be at least {minimum}, got {value}")
    if above is not None and value <= above:
        raise FlatnessError(f"{name} must be above {above}, got {value}")
    if maximum is not None and value > maximum:
        raise _above_bound(name, value, maximum, why)
    return value


def as_rtol(name: str, value: object) -> float:
    value = as_float(name, value)
    if not 0 < value < 1:
        raise FlatnessError(f"{name} must be between 0 and 1, got {value}")
    return value


def as_tuple(name: str, value: object, convert) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise FlatnessError(f"{name} must be a list, got {value!r}")
    items = tuple(convert(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not items:
        raise FlatnessError(f"{name} must not be empty")
    return items


def check_choice(kind: str, value: object, valid) -> str:
    if value not in valid:
        raise unknown(kind, value, valid)
    return value


def yaml_number(value):
    """``value`` read from YAML, with ``1e-2``-style text (YAML 1.1 wants a dot) as the number
    a user typing it means; lists element by element.

    >>> yaml_number(["1e-3", "adam", 2])
    [0.001, 'adam', 2]
    """
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [yaml_number(v) for v in value]
    return value


class DuplicateKey(yaml.YAMLError):
    """A YAML mapping that gives one key twice (YAML forbids it; PyYAML keeps the last)."""


def strict_loader(base=yaml.SafeLoader):
    """A subclass of the YAML loader ``base`` that refuses a mapping giving a key twice, at any
    level, naming the key and both lines (:class:`DuplicateKey`, a ``yaml.YAMLError``); plain
    PyYAML keeps the last value silently.

    >>> yaml.load("{a: 1, b: {c: 2, c: 3}}", Loader=strict_loader())
    Traceback (most recent call last):
    ...
    flatness.validation.DuplicateKey: duplicate key 'c' (on line 1, given before on line 1)
    """
    return _STRICT.setdefault(base, type(f"Strict{base.__name__}", (_UniqueKeys, base), {}))


class _UniqueKeys:
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges another mapping, whose keys may be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: PyYAML refuses it itself
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKey(
                        f"duplicate key {key!r} (on line {key_node.start_mark.line + 1}, given "
                        f"before on line {first.line + 1})"
                    )
        return super().construct_mapping(node, deep=deep)


_STRICT: dict = {}
