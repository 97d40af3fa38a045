"""The exact spectra of "Is the Hessian low-rank?": each net's dense float64 Hessian of the mean
cross-entropy data loss, and its Gauss-Newton part (GGN), at initialisation and after training,
with their numerical ranks at each tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flatness import hessian
from flatness.chapters.rank.design import ACTIVATIONS, RankSettings
from flatness.chapters.rank.networks import ce, initial_model, trained_model
from flatness.errors import RunMissing
from flatness.results.computations import cached, data_hash, package_modules


def ranks(eigenvalues: torch.Tensor, rtols, atol: float) -> dict[str, int]:
    """Eigenvalues counted as non-zero: ``|lambda| > rtol * max |lambda|`` for each relative
    tolerance (labelled ``"rel <rtol>"``) and ``|lambda| > atol`` (``"abs <atol>"``)."""
    mags = eigenvalues.abs()
    scale = mags.max().item()
    out = {f"rel {t:g}": int((mags > t * scale).sum()) for t in rtols}
    return out | {f"abs {atol:g}": int((mags > atol).sum())}


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


#: the modules whose source is part of a spectrum's key (with this one)
CODE = ("flatness.chapters.rank.networks", *package_modules("flatness.hessian"))


def network_inputs(model, x, y, profile: str | None) -> dict:
    """What a cached computation on a network and a sample is keyed by: the profile, the
    network's structure, its weights and buffers, and the sample."""
    return {
        "profile": profile,
        "network": repr(model),
        "weights": data_hash(*model.parameters()),
        "buffers": data_hash(*model.buffers()),
        "sample": data_hash(x, y),
    }


def spectrum(
    model, data, activation, state, weight_decay, seed, *, profile: str | None = None
) -> Spectrum:
    """The net's exact spectra, computed once and kept in the results store
    (:func:`flatness.results.computations.cached`), keyed by the network, its weights and
    buffers and the sample: the rank page and the verdict page's C6 rows share them."""
    x, y = data.x_train, data.y_train

    def compute():
        h = hessian.exact_hessian(model, ce, (x, y))
        g = hessian.exact_hessian(model, ce, (x, y), curvature="ggn")
        with torch.no_grad():
            loss = ce(model(x), y).item()
        eig = torch.linalg.eigvalsh
        return {"hessian": eig(h), "ggn": eig(g), "train_loss": loss}

    found = cached("rank.spectrum", network_inputs(model, x, y, profile), compute, code=CODE)
    return Spectrum(
        activation, state, weight_decay, seed, found["hessian"], found["ggn"], found["train_loss"]
    )


def spectra(
    s: RankSettings, data, *, store=None, data_root=None, train_missing=True, profile=None
) -> list[Spectrum]:
    """Every net at initialisation (weight decay NaN) and trained with each weight decay
    (:class:`~flatness.errors.RunMissing` for a missing run with ``train_missing=False``);
    each net's spectra are cached (:func:`spectrum`, under ``profile``)."""
    fetch = dict(store=store, data_root=data_root, train_missing=train_missing)
    trained, missing = {}, []
    for activation in ACTIVATIONS:  # every lookup first: all missing runs are named at once
        for seed in s.seeds:
            for wd in s.weight_decays:
                if activation == "linear":
                    continue
                try:
                    trained[activation, wd, seed] = trained_model(
                        s, activation, wd, seed, data, **fetch
                    )
                except RunMissing as err:
                    missing += err.configs
    if missing:
        raise RunMissing(missing)
    out = []
    for activation in ACTIVATIONS:
        for seed in s.seeds:
            model = initial_model(s, activation, seed, data)
            out.append(
                spectrum(model, data, activation, "initial", math.nan, seed, profile=profile)
            )
            for wd in s.weight_decays:
                model = trained.get((activation, wd, seed))
                if model is None:  # the linear twin trains here
                    model = trained_model(s, activation, wd, seed, data, **fetch)
                out.append(spectrum(model, data, activation, "trained", wd, seed, profile=profile))
    return out
