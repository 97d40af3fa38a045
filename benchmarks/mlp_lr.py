"""The learning rate of a network's SGD recipe, chosen on validation data.

    python benchmarks/mlp_lr.py --data-root DATA --results STORE [--epochs 30]
    python benchmarks/mlp_lr.py --profile cpu --models lenet5 --decays 0 0.01 \\
        --seeds 0 1 2 --epochs 30 --results STORE

The authors' scripts give SGD lr 0.1 with momentum 0.9 for their CIFAR networks and no script
for the MLPs. At lr 0.1 the three MLPs on MNIST lose their ReLUs within tens of epochs (10 of
11 full-length runs ended predicting one class, training loss ln 10), and so did LeNet-5 on
scikit-learn's digits at weight decay 0.01 (the ``cpu`` stand-in of the CNN chapter, seed 0).
This trains each network at each candidate lr, each weight decay and seed, for ``--epochs``
epochs of the paper's schedule (its constant phase is half the epochs) without Hessians, and
prints the validation accuracy at the end and its minimum over the second half (a run that
collapses and recovers is not stable). The chosen lr, per network, is the largest whose worst
minimum over weight decays and seeds is within 0.5 points of the best such minimum: the test
set is never read. Runs are cached in the results store (``python -m flatness sweep`` of the
same points finds them).
"""

from __future__ import annotations

import argparse

import numpy as np

from flatness.results.runs import load_or_run
from flatness.results.store import Store
from flatness.training.recipes import run_config

MODELS = ("mlp-10-100", "mlp-5-200-50", "mlp-512-256")
LRS = (0.1, 0.03, 0.01)
DECAYS = (0.0, 5e-4)
TIE = 0.005  # validation accuracy within half a point counts as a tie; the larger lr wins


def configs(models, lrs, decays, seeds, profile: str, epochs: int):
    for model in models:
        for lr in lrs:
            for wd in decays:
                for seed in seeds:
                    yield (model, lr, wd, seed), run_config(
                        model, "sgd", profile, weight_decay=wd, seed=seed, lr=lr, epochs=epochs,
                        hessian_every=0,
                    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results", required=True)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LRS))
    parser.add_argument("--decays", nargs="+", type=float, default=list(DECAYS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    store = Store(args.results)
    rows = {}
    points = configs(args.models, args.lrs, args.decays, args.seeds, args.profile, args.epochs)
    for point, cfg in points:
        run = load_or_run(cfg, store=store, data_root=args.data_root, progress=True)
        val = np.asarray(run.arrays["val_acc"])
        rows[point] = (float(val[-1]), float(val[len(val) // 2 :].min()))
    print(f"{'model':14} {'lr':>6} {'wd':>7} {'seed':>4} {'val acc':>8} {'min 2nd half':>13}")
    for (model, lr, wd, seed), (last, low) in rows.items():
        print(f"{model:14} {lr:6g} {wd:7g} {seed:4d} {last:8.4f} {low:13.4f}")
    print()
    for model in args.models:
        worst = {
            lr: min(low for (m, r, _, _), (_, low) in rows.items() if m == model and r == lr)
            for lr in args.lrs
        }
        best = max(worst.values())
        chosen = max(lr for lr in args.lrs if worst[lr] >= best - TIE)
        print(
            f"{model}: lr {chosen:g} (worst minimum over weight decays and seeds "
            f"{worst[chosen]:.4f}; best {best:.4f})"
        )


if __name__ == "__main__":
    main()
