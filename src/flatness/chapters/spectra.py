"""The chapter "Spectral densities": every model's Hessian spectrum, raw and times ||w||^2.

It trains nothing of its own: it reads the runs of the training chapters (their first seed),
which the store already holds once those chapters have run. A spectrum is the exact set of
eigenvalues where the run stored one (softmax regression, networks of at most 2,000 parameters)
and otherwise the stochastic Lanczos quadrature density of the run's last epoch
(:class:`flatness.hessian.SpectralDensity`; Ubaru et al. 2017), in BatchNorm train mode for
BatchNorm networks (the authors' convention). Rescaling a network's weights by alpha moves its
eigenvalues by about 1/alpha^2 (the theory chapter), so each spectrum is also shown against
lambda x ||w||^2, the weight-scale-aware measure of the paper's later version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flatness.analysis import names
from flatness.chapters import adaptive, cnn, logreg, mlp, resnets
from flatness.errors import RunMissing
from flatness.profiles import get_profile
from flatness.results import published
from flatness.results.entries import Run
from flatness.results.runs import load_or_run
from flatness.training.config import RunConfig

CHAPTERS = {"mlp": mlp, "cnn": cnn, "resnets": resnets, "adaptive": adaptive}


@dataclass(frozen=True)
class Spectrum:
    """One run's spectrum: ``nodes`` (eigenvalues or Ritz values) with ``weights`` summing to 1."""

    chapter: str
    model: str
    arm: str
    weight_norm: float
    nodes: np.ndarray
    weights: np.ndarray
    source: str  # "exact" or "SLQ"
    key: str

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-smoothed density on ``grid`` (integrates to 1 over the real line)."""
        z = (grid[:, None] - self.nodes[None, :]) / sigma
        return (np.exp(-0.5 * z**2) @ self.weights) / (sigma * np.sqrt(2 * np.pi))


def _spectrum(chapter: str, arm: str, run: Run) -> Spectrum:
    a = run.arrays
    for suffix in ("_bn_train", ""):
        if f"eigenvalues{suffix}" in a:
            nodes = a[f"eigenvalues{suffix}"]
            weights = np.full(len(nodes), 1 / len(nodes))
            source = "exact"
            break
        if f"slq_nodes{suffix}" in a:
            nodes = a[f"slq_nodes{suffix}"].ravel()
            weights = a[f"slq_weights{suffix}"].ravel()
            weights = weights / weights.sum()
            source = "SLQ" + (" (BN train)" if suffix else "")
            break
    else:
        raise KeyError(f"run {run.config.key()} stored no spectrum")
    norm = float(run.metrics["weight_norm"])
    return Spectrum(chapter, run.config.model, arm, norm, nodes, weights, source, run.config.key())


def _wanted(profile: str) -> list[tuple[str, str, list[RunConfig]]]:
    """(chapter, arm, configs in seed order) of every spectrum the chapter shows."""
    ls = logreg.settings(profile)
    out = []
    for wd in (min(ls.weight_decays), max(ls.weight_decays)):
        configs = [c for c in ls.run_configs() if c.weight_decay == wd]
        out.append(("logreg", f"wd {wd:g}", configs))
    for name, module in CHAPTERS.items():
        for arm, configs in module.settings(profile).run_configs().items():
            out.append((name, arm.split(", ")[-1], configs))
    return out


def grid(profile: str) -> list[RunConfig]:
    """The runs this chapter reads at ``profile``: each training chapter's first seeds."""
    return [configs[0] for _, _, configs in _wanted(profile)]


def spectra(
    profile: str, *, data_root=None, device=None, progress=False, train_missing=True
) -> tuple[list[Spectrum], list[RunConfig], list[tuple[str, str, Run, str]]]:
    """The first-seed spectrum of every arm of every training chapter at ``profile``, the
    configs of the runs missing (only with ``train_missing=False``; otherwise they train), and
    ``(chapter, arm, run, why)`` of each run passed over because it learnt nothing
    (:func:`flatness.results.published.collapsed`): the arm's next seed stands in for it."""
    out, missing, excluded = [], [], []
    for chapter, arm, configs in _wanted(profile):
        for cfg in configs:
            try:
                run = load_or_run(
                    cfg,
                    data_root=data_root,
                    device=device,
                    progress=progress,
                    train_missing=train_missing,
                )
            except RunMissing:
                missing.append(cfg)
                break
            if published.collapsed(run) and get_profile(profile).excludes_dead_runs:
                excluded.append((chapter, arm, run, published.collapse_reason(run)))
                continue
            out.append(_spectrum(chapter, arm, run))
            break
    return out, missing, excluded


def excluded_sentence(excluded: list[tuple[str, str, Run, str]]) -> str:
    """The runs :func:`spectra` passed over, in one sentence; empty when none was."""
    if not excluded:
        return ""
    items = "; ".join(
        f"{chapter} {arm}, seed {run.config.seed} (`{run.config.key()}`): {why}"
        for chapter, arm, run, why in excluded
    )
    n = len(excluded)
    return (
        f" Passed over because {'it' if n == 1 else 'they'} learnt nothing, with the arm's "
        f"next seed shown instead: {items}."
    )


def table(found: list[Spectrum]) -> pd.DataFrame:
    """Per spectrum: weight norm, lambda_max and the trace, raw and times ||w||^2."""
    rows = []
    for s in found:
        lmax = float(s.nodes.max())
        trace_per_param = float(s.nodes @ s.weights)
        w2 = s.weight_norm**2
        rows.append(
            {
                "model": names.display(s.model),
                "run": names.words(s.arm),
                "spectrum": s.source,
                "‖w‖₂": s.weight_norm,
                "λ_max": lmax,
                "λ_max ‖w‖²": lmax * w2,
                "mean eigenvalue": trace_per_param,
                "mean eigenvalue ‖w‖²": trace_per_param * w2,
            }
        )
    return pd.DataFrame(rows)


def order_flips(found: list[Spectrum]) -> pd.DataFrame:
    """Per model with two runs: does multiplying lambda_max by ||w||^2 reverse their order?"""
    rows = []
    by_model: dict[str, list[Spectrum]] = {}
    for s in found:
        by_model.setdefault(s.model, []).append(s)
    for model, group in by_model.items():
        if len(group) != 2:
            continue
        a, b = group
        raw = np.sign(a.nodes.max() - b.nodes.max())
        scaled = np.sign(a.nodes.max() * a.weight_norm**2 - b.nodes.max() * b.weight_norm**2)
        rows.append(
            {"model": model, "runs": f"{a.arm} vs {b.arm}", "reversed": bool(raw != scaled)}
        )
    return pd.DataFrame(rows)


def sentence(flips: pd.DataFrame) -> str:
    """What the flips show, in words chosen from the data."""
    if flips.empty:
        return "No model has two runs to compare."
    n, k = len(flips), int(flips.reversed.sum())
    which = ", ".join(names.display(m) for m in flips[flips.reversed].model) or "none"
    return (
        f"Multiplying λ_max by the squared weight norm reverses the order of the two runs in "
        f"{k} of {n} models ({which})."
    )


def settings(profile: str) -> str:
    """The profile's name: this chapter has no settings of its own, it reads the others'."""
    return get_profile(profile).name


def authors_sentence() -> str:
    """The same check on the authors' PreResNet-110 numbers (pairs with both weight norms)."""
    t = adaptive.AUTHORS_PRERESNET110.dropna(subset=["‖w‖₂"])
    parts = []
    for name, group in t.groupby("optimiser", sort=False):
        if len(group) != 2:
            continue
        a, b = group.iloc[0], group.iloc[1]
        raw = np.sign(a["λ_max"] - b["λ_max"])
        scaled = np.sign(a["λ_max"] * a["‖w‖₂"] ** 2 - b["λ_max"] * b["‖w‖₂"] ** 2)
        verb = "reverses" if raw != scaled else "keeps"
        parts.append(
            f"for {name} (weight decay {a['weight decay']:g} against {b['weight decay']:g}) it "
            f"{verb} their order"
        )
    if not parts:
        return ""
    return (
        "In the authors' PreResNet-110 spectra (diegogranziol/GadamX, `spectral_results`), "
        + "; ".join(parts)
        + "."
    )


def missing_sentence(missing: list) -> str:
    """The runs :func:`spectra` left out (neither published nor stored), in one sentence; empty
    when none was."""
    if not missing:
        return ""
    models = sorted({f"{c.model} on {c.dataset}" for c in missing})
    return f" Left out, neither published nor stored: {len(missing)} run(s) of {', '.join(models)}."
