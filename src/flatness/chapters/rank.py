"""The chapter "Is the Hessian low-rank?" (claim C6): exact ranks against candidate bounds.

Small MLPs (identity, tanh and ReLU activations, the same widths) get their dense float64
Hessian of the mean cross-entropy data loss at initialisation and after training, with and
without L2; its numerical rank is compared with four candidate bounds (:func:`bounds`). The
Gauss-Newton part (GGN) is measured beside it, because that is where the bounds are theorems.
A network too large for a dense Hessian gets stochastic Lanczos quadrature (SLQ) instead, whose
near-zero mass is first checked against the exact one on a small network.

The tanh and ReLU networks are the registered ``mlp-10-100-tanh`` and ``mlp-10-100`` at a width
multiplier; no registered model is linear, so the linear twin is built here (:func:`linear_mlp`)
and trained by :func:`train_linear`, a plain loop with the same optimiser and schedule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from flatness import data as datasets
from flatness import hessian, models
from flatness.config import RunConfig, as_float, as_int, as_tuple, check_choice, get_profile
from flatness.errors import FlatnessError
from flatness.models.dense import MLP
from flatness.stats import check_seeds
from flatness.store import load_or_run
from flatness.train import learning_rate, load_model, make_optimiser

ce = nn.functional.cross_entropy
ACTIVATIONS = ("linear", "tanh", "relu")
#: the registered model of each non-linear activation (the authors' 784-10-100-10 family)
REGISTERED = {"tanh": "mlp-10-100-tanh", "relu": "mlp-10-100"}
BOUNDS = ("examples", "fan_in", "neurons", "deep_linear")
BOUND_NAMES = {
    "examples": "N(K-1)",
    "fan_in": "(K-1) x fan-ins",
    "neurons": "neurons x K",
    "deep_linear": "deep-linear formula",
}


@dataclass(frozen=True)
class RankSettings:
    """Sizes for the rank chapter: nets, training, tolerances and the SLQ network."""

    dataset: str
    #: training examples: every run trains on them and every Hessian averages over them (N)
    train_size: int
    #: width multiplier of the 10-100 family of hidden widths
    width: float
    epochs: int
    batch_size: int
    lr: float
    weight_decays: tuple[float, ...]
    seeds: tuple[int, ...]
    #: ranks count |lambda| > rtol * max |lambda| ...
    rtols: tuple[float, ...] = (1e-4, 1e-6, 1e-8)
    #: ... and |lambda| > atol, the authors' count of eigenvalues below 1e-4 (paper notes sec. 3)
    atol: float = 1e-4
    slq_model: str = "mlp-512-256"
    slq_width: float = 0.5
    slq_steps: int = 50
    slq_probes: int = 4

    def run_config(self, activation: str, weight_decay: float, seed: int, *, large=False):
        """The stored run of a registered network (``large``: the SLQ network)."""
        return RunConfig(
            model=self.slq_model if large else REGISTERED[activation],
            width=self.slq_width if large else self.width,
            dataset=self.dataset,
            weight_decay=weight_decay,
            seed=seed,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            train_size=self.train_size,
            hessian_every=0,
        )

    def with_overrides(self, *, dataset=None, seeds=None, weight_decays=None, epochs=None):
        """Replace the fields a chapter's parameters may override; ``None`` keeps the profile's."""
        changes = {}
        if dataset is not None:
            changes["dataset"] = check_choice("dataset", dataset, datasets.DATASETS)
        if seeds is not None:
            changes["seeds"] = check_seeds(seeds)
        if weight_decays is not None:
            changes["weight_decays"] = as_tuple(
                "weight_decays", weight_decays, lambda n, v: as_float(n, v, minimum=0.0)
            )
        if epochs is not None:
            changes["epochs"] = as_int("epochs", epochs, minimum=1)
        return dataclasses.replace(self, **changes)


#: ``cpu``: 100 digits, hidden widths 5 and 50 (1,135 parameters), so N(K-1) = 900 < P; SLQ on
#: mlp-512-256 at width 0.5 (50,826 parameters). ``paper`` runs SLQ on the full mlp-512-256.
#: ``paper``: 500 MNIST images and the authors' 784-10-100-10 (9,960 parameters, exact Hessian).
SETTINGS = {
    "smoke": RankSettings(
        dataset="digits",
        train_size=40,
        width=0.2,
        epochs=3,
        batch_size=20,
        lr=0.05,
        weight_decays=(0.0, 1e-2),
        seeds=(0, 1),
        slq_width=0.1,
        slq_steps=20,
        slq_probes=2,
    ),
    "cpu": RankSettings(
        dataset="digits",
        train_size=100,
        width=0.5,
        epochs=100,
        batch_size=25,
        lr=0.05,
        weight_decays=(0.0, 1e-2),
        seeds=(0, 1, 2),
    ),
    "paper": RankSettings(
        dataset="mnist",
        train_size=500,
        width=1.0,
        epochs=300,
        batch_size=128,
        lr=0.05,
        weight_decays=(0.0, 5e-4),
        seeds=(0, 1, 2),
        slq_width=1.0,
        slq_steps=100,
        slq_probes=8,
    ),
}


def settings(profile: str, **overrides) -> RankSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced.

    Raises:
        FlatnessError: an unknown profile or data set, duplicate seeds, or a value out of range.
    """
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


@dataclass(frozen=True)
class Architecture:
    """A fully connected net: ``inputs`` -> ``hidden`` widths -> ``classes``, biases everywhere."""

    inputs: int
    hidden: tuple[int, ...]
    classes: int

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.inputs, *self.hidden, self.classes)

    @property
    def parameters(self) -> int:
        """P = sum over layers of (fan-in + 1) x fan-out."""
        w = self.widths
        return sum((a + 1) * b for a, b in zip(w[:-1], w[1:]))

    @classmethod
    def of(cls, model: nn.Module) -> Architecture:
        """Read from the model's ``nn.Linear`` layers, in order (each must feed the next)."""
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not layers or any(a.out_features != b.in_features for a, b in zip(layers, layers[1:])):
            raise FlatnessError("Architecture.of needs a chain of nn.Linear layers")
        return cls(
            layers[0].in_features,
            tuple(m.out_features for m in layers[:-1]),
            layers[-1].out_features,
        )


def bounds(arch: Architecture, examples: int, data_rank: int) -> dict[str, int]:
    """The four candidate bounds on the Hessian rank of a net with ``arch`` (K classes, layer
    widths n_0 = inputs, n_1 ... n_{L-1} hidden, n_L = K) on N = ``examples`` inputs whose
    centred matrix has rank r = ``data_rank``:

    - ``examples``: N (K - 1). Each example's logit Hessian diag(p) - p p^T has rank K - 1, so
      the GGN J^T H_z J has at most this rank (any net).
    - ``fan_in``: (K - 1) sum_l (n_{l-1} + 1), the layers' input widths with the bias. For a
      linear net, d z / d W_l = A_l (x) h~_{l-1}^T with A_l the same for every example, so the
      GGN's layer-l part has rank at most (K - 1)(n_{l-1} + 1); for softmax regression
      (L = 1) it is the exact rank (d + 1)(K - 1).
    - ``neurons``: K (n_1 + ... + n_{L-1} + K), (hidden neurons + outputs) x classes: the
      paper's "constant x neurons x classes" with constant 1 (its exact statement is lost).
    - ``deep_linear``: q (r + K - 1 - q) + (K - 1), q = min(r, n_1, ..., n_{L-1}, K - 1): the
      dimension of the affine maps z = W x + b with rank W <= q, seen by the softmax (logits
      up to a common shift). It is the rank of a linear net's GGN at generic weights (checked
      in ``tests/test_rank.py``), Singh, Bachmann and Hofmann's (2021, arXiv:2106.16225)
      outer-product rank q (r + K - q) of bias-free nets under the squared loss with K -> K - 1
      (softmax) plus K - 1 for the output bias. L = 1 gives (r + 1)(K - 1).

    Raises:
        FlatnessError: ``examples`` or ``data_rank`` below 1.
    """
    if examples < 1 or data_rank < 1:
        raise FlatnessError(f"need examples >= 1 and data_rank >= 1, got {examples}, {data_rank}")
    k, w = arch.classes, arch.widths
    q = min(data_rank, *arch.hidden, k - 1)
    return {
        "examples": examples * (k - 1),
        "fan_in": (k - 1) * sum(n + 1 for n in w[:-1]),
        "neurons": k * (sum(arch.hidden) + k),
        "deep_linear": q * (data_rank + k - 1 - q) + (k - 1),
    }


def data_rank(x: torch.Tensor) -> int:
    """The rank of the centred (N, D) inputs (float64, numpy's default tolerance): the
    dimension of the affine span of the examples."""
    flat = x.flatten(1).double()
    return int(torch.linalg.matrix_rank(flat - flat.mean(dim=0)).item())


def ranks(eigenvalues: torch.Tensor, rtols, atol: float) -> dict[str, int]:
    """Eigenvalues counted as non-zero: ``|lambda| > rtol * max |lambda|`` for each relative
    tolerance (labelled ``"rel <rtol>"``) and ``|lambda| > atol`` (``"abs <atol>"``)."""
    mags = eigenvalues.abs()
    scale = mags.max().item()
    out = {f"rel {t:g}": int((mags > t * scale).sum()) for t in rtols}
    return out | {f"abs {atol:g}": int((mags > atol).sum())}


def linear_mlp(inputs: int, hidden, classes: int) -> MLP:
    """The linear twin of :func:`flatness.models.mlp`: the same Linear layers (so the same
    initial weights for a seed), with the identity between them."""
    layers, fan_in = [], inputs
    for width in hidden:
        layers += [nn.Linear(fan_in, width), nn.Identity()]
        fan_in = width
    return MLP(*layers, nn.Linear(fan_in, classes))


def initial_model(s: RankSettings, activation: str, seed: int, data) -> nn.Module:
    """The net of ``activation`` as training initialises it (``torch.manual_seed(seed)``)."""
    torch.manual_seed(seed)
    net = models.build(REGISTERED["relu"], data.input_shape, data.num_classes, width=s.width)
    if activation == "linear":
        arch = Architecture.of(net)
        torch.manual_seed(seed)
        return linear_mlp(arch.inputs, arch.hidden, arch.classes)
    torch.manual_seed(seed)
    return models.build(REGISTERED[activation], data.input_shape, data.num_classes, width=s.width)


def train_linear(s: RankSettings, weight_decay: float, seed: int, data) -> nn.Module:
    """Train the linear twin with the registered runs' optimiser, schedule and batch order
    (SGD, momentum 0.9, coupled L2, the linear schedule), in a plain loop."""
    cfg = s.run_config("relu", weight_decay, seed)
    model = initial_model(s, "linear", seed, data)
    optimiser = make_optimiser(cfg, model.parameters())
    order = torch.Generator().manual_seed(seed)
    for epoch in range(cfg.epochs):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        for batch in torch.randperm(len(data.y_train), generator=order).split(cfg.batch_size):
            optimiser.zero_grad()
            ce(model(data.x_train[batch]), data.y_train[batch]).backward()
            optimiser.step()
    return model


def trained_model(s, activation, weight_decay, seed, data, *, store=None, data_root=None):
    if activation == "linear":
        return train_linear(s, weight_decay, seed, data)
    cfg = s.run_config(activation, weight_decay, seed)
    run = load_or_run(cfg, store=store, data_root=data_root, device="cpu")
    return load_model(cfg, run.arrays, data.input_shape, data.num_classes)


@dataclass(frozen=True)
class Spectrum:
    """The exact Hessian and GGN eigenvalues (float64, ascending) of one net in one state."""

    activation: str
    state: str
    weight_decay: float
    seed: int
    hessian: torch.Tensor
    ggn: torch.Tensor
    train_loss: float


def spectrum(model, data, activation, state, weight_decay, seed) -> Spectrum:
    x, y = data.x_train, data.y_train
    h = hessian.exact_hessian(model, ce, (x, y))
    g = hessian.exact_hessian(model, ce, (x, y), curvature="ggn")
    with torch.no_grad():
        loss = ce(model(x), y).item()
    eig = torch.linalg.eigvalsh
    return Spectrum(activation, state, weight_decay, seed, eig(h), eig(g), loss)


def spectra(s: RankSettings, data, *, store=None, data_root=None) -> list[Spectrum]:
    """Every net at initialisation (weight decay NaN) and trained with each weight decay."""
    out = []
    for activation in ACTIVATIONS:
        for seed in s.seeds:
            model = initial_model(s, activation, seed, data)
            out.append(spectrum(model, data, activation, "initial", math.nan, seed))
            for wd in s.weight_decays:
                model = trained_model(
                    s, activation, wd, seed, data, store=store, data_root=data_root
                )
                out.append(spectrum(model, data, activation, "trained", wd, seed))
    return out


def rank_table(results: list[Spectrum], s: RankSettings, data) -> pd.DataFrame:
    """One row per spectrum and tolerance: ranks of H and GGN, P, each bound and whether the
    Hessian's rank obeys it (``holds_<bound>``, ``ggn_holds_<bound>``)."""
    arch = Architecture.of(initial_model(s, "linear", 0, data))
    bound = bounds(arch, len(data.y_train), data_rank(data.x_train))
    rows = []
    for r in results:
        h, g = ranks(r.hessian, s.rtols, s.atol), ranks(r.ggn, s.rtols, s.atol)
        for tol in h:
            row = {
                "activation": r.activation,
                "state": r.state,
                "weight_decay": r.weight_decay,
                "seed": r.seed,
                "tolerance": tol,
                "rank": h[tol],
                "ggn_rank": g[tol],
                "parameters": arch.parameters,
                "train_loss": r.train_loss,
            }
            for b, v in bound.items():
                row[b] = v
                row[f"holds_{b}"] = h[tol] <= v
                row[f"ggn_holds_{b}"] = g[tol] <= v
            rows.append(row)
    return pd.DataFrame(rows)


CASE = ["activation", "state", "weight_decay", "tolerance"]


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per net, state, weight decay and tolerance: rank mean, sd, min and max over seeds, and
    per bound "holds" (every seed) or "fails" (some seed)."""
    t = table.fillna({"weight_decay": -1.0})  # initial models have no weight decay
    grouped = t.groupby(CASE, sort=False)
    out = grouped["rank"].agg(["mean", "std", "min", "max"]).add_prefix("rank_")
    out["ggn_rank_mean"] = grouped["ggn_rank"].mean()
    out["seeds"] = grouped.size()
    for b in BOUNDS:
        out[b] = grouped[b].first()
        out[f"{b}_verdict"] = np.where(grouped[f"holds_{b}"].all(), "holds", "fails")
    out = out.reset_index()
    out["weight_decay"] = out["weight_decay"].where(out["weight_decay"] >= 0)
    return out


def failures(table: pd.DataFrame, *, ggn: bool = False) -> pd.DataFrame:
    """Per bound and tolerance: cases (net, state, weight decay, seed) where it fails, out of all."""
    prefix = "ggn_holds_" if ggn else "holds_"
    rows = []
    for (tol, b), group in [
        ((t, b), table[table.tolerance == t]) for t in table.tolerance.unique() for b in BOUNDS
    ]:
        failed = group[~group[prefix + b]]
        nets = sorted({f"{a} ({st})" for a, st in zip(failed.activation, failed.state)})
        rows.append(
            {
                "tolerance": tol,
                "bound": b,
                "failed": len(failed),
                "cases": len(group),
                "where": ", ".join(nets),
            }
        )
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> str:
    """Code-chosen sentences: which bound holds for the Hessian at which tolerance, and where
    each one fails (naming the nets, so a failing random ReLU net is said as such)."""
    fails = failures(table)
    lines = []
    for b in BOUNDS:
        rows = fails[fails.bound == b]
        held = rows[rows.failed == 0].tolerance.tolist()
        broke = rows[rows.failed > 0]
        name = BOUND_NAMES[b]
        if broke.empty:
            lines.append(f"- **{name}** holds in every case at every tolerance.")
            continue
        parts = [
            f"at {r.tolerance} in {r.failed} of {r.cases} cases ({r.where})"
            for r in broke.itertuples()
        ]
        held_text = f"; it holds at {', '.join(held)}" if held else "; it holds at no tolerance"
        lines.append(f"- **{name}** fails {'; '.join(parts)}{held_text}.")
    return "\n".join(lines)


def ggn_findings(table: pd.DataFrame, tolerance: str) -> str:
    """Whether the theorems hold for the GGN (as they must) and whether the deep-linear formula
    is the linear net's exact GGN rank, per state, at ``tolerance``."""
    t = table[table.tolerance == tolerance]
    ggn_ok = bool(t.ggn_holds_examples.all())
    lin = t[t.activation == "linear"]
    fan_ok = bool(lin.ggn_holds_fan_in.all())
    equal = [
        f"{int((g.ggn_rank == g.deep_linear).sum())} of {len(g)} {state} cases"
        for state, g in lin.groupby("state")
    ]
    return (
        f"At tolerance {tolerance} the GGN's rank is at most N(K-1) in "
        + ("every case, as it must be" if ggn_ok else "not every case: a numerical problem")
        + "; for the linear net it is at most (K-1) x fan-ins in "
        + ("every case" if fan_ok else "not every case, which the theorem forbids")
        + f", and it equals the deep-linear formula in {' and '.join(equal)}."
    )


def near_zero_fraction(eigenvalues: torch.Tensor, tol: float) -> float:
    """The fraction of eigenvalues with |lambda| <= tol."""
    return float((eigenvalues.abs() <= tol).double().mean())


def slq_fraction(density: hessian.SpectralDensity, tol: float) -> dict[str, float]:
    """SLQ's mass within |lambda| <= tol, averaged over probes.

    ``slq``: the Gauss rule's, sum_j w_j [|theta_j| <= tol]. ``low`` and ``high``: the bracket
    the Chebyshev-Markov-Stieltjes inequalities give each probe's exact spectral measure mu
    (Golub and Meurant, *Matrices, Moments and Quadrature*, 2010): with ascending nodes,
    sum_{j<k} w_j <= mu(-inf, theta_k) and mu(-inf, theta_k] <= sum_{j<=k} w_j, so the CDF at t
    lies between the weight of the nodes below t less the nearest one and the weight of the
    nodes up to t plus the next one. ``slq_se``: standard error of ``slq`` over probes.
    """
    nodes, weights = density.nodes, density.weights
    order = nodes.argsort(dim=1)
    nodes, weights = nodes.gather(1, order), weights.gather(1, order)
    cum = torch.cat([torch.zeros(len(nodes), 1, dtype=weights.dtype), weights.cumsum(1)], dim=1)

    def cdf_bounds(t: float):
        count = (nodes <= t).sum(dim=1, keepdim=True)  # nodes at or below t
        low = cum.gather(1, (count - 1).clamp(min=0))
        high = cum.gather(1, (count + 1).clamp(max=nodes.shape[1]))
        return low.squeeze(1), high.squeeze(1)

    low_t, high_t = cdf_bounds(tol)
    low_m, high_m = cdf_bounds(-tol)
    per_probe = (weights * (nodes.abs() <= tol)).sum(dim=1)
    low, high = (low_t - high_m).clamp(min=0), (high_t - low_m).clamp(max=1)
    n = len(per_probe)

    def se(values):
        return values.std().item() / math.sqrt(n) if n > 1 else math.nan

    return {
        "slq": per_probe.mean().item(),
        "slq_se": se(per_probe),
        "low": low.mean().item(),
        "low_se": se(low),
        "high": high.mean().item(),
        "high_se": se(high),
    }


def tolerances(s: RankSettings, scale: float) -> dict[str, float]:
    """Absolute thresholds: each ``rtol * scale`` (scale = max |lambda|) and ``atol``."""
    return {f"rel {t:g}": t * scale for t in s.rtols} | {f"abs {s.atol:g}": s.atol}


def density(model, data, s: RankSettings, seed: int) -> hessian.SpectralDensity:
    """SLQ of the Hessian in float64 (float32 products would blur the smallest eigenvalues)."""
    model = model.double()
    x = data.x_train.double()
    return hessian.spectral_density(
        model, ce, (x, data.y_train), s.slq_steps, s.slq_probes, seed=seed
    )


def slq_check(s: RankSettings, data, results: list[Spectrum], *, store=None, data_root=None):
    """Near-zero mass by SLQ against the exact fraction, for each net trained without weight
    decay (first seed), at every tolerance."""
    wd, seed = min(s.weight_decays), s.seeds[0]
    rows = []
    for activation in ACTIVATIONS:
        exact = next(
            r
            for r in results
            if (r.activation, r.state, r.weight_decay, r.seed) == (activation, "trained", wd, seed)
        )
        model = trained_model(s, activation, wd, seed, data, store=store, data_root=data_root)
        dens = density(model, data, s, seed)
        for tol, value in tolerances(s, exact.hessian.abs().max().item()).items():
            exact_fraction = near_zero_fraction(exact.hessian, value)
            row = {"activation": activation, "tolerance": tol, "exact": exact_fraction}
            rows.append(row | slq_fraction(dens, value))
    out = pd.DataFrame(rows)
    out["error"] = out.slq - out.exact
    out["bracketed"] = (out.low <= out.exact) & (out.exact <= out.high)
    return out


def large_net(s: RankSettings, data, *, store=None, data_root=None) -> pd.DataFrame:
    """SLQ's near-zero mass of the large ReLU net at initialisation and trained, per seed, beside
    the fraction each bound predicts, 1 - bound / P."""
    rows = []
    for seed in s.seeds:
        torch.manual_seed(seed)
        states = [
            (
                "initial",
                math.nan,
                models.build(s.slq_model, data.input_shape, data.num_classes, width=s.slq_width),
            )
        ]
        for wd in s.weight_decays:
            cfg = s.run_config("relu", wd, seed, large=True)
            run = load_or_run(cfg, store=store, data_root=data_root, device="cpu")
            states.append(
                ("trained", wd, load_model(cfg, run.arrays, data.input_shape, data.num_classes))
            )
        for state, wd, model in states:
            dens = density(model, data, s, seed)
            for tol, value in tolerances(s, dens.nodes.abs().max().item()).items():
                row = {"state": state, "weight_decay": wd, "seed": seed, "tolerance": tol}
                rows.append(row | slq_fraction(dens, value))
    out = pd.DataFrame(rows)
    arch = Architecture.of(
        models.build(s.slq_model, data.input_shape, data.num_classes, width=s.slq_width)
    )
    for b, v in bounds(arch, len(data.y_train), data_rank(data.x_train)).items():
        out[f"predicted_{b}"] = max(0.0, 1 - v / arch.parameters)
    out.attrs["parameters"] = arch.parameters
    return out


def slq_verdicts(large: pd.DataFrame) -> pd.DataFrame:
    """Per state, weight decay, tolerance and bound, judged from SLQ's bracket on every seed:
    a bound *fails* where its predicted zero fraction 1 - bound/P is above the bracket's upper
    end by more than two standard errors (then rank > bound), *holds* where it is below the
    lower end by as much, and is *undecided* otherwise; the verdict is the seeds' common one,
    else "mixed"."""

    def judge(row, b):
        p = row[f"predicted_{b}"]
        if p > row.high + 2 * np.nan_to_num(row.high_se):
            return "fails"
        if p < row.low - 2 * np.nan_to_num(row.low_se):
            return "holds"
        return "undecided"

    t = large.fillna({"weight_decay": -1.0})
    rows = []
    for key, group in t.groupby(["state", "weight_decay", "tolerance"], sort=False):
        row = dict(zip(["state", "weight_decay", "tolerance"], key))
        row |= {
            "low": group.low.mean(),
            "high": group.high.mean(),
            "slq": group.slq.mean(),
            "slq_sd": group.slq.std(ddof=1),
        }
        for b in BOUNDS:
            verdicts = {judge(r, b) for _, r in group.iterrows()}
            row[b] = verdicts.pop() if len(verdicts) == 1 else "mixed"
        rows.append(row)
    out = pd.DataFrame(rows)
    out["weight_decay"] = out["weight_decay"].where(out["weight_decay"] >= 0)
    return out
