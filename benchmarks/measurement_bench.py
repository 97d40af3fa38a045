"""A training run's Hessian measurement, this checkout against an earlier one, at equal settings.

``python benchmarks/measurement_bench.py --before DIR [--examples N] [--cases ...]``, where
``DIR`` is the ``src`` folder of an earlier checkout (``git worktree add /tmp/before <commit>``,
then ``--before /tmp/before/src``). Each side measures the same trained model on the same data
with ``flatness.training.measurement.measure`` (what every training run calls, BatchNorm
networks in both modes), each in its own process, one after the other. Cases:

- ``mlp``: the authors' 784-512-256-10 MLP, trained ``--mlp-epochs`` epochs of SGD on the 60,000
  real MNIST training images (its published runs keep no weights), measured on the first
  ``--examples`` of them (the cost is linear in their number);
- ``vgg``: VGG-16-BN at width 1/8 and ``preresnet``: PreResNet-20 at width 1/4, each trained
  ``--cnn-epochs`` epochs on ``--cnn-examples`` generated 3x32x32 images whose labels come from
  a random linear teacher (CIFAR-10 is not on this machine), batch size 128.

Per case and side: the seconds, Hessian-vector products (``HessianOperator.matmat`` vectors;
the old trace's exact Gauss-Newton part is not among them), and every value with its standard
error (equal accuracy: both sides stop at the same ``rtol``), then the ratio after / before and
the measurement's cost in training epochs (its seconds over one epoch of SGD on the same model
and data, timed here), the figure that carries over to a GPU.
Results also go to ``_build/bench/measurement.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from flatness import data as datasets
from flatness import models

OUT = Path("_build/bench/measurement.json")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RTOL, BATCH, SEED = 0.05, 128, 12345

CHILD = """
import json, sys, time, torch, flatness
from flatness.hessian.operator import HessianOperator
from flatness.training import measurement
case = torch.load(sys.argv[1], weights_only=False)
torch.set_num_threads({threads})
hvps, plain = [0], HessianOperator.matmat
def counted(self, vectors):
    hvps[0] += len(vectors)
    return plain(self, vectors)
HessianOperator.matmat = counted
start = time.perf_counter()
values, _ = measurement.measure(case["model"], case["x"], case["y"], batch_size={batch},
                                rtol={rtol}, seed={seed})
seconds = time.perf_counter() - start
print(json.dumps(dict(seconds=seconds, values=values, hvps=hvps[0], source=flatness.__file__)))
"""


def mlp_case(examples: int, epochs: int) -> dict:
    d = datasets.load("mnist", data_root=SHARED, download=False)
    torch.manual_seed(0)
    model = models.build("mlp-512-256", d.input_shape, 10)
    epoch_seconds(model, d.x_train, d.y_train, epochs=epochs)
    return {
        "name": f"784-512-256-10 MLP, MNIST ({epochs} epochs on all 60,000)",
        "model": model.eval(),
        "x": d.x_train[:examples],
        "y": d.y_train[:examples],
    }


def cnn_case(name: str, width: float, examples: int, epochs: int) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(examples, 3, 32, 32, generator=gen)
    teacher = torch.randn(3 * 32 * 32, 10, generator=torch.Generator().manual_seed(3))
    y = (x.flatten(1) @ teacher).argmax(dim=1)
    model = models.build(name, (3, 32, 32), 10, width=width)
    epoch_seconds(model, x, y, epochs=epochs)  # trained, so the spectrum is a trained one's
    return {
        "name": f"{name} width {width:g}, generated images",
        "model": model.eval(),
        "x": x,
        "y": y,
    }


def epoch_seconds(model: nn.Module, x, y, *, epochs: int = 1) -> float:
    """Seconds of one epoch of SGD (batch 128, lr 0.05, momentum 0.9) on (x, y): the last of
    ``epochs``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    seconds = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for i in torch.randperm(len(y)).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
        seconds = time.perf_counter() - start
    return seconds


def measure_in(src: str, path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    code = CHILD.format(threads=torch.get_num_threads(), batch=BATCH, rtol=RTOL, seed=SEED)
    out = subprocess.run(
        [sys.executable, "-c", code, path], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="src folder of the earlier checkout")
    parser.add_argument("--examples", type=int, default=10_000, help="MNIST images (mlp)")
    parser.add_argument("--mlp-epochs", type=int, default=10, help="SGD epochs before measuring")
    parser.add_argument("--cnn-examples", type=int, default=1024)
    parser.add_argument("--cnn-epochs", type=int, default=8)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["mlp", "vgg", "preresnet"],
        choices=["mlp", "vgg", "preresnet"],
    )
    args = parser.parse_args()
    after = str(Path(__file__).resolve().parents[1] / "src")
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    rows = []
    for key in args.cases:
        if key == "mlp":
            case = mlp_case(args.examples, args.mlp_epochs)
        elif key == "vgg":
            case = cnn_case("vgg16-bn", 0.125, args.cnn_examples, args.cnn_epochs)
        else:
            case = cnn_case("preresnet-20", 0.25, args.cnn_examples, args.cnn_epochs)
        epoch = epoch_seconds(_copy(case["model"]), case["x"], case["y"])
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "case.pt")
            torch.save(case, path)
            sides = {
                side: measure_in(src, path)
                for side, src in (("before", args.before), ("after", after))
            }
        row = {
            "case": case["name"],
            "examples": len(case["y"]),
            "parameters": models.parameter_count(case["model"]),
            "epoch_seconds": epoch,
            **sides,
        }
        rows.append(row)
        print_row(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rtol": RTOL, "rows": rows}, indent=2))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}; written to {OUT}")


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def print_row(row: dict) -> None:
    b, a = row["before"], row["after"]
    print(
        f"\n== {row['case']}: {row['parameters']:,} parameters, {row['examples']:,} examples; "
        f"one training epoch {row['epoch_seconds']:.2f}s"
    )
    for key in sorted(a["values"]):
        if key == "hessian_seconds" or key.endswith("_se") or key.endswith("_se_bn_train"):
            continue
        se_key = key.replace("_bn_train", "") + "_se" + ("_bn_train" if "bn_train" in key else "")

        def se(side, se_key=se_key):
            return f" ± {side['values'][se_key]:.3g}" if se_key in side["values"] else ""

        print(
            f"  {key:22s} before {b['values'][key]:.5g}{se(b)}   after {a['values'][key]:.5g}{se(a)}"
        )
    print(f"  Hessian-vector products (all modes): before {b['hvps']}, after {a['hvps']}")
    print(
        f"  seconds: before {b['seconds']:.1f}, after {a['seconds']:.1f}, ratio "
        f"{a['seconds'] / b['seconds']:.3f}; in training epochs: before "
        f"{b['seconds'] / row['epoch_seconds']:.1f}, after {a['seconds'] / row['epoch_seconds']:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
