"""What the theory chapter says about its six facts: the numbers each section quotes and the
verdicts chosen from them (:mod:`flatness.chapters.theory` computes the facts).

Each function takes the tables the chapter computed and returns its glue keys: numbers, and
Markdown strings whose wording follows the data (a failed identity is said to fail). The
tolerances are those of float64 round-off on the chapter's sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flatness.analysis import plotting

#: an identity "holds to rounding" when its deviation is below this relative size
ROUNDING = 1e-12


def split_facts(split: pd.DataFrame) -> dict:
    """Fact 1, from :func:`~flatness.chapters.theory.networks.gauss_newton_split` rows with
    ``seed`` and ``state`` (``"initial"`` / ``"trained"``) columns added."""
    ratio = split.frobenius_R / split.frobenius_G
    initial, trained = (ratio[split.state == s].to_numpy() for s in ("initial", "trained"))
    exact = split.split_error.max() <= ROUNDING * split.frobenius_H.min()
    shrinks = bool((trained < initial).all())
    zero_trace = split.trace_R.abs().max() <= ROUNDING * split.trace_G.min()
    both_signs = (split.lambda_min_R < 0) & (split.lambda_max_R > 0)
    return {
        "mlp_params": int(split.parameters.iloc[0]),
        "split_error": float(split.split_error.max()),
        "trace_r_max": float(split.trace_R.abs().max()),
        "ratio_init": float(initial.mean()),
        "ratio_trained": float(trained.mean()),
        "loss_trained": float(split.loss[split.state == "trained"].mean()),
        "split_verdict": (
            "$G + R$ equals the independently computed Hessian to rounding error"
            if exact
            else "$G + R$ does **not** match the independently computed Hessian: the split above "
            "is wrong here"
        ),
        "residual_verdict": (
            "For every seed the residual is relatively smaller after training than at "
            "initialisation"
            if shrinks
            else "Not for every seed: the residual is relatively not always smaller after "
            "training than at initialisation"
        ),
        "residual_sign": (
            "In every network the residual is indefinite, with eigenvalues of both signs"
            if both_signs.all()
            else f"The residual has eigenvalues of both signs in {int(both_signs.sum())} of "
            f"{len(split)} networks only"
        ),
        "trace_r_verdict": (
            "vanishes to rounding for every network, so $\\operatorname{Tr} H = "
            "\\operatorname{Tr} G$ exactly"
            if zero_trace
            else "does not vanish, so the trace of $H$ differs from that of $G$"
        ),
    }


def kronecker_facts(ranks: pd.DataFrame) -> dict:
    """Fact 2, from :func:`~flatness.chapters.theory.kronecker_rank` rows (one per seed)."""
    within = (ranks["rank"] <= ranks.bound).all()
    equal = (ranks["rank"] == ranks.data_bound).all()
    return {
        "kron_params": int(ranks.parameters.iloc[0]),
        "kron_bound": int(ranks.bound.iloc[0]),
        "kron_data_bound": int(ranks.data_bound.iloc[0]),
        "kron_rank_min": int(ranks["rank"].min()),
        "kron_rank_max": int(ranks["rank"].max()),
        "kron_error": float(ranks.formula_error.max()),
        "kron_verdict": (
            "The rank respects the bound for every seed"
            if within
            else "The rank **exceeds** the bound"
        )
        + (
            ", and equals the data-dependent bound exactly"
            if equal
            else ", below the data-dependent bound"
        ),
    }


def _falls(frame: pd.DataFrame, columns) -> bool:
    return all((np.diff(frame[c].to_numpy()) < 0).all() for c in columns)


def scaling_facts(path: pd.DataFrame, scaled: pd.DataFrame) -> dict:
    """Fact 3: the L2 optimum with the smallest coefficient (first row of
    :func:`~flatness.chapters.theory.l2_path`) scaled by :func:`~flatness.chapters.theory.scaling`."""
    smallest = path.iloc[0]
    measures = ("train_loss", "lambda_max", "trace", "frobenius")
    return {
        "sep_gamma": float(smallest.gamma),
        "sep_acc": float(100 * smallest.train_acc),
        "sep_text": (
            "It separates the training sample"
            if smallest.train_acc == 1.0
            else "It does **not** separate the training sample, so the loss cannot fall to zero "
            "along this ray"
        ),
        "ratio_max": float(scaled.ratio.max()),
        "alpha_lo": float(scaled.alpha.iloc[0]),
        "alpha_hi": float(scaled.alpha.iloc[-1]),
        "scaled_loss_hi": float(scaled.train_loss.iloc[-1]),
        "scaled_lmax_drop": float(scaled.lambda_max.iloc[0] / scaled.lambda_max.iloc[-1]),
        "bound_verdict": "holds" if scaled.ratio.max() <= 1 else "**fails**",
        "falling_verdict": (
            "The loss and all three measures fall at every step of $\\alpha$"
            if _falls(scaled, measures)
            else "Not all of the loss and the three measures fall at every step of $\\alpha$"
        ),
    }


def direction(values) -> str:
    """How a quantity moves along increasing gamma, in words."""
    steps = np.diff(np.asarray(values, dtype=float))
    if (steps > 0).all():
        return "rises at every step of $\\gamma$"
    if (steps < 0).all():
        return "falls at every step of $\\gamma$"
    rises, falls = int((steps > 0).sum()), int((steps < 0).sum())
    return f"is not monotone in $\\gamma$ ({rises} rises, {falls} falls)"


def l2_facts(path: pd.DataFrame) -> dict:
    """Fact 4, from :func:`~flatness.chapters.theory.l2_path` (rows in increasing gamma)."""
    first, last = path.iloc[0], path.iloc[-1]
    mechanism = last.lambda_max > first.lambda_max and last.weight_norm < first.weight_norm
    return {
        "grad_max": float(path.grad_norm.max()),
        "newton_max": int(path.newton_steps.max()),
        "gamma_lo": float(first.gamma),
        "gamma_hi": float(last.gamma),
        "norm_lo": float(first.weight_norm),
        "norm_hi": float(last.weight_norm),
        "lmax_lo": float(first.lambda_max),
        "lmax_hi": float(last.lambda_max),
        "grad_verdict": "below" if path.grad_norm.max() < 1e-10 else "**not** below",
        "norm_dir": direction(path.weight_norm),
        "measure_dir": "; ".join(
            f"{plotting.label(c)} {direction(path[c])}"
            for c in ("lambda_max", "trace", "frobenius")
        ),
        "c3_text": (
            "This is the mechanism of claim C3 in its simplest setting: the penalty keeps the "
            "weights small, and small weights keep the softmax unsaturated and the data Hessian "
            "large"
            if mechanism
            else "Here the largest $\\gamma$ does not give both the smaller norm and the larger "
            "$\\lambda_{\\max}$ that claim C3's mechanism predicts"
        ),
    }


def batchnorm_facts(bn: pd.DataFrame, scaled_weights: int) -> dict:
    """Fact 5, from :func:`~flatness.chapters.theory.networks.batchnorm_invariance` rows with
    a ``seed`` column; ``scaled_weights`` is the size of the scaled block u. The span of
    lambda_max is taken within each seed (one function), the smallest over seeds."""
    holds = max(bn.loss_deviation.max(), bn.hessian_deviation.max()) < 1e-10
    return {
        "bn_params": int(scaled_weights),
        "bn_loss_dev": float(bn.loss_deviation.max()),
        "bn_h_dev": float(bn.hessian_deviation.max()),
        "bn_alphas": ", ".join(f"{a:g}" for a in bn.alpha.unique()),
        "bn_lmax_spread": float(
            bn.groupby("seed").lambda_max.agg(lambda v: v.max() / v.min()).min()
        ),
        "bn_verdict": (
            "Both identities hold to rounding error"
            if holds
            else "The identities do **not** hold here"
        ),
    }


def dinh_facts(dinh: pd.DataFrame, best: pd.DataFrame) -> dict:
    """Fact 6, from :func:`~flatness.chapters.theory.networks.dinh_rescaling` rows with a
    ``seed`` column and :func:`~flatness.chapters.theory.networks.trace_minimiser` rows."""
    spans = dinh.groupby("seed").lambda_max.agg(["min", "max"])
    span = float((spans["max"] / spans["min"]).min())
    drop = 1 - best.trace_min / best.trace_at_1
    return {
        "dinh_output": float(dinh.output_change.max()),
        "dinh_recomputed": float(dinh.recomputed_deviation.max()),
        "dinh_recomputed_verb": (
            "reproduces" if dinh.recomputed_deviation.max() <= 1e-10 else "does **not** reproduce"
        ),
        "a_lo": float(dinh.a.min()),
        "a_hi": float(dinh.a.max()),
        "dinh_span": span,
        "dinh_a_best": ", ".join(f"{a:.3g}" for a in best.a_star),
        "dinh_drop_max": float(100 * drop.max()),
        "dinh_best_text": (
            "so the trained weights sit at the trace's minimum to within 1 %"
            if drop.max() < 0.01
            else "so the trained weights are not at the trace's minimum"
        ),
        "dinh_close": (
            "A flatness measure that one reparametrisation moves by orders of magnitude, the "
            "function fixed, cannot on its own say how well a network generalises"
            if span > 10
            else "Over this range of $a$ the rescaling moves $\\lambda_{\\max}$ by less than a "
            "factor of 10"
        ),
        "dinh_verdict": (
            "The outputs agree to rounding error"
            if dinh.output_change.max() <= 1e-10
            else "The outputs do **not** agree: the rescaling changed the function"
        ),
    }
