"""How long a profile's grid of runs takes, from training steps timed on this machine.

For every distinct network of the grid, a few training steps and Hessian-vector products on
random inputs of the data set's shape are timed on the chosen device (after a warm-up). On a
GPU they use the run's batch size; on a CPU batches of 8 and 32 are timed and the line through
them (a fixed cost per step plus a cost per example) gives the run's batch size. The estimate of
a run is

    epochs x ceil(N / B) x step time                                        (training)
    + (measurements x HVPS_PER_MEASUREMENT + slq_steps) x ceil(N / B) x HVP time x modes

with N the training split, B the batch size, ``modes`` 2 for BatchNorm networks (eval and
train mode) and 1 otherwise. :data:`HVPS_PER_MEASUREMENT` is the mean of a few measured
networks, stated in the table, not a measurement of each run. Models small enough for exact
Hessians are charged the same, which overstates their cost.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flatness import data as datasets
from flatness import models
from flatness.errors import FlatnessError
from flatness.training.config import RunConfig

#: Hessian-vector products per measurement and BatchNorm mode, from what one joint measurement
#: (:func:`flatness.hessian.measure_all`, ``hessian_rtol`` 0.05) spent on trained networks on
#: 2 CPU cores: 36 for the 784-512-256-10 MLP on 10,000 MNIST images, 100 and 60 for VGG-16-BN
#: at width 1/8 (eval, train mode), 40 and 48 for PreResNet-20 at width 1/4, on 1,024
#: generated images (``benchmarks/measurement_bench.py``'s cases); their mean, rounded up.
HVPS_PER_MEASUREMENT = 60
#: Training-split sizes of the paper's data sets (45k of CIFAR's 50k; 55k of MNIST's 60k).
#: (digits: 1,797 less 360 test and 360 validation images)
TRAIN_SIZES = {"digits": 1077, "mnist": 55_000, "fashion-mnist": 55_000}
TRAIN_SIZES |= {"cifar10": 45_000, "cifar100": 45_000}
CPU_TIMING_BATCH = 8
#: the states of :func:`flatness.results.sweep.point_status` whose runs need no training
DONE = ("published", "done")


@dataclass(frozen=True)
class Estimate:
    """One run's estimated device time, in hours."""

    config: RunConfig
    step_seconds: float
    hvp_seconds: float
    train_hours: float
    hessian_hours: float

    @property
    def hours(self) -> float:
        return self.train_hours + self.hessian_hours


def time_step(
    model_name: str, dataset: str, width: float, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Seconds of one training step (forward, backward, SGD update) and of one Hessian-vector
    product, both at ``batch_size``."""
    from flatness.hessian import HessianOperator

    shape = datasets.input_shape(dataset)
    torch.manual_seed(0)
    model = models.build(model_name, shape, datasets.num_classes(dataset), width=width).to(device)
    if device.type == "cuda":
        sizes = (batch_size,)
    else:  # two small batches, and a line through them: fixed cost plus a cost per example
        sizes = tuple(
            sorted({min(batch_size, CPU_TIMING_BATCH), min(batch_size, 4 * CPU_TIMING_BATCH)})
        )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    steps, hvps = [], []
    for n in sizes:
        x = torch.randn(n, *shape, device=device)
        y = torch.randint(datasets.num_classes(dataset), (n,), device=device)

        def step(x=x, y=y):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        model.train()
        steps.append(_timed(step, device))
        model.eval()
        op = HessianOperator(model, nn.functional.cross_entropy, (x, y))
        v = torch.randn(op.size, device=device)
        hvps.append(_timed(lambda op=op, v=v: op.matvec(v), device))
    return _at(sizes, steps, batch_size), _at(sizes, hvps, batch_size)


def _at(sizes: tuple[int, ...], seconds: list[float], batch_size: int) -> float:
    """Seconds at ``batch_size`` on the line through the timed sizes (proportional for one)."""
    if len(sizes) == 1:
        return seconds[0] * batch_size / sizes[0]
    per_example = max((seconds[1] - seconds[0]) / (sizes[1] - sizes[0]), 0.0)
    fixed = max(seconds[0] - per_example * sizes[0], 0.0)
    return fixed + per_example * batch_size


def _timed(fn, device: torch.device) -> float:
    fn()  # warm-up: allocations, kernel selection
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    repeats, start = 0, time.perf_counter()
    while repeats < 3 or (time.perf_counter() - start < 1.0 and repeats < 50):
        fn()
        sync()
        repeats += 1
    return (time.perf_counter() - start) / repeats


def estimate(configs: list[RunConfig], device: torch.device, step_times: dict | None = None):
    """An :class:`Estimate` per run; steps are timed once per (model, width, data set)."""
    cache = dict(step_times or {})
    out, modes_of = [], {}
    for cfg in configs:
        key = f"{cfg.model}|{cfg.width:g}|{cfg.dataset}|{cfg.batch_size}"
        if key not in cache or f"{key}|hvp" not in cache:
            found = time_step(cfg.model, cfg.dataset, cfg.width, cfg.batch_size, device)
            cache.setdefault(key, found[0])
            cache.setdefault(f"{key}|hvp", found[1])
        step, hvp = cache[key], cache[f"{key}|hvp"]
        n = cfg.train_size or TRAIN_SIZES[cfg.dataset]
        steps = math.ceil(n / cfg.batch_size)
        measurements = 0
        if cfg.hessian_every:
            measurements = cfg.epochs // cfg.hessian_every + (cfg.epochs % cfg.hessian_every > 0)
        if key not in modes_of:  # one meta-device build per network, not per run
            with torch.device("meta"):
                shape, classes = (
                    datasets.input_shape(cfg.dataset),
                    datasets.num_classes(cfg.dataset),
                )
                net = models.build(cfg.model, shape, classes, width=cfg.width)
            modes_of[key] = 2 if models.has_batchnorm(net) else 1
        modes = modes_of[key]
        hvps = measurements * HVPS_PER_MEASUREMENT + (cfg.slq_steps if measurements else 0)
        hessian = hvps * steps * hvp * modes
        out.append(Estimate(cfg, step, hvp, cfg.epochs * steps * step / 3600, hessian / 3600))
    return out, cache


def table(estimates: list[Estimate], device: torch.device, states: list[str] | None = None) -> str:
    """The plan as text: one line per run and the total.

    ``states`` (one per estimate, as :func:`flatness.results.sweep.point_status` names them) adds a
    column, and the total then says too what is left to train: the runs neither published nor
    done (missing, running, failed or damaged), counted whole.
    """
    unit = "GPU-hours" if device.type == "cuda" else "CPU-hours on this machine"
    lines = [
        f"{'model':15} {'optimiser':10} {'lr':>7} {'wd':>7} {'seed':>4} {'epochs':>6} "
        f"{'width':>6} {'step s':>8} {'HVP s':>8} {'train h':>8} {'hessian h':>9} {'total h':>8}"
        + ("  state" if states is not None else "")
    ]
    for i, e in enumerate(estimates):
        c = e.config
        opt = c.optimiser + ("+avg" if c.averaging else "")
        lines.append(
            f"{c.model:15} {opt:10} {c.lr:7g} {c.weight_decay:7g} {c.seed:4d} {c.epochs:6d} "
            f"{c.width:6g} {e.step_seconds:8.4f} {e.hvp_seconds:8.4f} {e.train_hours:8.3f} "
            f"{e.hessian_hours:9.3f} {e.hours:8.3f}"
            + (f"  {states[i]}" if states is not None else "")
        )
    total = sum(e.hours for e in estimates)
    line = f"{len(estimates)} run(s); total {total:.1f} {unit}"
    if states is not None:
        left = [e for e, state in zip(estimates, states, strict=True) if state not in DONE]
        line += (
            f"; left to train (not published or done): {len(left)} run(s), "
            f"{sum(e.hours for e in left):.1f} {unit.split()[0]}"
        )
    lines.append(line)
    lines.append(
        f"(steps and HVPs timed on {device}; the Hessian cost takes {HVPS_PER_MEASUREMENT} "
        "HVPs per measurement and BatchNorm mode, the mean over a few measured networks, plus "
        "the SLQ steps at the end)"
    )
    return "\n".join(lines)


def busy_note(load: float, cores: int, device: torch.device) -> str:
    """A line saying that CPU timings were taken on a busy machine ('' on an idle one or a GPU):
    other jobs take a share of each timed step, so the hours are upper bounds.

    ``load`` is the one-minute load average (:func:`os.getloadavg`) before timing, ``cores``
    the CPUs this process may use. The machine counts as busy when other work fills at least
    half a core.

    >>> busy_note(0.2, 2, torch.device("cpu"))
    ''
    >>> busy_note(3.1, 2, torch.device("cpu"))[:52]
    'the machine was busy while timing (load average 3.1 '
    """
    if device.type != "cpu" or load < 0.5:
        return ""
    return (
        f"the machine was busy while timing (load average {load:.1f} on {cores} core(s)): "
        "these hours are upper bounds; time on an idle machine for a fair plan"
    )


def _unique_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict; a key given twice is refused (json keeps the last)."""
    found: dict = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} is given twice")
        found[key] = value
    return found


def read_step_times(path: str | Path) -> dict:
    """Step times saved by an earlier plan (``--save-step-times``), e.g. from a GPU machine."""
    try:
        found = json.loads(Path(path).read_text(), object_pairs_hook=_unique_keys)
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise FlatnessError(f"cannot read step times from {path}: {err}") from None
    if not isinstance(found, dict) or not all(isinstance(v, (int, float)) for v in found.values()):
        raise FlatnessError(f"{path} must hold a JSON object of step times in seconds")
    return found


#: GPU-hours are estimated, when no step times measured on a GPU are at hand, from counted work
#: at assumed rates (assumptions, not measurements): FLOPs at a sustained 100 TFLOP/s (about a
#: fifth of a current data-centre GPU's dense bf16 peak) plus 10 microseconds per operator
#: launched, which dominates for small and deep networks.
ASSUMED_GPU_FLOPS = 100e12
ASSUMED_SECONDS_PER_OP = 10e-6
#: An HVP (a double backward pass) is taken to cost twice a training step.
HVP_STEP_RATIO = 2.0


def step_work(model_name: str, dataset: str, width: float, batch_size: int) -> tuple[float, int]:
    """FLOPs and operator calls of one training step (forward and backward at ``batch_size``),
    counted on the meta device (nothing is computed) with
    :class:`torch.utils.flop_counter.FlopCounterMode`."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Ops(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.calls += 1
            return func(*args, **(kwargs or {}))

    shape = datasets.input_shape(dataset)
    with torch.device("meta"):
        model = models.build(model_name, shape, datasets.num_classes(dataset), width=width)
        x = torch.randn(batch_size, *shape)
        y = torch.randint(datasets.num_classes(dataset), (batch_size,))
    with FlopCounterMode(display=False) as counter, Ops():
        nn.functional.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops()), Ops.calls


def gpu_estimate(
    configs: list[RunConfig],
    flops_per_second: float = ASSUMED_GPU_FLOPS,
    seconds_per_op: float = ASSUMED_SECONDS_PER_OP,
) -> list[Estimate]:
    """GPU-hours per run from counted work (:func:`step_work`) at assumed rates, with the same
    run structure as :func:`estimate` (epochs, measurements, BatchNorm modes).

    >>> from flatness.training.config import RunConfig
    >>> cfg = RunConfig("logreg", "mnist", 0.0, 0, epochs=1, hessian_every=0)
    >>> e = gpu_estimate([cfg], flops_per_second=1e12, seconds_per_op=0.0)[0]
    >>> round(e.step_seconds * 1e12 / (6 * 128 * 7840))  # 3 matmuls of 2 FLOPs per weight
    1
    """
    seconds = {}
    out = []
    for cfg in configs:
        key = (cfg.model, cfg.dataset, cfg.width, cfg.batch_size)
        if key not in seconds:
            flops, ops = step_work(*key)
            seconds[key] = flops / flops_per_second + ops * seconds_per_op
        step = seconds[key]
        known = {_key(cfg): step, f"{_key(cfg)}|hvp": step * HVP_STEP_RATIO}
        out.append(estimate([cfg], torch.device("cpu"), known)[0][0])
    return out


def _key(cfg: RunConfig) -> str:
    return f"{cfg.model}|{cfg.width:g}|{cfg.dataset}|{cfg.batch_size}"
