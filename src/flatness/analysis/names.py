"""The book's one table of display names: the words a reader sees for each identifier of the code.

The code names measures, columns, models, data sets, optimisers and estimators by identifiers
(``lambda_max``, ``weight_decay``, ``lenet5``, ``cifar100``, ``adamw``, ``hutch++``); a page
shows words (λ_max, weight decay, LeNet-5, CIFAR-100, AdamW, Hutch++). Every table, legend
and sentence takes them from here:

- :func:`display`: one identifier as plain text (tables, legends, sentences);
- :func:`tex`: the same as matplotlib mathtext, for axes;
- :func:`words`: a text with every raw identifier inside it named (arm labels, settings);
- :func:`sentence`: a text whose first letter is a capital;
- :func:`frame` and :func:`table`: a DataFrame made readable, headers and cells named, numbers
  formatted, and each missing value replaced by the reason it is missing (no table shows NaN);
- :func:`raw_identifiers`: the raw identifiers left in a text (the rendered book's test).

Only identifiers that are no English word are replaced inside text (:data:`RAW`): ``trace``,
``digits`` or ``seed`` are named only where they stand alone (:func:`display`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

#: the Hessian measures and the other quantities a run reports, as plain text
MEASURES = {
    "lambda_max": "λ_max",
    "trace": "Tr H",
    "frobenius": "‖H‖_F",
    "weight_norm": "‖w‖₂",
    "test_acc": "test accuracy",
    "val_acc": "validation accuracy",
    "train_acc": "training accuracy",
    "test_loss": "test loss",
    "val_loss": "validation loss",
    "train_loss": "training loss",
    "lambda_max_bn_train": "λ_max (BN train)",
    "trace_bn_train": "Tr H (BN train)",
    "frobenius_bn_train": "‖H‖_F (BN train)",
}
#: the same measures as matplotlib mathtext, where it differs from the plain text
TEX = {
    "lambda_max": r"$\lambda_{\max}$",
    "trace": r"Tr $H$",
    "frobenius": r"$\|H\|_F$",
    "weight_norm": r"$\|w\|_2$",
    "lambda_max_bn_train": r"$\lambda_{\max}$ (BN train)",
    "trace_bn_train": r"Tr $H$ (BN train)",
    "frobenius_bn_train": r"$\|H\|_F$ (BN train)",
}
#: the settings of a run and the columns the chapters' tables share
COLUMNS = {
    "weight_decay": "weight decay",
    "wd": "weight decay",
    "lr": "learning rate",
    "batch_size": "batch size",
    "epochs": "epochs",
    "epoch": "epoch",
    "seed": "seed",
    "seeds": "seeds",
    "model": "model",
    "dataset": "data set",
    "optimiser": "optimiser",
    "optimizer": "optimiser",
    "arm": "setting",
    "width": "width",
    "measure": "measure",
    "method": "method",
    "hvps": "HVPs",
    "rel_error": "relative error",
}
#: every model of :data:`flatness.models.MODELS` (``preresnet-<depth>``, ``wrn-<depth>-<k>``
#: and ``mlp-<widths>`` of other sizes are named by :func:`display` too); an MLP is named by its
#: hidden widths, since its input width is the data set's
MODELS = {
    "logreg": "softmax regression",
    "mlp": "MLP",
    "lenet5": "LeNet-5",
    "allcnn": "All-CNN-C",
    "vgg16": "VGG-16",
    "vgg16-bn": "VGG-16-BN",
}
DATASETS = {
    "digits": "scikit-learn digits",
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
}
#: the training recipes of :mod:`flatness.training.recipes`
OPTIMISERS = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "swa": "SWA",
    "gadam": "Gadam",
}
#: the estimators, by the ``method`` names of :mod:`flatness.hessian`
ESTIMATORS = {
    "hutchinson": "Hutchinson",
    "hutch++": "Hutch++",
    "ggn+hutchinson": "GGN + Hutchinson",
    "krylov": "Krylov + Hutchinson",
    "ggn": "GGN",
    "lanczos": "Lanczos",
    "slq": "SLQ",
    "pyhessian": "PyHessian",
    "power": "power iteration",
}
#: every identifier with its plain-text name
NAMES: dict[str, str] = MEASURES | COLUMNS | MODELS | DATASETS | OPTIMISERS | ESTIMATORS

#: identifiers that are English words (or the code's own arguments), named only where they
#: stand alone: inside a sentence they may mean the word
WORDS = frozenset(
    {"trace", "frobenius", "epochs", "epoch", "seed", "seeds", "model", "measure", "method"}
    | {"width", "arm", "digits", "power", "lr", "dataset", "optimiser", "optimizer"}
)
#: identifiers of the table a reader must never see outside code: replaced inside text by
#: :func:`words` and looked for by :func:`raw_identifiers`
RAW = tuple(sorted((k for k in NAMES if k not in WORDS), key=len, reverse=True))
_MODEL_PATTERNS = (
    (re.compile(r"preresnet-(\d+)"), lambda m: f"PreResNet-{m[1]}"),
    (re.compile(r"wrn-(\d+)-(\d+)"), lambda m: f"WRN-{m[1]}-{m[2]}"),
    (
        re.compile(r"mlp-(\d+(?:-\d+)*)(-tanh)?"),
        lambda m: f"MLP {m[1]}" + (" (tanh)" if m[2] else ""),
    ),
)
_TOKEN = r"(?<![\w+\-])({})(?![\w+\-])"
_IDENTIFIERS = "|".join([p.pattern for p, _ in _MODEL_PATTERNS] + [re.escape(k) for k in RAW])
_RAW = re.compile(_TOKEN.format(_IDENTIFIERS))
#: besides the table's, any snake_case name is code a reader should not meet in prose
#: (lowercase words joined by underscores: ``x86_64`` or ``W_1`` are not such names)
_LEFT = re.compile(_TOKEN.format(_IDENTIFIERS + r"|[a-z]+(?:_[a-z]+)+"))
_AVERAGED = "+avg"
_SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def display(identifier) -> str:
    """The plain-text name of an identifier, e.g. ``"lambda_max"`` -> ``"λ_max"``,
    ``"preresnet-110"`` -> ``"PreResNet-110"``, ``"sgd+avg"`` -> ``"SGD + averaging"``.

    An identifier the table does not hold is returned with its raw identifiers named
    (:func:`words`), and a snake_case one with spaces for underscores; a name already in
    words comes back as it is (``"λ_max"`` stays), and a value that is not text as text.
    """
    if not isinstance(identifier, str):
        return str(identifier)
    if identifier in NAMES:
        return NAMES[identifier]
    if identifier.endswith(_AVERAGED) and identifier != _AVERAGED:
        return f"{display(identifier[: -len(_AVERAGED)])} + averaging"
    for pattern, name in _MODEL_PATTERNS:
        if match := pattern.fullmatch(identifier):
            return name(match)
    if _SNAKE.fullmatch(identifier):  # a column such as "abs_rel_error"
        return words(identifier).replace("_", " ")
    return words(identifier)  # already words, or words around identifiers


def tex(identifier: str) -> str:
    """The name of an identifier for a matplotlib axis or legend: mathtext where the plain
    text has symbols (``"lambda_max"`` -> ``r"$\\lambda_{\\max}$"``), else :func:`display`."""
    return TEX.get(identifier, display(identifier))


def _named(match: re.Match) -> str:
    token = match[1]
    if token in NAMES or any(p.fullmatch(token) for p, _ in _MODEL_PATTERNS):
        return display(token)
    return token.replace("_", " ")


def words(text: str) -> str:
    """``text`` with every raw identifier of the table inside it named:
    ``"allcnn on cifar100"`` -> ``"All-CNN-C on CIFAR-100"``, ``"lenet5, wd 0.01"`` ->
    ``"LeNet-5, weight decay 0.01"``. Words that are identifiers only sometimes
    (:data:`WORDS`, e.g. ``trace``) are left alone, and so is text between backticks."""
    parts = re.split(r"(`[^`]*`)", str(text))
    return "".join(p if p.startswith("`") else _RAW.sub(_named, p) for p in parts)


def sentence(text: str) -> str:
    """``text`` with its first letter a capital (after any leading Markdown emphasis):
    ``"whether ..."`` -> ``"Whether ..."``. Text that starts with code is left as it is."""
    text = str(text)
    match = re.match(r"[\s*_(\[]*", text)
    start = match.end()
    if start < len(text) and text[start].isalpha():
        return text[:start] + text[start].upper() + text[start + 1 :]
    return text


def raw_identifiers(text: str) -> list[str]:
    """The raw identifiers of the table (and any snake_case name) left in ``text``, in order."""
    return [m[1] for m in _LEFT.finditer(text)]


def _reasons(missing, column, rows: int) -> list:
    """The reason each row of ``column`` may be missing, from :func:`frame`'s ``missing``."""
    if isinstance(missing, Mapping):
        missing = missing.get(column)
    if missing is None or isinstance(missing, str):
        return [missing] * rows
    reasons = list(missing)
    if len(reasons) != rows:
        raise ValueError(f"column {column!r}: {len(reasons)} reasons for {rows} rows")
    return reasons


def frame(
    df: pd.DataFrame,
    *,
    formats: Mapping[str, str | Callable] | None = None,
    missing: str | Mapping[str, str | Sequence[str | None]] | None = None,
    columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """``df`` as a reader should see it: every cell text, headers and identifier cells named.

    Args:
        formats: per column (its name in ``df``), a format such as ``"{:.3g}"`` or a function
            of the value; numbers without one are written with four significant digits.
        missing: why a value is missing: one reason for the whole table, or per column (its
            name in ``df``) one reason or one per row. Each NaN or None cell reads
            ``"— (reason)"``.
        columns: headers to use instead of the table's names (e.g. with units), per column.

    Raises:
        ValueError: where a cell is missing and no reason is given for its column: a table
            never shows NaN, it says why there is no value.
    """
    formats, columns = dict(formats or {}), dict(columns or {})
    out = pd.DataFrame(index=df.index)
    for column in df.columns:
        values = df[column]
        blank = values.isna()
        reasons = _reasons(missing, column, len(df))
        unexplained = [i for i, (b, r) in enumerate(zip(blank, reasons)) if b and not r]
        if unexplained:
            raise ValueError(
                f"column {column!r} has missing values in rows {unexplained} and no reason for "
                "them: give one with missing={column: 'why'}"
            )
        form = formats.get(column)
        cells = []
        for value, empty, reason in zip(values, blank, reasons):
            if empty:
                cells.append(f"— ({reason})")
            elif callable(form):
                cells.append(str(form(value)))
            elif form is not None:
                cells.append(form.format(value))
            elif isinstance(value, bool | np.bool_):
                cells.append("yes" if value else "no")
            elif isinstance(value, float | np.floating):
                cells.append(f"{value:.4g}")
            else:
                cells.append(display(value))
        header = columns.get(column) or display(column)
        out[header] = cells
    return out


def table(df: pd.DataFrame, **kwargs):
    """:func:`frame` as a pandas Styler without the index, as chapters show tables."""
    return frame(df, **kwargs).style.hide(axis="index")
