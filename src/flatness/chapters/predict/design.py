"""The grids of the chapter "Does any measure predict generalisation?": which runs, and why.

Each grid is a full factorial over four hyperparameters at three levels, times the seeds, as
Jiang et al. (2020) grid theirs:

- weight decay: none, low, high (coupled L2 for SGD and Adam, decoupled decay for Gadam, whose
  levels are larger since each step shrinks the weights by ``lr x decay`` only);
- the optimiser: SGD with heavy-ball momentum 0.9, Adam, and Gadam (AdamW with iterate
  averaging over the second half of training, as the paper's Gadam);
- the learning rate: low, middle, high, on each optimiser's own scale;
- the width of the MLP (of the authors' 784-512-256-10, an eighth, a quarter and a half), or the
  batch size of the CNN (LeNet-5 at half width).

Every run trains on a fixed subset of 2,000 MNIST images (so that the gap is a few points, and
visible) at a constant learning rate for 100 epochs, is scored on all 10,000 test images, and
measures every measure on the first 500 training images. The constant rate makes the two
stopping rules one run: the fixed budget (as the paper trains) is the run's end, and the
cross-entropy rule of Jiang et al. and Dziugaite et al. (stop at 0.01) is the run's snapshot
at the first epoch below it (:attr:`~flatness.training.config.RunConfig.snapshot_loss`). Runs
that never reach it are listed.

The levels were fixed before the grid ran, from a handful of pilot runs at the extremes (that
the low learning rates can reach the stopping loss within the budget); nothing was tuned on a
measure or on the test set.

``smoke`` keeps the design at two levels of each hyperparameter (SGD and Gadam the optimiser's),
a tiny MLP on scikit-learn's digits and a few epochs, so that CI runs the whole chapter in
seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from flatness.profiles import get_profile
from flatness.training.config import RunConfig

#: the hyperparameters of every grid, in the order tables show them
HYPERS = ("weight_decay", "optimiser", "lr", "size")
#: how the page names them
HYPER_NAMES = {
    "weight_decay": "weight decay",
    "optimiser": "optimiser",
    "lr": "learning rate",
    "size": "width or batch size",
}
#: the levels of the categorical hyperparameters, by rank (0 = low)
LEVELS = ("low", "middle", "high")
OPTIMISERS = ("sgd", "adam", "gadam")
OPTIMISER_NAMES = {"sgd": "SGD", "adam": "Adam", "gadam": "Gadam"}
#: the stopping loss of Jiang et al. (2020) and Dziugaite et al. (2020)
STOP_LOSS = 0.01
#: the stopping rules, and how the page names them
RULES = {"budget": "fixed epoch budget", "loss": f"training cross-entropy {STOP_LOSS:g}"}


@dataclass(frozen=True)
class Design:
    """One grid: a model, the levels of each hyperparameter, and what every run shares."""

    name: str
    model: str
    #: weight decay levels per optimiser
    weight_decay: dict
    #: learning-rate levels per optimiser
    lr: dict
    #: ``width`` or ``batch_size``, and its levels
    size_field: str
    sizes: tuple
    seeds: tuple[int, ...]
    shared: dict
    #: the optimisers' levels (all three, but for the smoke grid's two)
    optimisers: tuple[str, ...] = OPTIMISERS

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def configs(self) -> list[RunConfig]:
        """Every run, in the factorial's order (seeds innermost)."""
        out = []
        for opt in self.optimisers:
            for wd, lr, size, seed in itertools.product(
                self.weight_decay[opt], self.lr[opt], self.sizes, self.seeds
            ):
                out.append(self.config(opt, wd, lr, size, seed))
        return out

    def config(self, opt: str, wd: float, lr: float, size, seed: int) -> RunConfig:
        fields = dict(self.shared) | {self.size_field: size}
        if opt == "gadam":
            fields |= dict(average_start=fields["epochs"] // 2, average_lr=lr)
        return RunConfig(
            model=self.model,
            optimiser="adamw" if opt == "gadam" else opt,
            weight_decay=wd,
            lr=lr,
            seed=seed,
            **fields,
        )

    def cell(self, config: RunConfig) -> dict:
        """The levels (0 = low) of ``config``'s hyperparameters, and its optimiser's name."""
        opt = "gadam" if config.averaging else config.optimiser
        size = getattr(config, self.size_field)
        return {
            "weight_decay": list(self.weight_decay[opt]).index(config.weight_decay),
            "optimiser": opt,
            "lr": list(self.lr[opt]).index(config.lr),
            "size": list(self.sizes).index(size),
        }


def _paper_design(seeds=(0, 1)) -> tuple[Design, ...]:
    shared = dict(
        dataset="mnist",
        train_size=2000,
        epochs=100,
        schedule="constant",
        momentum=0.9,
        hessian_every=100,
        hessian_examples=500,
        hessian_rtol=0.05,
        hessian_max_probes=100,
        snapshot_loss=STOP_LOSS,
        eval_every=10,
    )
    decay = {"sgd": (0.0, 1e-4, 5e-4), "adam": (0.0, 1e-4, 5e-4), "gadam": (0.0, 0.025, 0.25)}
    lr = {"sgd": (0.01, 0.02, 0.05), "adam": (5e-4, 1e-3, 2e-3), "gadam": (5e-4, 1e-3, 2e-3)}
    return (
        Design(
            "MLP",
            "mlp-512-256",
            decay,
            lr,
            "width",
            (0.125, 0.25, 0.5),
            seeds,
            shared | dict(batch_size=64),
        ),
        Design(
            "LeNet-5",
            "lenet5",
            decay,
            lr,
            "batch_size",
            (32, 64, 128),
            seeds,
            shared | dict(width=0.5),
        ),
    )


def _smoke_design() -> tuple[Design, ...]:
    shared = dict(
        dataset="digits",
        train_size=100,
        epochs=4,
        schedule="constant",
        momentum=0.9,
        batch_size=25,
        hessian_every=4,
        hessian_examples=32,
        hessian_rtol=0.2,
        hessian_max_probes=32,
        snapshot_loss=1.5,
        eval_every=2,
    )
    decay = {"sgd": (0.0, 5e-4), "gadam": (0.0, 0.25)}
    lr = {"sgd": (0.05, 0.1), "gadam": (3e-3, 1e-2)}
    return (
        Design(
            "MLP", "mlp-10-100", decay, lr, "width", (0.2, 0.4), (0, 1), shared, ("sgd", "gadam")
        ),
    )


def designs(profile: str) -> tuple[Design, ...]:
    """The grids at ``profile``: the MNIST grids at ``cpu`` and ``paper`` (they are already
    real data at a laptop's scale), the tiny one at ``smoke``.

    Raises:
        FlatnessError: an unknown profile.
    """
    if get_profile(profile).name == "smoke":
        return _smoke_design()
    return _paper_design()


def grid(profile: str) -> list[RunConfig]:
    """The runs this chapter reads at ``profile``."""
    return [c for d in designs(profile) for c in d.configs()]


def levels_table(found: tuple[Design, ...]):
    """Each grid's levels, low to high, per hyperparameter (per optimiser where they differ),
    for the page."""
    import pandas as pd

    from flatness.analysis import names

    rows = []
    for d in found:
        for opt in d.optimisers:
            rows.append(
                {
                    "grid": f"{d.name} ({names.display(d.model)})",
                    "optimiser": OPTIMISER_NAMES[opt],
                    "weight decay": ", ".join(f"{v:g}" for v in d.weight_decay[opt]),
                    "learning rate": ", ".join(f"{v:g}" for v in d.lr[opt]),
                    d.size_field.replace("_", " "): ", ".join(f"{v:g}" for v in d.sizes),
                }
            )
    return pd.DataFrame(rows).fillna("")
