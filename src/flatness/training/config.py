"""The semantic config of one run.

A :class:`RunConfig` holds everything that changes a training run's result, and nothing else
(no paths, no device, no progress bars), so its :meth:`RunConfig.key` names the run in the
results store. How big a chapter's runs are is its profile's business (:mod:`flatness.profiles`).

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
from dataclasses import dataclass

from flatness.data import DATASETS
from flatness.errors import FlatnessError
from flatness.training.schedules import SCHEDULES
from flatness.validation import as_float, as_int, as_rtol, check_choice

#: Bumped when the training code changes what a stored run means; old runs then stop matching.
#: 2: images keep their (C, H, W) shape, validation splits, optimisers, averaging, estimators.
#: 3: ``hessian_max_probes`` and ``hessian_examples`` (Hessians on a fixed training subset).
RUN_FORMAT = 3

#: Seeds are below 2**32: training seeds torch generators with ``seed + 1`` and
#: ``seed * 100_003 + epoch``, which must stay within their 64-bit range.
SEED_LIMIT = 2**32

#: ``sgd`` (heavy-ball momentum, coupled L2), ``adam`` (coupled L2), ``adamw`` (decoupled decay).
OPTIMISERS = ("sgd", "adam", "adamw")

#: The bounds of the size fields, each from sense or from memory, with the reason a refusal
#: gives: a value beyond them is a typo (``-p epochs 1e10`` would train for years) or would
#: fail deep inside torch (``-p width 1e8``).
MAX_EPOCHS = 10_000
MAX_EPOCHS_WHY = "the paper's longest runs take 300 epochs"
MAX_BATCH = 2**20
MAX_EXAMPLES = 2**24
MAX_EXAMPLES_WHY = "the data sets here hold at most 60,000 training examples"
MAX_PROBES = 100_000
MAX_SLQ_STEPS = 10_000
MAX_WIDTH = 1000.0
MAX_PARAMETERS = 10**9
MAX_PARAMETERS_WHY = "4 GB of float32 weights, about 16 GB with gradients and the optimiser's state"


#: Fields added after runs were stored: at their default (None) they stay out of the key, so
#: that every stored run keeps its key.
_LATER_FIELDS = ("snapshot_loss", "eval_every")


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
        epochs: passes over the training split (at most :data:`MAX_EPOCHS`).
        batch_size: minibatch size (at most :data:`MAX_BATCH`).
        lr: the initial learning rate (> 0).
        momentum: heavy-ball momentum of ``sgd``, in [0, 1); Adam's betas are (0.9, 0.999).
        schedule: one of :data:`SCHEDULES` (see :mod:`flatness.training.schedules`).
        train_size: use only the first ``train_size`` examples of a fixed shuffle (``None``: all;
            at most :data:`MAX_EXAMPLES`).
        hessian_every: measure the Hessian every this many epochs and at the last one;
            0 never measures it (at most :data:`MAX_EPOCHS`).
        optimiser: one of :data:`OPTIMISERS`.
        width: width multiplier of the network's hidden layers (1 = the paper's size; at most
            :data:`MAX_WIDTH`, and the network at most :data:`MAX_PARAMETERS` parameters).
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
            is not reached first (the stored standard errors say how precise they got; at
            most :data:`MAX_PROBES`).
        hessian_examples: measure the Hessian on the first this many training examples (a
            fixed subset, the same at every epoch); None: the whole training split, as the
            authors did. At most :data:`MAX_EXAMPLES`.
        slq_steps: Lanczos steps of the spectral density estimated after the last epoch for
            models too large for an exact spectrum; 0 skips it (at most
            :data:`MAX_SLQ_STEPS`).
        snapshot_loss: at the end of the first epoch whose training cross-entropy is at most
            this, record the run as a run stopped there would be recorded (its accuracies,
            Hessian, measures and test predictions, under ``snapshot.``), then train on to
            ``epochs``: the stopping rule of Jiang et al. (2020) beside a fixed budget, from
            one run. With the ``constant`` schedule and no averaging the snapshot *is* the
            stopped run. ``None``: no snapshot.
        eval_every: score the validation and test splits every this many epochs (and after
            the last, and at the snapshot); the training split is scored every epoch. ``None``:
            every epoch. Their columns are NaN between (at most :data:`MAX_EPOCHS`).

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
    snapshot_loss: float | None = None
    eval_every: int | None = None

    def __post_init__(self):
        fix = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("optimiser", self.optimiser, OPTIMISERS)
        fix("weight_decay", as_float("weight_decay", self.weight_decay, minimum=0.0))
        fix("seed", as_int("seed", self.seed, minimum=0))
        if self.seed >= SEED_LIMIT:
            raise FlatnessError(f"seed must be below 2**32 = {SEED_LIMIT}, got {self.seed}")
        fix(
            "epochs",
            as_int("epochs", self.epochs, minimum=1, maximum=MAX_EPOCHS, why=MAX_EPOCHS_WHY),
        )
        fix(
            "batch_size",
            as_int(
                "batch_size", self.batch_size, minimum=1, maximum=MAX_BATCH, why=MAX_EXAMPLES_WHY
            ),
        )
        fix("lr", as_float("lr", self.lr, above=0.0))
        fix("momentum", as_float("momentum", self.momentum, minimum=0.0))
        if self.momentum >= 1:
            raise FlatnessError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.train_size is not None:
            fix(
                "train_size",
                as_int(
                    "train_size",
                    self.train_size,
                    minimum=2,
                    maximum=MAX_EXAMPLES,
                    why=MAX_EXAMPLES_WHY,
                ),
            )
        fix(
            "hessian_every",
            as_int(
                "hessian_every",
                self.hessian_every,
                minimum=0,
                maximum=MAX_EPOCHS,
                why=MAX_EPOCHS_WHY,
            ),
        )
        fix(
            "width",
            as_float(
                "width",
                self.width,
                above=0.0,
                maximum=MAX_WIDTH,
                why="a thousand times the paper's network",
            ),
        )
        fix("final_ratio", as_float("final_ratio", self.final_ratio, above=0.0))
        if self.final_ratio > 1:
            raise FlatnessError(f"final_ratio must be in (0, 1], got {self.final_ratio}")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise FlatnessError(f"augment must be true, false or null, got {self.augment!r}")
        fix("hessian_rtol", as_rtol("hessian_rtol", self.hessian_rtol))
        # the stochastic estimators take at least 32 probes (flatness.hessian.stochastic.MIN_PROBES)
        fix(
            "hessian_max_probes",
            as_int(
                "hessian_max_probes",
                self.hessian_max_probes,
                minimum=32,
                maximum=MAX_PROBES,
                why="enough for a 0.3 % standard error where one probe's spread equals the trace",
            ),
        )
        if self.hessian_examples is not None:
            fix(
                "hessian_examples",
                as_int(
                    "hessian_examples",
                    self.hessian_examples,
                    minimum=1,
                    maximum=MAX_EXAMPLES,
                    why=MAX_EXAMPLES_WHY,
                ),
            )
        fix(
            "slq_steps",
            as_int(
                "slq_steps",
                self.slq_steps,
                minimum=0,
                maximum=MAX_SLQ_STEPS,
                why="Lanczos loses orthogonality long before; 100 resolve a density",
            ),
        )
        if self.eval_every is not None:
            fix(
                "eval_every",
                as_int(
                    "eval_every", self.eval_every, minimum=1, maximum=MAX_EPOCHS, why=MAX_EPOCHS_WHY
                ),
            )
            if self.eval_every == 1:  # every epoch, as None says: one run, one key
                fix("eval_every", None)
        if self.snapshot_loss is not None:
            fix("snapshot_loss", as_float("snapshot_loss", self.snapshot_loss, above=0.0))
        self._check_averaging(fix)
        _check_model_fits(self.model, self.dataset, self.width)

    def _check_averaging(self, fix) -> None:
        if self.average_start is None:
            if self.average_lr is not None:
                raise FlatnessError(
                    "average_lr is set but average_start is not; set both or neither"
                )
            return
        fix("average_start", as_int("average_start", self.average_start, minimum=0))
        if self.average_start >= self.epochs:
            raise FlatnessError(
                f"average_start must be below epochs ({self.epochs}), got {self.average_start}: "
                "averaging would never start"
            )
        if self.average_lr is None:
            raise FlatnessError("average_start needs average_lr, the constant lr while averaging")
        fix("average_lr", as_float("average_lr", self.average_lr, above=0.0))

    @property
    def averaging(self) -> bool:
        return self.average_start is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A stable 16-hex-digit hash of the config (and :data:`RUN_FORMAT`)."""
        payload = {"format": RUN_FORMAT, **self.to_dict()}
        # fields added after runs were published name those runs only when set
        for field in _LATER_FIELDS:
            if payload[field] is None:
                del payload[field]
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
        count = sum(p.numel() for p in net.parameters())
        if count > MAX_PARAMETERS:
            raise FlatnessError(
                f"model {model!r} at width {width:g} has {count:,} parameters, above the "
                f"{MAX_PARAMETERS:,} this package trains ({MAX_PARAMETERS_WHY}); give a "
                "smaller width"
            )
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
