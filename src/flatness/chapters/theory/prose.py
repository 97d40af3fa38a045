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


#: the Frobenius norms of the split's two terms, as the page writes them
TERMS = {"G": "$\\|G\\|_F$", "R": "$\\|R\\|_F$"}


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def terms_text(split: pd.DataFrame) -> str:
    """Whether each term of the split shrinks from initialisation to training, seed by seed,
    in ``split``'s own numbers: "both shrink" only where every seed's ||G||_F and ||R||_F do."""
    by_seed = split.pivot(index="seed", columns="state")
    grown = {}
    for term in TERMS:
        before, after = (
            by_seed[(f"frobenius_{term}", "initial")],
            by_seed[(f"frobenius_{term}", "trained")],
        )
        grown[term] = [
            f"seed {seed} ({before[seed]:.3f} to {after[seed]:.3f})"
            for seed in by_seed.index
            if not after[seed] < before[seed]
        ]
    if not any(grown.values()):
        return (
            "Here both terms shrink from initialisation to training for every seed: "
            f"{TERMS['G']} and {TERMS['R']} are smaller after training in each row of the table"
        )
    parts = [
        f"{TERMS[t]} shrinks for every seed"
        if not g
        else f"{TERMS[t]} does not shrink for {_listed(g)}"
        for t, g in grown.items()
    ]
    return (
        "Here "
        + "; ".join(parts)
        + ": the factors of order $\\varepsilon_i$ are only part of each "
        "term, as $G$ also carries the Jacobians $J_i$ and $R$ the second derivatives of the "
        "logits, which training changes too"
    )


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
        "terms_shrink": terms_text(split),
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


#: slack on Tr H / bound <= 1 for the rounding of the ratio itself
BOUND_SLACK = 1e-9

#: the measures that must fall together as the separating solution is scaled up
SCALED = ("train_loss", "lambda_max", "trace", "frobenius")


def scaling_judgement(path: pd.DataFrame, scaled: pd.DataFrame) -> dict[str, bool]:
    """Fact 3's three checks, which the theory page says in words and the verdict page's C2
    row turns into its outcome: the smallest-gamma optimum (first row of ``path``)
    ``separates`` the sample, the loss and every measure ``fall`` at every step of alpha, and
    the trace stays under its bound (``bounded``)."""
    return {
        "separates": bool(path.iloc[0].train_acc == 1.0),
        "falls": _falls(scaled, SCALED),
        "bounded": bool(scaled.ratio.max() <= 1 + BOUND_SLACK),
    }


def scaling_outcome(path: pd.DataFrame, scaled: pd.DataFrame) -> str:
    """Claim C2's outcome: "reproduced" where every check of :func:`scaling_judgement` passes."""
    return "reproduced" if all(scaling_judgement(path, scaled).values()) else "not reproduced"


def scaling_facts(path: pd.DataFrame, scaled: pd.DataFrame) -> dict:
    """Fact 3: the L2 optimum with the smallest coefficient (first row of
    :func:`~flatness.chapters.theory.l2_path`) scaled by :func:`~flatness.chapters.theory.scaling`,
    judged by :func:`scaling_judgement`."""
    smallest = path.iloc[0]
    checks = scaling_judgement(path, scaled)
    return {
        "sep_gamma": float(smallest.gamma),
        "sep_acc": float(100 * smallest.train_acc),
        "sep_text": (
            "It separates the training sample"
            if checks["separates"]
            else "It does **not** separate the training sample, so the loss cannot fall to zero "
            "along this ray"
        ),
        "ratio_max": float(scaled.ratio.max()),
        "alpha_lo": float(scaled.alpha.iloc[0]),
        "alpha_hi": float(scaled.alpha.iloc[-1]),
        "scaled_loss_hi": float(scaled.train_loss.iloc[-1]),
        "scaled_lmax_drop": float(scaled.lambda_max.iloc[0] / scaled.lambda_max.iloc[-1]),
        "bound_verdict": "holds" if checks["bounded"] else "**fails**",
        "falling_verdict": (
            "The loss and all three measures fall at every step of $\\alpha$"
            if checks["falls"]
            else "Not all of the loss and the three measures fall at every step of $\\alpha$"
        ),
    }


def sample_facts(full_path: pd.DataFrame, n_sample: int, n_all: int, d: int) -> dict:
    """Which sample fact 3 (claim C2) scales on, and why: the whole softmax-regression sample
    where the settings say so, else its first ``n_sample`` examples, with what the whole
    sample's smallest-gamma optimum (first row of ``full_path``) says about separating it."""
    if n_sample >= n_all:
        return {
            "sample_text": f"The sample is the page's whole softmax-regression sample, {n_all:,} examples"
        }
    acc = 100 * float(full_path.iloc[0].train_acc)
    whole = (
        f"on all {n_all:,}, the optimum with the smallest $\\gamma$ (next section) classifies "
        f"{acc:.4g} % of them correctly, so no scaling of it takes the loss to zero"
        if acc < 100
        else f"the optimum with the smallest $\\gamma$ separates all {n_all:,} as well"
    )
    return {
        "sample_text": (
            f"The sample is the first {n_sample:,} of the page's {n_all:,} examples: {whole}; any "
            f"labelling of at most d + 1 = {d + 1:,} examples in general position can be "
            "separated by a linear model, and whether this one is, is checked below"
        )
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
