"""What the sharpness measures add to a training run's measurement, as a share of its Hessian
measurement.

``python benchmarks/measures_bench.py [--examples N] [--epochs E] [--cases mlp lenet]``.
Each case trains a network briefly with SGD, then times, on the same model and data, what a
run does after its last epoch: the Hessian measurement
(:func:`flatness.training.measurement.measure`, trace and Frobenius norm to a relative standard
error of 0.05) and the measure suite (:func:`flatness.training.measurement.sharpness`, which
reuses that measurement's ``lambda_max`` and trace). It prints both times, their ratio, the
suite's time per family, and one SGD epoch's time for scale. Cases:

- ``mlp``: the authors' 784-512-256-10 MLP on real MNIST (``../shared/data``), measured on the
  first ``--examples`` training images;
- ``lenet``: LeNet-5 on scikit-learn's digits at the cpu book's width, on 128 images.

Results also go to ``_build/bench/measures.json``. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from flatness import data as datasets
from flatness import models
from flatness.measures.suite import measure_suite
from flatness.training import measurement

OUT = Path("_build/bench/measures.json")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH, SEED = 128, 12345


def _train(model, x, y, epochs: int, lr: float) -> float:
    """SGD for ``epochs`` epochs; the seconds of the last one."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    seconds = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(y))
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        seconds = time.perf_counter() - start
    return seconds


def case(name: str, examples: int, epochs: int) -> dict:
    torch.manual_seed(SEED)
    if name == "mlp":
        d = datasets.load("mnist", data_root=SHARED)
        model, lr = models.build("mlp-512-256", d.input_shape, d.num_classes), 0.05
        x, y, n = d.x_train, d.y_train, examples
    else:
        d = datasets.load("digits")
        model, lr = models.build("lenet5", d.input_shape, d.num_classes, width=0.5), 0.03
        x, y, n = d.x_train, d.y_train, 128
    epoch = _train(model, x, y, epochs, lr)
    xm, ym = x[:n], y[:n]
    start = time.perf_counter()
    values, _ = measurement.measure(model, xm, ym, batch_size=BATCH, rtol=0.05, seed=SEED)
    hessian = time.perf_counter() - start
    data = measurement._data(xm, ym, measurement.EVAL_BATCH, False)
    found = measure_suite(
        model,
        nn.functional.cross_entropy,
        data,
        seed=SEED,
        lambda_max=values["lambda_max"],
        trace=(values["trace"], values["trace_se"]),
    )
    return {
        "case": name,
        "examples": n,
        "parameters": models.parameter_count(model),
        "epoch_seconds": epoch,
        "hessian_seconds": hessian,
        "measures_seconds": found.seconds,
        "share": found.seconds / hessian,
        "family_seconds": found.family_seconds,
        "hvps": found.hvps,
        "forward_passes": found.forward_passes,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=["mlp", "lenet"], choices=["mlp", "lenet"])
    args = parser.parse_args(argv)
    rows = []
    for name in args.cases:
        r = case(name, args.examples, args.epochs)
        rows.append(r)
        families = ", ".join(f"{k} {v:.1f} s" for k, v in r["family_seconds"].items())
        print(
            f"{name}: {r['parameters']:,} parameters, {r['examples']:,} examples; Hessian "
            f"measurement {r['hessian_seconds']:.1f} s, measures {r['measures_seconds']:.1f} s "
            f"(share {r['share']:.2f}; {families}); one SGD epoch {r['epoch_seconds']:.2f} s"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
