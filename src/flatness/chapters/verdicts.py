"""The chapter "Verdicts": one row per claim (C3 split into its two halves), all from the data.

Every row is recomputed from the runs the training chapters stored (nothing is retrained when
they have run), with the same functions those chapters use for their own verdicts, so the
verdict page and the chapters cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from flatness import data as datasets
from flatness.analysis import names, plotting, stats
from flatness.analysis.plotting import name as plain_name
from flatness.chapters import adaptive, cnn, common, logreg, mlp, predict, rank, resnets, theory
from flatness.chapters.rank import tables as rank_tables
from flatness.chapters.theory import facts as theory_facts
from flatness.chapters.theory import prose as theory_prose
from flatness.errors import FlatnessError, RunMissing, unknown
from flatness.profiles import get_profile

TRAINING = {"mlp": mlp, "cnn": cnn, "resnets": resnets}


#: Where each chapter shows its verdict's evidence: the figure a verdict row links to.
FIGURES = {
    "theory": "fig-theory-scaling",
    "logreg": "fig-logreg-sharper",
    "mlp": "fig-mlp-ratios",
    "cnn": "fig-cnn-ratios",
    "resnets": "fig-resnets-ratios",
    "adaptive": "fig-adaptive-ratios",
    "rank": "fig-rank-spectra",
}
#: Chapter titles as the table of contents gives them (the introduction is the book's index).
TITLES = {
    "introduction": "Introduction",
    "theory": "Theory, exactly",
    "logreg": "Logistic regression",
    "mlp": "Multi-layer perceptrons",
    "cnn": "A simple CNN",
    "resnets": "Residual networks",
    "adaptive": "Adaptive optimisers with iterate averaging",
    "rank": "Is the Hessian low-rank?",
    "predict": "Does any measure predict generalisation?",
}


def _row(
    claim, chapter, profile, dataset, setting, half, effect, outcome, seeds, interval=None
) -> dict:
    return {
        "claim": claim,
        "profile": profile,
        "setting": names.words(f"{setting} ({names.display(dataset)})" if dataset else setting),
        "half": half,
        "effect [95 % CI]": names.words(effect),
        "seeds": seeds,
        "outcome": outcome,
        "chapter": chapter,
        # the half's headline interval (the first measure's ratio, or the accuracy gain), for
        # the forest plot; None where a row has none
        "interval": interval,
    }


def _effects(half: common.Half) -> str:
    out = []
    for k, iv in half.effects.items():
        if k == "test_acc":
            out.append(f"accuracy {iv.short(stats.points_format(iv, scale=100), 100)} points")
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
        _row(
            c.claim,
            chapter,
            profile,
            dataset,
            setting(h),
            h.name,
            _effects(h),
            h.outcome,
            seeds,
            next(iter(h.effects.values()), None),
        )
        for h in (c.sharper, c.better)
    ]


def c2_row(profile: str, *, data_root=None) -> dict:
    """C2 on softmax regression, from the theory chapter's exact computation, read back from
    the results store where that page stored it (:func:`~flatness.chapters.theory.facts.scaling`,
    the same settings, sample and alpha range as that page): the L2 optimum with the smallest
    gamma, scaled by every alpha, must lose loss and every measure together, with the trace
    under its bound 2 L max ||x~||^2, while it separates the training sample; the outcome is
    the theory page's own :func:`~flatness.chapters.theory.prose.scaling_outcome`."""
    s = theory.settings(profile)
    x, y = theory.load(s, data_root=data_root)
    path, scaling = theory_facts.scaling(profile, s, x, y)
    n = len(theory.scaling_sample(s, x, y)[1])
    separates = theory_prose.scaling_judgement(path, scaling)["separates"]
    drop = scaling.iloc[0] / scaling.iloc[-1]
    effect = (
        f"α {scaling.alpha.iloc[0]:.3g} to {scaling.alpha.iloc[-1]:.3g}: loss / "
        f"{drop.train_loss:.3g}, λ_max / {drop.lambda_max:.3g}, Tr H / {drop.trace:.3g}, "
        f"‖H‖_F / {drop.frobenius:.3g}; largest Tr H / bound {scaling.ratio.max():.3g}"
        + ("" if separates else "; the solution does not separate the sample")
    )
    return _row(
        "C2",
        "theory",
        profile,
        "",
        f"softmax regression on {n:,} examples, scaled by α"
        + (f" (the first {n:,} of {len(y):,}, a sample it can separate)" if n < len(y) else ""),
        "low loss with large weights is flat",
        effect,
        theory_prose.scaling_outcome(path, scaling),
        "",
    )


def c4_row(claims: list[common.Claim], profile: str, datasets_used: str) -> dict:
    """C4: C3 across architectures, from the C3 outcomes of every setting."""
    outcomes = [c.outcome for c in claims]
    full = sum(o == "reproduced" for o in outcomes)
    some = sum(o in ("reproduced", "partly reproduced") for o in outcomes)
    undecided = ("not at a minimum", "cannot be judged", "inconclusive")
    if outcomes and full == len(outcomes):
        outcome = "reproduced"
    elif some:
        outcome = "partly reproduced"
    elif all(o in undecided for o in outcomes):
        # nothing judged for or against: say why, the most telling reason first
        outcome = next((u for u in undecided if u in outcomes), "cannot be judged")
    else:
        outcome = "not reproduced"
    counts = ", ".join(
        f"{n} {o}" for o, n in pd.Series(outcomes, dtype=object).value_counts().items()
    )
    effect = f"C3 reproduced in {full} of {len(outcomes)} settings, at least partly in {some}" + (
        f" ({counts})" if counts else ""
    )
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
    """C6: one row per candidate rank bound, judged by the rank chapter's own
    :func:`~flatness.chapters.rank.judgement.judge` from every test of that chapter (the small
    nets' exact ranks at every tolerance and SLQ on the larger net), so both pages say the
    same."""
    s = rank.settings(profile)
    d = datasets.load(s.dataset, data_root=data_root, train_size=s.train_size)
    fetch = dict(data_root=data_root, train_missing=train_missing)
    # ask for both sets of runs before saying any is missing, so a lookup meets every run
    gone = None
    try:
        found = rank.spectra(s, d, **fetch, profile=profile)
    except RunMissing as err:
        gone = err
    try:
        large = rank.large_net(s, d, **fetch, profile=profile)
    except RunMissing as err:
        gone = gone or err
    if gone is not None:
        raise gone
    table = rank_tables.rank_table(found, s, d)
    return [
        _row(
            "C6",
            "rank",
            profile,
            s.dataset,
            "linear, tanh and ReLU MLPs (exact); a larger ReLU MLP (SLQ)",
            f"rank <= {j.name}",
            j.effect,
            j.outcome,
            len(s.seeds),
        )
        for j in rank.judge(table, rank.slq_cases(large)).values()
    ]


def grid(profile: str) -> list:
    """The runs this chapter reads at ``profile``: every training chapter's and the rank
    chapter's (:class:`~flatness.training.config.RunConfig`)."""
    out = logreg.grid(profile)
    for module in (*TRAINING.values(), adaptive):
        out += module.grid(profile)
    return out + rank.grid(profile) + predict.grid(profile)


def _not_tested(claim, chapter, profile, dataset, setting, missing: int, dead: int = 0) -> dict:
    what = ", ".join(
        part
        for part in (
            f"{missing} run(s) neither published nor stored" if missing else "",
            f"{dead} run(s) learnt nothing and are excluded" if dead else "",
        )
        if part
    )
    return _row(claim, chapter, profile, dataset, setting, "both", what, "not tested", "")


def rows(
    profile: str,
    *,
    data_root=None,
    device=None,
    progress=False,
    train_missing=True,
    profiles: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Every verdict row at ``profile``: C1 (context), C2, C3 (both halves per setting), C4, C5,
    C6. With ``train_missing=False`` nothing trains: a setting whose runs are missing gets a
    "not tested" row saying how many. ``profiles`` takes some chapters at another profile
    (chapter name -> profile), as the best-evidence build does; each row says its profile.

    Raises:
        FlatnessError: an unknown profile or chapter name.
    """
    get_profile(profile)
    profiles = dict(profiles or {})
    unknown_chapters = sorted(set(profiles) - set(CHAPTER_PROFILES))
    if unknown_chapters:
        raise unknown("chapter", unknown_chapters[0], CHAPTER_PROFILES)
    for chosen in profiles.values():
        get_profile(chosen)

    def at(chapter: str) -> str:
        return profiles.get(chapter, profile)

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
    ls = logreg.settings(at("logreg"))
    out.append(c2_row(at("theory"), data_root=data_root))
    c3, used = [], set()
    try:
        runs = logreg.sweep(ls, **fetch, train_missing=train_missing)
    except RunMissing:
        missing = sum(1 for c in ls.run_configs() if not _present(c))
        out.append(_not_tested("C3", "logreg", at("logreg"), ls.dataset, "logreg", missing))
    else:
        data = datasets.load(ls.dataset, data_root=data_root, train_size=ls.train_size)
        c3.append(logreg.claim(runs, data, device=device))
        out += _claim_rows(c3[0], "logreg", at("logreg"), ls.dataset, len(ls.seeds))
        used.add(ls.dataset)
    for chapter, module in TRAINING.items():
        out += _chapter_rows(
            chapter, module.settings(at(chapter)), at(chapter), c3, used, fetch, train_missing
        )
    scales = " and ".join(sorted({at(c) for c in ("logreg", *TRAINING)}))
    out.append(c4_row(c3, scales, ", ".join(sorted(names.display(u) for u in used))))
    out += _chapter_rows(
        "adaptive",
        adaptive.settings(at("adaptive")),
        at("adaptive"),
        [],
        set(),
        fetch,
        train_missing,
    )
    out += grid_rows(at("predict"), data_root=data_root, train_missing=train_missing)
    try:
        out += c6_rows(at("rank"), data_root=data_root, train_missing=train_missing)
    except RunMissing:
        missing = sum(1 for c in rank.grid(at("rank")) if not _present(c))
        out.append(_not_tested("C6", "rank", at("rank"), "", "rank bounds", missing))
    return pd.DataFrame(out)


def grid_rows(profile: str, *, data_root=None, train_missing=True) -> list[dict]:
    """C3 and C5 on the prediction chapter's grids: each grid's headline pair of each claim
    (:mod:`flatness.chapters.predict.claims`), both halves; a "not tested" row for a headline
    pair whose runs are not all at hand."""
    collected = predict.collect(profile, data_root=data_root, train_missing=train_missing)
    found = {(p.claim, p.grid): p for p in predict.pairs(collected) if p.headline}
    out = []
    for design in collected.designs:
        dataset = design.shared["dataset"]
        size = design.shared.get("train_size")
        where = f"{design.name} grid, {size:,} training images" if size else f"{design.name} grid"
        for claim in ("C3", "C5"):
            pair = found.get((claim, design.name))
            if claim == "C5" and not {"sgd", "gadam"} <= set(design.optimisers):
                continue
            if pair is None:
                missing = len(collected.missing) + len(collected.failed)
                out.append(_not_tested(claim, "predict", profile, dataset, where, missing))
                continue
            c, seeds = pair.judged, len(design.seeds)
            for h in (c.sharper, c.better):
                out.append(
                    _row(
                        claim,
                        "predict",
                        profile,
                        dataset,
                        f"{where}, {pair.short}",
                        h.name,
                        _effects(h),
                        h.outcome,
                        seeds,
                        next(iter(h.effects.values()), None),
                    )
                )
    return out


def scale_sentence(profile: str, profiles: Mapping[str, str] | None) -> str:
    """What scale the page's verdicts hold for, in words: one profile, or a best-evidence
    build's choice per chapter."""
    chosen = {c: (profiles or {}).get(c, profile) for c in CHAPTER_PROFILES}
    if len(set(chosen.values())) == 1:
        only = next(iter(chosen.values()))
        if only == "cpu":
            return (
                "The verdicts hold for this profile's data and models only: under `cpu` they "
                "judge the reduced stand-ins on scikit-learn's digits, not the paper's MNIST and "
                "CIFAR-100 runs; the rows of the prediction grids alone are on MNIST, with "
                "small networks trained on 2,000 images."
            )
        return f"The verdicts hold for the `{only}` profile's data and models."
    by = {}
    for chapter, p in chosen.items():
        by.setdefault(p, []).append(chapter)
    parts = "; ".join(f"`{p}`: {', '.join(cs)}" for p, cs in sorted(by.items()))
    return (
        "Each claim is judged at the largest scale whose runs are at hand (a best-evidence "
        f"build), so rows differ in profile, which the table's profile column gives: {parts}."
    )


#: the chapters whose profile the verdict page can take from a best-evidence build
CHAPTER_PROFILES = ("theory", "logreg", "mlp", "cnn", "resnets", "adaptive", "rank", "predict")


def _present(config) -> bool:
    from flatness.results.published import Published
    from flatness.results.store import Store

    try:
        return Published.default().find(config) is not None or Store().load(config) is not None
    except FlatnessError:
        return False


def _chapter_rows(chapter, s, profile, c3, used, fetch, train_missing) -> list[dict]:
    """C3 (or C5: only the settings' claimed arms) rows of one training chapter, and a "not
    tested" row per comparison whose runs are missing or excluded."""
    results = common.train(s, **fetch, train_missing=train_missing)
    out = []
    for c in common.claims(results):
        if not s.is_claimed(c.arm):
            continue
        dataset = results.runs[c.arm][0].config.dataset
        used.add(dataset)
        c = _with_setting(c, results.runs[c.arm][0].config)
        c3.append(c)
        na, nb = len(results.runs[c.arm]), len(results.runs[c.baseline])
        out += _claim_rows(c, chapter, profile, dataset, na if na == nb else f"{na} vs {nb}")
    configs = s.run_configs()
    for arm, base in results.unjudged:
        if not s.is_claimed(arm):
            continue
        missing = sum(1 for c in configs[arm] + configs[base] if not _present(c))
        dead = sum(1 for label, _, _ in results.excluded if label in (arm, base))
        dataset = configs[arm][0].dataset
        out.append(
            _not_tested(s.claim, chapter, profile, dataset, f"{arm} vs {base}", missing, dead)
        )
    return out


def _with_setting(c: common.Claim, config) -> common.Claim:
    import dataclasses

    width = "" if config.width == 1 else f" (width {config.width:g})"
    return dataclasses.replace(c, setting=f"{config.model}{width}")


#: Claims judged in two halves: the summary counts each half on its own.
HALVED = ("C3", "C5")


def summary(table: pd.DataFrame) -> str:
    """The outcomes counted per claim, C3 and C5 per half ("sharper", "generalises better"),
    since a count over both halves would mix what each says."""
    judged = table[table.outcome != "not tested"]
    parts = []
    for claim, group in judged.groupby("claim", sort=True):
        if claim in HALVED:
            for half, rows in group.groupby("half", sort=False):
                parts.append(f"{claim} *{half}*: {_counts(rows.outcome, 'setting')}")
        else:
            parts.append(f"{claim}: {_counts(group.outcome, 'row')}")
    untested = sorted(set(table.claim[table.outcome == "not tested"]))
    tail = f" Not tested on this build: {', '.join(untested)}." if untested else ""
    return "On this build, " + "; ".join(parts) + "." + tail


def _counts(outcomes: pd.Series, unit: str) -> str:
    n = len(outcomes)
    if n == 1:
        return f"{outcomes.iloc[0]}"
    counts = ", ".join(f"{k} {o}" for o, k in outcomes.value_counts().items())
    return f"{counts} (of {n} {unit}s)"


def forest_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The C3 and C5 rows' headline intervals, for :func:`flatness.analysis.plotting.forest_pair`:
    the first measure's ratio of each *sharper* half (top) and each test-accuracy gain in
    points (bottom), coloured by outcome."""
    top, bottom = [], []
    for r in table.itertuples():
        iv = r.interval
        if r.claim not in HALVED or iv is None:
            continue
        label = f"{r.claim} {r.setting}"
        if r.half == "sharper" and iv.null == 1.0:
            top.append({"row": label, "interval": iv, "group": r.outcome})
        elif r.half == "generalises better":
            bottom.append({"row": label, "interval": iv, "group": r.outcome})
    return pd.DataFrame(top), plotting.in_points(pd.DataFrame(bottom))


def links(chapter: str) -> str:
    """HTML links to the chapters (and figures) behind a verdict row."""
    out = []
    for name in (c.strip() for c in chapter.split(",")):
        page = "index" if name == "introduction" else name
        title = TITLES.get(name, name)
        link = f'<a href="{page}.html">{title}</a>'
        if name in FIGURES:
            link += f' (<a href="{page}.html#{FIGURES[name]}">figure</a>)'
        out.append(link)
    return ", ".join(out)


def display(table: pd.DataFrame):
    """The verdict table for the page: links to the evidence, no interval objects."""
    shown = table.drop(columns="interval").copy()
    if shown.profile.nunique() <= 1:  # one profile: the page's admonition names it
        shown = shown.drop(columns="profile")
    shown["chapter"] = shown.chapter.map(links)
    shown = shown.rename(columns={"chapter": "where shown"})
    # its cells hold sentences: they wrap (the book's tables keep cells on one line)
    return (
        shown.style.hide(axis="index")
        .set_properties(**{"text-align": "left"})
        .set_table_attributes('class="wrap"')
    )


def definitions() -> str:
    """Every outcome label the page can show, defined (a Markdown list)."""
    defined = dict(common.OUTCOME_DEFINITIONS)
    defined["not tested"] = (
        "C1 is a statement about the literature, not a measurement; elsewhere, the runs a "
        "comparison needs are missing or learnt nothing"
    )
    defined["partly reproduced"] += "; for C4, C3 is reproduced in some settings only"
    lines = [f"- *{o}*: {d}." for o, d in defined.items()]
    lines += [
        "",
        "A C6 row judges a rank bound over the cases of the rank chapter that could decide it:",
        "",
    ]
    lines += [f"- *{o}*: {d}." for o, d in rank.OUTCOMES.items()]
    return "\n".join(lines)
