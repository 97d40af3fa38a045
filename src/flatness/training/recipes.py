"""The authors' training recipes, and how the ``cpu`` and ``smoke`` profiles scale them down.

``paper`` carries the authors' settings (``../shared/paper-notes.md`` section 4, from their run
scripts in ``diegogranziol/GadamX``): batch 128, 300 epochs, momentum 0.9, the linear schedule;
SGD at lr 0.1 and weight decay 5e-4; Adam at lr 1e-3 (5e-4 for VGG) with coupled L2 (default 0);
AdamW at lr 1e-3 (5e-4 for VGG) with decoupled decay 0.25; averaging after epoch 161, at lr
0.02 for SWA (GadamX's default ``swag_lr``) and 5e-4 for Gadam. MNIST for logistic regression,
the MLPs and LeNet-5; CIFAR-100 for the convolutional networks. The MLPs' lr, which the authors
do not give, is chosen on validation data (:data:`MLP_PAPER_LR`).

``cpu`` keeps each model but trains it on scikit-learn's digits (8x8, offline) with fewer
epochs and, for the convolutional networks, a width multiplier below 1; ``smoke`` trains a
few epochs on 200 digits at the smallest widths, for CI. Logistic regression has its own
recipe (:data:`LOGREG_TRAINING`), which its chapter uses, so ``run logreg`` trains exactly the
chapter's runs.

>>> cfg = run_config("preresnet-110", "gadam", "paper")
>>> (cfg.dataset, cfg.optimiser, cfg.lr, cfg.weight_decay, cfg.average_start, cfg.average_lr)
('cifar100', 'adamw', 0.001, 0.25, 161, 0.0005)
>>> run_config("vgg16", "sgd", "cpu").dataset
'digits'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flatness.errors import FlatnessError, unknown
from flatness.models import names as model_names
from flatness.models import resolve as resolve_model
from flatness.profiles import get_profile
from flatness.training.config import RunConfig

#: Optimiser names of the command line: the averaged ones are an optimiser plus averaging.
RECIPES = ("sgd", "adam", "adamw", "swa", "gadam")
_BASE = {"sgd": "sgd", "adam": "adam", "adamw": "adamw", "swa": "sgd", "gadam": "adamw"}
_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.25, "swa": 5e-4, "gadam": 0.25}
_AVERAGE_LR = {"swa": 0.02, "gadam": 5e-4}
PAPER_EPOCHS = 300
PAPER_AVERAGE_START = 161

MNIST_MODELS = ("logreg", "mlp", "lenet5")

#: SGD's lr for the MLPs on MNIST at ``paper`` scale. The authors give none for them (their
#: scripts' 0.1 is for CIFAR); at 0.1 with momentum 0.9 the MLPs lose their ReLUs within tens of
#: epochs (10 of 11 full runs ended at training loss ln 10). Chosen on validation data by
#: ``python benchmarks/mlp_lr.py`` from 0.1, 0.03 and 0.01 (30 epochs, seed 0, weight decay 0 and
#: 5e-4): the largest lr whose worse minimum validation accuracy over the second half is within
#: half a point of the best; minima 0.953, 0.919 and 0.979 for the three networks below.
MLP_PAPER_LR = {"mlp-10-100": 0.01, "mlp-5-200-50": 0.01, "mlp-512-256": 0.03}

#: How each profile trains softmax regression (SGD with momentum 0.9, linear schedule).
#: ``paper``: MNIST, 300 epochs, batch 128, lr 0.1, the authors' settings; measured every 50
#: epochs (an exact spectrum at the end). ``cpu``: every digit, 100 epochs; ``smoke``: 200 digits.
LOGREG_TRAINING = {
    "smoke": dict(
        dataset="digits", train_size=200, epochs=3, batch_size=64, lr=0.1, hessian_every=1
    ),
    "cpu": dict(
        dataset="digits", train_size=None, epochs=100, batch_size=128, lr=0.1, hessian_every=1
    ),
    "paper": dict(
        dataset="mnist", train_size=None, epochs=300, batch_size=128, lr=0.1, hessian_every=50
    ),
}
#: The weight decays and seeds the paper grid trains logistic regression with.
LOGREG_WEIGHT_DECAYS = (0.0, 1e-4, 5e-4, 1e-3, 1e-2)


def paper_dataset(model: str) -> str:
    """The data set the paper trained ``model`` on."""
    return "mnist" if model.startswith(MNIST_MODELS) else "cifar100"


@dataclass(frozen=True)
class Scale:
    """How a profile scales the paper's recipe down."""

    dataset: str | None  # None keeps the paper's data set
    epochs: int
    #: width multiplier of the convolutional networks (MLPs and LeNet-5 keep width 1)
    conv_width: float
    train_size: int | None
    hessian_every: int
    hessian_rtol: float
    hessian_max_probes: int
    slq_steps: int
    #: measurement interval of the CIFAR networks (0: the last epoch only)
    conv_hessian_every: int | None = None


SCALES = {
    "smoke": Scale("digits", 3, 1 / 16, 200, 3, 0.2, 32, 8),
    "cpu": Scale("digits", 40, 1 / 8, None, 10, 0.05, 256, 40),
    # CIFAR networks: one measurement of the whole training split costs about as much as
    # 60 HVPs x 352 batches (results/plan.py), far more than an epoch; like the authors (spectra of stored
    # checkpoints), the paper profile measures them after the last epoch only
    # MNIST networks are measured every 50 epochs: the authors measured stored checkpoints
    # after training, and a measurement of 55,000 images costs minutes on a CPU
    "paper": Scale(None, PAPER_EPOCHS, 1.0, None, 50, 0.05, 1000, 80, conv_hessian_every=0),
}


def scale_name(profile: str) -> str:
    """The profile's name, or an error listing the valid ones."""
    return get_profile(profile).name


def _is_conv(model: str) -> bool:
    return not model.startswith(("logreg", "mlp", "lenet5"))


def run_config(
    model: str,
    optimiser: str,
    profile: str,
    *,
    weight_decay: float | None = None,
    seed: int = 0,
    **overrides,
) -> RunConfig:
    """The run of ``model`` trained with ``optimiser`` at ``profile``'s scale.

    Args:
        model: a model name (:func:`flatness.models.names`).
        optimiser: one of :data:`RECIPES`.
        profile: ``smoke``, ``cpu`` or ``paper``.
        weight_decay: default the recipe's (5e-4 SGD/SWA, 0 Adam, 0.25 AdamW/Gadam).
        seed: the run's seed.
        overrides: any other :class:`~flatness.training.config.RunConfig` field.

    Raises:
        FlatnessError: unknown names, or a field out of range (from RunConfig).
    """
    if optimiser not in RECIPES:
        raise unknown("optimiser", optimiser, RECIPES)
    resolve_model(model)  # the recipe reads the name's prefix: refuse a non-name first
    scale = SCALES[scale_name(profile)]
    fields = {
        "model": model,
        "optimiser": _BASE[optimiser],
        "seed": seed,
        "weight_decay": _WEIGHT_DECAY[optimiser] if weight_decay is None else weight_decay,
        "batch_size": 128,
        "momentum": 0.9,
        "schedule": "linear",
    }
    if model == "logreg":
        fields |= LOGREG_TRAINING[scale_name(profile)]
    else:
        fields |= dict(
            dataset=scale.dataset or paper_dataset(model),
            epochs=scale.epochs,
            train_size=scale.train_size,
            hessian_every=scale.hessian_every,
            width=scale.conv_width if _is_conv(model) else 1.0,
        )
        if _is_conv(model) and scale.conv_hessian_every is not None:
            fields["hessian_every"] = scale.conv_hessian_every or scale.epochs
    vgg = model.startswith("vgg")
    fields["lr"] = 0.1 if _BASE[optimiser] == "sgd" else (5e-4 if vgg else 1e-3)
    if model in MLP_PAPER_LR and scale_name(profile) == "paper" and _BASE[optimiser] == "sgd":
        fields["lr"] = MLP_PAPER_LR[model]
    if model == "logreg":
        fields["lr"] = (
            LOGREG_TRAINING[scale_name(profile)]["lr"] if _BASE[optimiser] == "sgd" else 1e-3
        )
    if model != "logreg":  # logistic regression keeps its chapter's (the RunConfig defaults)
        fields |= dict(
            hessian_rtol=scale.hessian_rtol,
            hessian_max_probes=scale.hessian_max_probes,
            slq_steps=scale.slq_steps,
        )
    if optimiser in _AVERAGE_LR:
        # the paper's start, 161 of 300 epochs, at the same fraction of the epochs asked for
        epochs = overrides.get("epochs", fields["epochs"])
        if isinstance(epochs, int) and epochs >= 2:
            start = round(PAPER_AVERAGE_START * epochs / PAPER_EPOCHS)
            fields["average_start"] = min(max(start, 1), epochs - 1)
        elif epochs == 1 and "average_start" not in overrides:
            raise FlatnessError(
                f"{optimiser} averages the weights of the epochs after the first: "
                "epochs must be at least 2, got 1"
            )
        else:
            fields["average_start"] = 1  # RunConfig explains what is wrong with the epochs
        fields["average_lr"] = _AVERAGE_LR[optimiser]
    bad = set(overrides) - {f.name for f in dataclasses.fields(RunConfig)}
    if bad:
        valid = [f.name for f in dataclasses.fields(RunConfig)]
        raise unknown("run setting", sorted(bad)[0], valid)
    try:
        return RunConfig(**(fields | overrides))
    except TypeError as err:  # pragma: no cover - RunConfig validates every field itself
        raise FlatnessError(str(err)) from None


#: The paper profile's grid: (model, optimiser, weight decays). Claims C3/C4 compare weight
#: decay 0 with the authors' 5e-4 under SGD; C5 compares the optimisers on VGG-16 and
#: PreResNet-110 (each at its recipe's weight decay, and Adam's without averaging).
PAPER_GRID = (
    *(
        (m, "sgd", (0.0, 5e-4))
        for m in (
            "mlp-10-100",
            "mlp-512-256",
            "mlp-5-200-50",
            "lenet5",
            "allcnn",
            "preresnet-110",
            "wrn-28-10",
        )
    ),
    *(
        (m, o, (None,))
        for m in ("vgg16", "vgg16-bn", "preresnet-110")
        for o in ("swa", "adam", "adamw", "gadam")
    ),
    ("vgg16", "sgd", (None,)),
    ("vgg16-bn", "sgd", (None,)),
)
PAPER_SEEDS = (0, 1, 2)


def paper_models() -> tuple[str, ...]:
    """Every network of the paper's grid, logistic regression first."""
    return ("logreg", *dict.fromkeys(m for m, _, _ in PAPER_GRID))


def grid(profile: str, seeds=PAPER_SEEDS) -> list[RunConfig]:
    """Every run of the paper's grid at ``profile``'s scale (logistic regression: its chapter's)."""
    runs = [
        run_config("logreg", "sgd", profile, weight_decay=wd, seed=s)
        for wd in LOGREG_WEIGHT_DECAYS
        for s in seeds
    ]
    for model, optimiser, decays in PAPER_GRID:
        for wd in decays:
            runs += [run_config(model, optimiser, profile, weight_decay=wd, seed=s) for s in seeds]
    return runs


__all__ = [
    "RECIPES",
    "SCALES",
    "grid",
    "model_names",
    "paper_dataset",
    "paper_models",
    "run_config",
]
