"""Profiles (how big each chapter's experiments are) and the semantic config of one run.

A *profile* says how large every chapter's experiments are: ``smoke`` runs in seconds for CI,
``cpu`` is the default book on real offline data, ``paper`` uses the paper's data and settings
and wants a GPU. Chapters never hard-code sizes; they ask the profile.

A :class:`RunConfig` holds everything that changes a training run's result, and nothing else
(no paths, no device, no progress bars), so its :meth:`RunConfig.key` names the run in the
results store.

>>> cfg = RunConfig(model="logreg", dataset="digits", weight_decay=1e-4, seed=0, epochs=5)
>>> cfg.key() == RunConfig(**cfg.to_dict()).key()
True
>>> len(cfg.key())
16
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from flatness.data import DATASETS
from flatness.errors import FlatnessError, unknown
from flatness.schedules import SCHEDULES

#: Bumped when the training code changes what a stored run means; old runs then stop matching.
#: 2: images keep their (C, H, W) shape, validation splits, optimisers, averaging, estimators.
#: 3: ``hessian_max_probes`` and ``hessian_examples`` (Hessians on a fixed training subset).
RUN_FORMAT = 3

#: Seeds are below 2**32: training seeds torch generators with ``seed + 1`` and
#: ``seed * 100_003 + epoch``, which must stay within their 64-bit range.
SEED_LIMIT = 2**32

#: ``sgd`` (heavy-ball momentum, coupled L2), ``adam`` (coupled L2), ``adamw`` (decoupled decay).
OPTIMISERS = ("sgd", "adam", "adamw")


def _as_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise FlatnessError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise FlatnessError(f"{name} must be at least {minimum}, got {value}")
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


def _as_float(
    name: str, value: object, *, minimum: float | None = None, above: float | None = None
) -> float:
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
    return value


def _as_rtol(name: str, value: object) -> float:
    value = _as_float(name, value)
    if not 0 < value < 1:
        raise FlatnessError(f"{name} must be between 0 and 1, got {value}")
    return value


def _as_tuple(name: str, value: object, convert) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise FlatnessError(f"{name} must be a list, got {value!r}")
    items = tuple(convert(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not items:
        raise FlatnessError(f"{name} must not be empty")
    return items


def _check_choice(kind: str, value: object, valid) -> str:
    if value not in valid:
        raise unknown(kind, value, valid)
    return value


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run's result.

    Args:
        model: a name from :func:`flatness.models.names` (``preresnet-<depth>`` and
            ``wrn-<depth>-<k>`` accept other valid depths too).
        dataset: a name from :data:`flatness.data.DATASETS`.
        weight_decay: coupled L2 coefficient for ``sgd`` and ``adam`` (added to the gradient),
            decoupled decay for ``adamw`` (``w <- w - lr * weight_decay * w``).
        seed: seeds the initialisation, the batch order, augmentation and dropout; in
            [0, 2**32).
        epochs: passes over the training split.
        batch_size: minibatch size.
        lr: the initial learning rate (> 0).
        momentum: heavy-ball momentum of ``sgd``, in [0, 1); Adam's betas are (0.9, 0.999).
        schedule: one of :data:`SCHEDULES` (see :mod:`flatness.schedules`).
        train_size: use only the first ``train_size`` examples of a fixed shuffle (``None``: all).
        hessian_every: measure the Hessian every this many epochs and at the last one;
            0 never measures it.
        optimiser: one of :data:`OPTIMISERS`.
        width: width multiplier of the network's hidden layers (1 = the paper's size).
        average_start: iterate averaging as the authors' ``swa_start``: the weights at the end of
            every (1-based) epoch after this one are averaged, with BatchNorm statistics
            recomputed for the average (SWA with ``sgd``, Gadam with ``adamw``); the schedule
            then runs over ``average_start`` epochs instead of ``epochs``. ``None``: no averaging.
        average_lr: the constant learning rate while averaging (required with ``average_start``).
        final_ratio: the linear schedule's final learning rate as a fraction of ``lr``
            (the authors' r = 0.01; with averaging r = ``average_lr / lr`` is used instead).
        augment: random crop and flip while training; ``None`` follows the data set (CIFAR yes).
        hessian_rtol: relative standard error at which the trace and Frobenius estimators stop,
            for models too large for an exact Hessian.
        hessian_max_probes: the trace and Frobenius estimators stop here if ``hessian_rtol``
            is not reached first (the stored standard errors say how precise they got).
        hessian_examples: measure the Hessian on the first this many training examples (a
            fixed subset, the same at every epoch); None: the whole training split, as the
            authors did.
        slq_steps: Lanczos steps of the spectral density estimated after the last epoch for
            models too large for an exact spectrum; 0 skips it.

    Raises:
        FlatnessError: for any field out of its range, naming the field and the valid range;
            for a model that does not fit the data set's input shape.
    """

    model: str
    dataset: str
    weight_decay: float
    seed: int
    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    schedule: str = "linear"
    train_size: int | None = None
    hessian_every: int = 1
    optimiser: str = "sgd"
    width: float = 1.0
    average_start: int | None = None
    average_lr: float | None = None
    final_ratio: float = 0.01
    augment: bool | None = None
    hessian_rtol: float = 0.05
    hessian_max_probes: int = 1000
    hessian_examples: int | None = None
    slq_steps: int = 0

    def __post_init__(self):
        fix = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("optimiser", self.optimiser, OPTIMISERS)
        fix("weight_decay", _as_float("weight_decay", self.weight_decay, minimum=0.0))
        fix("seed", _as_int("seed", self.seed, minimum=0))
        if self.seed >= SEED_LIMIT:
            raise FlatnessError(f"seed must be below 2**32 = {SEED_LIMIT}, got {self.seed}")
        fix("epochs", _as_int("epochs", self.epochs, minimum=1))
        fix("batch_size", _as_int("batch_size", self.batch_size, minimum=1))
        fix("lr", _as_float("lr", self.lr, above=0.0))
        fix("momentum", _as_float("momentum", self.momentum, minimum=0.0))
        if self.momentum >= 1:
            raise FlatnessError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.train_size is not None:
            fix("train_size", _as_int("train_size", self.train_size, minimum=2))
        fix("hessian_every", _as_int("hessian_every", self.hessian_every, minimum=0))
        fix("width", _as_float("width", self.width, above=0.0))
        fix("final_ratio", _as_float("final_ratio", self.final_ratio, above=0.0))
        if self.final_ratio > 1:
            raise FlatnessError(f"final_ratio must be in (0, 1], got {self.final_ratio}")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise FlatnessError(f"augment must be true, false or null, got {self.augment!r}")
        fix("hessian_rtol", _as_rtol("hessian_rtol", self.hessian_rtol))
        # the stochastic estimators take at least 32 probes (flatness.hessian.stochastic.MIN_PROBES)
        fix(
            "hessian_max_probes", _as_int("hessian_max_probes", self.hessian_max_probes, minimum=32)
        )
        if self.hessian_examples is not None:
            fix("hessian_examples", _as_int("hessian_examples", self.hessian_examples, minimum=1))
        fix("slq_steps", _as_int("slq_steps", self.slq_steps, minimum=0))
        self._check_averaging(fix)
        _check_model_fits(self.model, self.dataset, self.width)

    def _check_averaging(self, fix) -> None:
        if self.average_start is None:
            if self.average_lr is not None:
                raise FlatnessError(
                    "average_lr is set but average_start is not; set both or neither"
                )
            return
        fix("average_start", _as_int("average_start", self.average_start, minimum=0))
        if self.average_start >= self.epochs:
            raise FlatnessError(
                f"average_start must be below epochs ({self.epochs}), got {self.average_start}: "
                "averaging would never start"
            )
        if self.average_lr is None:
            raise FlatnessError("average_start needs average_lr, the constant lr while averaging")
        fix("average_lr", _as_float("average_lr", self.average_lr, above=0.0))

    @property
    def averaging(self) -> bool:
        return self.average_start is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A stable 16-hex-digit hash of the config (and :data:`RUN_FORMAT`)."""
        payload = {"format": RUN_FORMAT, **self.to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def label(self) -> str:
        """The run in one line: model (and width), data set, optimiser, lr, weight decay, seed."""
        opt = {"sgd": "SWA", "adamw": "Gadam"}.get(self.optimiser, f"{self.optimiser}+avg")
        opt = opt if self.averaging else self.optimiser
        width = "" if self.width == 1 else f" width={self.width:g}"
        return (
            f"{self.model}{width}/{self.dataset} {opt} lr={self.lr:g} wd={self.weight_decay:g} "
            f"seed={self.seed}"
        )


@functools.lru_cache(maxsize=256)
def _check_model_fits(model: str, dataset: str, width: float) -> None:
    """Build ``model`` on the meta device and push a batch of the data set's shape through it."""
    import torch

    from flatness import data, models

    shape = data.input_shape(dataset)
    with torch.device("meta"):
        net = models.build(model, shape, data.num_classes(dataset), width=width)
        try:
            out = net(torch.zeros(2, *shape))
        except RuntimeError as err:
            raise FlatnessError(
                f"model {model!r} (width {width:g}) does not fit {dataset}'s inputs of shape "
                f"{shape}: {str(err).splitlines()[0]}"
            ) from None
    if tuple(out.shape) != (2, data.num_classes(dataset)):
        raise FlatnessError(
            f"model {model!r} gives outputs of shape {tuple(out.shape[1:])} on {dataset}, "
            f"not ({data.num_classes(dataset)},) logits"
        )


@dataclass(frozen=True)
class Profile:
    """A named scale for the whole book; each chapter module maps it to its own settings."""

    name: str
    description: str
    progress: bool
    #: whether the book trains runs that are neither published nor stored, unasked
    train_missing: bool = True


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="seconds per chapter, for CI; the numbers mean nothing",
        progress=False,
    ),
    "cpu": Profile(
        name="cpu",
        description="real offline data (scikit-learn's digits), minutes on a laptop",
        progress=True,
    ),
    "paper": Profile(
        name="paper",
        description="the paper's data and settings (MNIST, CIFAR-100, 300 epochs); wants a GPU",
        progress=True,
        # days of training: rendered from published runs unless --train-missing
        train_missing=False,
    ),
}


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
    flatness.config.DuplicateKey: duplicate key 'c' (on line 1, given before on line 1)
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


# validators shared with the chapter settings
as_int, as_float, as_tuple, as_rtol, check_choice = (
    _as_int,
    _as_float,
    _as_tuple,
    _as_rtol,
    _check_choice,
)


def parameter_changes(*, dataset=None, seeds=None, weight_decays=None, epochs=None) -> dict:
    """The chapter parameters that are not ``None``, validated, as settings fields.

    Raises:
        FlatnessError: an unknown data set, duplicate or negative seeds, a negative weight
            decay, or epochs below 1.
    """
    from flatness.stats import check_seeds

    changes: dict = {}
    if dataset is not None:
        changes["dataset"] = _check_choice("dataset", dataset, DATASETS)
    if seeds is not None:
        changes["seeds"] = check_seeds(seeds)
    if weight_decays is not None:
        changes["weight_decays"] = _as_tuple(
            "weight_decays", weight_decays, lambda n, v: _as_float(n, v, minimum=0.0)
        )
    if epochs is not None:
        changes["epochs"] = _as_int("epochs", epochs, minimum=1)
    return changes


def get_profile(name: str) -> Profile:
    """The profile called ``name``, or an error listing the valid ones."""
    if name not in PROFILES:
        raise unknown("profile", name, PROFILES)
    return PROFILES[name]
