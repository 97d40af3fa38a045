"""Training every network of the paper the way the authors did, resumably.

One run is one :class:`~flatness.training.config.RunConfig`: SGD with heavy-ball momentum and coupled
L2, Adam with coupled L2, or AdamW with decoupled decay; the authors' linear schedule (or
step, cosine, constant, :mod:`flatness.training.schedules`); iterate averaging after
``average_start`` with BatchNorm statistics recomputed for the average (SWA = SGD + averaging,
Gadam = AdamW + averaging; torch's ``AveragedModel`` and ``update_bn``). Settings from
``diegogranziol/GadamX`` (``run_sgd.py``, ``run_adam.py``, ``arcus_scripts``).

The data stay on the device as tensors; batches are drawn by index and CIFAR's random crop and
flip run on the device in batches (:func:`flatness.data.augment`). On CUDA, ``fast=True``
(the default there) trains in bf16 autocast with channels-last convolutions; Hessians are
always measured in float32 on the unaugmented training split (:mod:`flatness.training.measurement`).

With ``checkpoint=PATH`` a run writes an atomic checkpoint every ``checkpoint_every`` epochs
(model, optimiser, averaged model, the per-epoch series and every random state); rerunning the
same config resumes from it, and on the CPU the result equals an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from flatness import data as datasets
from flatness import hessian, models
from flatness.errors import DIVERGED_MULTIPLE, FlatnessError, RunDiverged
from flatness.models import norms
from flatness.training import measurement as measure
from flatness.training import schedules
from flatness.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from flatness.training.config import RunConfig

#: Per-epoch series stored with every run; Hessian columns are NaN where not measured
#: (BatchNorm networks also get the ``*_bn_train`` columns of :mod:`flatness.training.measurement`).
SERIES = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "weight_norm",
    "averaged",
    "epoch_seconds",
    *measure.MEASURES,
    "hessian_seconds",
)
#: Examples per forward pass when evaluating (no gradients).
EVAL_BATCH = 1000


@dataclass(frozen=True)
class TrainResult:
    """What a run produces: final ``metrics`` (JSON-able) and ``arrays`` (per-epoch series, weights)."""

    metrics: dict
    arrays: dict[str, np.ndarray]
    #: wall-clock seconds of the earlier sittings of a resumed run (up to its last checkpoint)
    earlier_wall_seconds: float = 0.0
    #: how many sittings (starts, resumes included) the run took
    sittings: int = 1


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device) -> torch.device:
    """``device`` as a torch device; an unknown or unavailable one raises FlatnessError."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise FlatnessError(f"unknown device {device!r}; use cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlatnessError(f"device {device!r} asked for, but torch finds no CUDA GPU; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise FlatnessError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def make_optimiser(config: RunConfig, parameters) -> torch.optim.Optimizer:
    """The run's optimiser; weight decay as the authors applied it (to every parameter)."""
    if config.optimiser == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimiser == "adam":  # coupled: weight_decay * w is added to the gradient
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    # decoupled: w <- w (1 - lr * weight_decay) before the Adam step (GadamX optimizers/adam.py)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: RunConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``."""
    ratio = config.average_lr / config.lr if config.averaging else None
    return config.lr * schedules.factor(
        config.schedule,
        epoch,
        epochs=config.epochs,
        final_ratio=config.final_ratio,
        average_start=config.average_start,
        average_ratio=ratio,
    )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode, in batches."""
    was_training = model.training
    model.eval()
    loss, correct = torch.zeros((), dtype=torch.float64, device=x.device), 0
    with torch.no_grad():
        for start in range(0, len(y), EVAL_BATCH):
            logits = model(x[start : start + EVAL_BATCH]).float()
            target = y[start : start + EVAL_BATCH]
            loss += nn.functional.cross_entropy(logits, target, reduction="sum").double()
            correct += (logits.argmax(dim=1) == target).sum()
    model.train(was_training)
    return (loss / len(y)).item(), float(correct) / len(y)


def _bn_batches(x: torch.Tensor, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


class _Run:
    """The mutable state of one run: what a checkpoint holds."""

    def __init__(self, config: RunConfig, data: datasets.Dataset, device: torch.device):
        self.config, self.data, self.device = config, data, device
        torch.manual_seed(config.seed)
        self.model = models.build(
            config.model, data.input_shape, data.num_classes, width=config.width
        ).to(device)
        # rebuilt from the seed on a resume, so a checkpoint need not hold it
        self.initial = norms.initial_weights(self.model)
        self.optimiser = make_optimiser(config, self.model.parameters())
        self.averaged = AveragedModel(self.model) if config.averaging else None
        self.order = torch.Generator().manual_seed(config.seed)
        self.augmenter = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.epoch = 0
        self.series: dict[str, list[float]] = {}
        self.seconds = {"train": 0.0, "hessian": 0.0, "wall": 0.0}
        self.sittings = 1
        #: the measures of :func:`flatness.training.measurement.sharpness`, after the last epoch
        self.measures: dict = {}
        #: the run as stopped at ``config.snapshot_loss`` (metrics, and its test predictions)
        self.snapshot: dict = {}
        self.snapshot_correct: torch.Tensor | None = None

    def state(self) -> dict:
        return {
            "key": self.config.key(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "averaged": self.averaged.state_dict() if self.averaged is not None else {},
            "order": self.order.get_state(),
            "augmenter": self.augmenter.get_state(),
            "rng": rng_state(),
            "series": self.series,
            "seconds": self.seconds,
            "sittings": self.sittings,
            "snapshot": self.snapshot,
            "snapshot_correct": self.snapshot_correct,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])
        self.order.set_state(state["order"])
        self.augmenter.set_state(state["augmenter"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.series = {k: list(v) for k, v in state["series"].items()}
        self.seconds = {"wall": 0.0} | dict(state["seconds"])
        self.sittings = int(state.get("sittings", 1)) + 1
        self.snapshot = dict(state.get("snapshot", {}))
        self.snapshot_correct = state.get("snapshot_correct")

    @property
    def result_model(self) -> nn.Module:
        """The averaged network once averaging has begun, else the trained one."""
        if self.averaged is not None and int(self.averaged.n_averaged) > 0:
            return self.averaged.module
        return self.model


def _train_epoch(run: _Run, step, lr: float, augment: bool) -> torch.Tensor:
    for group in run.optimiser.param_groups:
        group["lr"] = lr
    d, total = run.data, torch.zeros((), dtype=torch.float64, device=run.device)
    run.model.train()
    for batch in torch.randperm(len(d.y_train), generator=run.order).split(run.config.batch_size):
        batch = batch.to(run.device)
        x = d.x_train[batch]
        if augment:
            x = datasets.augment(x, generator=run.augmenter)
        total += step(x, d.y_train[batch]).detach().double() * len(batch)
    return total / len(d.y_train)


def _stepper(run: _Run, *, fast: bool, compile: bool):
    forward = torch.compile(run.model) if compile else run.model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if fast and run.device.type == "cuda"
        else contextlib.nullcontext()
    )
    channels_last = fast and run.device.type == "cuda"

    def step(x, y):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = nn.functional.cross_entropy(forward(x).float(), y)
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        run.optimiser.step()
        return loss

    return step


def _average(run: _Run) -> None:
    """Add this epoch's weights to the average and recompute its BatchNorm statistics."""
    run.averaged.update_parameters(run.model)
    if models.has_batchnorm(run.model):
        # on the unaugmented training split; the global RNG is forked so that dropout drawn
        # here cannot change the training that follows
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            update_bn(_bn_batches(run.data.x_train, run.config.batch_size), run.averaged)


def train(
    config: RunConfig,
    *,
    data_root=None,
    device: torch.device | str | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 5,
    fast: bool | None = None,
    compile: bool = False,
    callback=None,
    data_verify: bool = True,
) -> TrainResult:
    """Train one run from its config, measuring the data-loss Hessian along the way.

    Args:
        config: the run.
        data_root: where torchvision data sets live (see :func:`flatness.data.load`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... (default: CUDA when available).
        progress: a tqdm bar over epochs with loss and accuracy.
        checkpoint: a file to resume from and to write every ``checkpoint_every`` epochs.
        fast: bf16 autocast and channels-last on CUDA (default: on for CUDA; ignored on CPU).
        compile: train through ``torch.compile`` (measurements use the plain module).
        callback: ``callback(epoch, model)`` after every epoch's update (for tests and plots).
        data_verify: check CIFAR files against torchvision's md5 sums (``False`` for files
            written in CIFAR's format by hand, as the tests do).

    Raises:
        RunDiverged: when the training loss becomes NaN or infinite, or ends above
            :data:`~flatness.errors.DIVERGED_MULTIPLE` x ln K, or the weights' norm goes beyond
            :data:`MAX_WEIGHT_NORM` whatever the loss (names the run, the epoch and the fix);
            the store records such a run as failed.
        FlatnessError: for an unknown device; for data that cannot be loaded.
    """
    device = resolve_device(device)
    fast = device.type == "cuda" if fast is None else fast
    data = datasets.load(
        config.dataset, data_root=data_root, train_size=config.train_size, verify=data_verify
    ).to(device)
    augment = data.augment if config.augment is None else config.augment
    _check_batches(config, len(data.y_train))
    run = _Run(config, data, device)
    saved = load_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is not None and saved.get("key") == config.key():
        run.restore(saved)
        # said always: sweeps and their logs show which runs resumed
        print(f"resuming {config.label()} at epoch {run.epoch}", file=sys.stderr, flush=True)
    sitting, earlier = time.perf_counter(), run.seconds["wall"]
    step = _stepper(run, fast=fast, compile=compile)
    bar = tqdm(
        range(run.epoch, config.epochs),
        desc=config.label(),
        disable=not progress,
        leave=False,
        initial=run.epoch,
        total=config.epochs,
    )
    final_arrays: dict[str, np.ndarray] = {}
    for epoch in bar:
        start = time.perf_counter()
        lr = learning_rate(config, epoch)
        loss = _train_epoch(run, step, lr, augment).item()
        _check_finite(config, loss, f"in epoch {epoch + 1}")
        averaging = config.averaging and epoch + 1 > config.average_start
        if averaging:
            _average(run)
        if callback is not None:
            callback(epoch, run.model)
        run.seconds["train"] += time.perf_counter() - start
        row = _evaluate_row(run, epoch, lr, averaging)
        row["epoch_seconds"] = time.perf_counter() - start
        last = epoch + 1 == config.epochs
        if last:  # before the final measurement, the dearest of all
            _check_not_diverged(config, row["train_loss"])
        every = config.hessian_every
        if every > 0 and ((epoch + 1) % every == 0 or last):
            # a measurement can take longer than many epochs: say so rather than seem to hang
            bar.set_postfix_str(f"measuring the Hessian after epoch {epoch + 1}")
            values, arrays = _measure(run, epoch, final=last)
            final_arrays |= arrays
            if last:
                bar.set_postfix_str("measuring sharpness after the last epoch")
                run.measures = _sharpness(run, epoch, values)
        else:
            values = measure.unmeasured(run.model)
        if _snapshot_due(run, row["train_loss"]):
            bar.set_postfix_str(f"recording the run as stopped after epoch {epoch + 1}")
            _snapshot(run, epoch, row, values if not math.isnan(values["lambda_max"]) else None)
        run.seconds["hessian"] += values["hessian_seconds"]
        for k, v in (row | values).items():
            run.series.setdefault(k, []).append(v)
        run.epoch = epoch + 1
        bar.set_postfix(loss=f"{row['train_loss']:.3g}", acc=f"{row['test_acc']:.3f}")
        if checkpoint is not None and (run.epoch % checkpoint_every == 0) and not last:
            run.seconds["wall"] = earlier + time.perf_counter() - sitting
            save_checkpoint(checkpoint, run.state())
    return dataclasses.replace(
        _result(run, final_arrays), earlier_wall_seconds=earlier, sittings=run.sittings
    )


def _check_batches(config: RunConfig, n: int) -> None:
    """Refuse a run whose batches include one of a single example where BatchNorm, in train mode,
    would see one value per channel and fail (training, update_bn and the train-mode Hessian
    all use the run's batch size, so the last batch holds ``n % batch_size`` examples)."""
    b = config.batch_size
    if b != 1 and n % b != 1:
        return
    shape = datasets.input_shape(config.dataset)
    with torch.device("meta"):
        net = models.build(
            config.model, shape, datasets.num_classes(config.dataset), width=config.width
        )
        try:
            net.train()(torch.zeros(1, *shape))
        except ValueError:
            better = next(c for c in range(max(b, 1) + 1, n + 2) if n % c != 1)
            raise FlatnessError(
                f"{config.label()}: batch_size {b} on {n} training examples leaves a batch of "
                "one example, which the BatchNorm layers cannot normalise in train mode; "
                f"choose a batch_size that does not (e.g. {better}) or another train_size"
            ) from None


def _evaluate_row(run: _Run, epoch: int, lr: float, averaging: bool) -> dict[str, float]:
    model, d, every = run.result_model, run.data, run.config.eval_every
    train_loss, train_acc = evaluate(model, d.x_train, d.y_train)
    _check_finite(run.config, train_loss, f"after epoch {epoch + 1}")
    last = epoch + 1 == run.config.epochs
    if every is None or (epoch + 1) % every == 0 or last or _snapshot_due(run, train_loss):
        val_loss, val_acc = evaluate(model, d.x_val, d.y_val)
        test_loss, test_acc = evaluate(model, d.x_test, d.y_test)
    else:
        val_loss = val_acc = test_loss = test_acc = math.nan
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "weight_norm": _checked_norm(run.config, hessian.weight_norm(model), epoch),
        "averaged": float(averaging),
    }


#: Beyond this weight norm a run has diverged whatever its loss: its square overflows float32,
#: so the weight norm and the Hessian's products in float32 are no numbers any more.
MAX_WEIGHT_NORM = 1.8e19


def _checked_norm(config: RunConfig, norm: float, epoch: int) -> float:
    if not norm <= MAX_WEIGHT_NORM:
        raise RunDiverged(
            f"{config.label()}: the weights' norm is {norm:.3g} after epoch {epoch + 1}, beyond "
            f"{MAX_WEIGHT_NORM:.2g} (where its square overflows float32), although the loss is "
            f"finite; the run diverged. Lower lr (now {config.lr:g}) or raise weight_decay "
            f"({config.weight_decay:g})."
        )
    return norm


def _check_finite(config: RunConfig, loss: float, when: str) -> None:
    if not math.isfinite(loss):
        raise RunDiverged(
            f"{config.label()}: the training loss is {loss} {when}; the run diverged. "
            f"Lower lr (now {config.lr:g}) or weight_decay ({config.weight_decay:g})."
        )


def _check_not_diverged(config: RunConfig, loss: float) -> None:
    chance = math.log(datasets.num_classes(config.dataset))
    if not loss <= DIVERGED_MULTIPLE * chance:
        raise RunDiverged(
            f"{config.label()}: the training loss is {loss:.4g} after the last epoch, above "
            f"{DIVERGED_MULTIPLE:g} x ln K = {DIVERGED_MULTIPLE * chance:.4g} (K = "
            f"{datasets.num_classes(config.dataset)} classes); the run diverged. "
            f"Lower lr (now {config.lr:g}) or weight_decay ({config.weight_decay:g})."
        )


def _measure(run: _Run, epoch: int, *, final: bool):
    model, d, cfg = run.result_model, run.data, run.config
    # the global RNG is forked so that measuring cannot change the training that follows
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        n = cfg.hessian_examples  # None: every training example
        return measure.measure(
            model,
            d.x_train[:n],
            d.y_train[:n],
            batch_size=cfg.batch_size,
            rtol=cfg.hessian_rtol,
            seed=cfg.seed * 100_003 + epoch,
            final=final,
            slq_steps=cfg.slq_steps,
            max_probes=cfg.hessian_max_probes,
        )


def _snapshot_due(run: _Run, train_loss: float) -> bool:
    limit = run.config.snapshot_loss
    return limit is not None and not run.snapshot and train_loss <= limit


def _snapshot(run: _Run, epoch: int, row: dict, values: dict | None) -> None:
    """Record the run as a run stopped after ``epoch`` would be: the epoch's accuracies and
    losses, the Hessian and every measure (taken now unless this epoch measured them), the
    baselines and the test predictions."""
    start = time.perf_counter()
    measured: dict = {}
    if run.config.hessian_every > 0:
        last = epoch + 1 == run.config.epochs
        if values is None:
            values, _ = _measure(run, epoch, final=False)
        measured = {k: values[k] for k in measure.measured_columns(run.result_model)}
        measured |= run.measures if last else _sharpness(run, epoch, values)
    skip = ("epoch", "lr", "averaged", "epoch_seconds")
    found = {"epoch": epoch + 1} | {k: v for k, v in row.items() if k not in skip}
    found |= _baselines(run) | measured
    found["seconds"] = time.perf_counter() - start
    run.snapshot = {f"snapshot.{k}": v for k, v in found.items()}
    run.snapshot_correct = torch.as_tensor(
        test_correct(run.result_model, run.data.x_test, run.data.y_test)
    )


def _baselines(run: _Run) -> dict:
    """The norms Jiang et al. score beside sharpness; the path norm is None for a network it
    is not defined for (tanh, BatchNorm)."""
    model = run.result_model
    try:
        path = norms.path_norm(model, run.data.input_shape)
    except FlatnessError:
        path = None
    return {"distance_from_init": norms.distance_from_init(model, run.initial), "path_norm": path}


def _sharpness(run: _Run, epoch: int, values: dict) -> dict:
    model, d, cfg = run.result_model, run.data, run.config
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        n = cfg.hessian_examples
        return measure.sharpness(
            model, d.x_train[:n], d.y_train[:n], seed=cfg.seed * 100_003 + epoch, values=values
        )


def test_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``(len(y),)`` booleans: where ``model`` (in eval mode) classifies ``x`` right."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [
            (model(x[i : i + EVAL_BATCH]).argmax(dim=1) == y[i : i + EVAL_BATCH]).cpu()
            for i in range(0, len(y), EVAL_BATCH)
        ]
    model.train(was_training)
    return torch.cat(out).numpy()


def _result(run: _Run, final_arrays: dict[str, np.ndarray]) -> TrainResult:
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in run.series.items()}
    arrays |= final_arrays
    # per test example, so that paired comparisons need no weights (published runs may lack them)
    arrays["test_correct"] = test_correct(run.result_model, run.data.x_test, run.data.y_test)
    for name, t in run.result_model.state_dict().items():
        arrays[f"state.{name}"] = t.detach().cpu().numpy()
    skip = ("epoch", "lr", "averaged", "epoch_seconds", "hessian_seconds")
    final = {k: float(v[-1]) for k, v in run.series.items() if k not in skip}
    final |= {
        "train_examples": len(run.data.y_train),
        "parameters": models.parameter_count(run.model),
        "averaged": bool(run.series["averaged"][-1]),
        "train_seconds": run.seconds["train"],
        "hessian_seconds": run.seconds["hessian"],
    }
    final |= _baselines(run) | run.measures
    if run.config.snapshot_loss is not None:
        # None: the run never reached the loss, and is listed as such rather than dropped
        final |= run.snapshot or {"snapshot.epoch": None}
        if run.snapshot_correct is not None:
            arrays["snapshot.test_correct"] = run.snapshot_correct.numpy()
    return TrainResult(metrics=final, arrays=arrays)


def load_model(config: RunConfig, arrays: dict[str, np.ndarray], input_shape, num_classes: int):
    """Rebuild a stored run's final model (float32, CPU) from its ``state.*`` arrays."""
    model = models.build(config.model, input_shape, num_classes, width=config.width)
    state = {
        k.removeprefix("state."): torch.as_tensor(v)
        for k, v in arrays.items()
        if k.startswith("state.")
    }
    model.load_state_dict(state)
    return model
