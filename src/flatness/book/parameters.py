"""Chapter parameters given on the command line, read as papermill reads them.

``python -m flatness chapter -p KEY VALUE`` and ``papermill -p KEY VALUE`` hand a chapter the
same values (:func:`read_parameter`); ``-y YAML`` texts are read with papermill's own loader,
with ``1e-2`` read as the number it means, which YAML 1.1 keeps as text
(:func:`read_parameters`), and ``data_root`` is made absolute (:func:`_data_root`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from flatness.errors import FlatnessError
from flatness.validation import number_text

_SPECIAL = {"True": True, "False": False, "None": None}


def _numbers(value):
    """``value`` with each text YAML 1.1 keeps as text but every user means as a number
    (``1e-2``: PyYAML and papermill's -y want a dot) read as that number, in lists too."""
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return number_text(value)


def read_parameter(key: str, text: str):
    """A ``-p KEY VALUE`` value read exactly as ``papermill -p`` reads it.

    ``True``/``False``/``None`` become those constants, what ``int()`` or else ``float()``
    accepts a number, anything else stays text (papermill 2.7, ``cli._resolve_type``). So the
    command line and plain papermill hand a chapter the same values.

    Raises:
        FlatnessError: for a list or mapping (``[0, 1]``), which papermill would pass on as
            text: give those with ``-y 'KEY: [0, 1]'``, as with papermill.
    """
    if text in _SPECIAL:
        return _SPECIAL[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.strip().startswith(("[", "{")):
        raise FlatnessError(
            f"-p {key} {text}: -p reads values as papermill does (a number, True, False, None "
            f"or else text), so this would reach the chapter as text; give lists with "
            f"-y '{key}: {text}' (papermill's -y works the same way)"
        )
    return text


def read_parameters(pairs: list[list[str]] | None, yamls: list[str] | None = None) -> dict:
    """Chapter parameters from ``-y YAML`` texts, then ``-p KEY VALUE`` pairs (papermill's order).

    Raises:
        FlatnessError: for YAML that does not parse to a mapping or gives a key twice, or see
            :func:`read_parameter`.
    """
    from papermill.iorw import NoDatesSafeLoader  # papermill's -y loader: dates stay text

    from flatness.validation import strict_loader

    found: dict = {}
    for text in yamls or []:
        try:
            # as papermill's, but a key given twice in one text is refused, not the first dropped
            value = yaml.load(text, Loader=strict_loader(NoDatesSafeLoader))
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise FlatnessError(f"-y {text!r}: not YAML ({first})") from None
        if value is not None and not isinstance(value, dict):
            raise FlatnessError(f"-y {text!r}: give KEY: VALUE pairs, e.g. -y 'seeds: [0, 1]'")
        found.update({k: _numbers(v) for k, v in (value or {}).items()})
    found.update({key: read_parameter(key, text) for key, text in pairs or []})
    return found


def _data_root(value) -> str | None:
    """``data_root`` checked, and absolute: chapters run in the checkout, while plain papermill
    runs them where it is called, so a relative folder means the caller's folder in both."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return str(Path(value).expanduser().resolve())
    # a number here would end in a pathlib traceback inside the chapter
    hint = f"; for a folder named {value} write ./{value}" if isinstance(value, int | float) else ""
    raise FlatnessError(f"data_root must be a folder (a path) or None, got {value!r}{hint}")
