"""The theory chapter's computations, each done once and kept in the results store.

Every function here computes one or more of the chapter's facts through
:func:`flatness.results.computations.cached`: keyed by the chapter's settings, a hash of the
sample it reads and the source of the modules that compute it, stored beside the runs and
publishable with them. The theory page and the verdict page's C2 row call the same functions,
so the verdict reads what the theory page computed rather than redoing it. The device a fact
was computed on is recorded (its provenance), not keyed: a fact published from a GPU serves a
CPU build, as the chapter's float64 numbers agree across devices far below what it reports.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from flatness.chapters.theory import networks, softmax
from flatness.chapters.theory.design import TheorySettings, log_range, scaling_sample
from flatness.results.computations import cached, data_hash

#: the modules whose source is part of every key here (with this one)
CODE = (
    "flatness.chapters.theory.design",
    "flatness.chapters.theory.networks",
    "flatness.chapters.theory.softmax",
    # the engine's modules the facts run through: dense Hessians, the closed form, the checks
    "flatness.hessian.checks",
    "flatness.hessian.exact",
    "flatness.hessian.loaders",
    "flatness.hessian.softmax",
)


def _inputs(profile: str, settings: TheorySettings, *tensors: torch.Tensor, **extra) -> dict:
    return {
        "profile": profile,
        "settings": dataclasses.asdict(settings),
        "sample": data_hash(*tensors),
        **extra,
    }


def mlp_facts(
    profile: str, settings: TheorySettings, x: torch.Tensor, y: torch.Tensor, *, device="cpu"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Facts 1 and 6 on the one-hidden-layer ReLU MLPs, one per seed: the Gauss-Newton split at
    initialisation and after training (``split``), Dinh et al.'s rescaling of each trained net
    (``dinh``) and the trace-minimising rescaling (``best``)."""

    def compute():
        d, k = x.shape[1], int(y.max()) + 1
        rows, mlps = [], {}
        for seed in settings.seeds:
            net = networks.mlp(d, settings.hidden, k, seed=seed, device=device)
            row, _ = networks.gauss_newton_split(net, x, y)
            rows.append({"seed": seed, "state": "initial"} | row)
            networks.train(net, x, y, settings.train_steps, lr=settings.train_lr)
            networks.require_alive(net, x, seed=seed)
            row, mats = networks.gauss_newton_split(net, x, y)
            rows.append({"seed": seed, "state": "trained"} | row)
            mlps[seed] = (net, mats["H"])
        a_values = log_range(settings.alpha_log10_range, settings.alpha_count)
        dinh = pd.concat(
            [
                networks.dinh_rescaling(net, h, x, y, a_values).assign(seed=seed)
                for seed, (net, h) in mlps.items()
            ],
            ignore_index=True,
        )
        best = pd.DataFrame([networks.trace_minimiser(net, h) for net, h in mlps.values()])
        return pd.DataFrame(rows), dinh, best

    return cached("theory.mlp_facts", _inputs(profile, settings, x, y), compute, code=CODE)


def batchnorm_fact(
    profile: str, settings: TheorySettings, x: torch.Tensor, y: torch.Tensor, *, device="cpu"
) -> pd.DataFrame:
    """Fact 5: the BatchNorm-fed weights' Hessian block under scaling, one net per seed."""

    def compute():
        d, k = x.shape[1], int(y.max()) + 1
        return pd.concat(
            [
                networks.batchnorm_invariance(
                    networks.mlp(d, settings.hidden, k, seed=seed, batchnorm=True, device=device),
                    x,
                    y,
                    settings.bn_alphas,
                ).assign(seed=seed)
                for seed in settings.seeds
            ],
            ignore_index=True,
        )

    return cached("theory.batchnorm", _inputs(profile, settings, x, y), compute, code=CODE)


def kronecker_facts(
    profile: str, settings: TheorySettings, x: torch.Tensor, k: int, *, device="cpu"
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Fact 2: softmax regression's rank at a random initialisation per seed, and its spectra."""

    def compute():
        rows, spectra = [], {}
        for seed in settings.seeds:
            model = softmax.softmax_model(x.shape[1], k, seed=seed, device=device)
            row, evals = softmax.kronecker_rank(model, x)
            rows.append({"seed": seed} | row)
            spectra[seed] = np.asarray(evals)
        return pd.DataFrame(rows), spectra

    return cached("theory.kronecker", _inputs(profile, settings, x, classes=k), compute, code=CODE)


def l2_path(
    profile: str, settings: TheorySettings, x: torch.Tensor, y: torch.Tensor
) -> pd.DataFrame:
    """Fact 4: the exact L2 optimum for each of the settings' gammas (rows in increasing gamma)."""

    def compute():
        gammas = log_range(settings.gamma_log10_range, settings.gamma_count)
        return softmax.l2_path(x, y, gammas)[0]

    return cached("theory.l2_path", _inputs(profile, settings, x, y), compute, code=CODE)


def scaling(
    profile: str, settings: TheorySettings, x: torch.Tensor, y: torch.Tensor
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fact 3 (claim C2), as the theory page and the verdict page's C2 row both use it:
    :func:`~flatness.chapters.theory.softmax.separating_scaling` on the settings'
    :func:`~flatness.chapters.theory.design.scaling_sample` of ``x, y``: its L2 path and the
    smallest gamma's optimum scaled by every alpha."""
    x, y = scaling_sample(settings, x, y)

    def compute():
        path, _, scaled = softmax.separating_scaling(settings, x, y)
        return path, scaled

    return cached("theory.scaling", _inputs(profile, settings, x, y), compute, code=CODE)
