"""The chapter "Verdicts": one row per claim (C3 split into its two halves), all from the data.

Every row is recomputed from the runs the training chapters stored (nothing is retrained when
they have run), with the same functions those chapters use for their own verdicts, so the
verdict page and the chapters cannot disagree.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flatness import data as datasets
from flatness.analysis.plotting import name as plain_name
from flatness.chapters import adaptive, cnn, common, logreg, mlp, rank, resnets, theory
from flatness.chapters.rank import tables as rank_tables
from flatness.errors import FlatnessError, RunMissing
from flatness.profiles import get_profile

TRAINING = {"mlp": mlp, "cnn": cnn, "resnets": resnets}


def _row(claim, chapter, profile, dataset, setting, half, effect, outcome, seeds) -> dict:
    return {
        "claim": claim,
        "setting": f"{setting} ({dataset})" if dataset else setting,
        "half": half,
        "effect [95 % CI]": effect,
        "seeds": seeds,
        "outcome": outcome,
        "chapter": chapter,
    }


def _effects(half: common.Half) -> str:
    out = []
    for k, iv in half.effects.items():
        if k == "test_acc":
            out.append(f"accuracy {iv.short('+.2f', 100)} points")
        else:
            sign = "×" if iv.null == 1.0 else "+"  # a ratio, or a difference
            out.append(f"{plain_name(k).replace(' (BN train)', '')} {sign}{iv.short('.3g')}")
    return "; ".join(out)


def _claim_rows(
    c: common.Claim, chapter: str, profile: str, dataset: str, seeds: int
) -> list[dict]:
    def setting(h: common.Half) -> str:
        # decay arms are "<model>, wd <decay>": the model is already in the setting
        what = " vs ".join(side.split(", ")[-1] for side in h.comparison.split(" vs "))
        return f"{c.setting}: {what}"

    return [
        _row(c.claim, chapter, profile, dataset, setting(h), h.name, _effects(h), h.outcome, seeds)
        for h in (c.sharper, c.better)
    ]


def c2_row(profile: str, *, data_root=None) -> dict:
    """C2 on softmax regression, from the theory chapter's exact computation: the L2 optimum
    with the smallest gamma, scaled up by alpha >= 1, must lose loss and every measure together,
    with the trace under its bound 2 L max ||x~||^2, while it separates the training sample."""
    s = theory.settings(profile)
    x, y = theory.load(s, data_root=data_root)
    path, optima = theory.l2_path(x, y, theory.log_range(s.gamma_log10_range, s.gamma_count))
    smallest = path.iloc[0]
    alphas = theory.log_range(s.alpha_log10_range, s.alpha_count)
    scaling = theory.scaling(optima[smallest.gamma].model, x, y, alphas[alphas >= 1])
    falling = all(
        bool((np.diff(scaling[c]) < 0).all())
        for c in ("train_loss", "lambda_max", "trace", "frobenius")
    )
    bounded = bool((scaling.ratio <= 1 + 1e-9).all())
    separates = bool(smallest.train_acc == 1.0)
    outcome = "reproduced" if falling and bounded and separates else "not reproduced"
    drop = scaling.iloc[0] / scaling.iloc[-1]
    effect = (
        f"alpha {scaling.alpha.iloc[0]:.3g} to {scaling.alpha.iloc[-1]:.3g}: loss / "
        f"{drop.train_loss:.3g}, λ_max / {drop.lambda_max:.3g}, Tr H / {drop.trace:.3g}, "
        f"‖H‖_F / {drop.frobenius:.3g}; largest Tr H / bound {scaling.ratio.max():.3g}"
        + ("" if separates else "; the solution does not separate the sample")
    )
    return _row(
        "C2",
        "theory",
        profile,
        "",
        f"softmax regression on {len(y):,} examples, scaled by alpha",
        "low loss with large weights is flat",
        effect,
        outcome,
        "",
    )


def c4_row(claims: list[common.Claim], profile: str, datasets_used: str) -> dict:
    """C4: C3 across architectures, from the C3 outcomes of every setting."""
    outcomes = [c.outcome for c in claims]
    full = sum(o == "reproduced" for o in outcomes)
    some = sum(o in ("reproduced", "partly reproduced") for o in outcomes)
    if full == len(outcomes):
        outcome = "reproduced"
    elif some:
        outcome = "partly reproduced"
    elif all(o == "cannot be judged" for o in outcomes):
        outcome = "cannot be judged"
    else:
        outcome = "not reproduced"
    effect = f"C3 reproduced in {full} of {len(outcomes)} settings, at least partly in {some}"
    return _row(
        "C4",
        "logreg, mlp, cnn, resnets",
        profile,
        datasets_used,
        "C3 across architectures",
        "both halves",
        effect,
        outcome,
        "",
    )


def c6_rows(profile: str, *, data_root=None, train_missing=True) -> list[dict]:
    """C6: one row per candidate rank bound, from the rank chapter's exact spectra: in how
    many cases (net, state, weight decay, seed) it holds at the authors' absolute tolerance
    and at the strictest relative one."""
    s = rank.settings(profile)
    d = datasets.load(s.dataset, data_root=data_root, train_size=s.train_size)
    found = rank.spectra(s, d, data_root=data_root, train_missing=train_missing)
    table = rank_tables.rank_table(found, s, d)
    fails = rank_tables.failures(table)
    out = []
    for b in rank.BOUNDS:
        group = fails[fails.bound == b]
        held = int((group.cases - group.failed).sum())
        total = int(group.cases.sum())
        if held == total:
            outcome = "reproduced"
        elif held == 0:
            outcome = "not reproduced"
        else:
            outcome = "partly reproduced"
        where = "; ".join(
            f"{r.tolerance}: fails in {r.failed} of {r.cases}"
            for r in group.itertuples()
            if r.failed
        )
        effect = f"holds in {held} of {total} cases over all tolerances" + (
            f" ({where})" if where else ""
        )
        out.append(
            _row(
                "C6",
                "rank",
                profile,
                s.dataset,
                "linear, tanh and ReLU MLPs",
                f"rank <= {rank.BOUND_NAMES[b]}",
                effect,
                outcome,
                len(s.seeds),
            )
        )
    return out


def grid(profile: str) -> list:
    """The runs this chapter reads at ``profile``: every training chapter's and the rank
    chapter's small nets (:class:`~flatness.training.config.RunConfig`)."""
    out = logreg.grid(profile)
    for module in (*TRAINING.values(), adaptive):
        out += module.grid(profile)
    return out + rank.small_grid(profile)


def _not_tested(claim, chapter, profile, dataset, setting, missing: int) -> dict:
    what = f"{missing} run(s) neither published nor stored"
    return _row(claim, chapter, profile, dataset, setting, "both", what, "not tested", "")


def rows(
    profile: str, *, data_root=None, device=None, progress=False, train_missing=True
) -> pd.DataFrame:
    """Every verdict row at ``profile``: C1 (context), C2, C3 (both halves per setting), C4, C5,
    C6. With ``train_missing=False`` nothing trains: a setting whose runs are missing gets a
    "not tested" row saying how many."""
    get_profile(profile)
    out = [
        _row(
            "C1",
            "introduction",
            profile,
            "",
            "the literature",
            "flatness is argued to track generalisation",
            "a statement about other papers, not a measurement",
            "not tested",
            "",
        )
    ]
    fetch = dict(data_root=data_root, device=device, progress=progress)
    ls = logreg.settings(profile)
    out.append(c2_row(profile, data_root=data_root))
    c3, used = [], set()
    try:
        runs = logreg.sweep(ls, **fetch, train_missing=train_missing)
    except RunMissing:
        missing = sum(1 for c in ls.run_configs() if not _present(c))
        out.append(_not_tested("C3", "logreg", profile, ls.dataset, "logreg", missing))
    else:
        data = datasets.load(ls.dataset, data_root=data_root, train_size=ls.train_size)
        c3.append(logreg.claim(runs, data, device=device))
        out += _claim_rows(c3[0], "logreg", profile, ls.dataset, len(ls.seeds))
        used.add(ls.dataset)
    for chapter, module in TRAINING.items():
        out += _chapter_rows(
            chapter, module.settings(profile), profile, c3, used, fetch, train_missing
        )
    out.append(c4_row(c3, profile, ", ".join(sorted(used))))
    out += _chapter_rows(
        "adaptive", adaptive.settings(profile), profile, [], set(), fetch, train_missing, "Gadam"
    )
    try:
        out += c6_rows(profile, data_root=data_root, train_missing=train_missing)
    except RunMissing:
        missing = sum(1 for c in rank.small_grid(profile) if not _present(c))
        out.append(_not_tested("C6", "rank", profile, "", "rank bounds", missing))
    return pd.DataFrame(out)


def _present(config) -> bool:
    from flatness.results.published import Published
    from flatness.results.store import Store

    try:
        return Published.default().find(config) is not None or Store().load(config) is not None
    except FlatnessError:
        return False


def _chapter_rows(chapter, s, profile, c3, used, fetch, train_missing, only=None) -> list[dict]:
    """C3 (or C5, ``only`` one arm) rows of one training chapter, and a "not tested" row per
    comparison whose runs are missing."""
    results = common.train(s, **fetch, train_missing=train_missing)
    out = []
    for c in common.claims(results):
        if only is not None and c.arm != only:
            continue
        dataset = results.runs[c.arm][0].config.dataset
        used.add(dataset)
        c = _with_setting(c, results.runs[c.arm][0].config)
        c3.append(c)
        out += _claim_rows(c, chapter, profile, dataset, len(s.seeds))
    configs = s.run_configs()
    for arm, base in results.unjudged:
        if only is not None and arm != only:
            continue
        missing = sum(1 for c in configs[arm] + configs[base] if not _present(c))
        dataset = configs[arm][0].dataset
        out.append(_not_tested(s.claim, chapter, profile, dataset, f"{arm} vs {base}", missing))
    return out


def _with_setting(c: common.Claim, config) -> common.Claim:
    import dataclasses

    width = "" if config.width == 1 else f" (width {config.width:g})"
    return dataclasses.replace(c, setting=f"{config.model}{width}")


def summary(table: pd.DataFrame) -> str:
    """One sentence counting the outcomes of the judged rows."""
    judged = table[table.outcome != "not tested"]
    counts = judged.outcome.value_counts()
    parts = [f"{n} {o}" for o, n in counts.items()]
    return f"Of the {len(judged)} rows judged on this build: " + ", ".join(parts) + "."
