"""The measures of stored runs, and of one network along Dinh et al.'s rescaling orbit:
computed once from the runs' weights and kept as computations of the results store (this
module's code is part of their key, so it holds only what computes them)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn

from flatness import data as datasets
from flatness.errors import FlatnessError
from flatness.measures import suite
from flatness.results.computations import cached, data_hash, package_modules
from flatness.results.entries import Run
from flatness.training import measurement
from flatness.training.loop import default_device, load_model

#: the raw Hessian measures the paper criticises, beside the new ones
RAW = ("lambda_max", "trace", "frobenius")
COLUMNS = RAW + suite.MEASURES
FAMILIES = {m: "raw Hessian" for m in RAW} | suite.FAMILIES
#: the modules a computed measure depends on: its part of a computation's key
CODE = (
    *package_modules("flatness.measures"),
    *package_modules("flatness.hessian"),
    "flatness.training.measurement",
)


def run_measures(run: Run, data: datasets.Dataset, *, profile: str, device=None) -> dict | None:
    """The suite's measures of ``run``'s final model: recorded by the run, else computed from
    its weights (once, then kept in the results store under ``profile``, the profile of the
    chapter that reads the run), else ``None``."""
    if all(m in run.metrics for m in suite.MEASURES):
        return {m: float(run.metrics[m]) for m in COLUMNS}
    if not any(k.startswith("state.") for k in run.arrays):
        return None
    cfg = run.config
    n = cfg.hessian_examples
    x, y = data.x_train[:n], data.y_train[:n]
    inputs = {"profile": profile, "run": cfg.key(), "sample": data_hash(x, y)}

    def compute() -> dict:
        model = load_model(cfg, run.arrays, data.input_shape, data.num_classes)
        model = model.to(device if device is not None else default_device())
        dev = next(model.parameters()).device
        found = measurement.sharpness(
            model,
            x.to(dev),
            y.to(dev),
            seed=cfg.seed * 100_003 + cfg.epochs - 1,
            values=run.metrics,
        )
        return found

    found = cached("measures.run", inputs, compute, code=CODE)
    return {m: float(run.metrics[m]) for m in RAW} | {m: found[m] for m in suite.MEASURES}


#: the scale factors ``a`` of the orbit: the first hidden layer times ``a``, the next one's
#: weights over ``a``
ORBIT = tuple(float(a) for a in np.logspace(-1, 1, 5))
#: examples the orbit is measured on: enough for stable values, cheap at every scale
ORBIT_EXAMPLES = 1024


def rescaled(model: nn.Sequential, a: float) -> nn.Module:
    """Dinh et al.'s function-preserving rescaling of a ReLU MLP: the first linear layer's
    weight and bias times ``a``, the second linear layer's weight over ``a``."""
    out = copy.deepcopy(model)
    linear = [m for m in out.modules() if isinstance(m, nn.Linear)]
    if len(linear) < 2:
        raise FlatnessError("the rescaling orbit needs a network of at least two linear layers")
    with torch.no_grad():
        linear[0].weight.mul_(a)
        if linear[0].bias is not None:
            linear[0].bias.mul_(a)
        linear[1].weight.div_(a)
    return out


def orbit(run: Run, data: datasets.Dataset, *, profile: str) -> pd.DataFrame | None:
    """Every measure of ``run``'s network along the rescaling orbit (:data:`ORBIT`), on its
    first :data:`ORBIT_EXAMPLES` training examples; ``None`` without weights. Kept in the
    results store."""
    if not any(k.startswith("state.") for k in run.arrays):
        return None
    cfg = run.config
    x, y = data.x_train[:ORBIT_EXAMPLES], data.y_train[:ORBIT_EXAMPLES]
    inputs = {
        "profile": profile,
        "run": cfg.key(),
        "sample": data_hash(x, y),
        "scales": list(ORBIT),
    }

    def compute() -> pd.DataFrame:
        model = load_model(cfg, run.arrays, data.input_shape, data.num_classes).double()
        xs, rows = x.double(), []
        for a in ORBIT:
            net = rescaled(model, a)
            values, _ = measurement.measure(net, xs, y, batch_size=len(y), rtol=0.02, seed=0)
            found = measurement.sharpness(net, xs, y, seed=0, values=values)
            rows.append(
                {"scale": a} | {m: values[m] for m in RAW} | {m: found[m] for m in suite.MEASURES}
            )
        return pd.DataFrame(rows)

    return cached("measures.orbit", inputs, compute, code=CODE)
