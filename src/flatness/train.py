"""Training with SGD + momentum and coupled L2, recording per-epoch metrics and Hessian measures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from flatness import data as datasets
from flatness import hessian, models
from flatness.config import RunConfig
from flatness.errors import FlatnessError

#: Per-epoch series stored with every run (Hessian columns are NaN where not measured).
SERIES = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "weight_norm",
    "lambda_max",
    "trace",
    "frobenius",
)


@dataclass(frozen=True)
class TrainResult:
    """What a run produces: final ``metrics`` (JSON-able) and ``arrays`` (per-epoch series, weights)."""

    metrics: dict
    arrays: dict[str, np.ndarray]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def linear_schedule(epoch: int, epochs: int, final_ratio: float = 0.01) -> float:
    """The authors' "linear" schedule as a factor on lr0 for a 0-based ``epoch``.

    Constant while t = epoch / epochs <= 0.5, then linear down to ``final_ratio`` at t = 0.9,
    then constant.

    >>> [round(linear_schedule(e, 10), 3) for e in (0, 5, 7, 9)]
    [1.0, 1.0, 0.505, 0.01]
    """
    t = epoch / epochs
    if t <= 0.5:
        return 1.0
    if t <= 0.9:
        return 1.0 - (1.0 - final_ratio) * (t - 0.5) / 0.4
    return final_ratio


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split."""
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=1) == y).double().mean().item()
    return loss, acc


def data_hessian(config: RunConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The exact Hessian of the mean training cross-entropy (no L2 term), float64."""
    if config.model == "logreg":
        return hessian.softmax_regression_hessian(model, x)
    return hessian.exact_hessian(model, nn.functional.cross_entropy, (x, y))


def train(
    config: RunConfig,
    *,
    data_root=None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train one run from its config and measure the exact data-loss Hessian along the way.

    Raises:
        FlatnessError: when the training loss becomes NaN or infinite (names the epoch and the fix).
    """
    device = torch.device(device) if device is not None else default_device()
    data = datasets.load(config.dataset, data_root=data_root, train_size=config.train_size)
    data = data.to(device)
    torch.manual_seed(config.seed)
    model = models.build(config.model, data.input_dim, data.num_classes).to(device)
    optimiser = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    order = torch.Generator().manual_seed(config.seed)
    n = len(data.y_train)
    series = {k: [] for k in SERIES}
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc=config.label(), disable=not progress, leave=False)
    for epoch in bar:
        factor = linear_schedule(epoch, config.epochs) if config.schedule == "linear" else 1.0
        for group in optimiser.param_groups:
            group["lr"] = config.lr * factor
        for batch in torch.randperm(n, generator=order).split(config.batch_size):
            batch = batch.to(device)
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
        if not math.isfinite(train_loss):
            raise FlatnessError(
                f"{config.label()}: the training loss is {train_loss} after epoch {epoch + 1}; "
                f"the run diverged. Lower lr (now {config.lr:g}) or weight_decay."
            )
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
        every = config.hessian_every
        measured = every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == config.epochs)
        if measured:
            m = hessian.Measures.of(data_hessian(config, model, data.x_train, data.y_train))
            curvature = (m.lambda_max, m.trace, m.frobenius)
        else:
            curvature = (math.nan,) * 3
        row = (epoch + 1, config.lr * factor, train_loss, train_acc, test_loss, test_acc)
        row += (hessian.weight_norm(model), *curvature)
        for k, v in zip(SERIES, row):
            series[k].append(v)
        bar.set_postfix(loss=f"{train_loss:.3g}", acc=f"{test_acc:.3f}")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in series.items()}
    for name, p in model.named_parameters():
        arrays[f"param.{name}"] = p.detach().cpu().numpy()
    final = {k: float(arrays[k][-1]) for k in SERIES if k not in ("epoch", "lr")}
    final["train_examples"] = n
    final["parameters"] = sum(p.numel() for p in model.parameters())
    final["train_seconds"] = time.perf_counter() - start
    return TrainResult(metrics=final, arrays=arrays)


def load_model(config: RunConfig, arrays: dict[str, np.ndarray], input_dim: int, num_classes: int):
    """Rebuild a stored run's final model (float32, CPU) from its ``param.*`` arrays."""
    model = models.build(config.model, input_dim, num_classes)
    state = {
        k.removeprefix("param."): torch.as_tensor(v)
        for k, v in arrays.items()
        if k.startswith("param.")
    }
    model.load_state_dict(state)
    return model
