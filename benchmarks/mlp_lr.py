"""The learning rate of the paper profile's MLPs, chosen on validation data.

    python benchmarks/mlp_lr.py --data-root DATA --results STORE [--epochs 30]

The authors' scripts give SGD lr 0.1 with momentum 0.9 for their CIFAR networks and no script
for the MLPs. At lr 0.1 the three MLPs on MNIST lose their ReLUs within tens of epochs (10 of
11 full-length runs ended predicting one class, training loss ln 10). This trains each MLP at
each candidate lr, weight decay 0 and 5e-4, seed 0, for ``--epochs`` epochs of the paper's
schedule (its constant phase is half the epochs) without Hessians, and prints the validation
accuracy at the end and its minimum over the second half (a run that collapses and recovers
is not stable). The chosen lr, per network, is the largest whose worse weight decay's minimum
is within 0.5 points of the best such minimum: the test set is never read. Runs are cached in
the results store (``python -m flatness sweep`` of the same points finds them).
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


def configs(epochs: int):
    for model in MODELS:
        for lr in LRS:
            for wd in DECAYS:
                yield model, lr, wd, run_config(
                    model, "sgd", "paper", weight_decay=wd, seed=0, lr=lr, epochs=epochs,
                    hessian_every=0,
                )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results", required=True)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    store = Store(args.results)
    rows = {}
    for model, lr, wd, cfg in configs(args.epochs):
        run = load_or_run(cfg, store=store, data_root=args.data_root, progress=True)
        val = np.asarray(run.arrays["val_acc"])
        rows[model, lr, wd] = (float(val[-1]), float(val[len(val) // 2 :].min()))
    print(f"{'model':14} {'lr':>6} {'wd':>7} {'val acc':>8} {'min 2nd half':>13}")
    for (model, lr, wd), (last, low) in rows.items():
        print(f"{model:14} {lr:6g} {wd:7g} {last:8.4f} {low:13.4f}")
    print()
    for model in MODELS:
        worst = {lr: min(rows[model, lr, wd][1] for wd in DECAYS) for lr in LRS}
        best = max(worst.values())
        chosen = max(lr for lr in LRS if worst[lr] >= best - TIE)
        print(
            f"{model}: lr {chosen:g} (worse weight decay's minimum {worst[chosen]:.4f}; best {best:.4f})"
        )


if __name__ == "__main__":
    main()
