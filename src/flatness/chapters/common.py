"""What the training chapters share: arms of runs, their tables, and claims judged from intervals.

A training chapter compares *arms*: groups of runs that differ only in their seed (for example
"SGD, weight decay 0" against "SGD, weight decay 5e-4"). :class:`TrainingSettings` declares the
arms and how a profile scales them, :func:`train` trains (or loads) every run, and
:func:`judge_claim` turns two arms into a verdict on the two halves of a claim:

- *sharper*: the ratio of each Hessian measure between the arms, with Welch's t interval on the
  logs over seeds (:func:`flatness.analysis.stats.ratio`);
- *generalises better*: the difference in test accuracy, with a bootstrap over seeds and,
  paired, over test examples (:func:`flatness.analysis.stats.paired_bootstrap`).

Every word of the verdict is chosen here from those intervals (:data:`OUTCOME_DEFINITIONS`).
Two kinds of run never count as evidence: a run that learnt nothing is left out of every table,
figure and verdict (:attr:`Results.excluded`), and a comparison whose runs stopped above a
stated training loss is judged "not at a minimum" (:func:`at_minimum`), since the paper's
claims concern low-loss solutions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from flatness import data as datasets
from flatness.analysis import names, stats
from flatness.analysis.plotting import name as plain_name
from flatness.data import DATASETS
from flatness.errors import RunMissing
from flatness.profiles import get_profile
from flatness.results import published
from flatness.results.entries import Run
from flatness.results.runs import load_or_run
from flatness.results.store import Store
from flatness.training import recipes
from flatness.training.config import RunConfig
from flatness.training.loop import default_device, load_model
from flatness.validation import as_float, as_int, as_tuple, check_choice

MEASURES = ("lambda_max", "trace", "frobenius")
BN_MEASURES = tuple(f"{m}_bn_train" for m in MEASURES)
FINAL_COLUMNS = ("test_acc", "val_acc", "train_loss", "weight_norm")

#: Outcomes of one half of a claim, and of a whole claim.
OUTCOMES = (
    "reproduced",
    "partly reproduced",
    "inconclusive",
    "not reproduced",
    "opposite",
    "not at a minimum",
    "cannot be judged",
)

#: What each outcome means, for a page to print (the verdict page lists them all).
OUTCOME_DEFINITIONS = {
    "reproduced": "every interval of the half lies on the claim's side: each measure's ratio "
    "above 1 for *sharper*, the test-accuracy gain above 0 for *generalises better*; a claim is "
    "reproduced when both halves are",
    "partly reproduced": "*sharper* on some measures, with no measure clearly flatter; a claim "
    "is partly reproduced when one half is (at least partly) reproduced and the other is not",
    "inconclusive": "no interval excludes the null, but each still reaches an effect as large "
    "as the paper's (or the paper's effect is not known): the runs cannot tell whether the "
    "claim holds",
    "not reproduced": "the intervals exclude an effect as large as the paper's without lying "
    "on the claim's side, or the measures disagree (some clearly sharper, some clearly "
    "flatter): evidence against the claim at the paper's effect size",
    "opposite": "every judgeable interval lies on the other side: flatter, or worse test accuracy",
    "not at a minimum": "some runs of the comparison ended above the stated training loss "
    "(a share of ln K, the loss of a network that predicts every class alike); the claim "
    "concerns low-loss solutions, so their effects are shown but judged neither for nor "
    "against it",
    "cannot be judged": "one seed per arm, or no spread over seeds: there is no interval",
}

#: A run is at a (low-loss) minimum when its final training loss is below this share of ln K,
#: the loss of predicting every one of K classes alike (0.23 nats for ten classes).
MINIMUM_LOSS_SHARE = 0.1


@dataclass(frozen=True)
class Reference:
    """The effects the paper reports for a comparison: a half with no clear effect is
    *inconclusive* while its interval still reaches these, and *not reproduced* once it
    excludes them.

    ``ratios`` maps a measure to the paper's ratio (arm over baseline; a ``_bn_train``
    measure uses its base measure's); ``accuracy_points`` is the paper's test-accuracy gain
    in percentage points, ``None`` where the paper's gain is not known (then an unclear gain
    is never evidence against the claim); ``source`` says where they come from.
    """

    ratios: dict
    accuracy_points: float | None
    source: str

    def ratio(self, measure: str) -> float | None:
        return self.ratios.get(measure.removesuffix("_bn_train"))


#: C3 (weight decay 5e-4 against 0): the authors' PreResNet-110 spectra on CIFAR-100
#: (``../shared/paper-notes.md`` section 5): lambda_max 30.4 / 3.77, trace 4.2e3 / 99,
#: Frobenius 80 / 6.1. The paper's accuracy gains for C3 are not recorded: none is assumed.
C3_REFERENCE = Reference(
    {"lambda_max": 30.4 / 3.77, "trace": 4.2e3 / 99, "frobenius": 80 / 6.1},
    None,
    "the authors' PreResNet-110 spectra on CIFAR-100 at weight decay 5e-4 and 0",
)

#: C5 (Gadam against SGD): the abstract's "30x sharper"; no accuracy gain on one network is
#: recorded.
C5_REFERENCE = Reference(
    {"lambda_max": 30.0, "trace": 30.0, "frobenius": 30.0},
    # the same group's 77.4 % (PreResNet-110, Gadam) and 74.2 % (VGG-16-BN, SGD) are two
    # networks, not a gain of Gadam over SGD on one: no paper gain is assumed
    None,
    'the abstract\'s "30x sharper"',
)


@dataclass(frozen=True)
class Arm:
    """Runs of one model and recipe (:func:`flatness.training.recipes.run_config`) that differ by seed."""

    label: str
    model: str
    optimiser: str = "sgd"
    #: None: the recipe's weight decay
    weight_decay: float | None = None

    def config(self, profile: str, seed: int, overrides: dict) -> RunConfig:
        return recipes.run_config(
            self.model,
            self.optimiser,
            profile,
            weight_decay=self.weight_decay,
            seed=seed,
            **overrides,
        )


@dataclass(frozen=True)
class TrainingSettings:
    """Arms, seeds and the profile's changes to the recipes, for one training chapter.

    ``overrides`` are :class:`~flatness.training.config.RunConfig` fields applied to every run (e.g. a
    cpu profile's epochs and width); ``model_overrides`` apply to one model only.
    ``comparisons`` are (arm, baseline) label pairs judged as claims; ``claim`` names it.
    """

    profile: str
    dataset: str | None
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    comparisons: tuple[tuple[str, str], ...]
    claim: str = "C3"
    overrides: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)
    #: the measures a verdict judges: the authors measured BatchNorm nets in train mode
    measures: tuple[str, ...] = MEASURES
    note: str = ""
    #: the paper's effects, which an interval must exclude to count against the claim
    reference: Reference = C3_REFERENCE
    #: a run is at a minimum below this share of ln K (:func:`at_minimum`)
    minimum_loss_share: float = MINIMUM_LOSS_SHARE
    #: the arms whose comparison is the paper's claim; the others are context (empty: all)
    claimed: tuple[str, ...] = ()

    def is_claimed(self, arm: str) -> bool:
        return not self.claimed or arm in self.claimed

    def run_configs(self) -> dict[str, list[RunConfig]]:
        """Every run, by arm label, seeds in order."""
        out = {}
        for arm in self.arms:
            extra = dict(self.overrides) | dict(self.model_overrides.get(arm.model, {}))
            if self.dataset is not None:
                extra["dataset"] = self.dataset
            out[arm.label] = [arm.config(self.profile, s, extra) for s in self.seeds]
        return out

    def runs(self) -> list[RunConfig]:
        """The runs the chapter's figures read (its grid)."""
        return [c for configs in self.run_configs().values() for c in configs]

    def with_overrides(self, *, seeds=None, dataset=None, epochs=None) -> TrainingSettings:
        """Replace the chapter parameters that are not ``None``.

        Raises:
            FlatnessError: duplicate or negative seeds, an unknown data set, epochs below 1.
        """
        changes: dict = {}
        if seeds is not None:
            changes["seeds"] = stats.check_seeds(seeds)
        if dataset is not None:
            changes["dataset"] = check_choice("dataset", dataset, datasets.DATASETS)
        if epochs is not None:
            changes["overrides"] = dict(self.overrides) | {
                "epochs": as_int("epochs", epochs, minimum=1)
            }
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Results:
    """Every run of a chapter, by arm, and the data they were trained on.

    ``settings`` keeps only the arms with at least one run and the comparisons between such
    arms; ``missing`` lists the runs found neither published nor stored (only when
    :func:`train` was told not to train them) and ``unjudged`` the comparisons left out
    because an arm of theirs has no run at hand.
    """

    settings: TrainingSettings
    runs: dict[str, list[Run]]
    #: ``None`` only when no run is at hand
    data: datasets.Dataset | None
    device: torch.device
    missing: tuple[RunConfig, ...] = ()
    unjudged: tuple[tuple[str, str], ...] = ()
    #: ``(arm, run, why)`` for each run that learnt nothing: in no table, figure or verdict
    excluded: tuple[tuple[str, Run, str], ...] = ()
    #: the same for runs that learnt nothing yet were kept, at a profile that keeps them
    #: (:attr:`flatness.profiles.Profile.excludes_dead_runs`)
    dead_kept: tuple[tuple[str, Run, str], ...] = ()

    @property
    def all_runs(self) -> list[Run]:
        return [r for runs in self.runs.values() for r in runs]


def train(
    s: TrainingSettings,
    *,
    store: Store | None = None,
    data_root=None,
    device=None,
    progress: bool = False,
    train_missing: bool = True,
) -> Results:
    """Train every run of ``s`` that is neither published nor stored; load the others.

    With ``train_missing=False`` nothing trains: missing runs are left out (and listed in
    ``Results.missing``), and so are arms left without runs and comparisons of such arms.
    A run that learnt nothing (:func:`flatness.results.published.collapsed`) is left out the
    same way and listed in ``Results.excluded`` with what its loss says.
    """
    device = torch.device(device) if device is not None else default_device()
    configs = s.run_configs()
    first = next(iter(configs.values()))[0]
    if train_missing:  # missing data is bad input: say so before training
        datasets.load(first.dataset, data_root=data_root, train_size=first.train_size)
    runs, missing, excluded, kept = {}, [], [], []
    exclude = get_profile(s.profile).excludes_dead_runs
    for label, cs in configs.items():
        for c in cs:
            try:
                run = load_or_run(
                    c,
                    store=store,
                    data_root=data_root,
                    device=device,
                    progress=progress,
                    train_missing=train_missing,
                )
            except RunMissing:
                missing.append(c)
                continue
            if published.collapsed(run):
                (excluded if exclude else kept).append((label, run, published.collapse_reason(run)))
                if exclude:
                    continue
            runs.setdefault(label, []).append(run)
    # without runs (none at hand) nothing needs the data, which may not be here either
    data = (
        datasets.load(first.dataset, data_root=data_root, train_size=first.train_size)
        if runs
        else None
    )
    unjudged = tuple(c for c in s.comparisons if c[0] not in runs or c[1] not in runs)
    if missing or excluded:
        s = dataclasses.replace(
            s,
            arms=tuple(a for a in s.arms if a.label in runs),
            comparisons=tuple(c for c in s.comparisons if c not in unjudged),
        )
    return Results(s, runs, data, device, tuple(missing), unjudged, tuple(excluded), tuple(kept))


def excluded_markdown(results: Results) -> str:
    """A Markdown paragraph naming the runs left out because they learnt nothing (or, at a
    profile that keeps them, saying how many were kept), or ``""``."""
    if results.dead_kept:
        n, total = len(results.dead_kept), len(results.all_runs)
        return (
            f"**{n} of {total} runs learnt nothing** (a final training loss of at least "
            f"{published.COLLAPSED_SHARE:g} ln K): the `{results.settings.profile}` profile "
            "trains too briefly to learn and keeps them only to show that the page runs. "
            "Its numbers mean nothing."
        )
    if not results.excluded:
        return ""
    total = len(results.excluded) + len(results.all_runs)
    items = "; ".join(
        f"{arm}, seed {run.config.seed} (`{run.config.key()}`): {why}"
        for arm, run, why in results.excluded
    )
    n = len(results.excluded)
    text = (
        f"**{n} of {total} runs excluded.** "
        f"{'It' if n == 1 else 'They'} learnt nothing, so no table, figure or verdict on this "
        f"page uses {'it' if n == 1 else 'them'}: {items}. "
        "The comparisons are judged on the remaining seeds."
    )
    return names.words(text)


def at_minimum(run: Run, share: float = MINIMUM_LOSS_SHARE) -> bool:
    """Whether ``run`` ended at a low-loss solution: a final training loss below ``share``
    of ln K (K classes).

    >>> import types
    >>> run = types.SimpleNamespace(metrics={"train_loss": 0.3},
    ...                             config=types.SimpleNamespace(dataset="digits"))
    >>> at_minimum(run), at_minimum(run, share=0.2)  # 0.1 ln 10 = 0.230, 0.2 ln 10 = 0.461
    (False, True)
    """
    loss = float(run.metrics.get("train_loss", math.nan))
    return loss < share * math.log(datasets.num_classes(run.config.dataset))


def final_table(results: Results) -> pd.DataFrame:
    """One row per run: arm, seed, model, optimiser, weight decay and the final metrics."""
    rows = []
    for label, runs in results.runs.items():
        for r in runs:
            m = r.metrics
            row = {
                "arm": label,
                "seed": r.config.seed,
                "model": r.config.model,
                "optimiser": r.config.optimiser + ("+avg" if r.config.averaging else ""),
                "weight_decay": r.config.weight_decay,
                "parameters": m.get("parameters"),
                "key": r.config.key(),
            }
            for column in (*FINAL_COLUMNS, *MEASURES, *BN_MEASURES):
                if column in m:
                    row[column] = float(m[column])
            rows.append(row)
    return pd.DataFrame(rows)


def history(results: Results) -> pd.DataFrame:
    """Per-epoch series of every run in long form (one row per run and epoch)."""
    frames = []
    for label, runs in results.runs.items():
        for r in runs:
            epochs = len(r.arrays["epoch"])
            series = {
                k: v
                for k, v in r.arrays.items()
                if not k.startswith(("state.", "eigenvalues", "slq_"))
                and v.ndim == 1
                and len(v) == epochs
            }
            frame = pd.DataFrame(series)
            frame["arm"] = label
            frame["seed"] = r.config.seed
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def correct(run: Run, data: datasets.Dataset, device=None) -> np.ndarray:
    """``(test examples,)`` booleans: where the run's final model is right (eval mode); stored
    with the run since training recorded it, else computed from the run's weights (``data``
    may be ``None`` for runs that stored them)."""
    stored = run.arrays.get("test_correct")
    if stored is not None and (data is None or len(stored) == len(data.y_test)):
        return stored.astype(bool)
    device = torch.device(device) if device is not None else default_device()
    model = load_model(run.config, run.arrays, data.input_shape, data.num_classes).to(device)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(data.y_test), 1000):
            x = data.x_test[start : start + 1000].to(device)
            out.append(model(x).argmax(1).cpu() == data.y_test[start : start + 1000])
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class Half:
    """One half of a claim ("sharper" or "generalises better"): its outcome and evidence."""

    name: str
    outcome: str
    effects: dict[str, stats.Interval]
    text: str
    #: what was compared, ``"<arm> vs <baseline>"``
    comparison: str = ""
    #: the effects in words, without a judgement
    evidence: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim judged on two arms: ``arm`` against ``baseline``."""

    claim: str
    setting: str
    arm: str
    baseline: str
    sharper: Half
    better: Half
    outcome: str

    @property
    def text(self) -> str:
        gap = "" if self.better.text.startswith(";") else " "
        return f"{self.sharper.text}{gap}{self.better.text}"


def _ratio_phrase(measure: str, iv: stats.Interval) -> str:
    what = {
        "higher": "sharper",
        "lower": "flatter",
        "no clear difference": "no clear difference",
        "cannot be judged": "cannot be judged",
    }[stats.judge(iv)]
    kind = "ratio" if iv.null == 1.0 else "difference"
    return f"{plain_name(measure)} {kind} {iv.describe('.3g')}: {what}"


def _reaches(iv: stats.Interval, reference: float | None) -> bool:
    """Whether an interval with no clear effect still holds an effect as large as the paper's
    (a difference, with no paper value on its scale, always may)."""
    if reference is None or iv.null != 1.0:
        return True
    return iv.high >= reference


def sharper_half(
    ratios: dict[str, stats.Interval],
    arm: str,
    baseline: str,
    reference: Reference | None = None,
) -> Half:
    """*Sharper*: reproduced when every measure's ratio interval lies above 1.

    With no measure clearly sharper or flatter, the half is *inconclusive* while some interval
    still reaches the paper's ratio (``reference``; without one, always) and *not reproduced*
    once every interval excludes it.
    """
    verdicts = {m: stats.judge(iv) for m, iv in ratios.items()}
    judgeable = [v for v in verdicts.values() if v != "cannot be judged"]
    if not judgeable:
        outcome = "cannot be judged"
    elif all(v == "higher" for v in verdicts.values()):
        outcome = "reproduced"
    elif all(v == "lower" for v in judgeable):
        outcome = "opposite"
    elif "higher" in judgeable and "lower" not in judgeable:
        outcome = "partly reproduced"
    elif "higher" in judgeable or "lower" in judgeable:
        outcome = "not reproduced"  # the measures disagree, or some are clearly flatter
    elif any(
        _reaches(iv, reference and reference.ratio(m))
        for m, iv in ratios.items()
        if verdicts[m] == "no clear difference"
    ):
        outcome = "inconclusive"
    else:
        outcome = "not reproduced"
    phrases = "; ".join(_ratio_phrase(m, iv) for m, iv in ratios.items())
    lead = {
        "reproduced": f"{arm} is sharper than {baseline} on every measure",
        "partly reproduced": f"{arm} is sharper than {baseline} on some measures only",
        "inconclusive": f"whether {arm} is sharper than {baseline} is inconclusive: no measure "
        "differs clearly, yet the intervals still reach the paper's ratios",
        "not reproduced": f"{arm} is not clearly sharper than {baseline}",
        "opposite": f"{arm} is flatter than {baseline}, the opposite of the claim",
        "cannot be judged": f"whether {arm} is sharper than {baseline} cannot be judged",
    }[outcome]
    if outcome == "not reproduced" and not judgeable.count("higher") + judgeable.count("lower"):
        lead += ", and the intervals exclude the paper's ratios"
    lead = names.sentence(names.words(lead))
    return Half(
        "sharper", outcome, dict(ratios), f"{lead} ({phrases}).", f"{arm} vs {baseline}", phrases
    )


def better_half(
    accuracy: stats.Interval, arm: str, baseline: str, reference: Reference | None = None
) -> Half:
    """*Generalises better*: reproduced when the test-accuracy gain's interval lies above 0;
    with no clear difference, *inconclusive* while the interval still reaches the paper's gain
    (``reference``; without one, always), *not reproduced* once it excludes it."""
    verdict = stats.judge(accuracy)
    known = reference is not None and reference.accuracy_points is not None
    paper = reference.accuracy_points / 100 if known else None
    outcome = {
        "higher": "reproduced",
        "lower": "opposite",
        "no clear difference": "inconclusive"
        if paper is None or accuracy.high >= paper
        else "not reproduced",
        "cannot be judged": "cannot be judged",
    }[verdict]
    pct = dataclasses.replace(
        accuracy,
        estimate=100 * accuracy.estimate,
        low=100 * accuracy.low,
        high=100 * accuracy.high,
    )
    lead = {
        "reproduced": f"{arm} generalises better than {baseline}",
        "opposite": f"{arm} generalises worse than {baseline}",
        "inconclusive": f"whether {arm} generalises better than {baseline} is inconclusive",
        "not reproduced": f"{arm} does not clearly generalise better than {baseline}",
        "cannot be judged": f"whether {arm} generalises better than {baseline} cannot be judged",
    }[outcome]
    lead = names.sentence(names.words(lead))
    evidence = f"test-accuracy gain {pct.describe(stats.points_format(pct), ' points')}"
    detail = evidence
    if paper is not None and outcome in ("inconclusive", "not reproduced"):
        gain = f"{100 * paper:.3g} point{'' if 100 * paper == 1 else 's'}"
        holds = "still holds" if outcome == "inconclusive" else "excludes"
        detail += f"; the interval {holds} the paper's gain of {gain}"
    return Half(
        "generalises better",
        outcome,
        {"test_acc": accuracy},
        f"{lead} ({detail}).",
        f"{arm} vs {baseline}",
        evidence,
    )


def combine(sharper: Half, better: Half) -> str:
    """The claim's outcome from its two halves (:data:`OUTCOME_DEFINITIONS`)."""
    outcomes = (sharper.outcome, better.outcome)
    if "not at a minimum" in outcomes:
        return "not at a minimum"
    if all(o == "cannot be judged" for o in outcomes):
        return "cannot be judged"
    if all(o == "reproduced" for o in outcomes):
        return "reproduced"
    if any(o in ("reproduced", "partly reproduced") for o in outcomes):
        return "partly reproduced"
    if any(o in ("not reproduced", "opposite") for o in outcomes):
        return "not reproduced"
    return "inconclusive"


def not_at_minimum(half: Half, far: list[Run], share: float, *, first: bool) -> Half:
    """``half`` judged "not at a minimum": its effects kept, its outcome withheld. The
    ``first`` half of a claim says why; the second only gives its effects."""
    if first:
        worst = max(float(r.metrics.get("train_loss", math.nan)) for r in far)
        bound = share * math.log(datasets.num_classes(far[0].config.dataset))
        text = (
            f"Not judged: {len(far)} of the runs of {half.comparison} ended above training loss "
            f"{bound:.3g} ({share:g} ln K; the largest at {worst:.3g}), far from the low-loss "
            f"solutions the claim concerns. The effects, for the record: {half.evidence}"
        )
    else:
        text = f"; {half.comparison}: {half.evidence}."
    return dataclasses.replace(half, outcome="not at a minimum", text=text)


def effect(a, b) -> stats.Interval:
    """How much larger a measure is in arm ``a`` than in ``b``: a ratio (Welch t on the logs)
    when every value is positive, else the difference of means (Welch t), since a trace or an
    eigenvalue of an indefinite Hessian can be zero or negative."""
    if (np.asarray(a) > 0).all() and (np.asarray(b) > 0).all():
        return stats.ratio(a, b)
    return stats.welch(a, b)


def judge_claim(
    results: Results, arm: str, baseline: str, *, setting: str = "", resamples: int = 2000
) -> Claim:
    """The claim of ``results.settings`` for ``arm`` against ``baseline``: both halves judged
    against the settings' :class:`Reference`, or "not at a minimum" when a run of either arm
    stopped above the settings' training loss (:func:`at_minimum`).

    Raises:
        KeyError: an arm label the settings do not have.
    """
    s = results.settings
    table = final_table(results)
    a, b = table[table.arm == arm], table[table.arm == baseline]
    ratios = {m: effect(a[m], b[m]) for m in s.measures if m in table and table[m].notna().all()}
    acc = stats.paired_bootstrap(
        np.stack([correct(r, results.data, results.device) for r in results.runs[arm]]),
        np.stack([correct(r, results.data, results.device) for r in results.runs[baseline]]),
        resamples=resamples,
    )
    sharper = sharper_half(ratios, arm, baseline, s.reference)
    better = better_half(acc, arm, baseline, s.reference)
    far = [
        r
        for r in (*results.runs[arm], *results.runs[baseline])
        if not at_minimum(r, s.minimum_loss_share)
    ]
    if far:
        sharper = not_at_minimum(sharper, far, s.minimum_loss_share, first=True)
        better = not_at_minimum(better, far, s.minimum_loss_share, first=False)
    return Claim(s.claim, setting, arm, baseline, sharper, better, combine(sharper, better))


def claims(results: Results, *, setting: str = "") -> list[Claim]:
    """Every comparison of the settings, judged."""
    return [judge_claim(results, a, b, setting=setting) for a, b in results.settings.comparisons]


def claim_table(found: list[Claim]) -> pd.DataFrame:
    """One row per claim half, with plain-word headers, for a page."""
    rows = []
    for c in found:
        for half in (c.sharper, c.better):
            effects = "; ".join(
                f"{plain_name(k)}: {iv.describe('.3g') if k != 'test_acc' else _points(iv)}"
                for k, iv in half.effects.items()
            )
            rows.append(
                {
                    "claim": c.claim,
                    "setting": c.setting,
                    "comparison": f"{c.arm} vs {c.baseline}",
                    "half": half.name,
                    "effect (95 % CI)": effects,
                    "outcome": half.outcome,
                }
            )
    return pd.DataFrame(rows)


def _points(iv: stats.Interval) -> str:
    scaled = dataclasses.replace(
        iv, estimate=100 * iv.estimate, low=100 * iv.low, high=100 * iv.high
    )
    return scaled.describe(stats.points_format(scaled), " pts")


def provenance(s: TrainingSettings, results: Results, description: str) -> str:
    """The Markdown of a chapter's "How this page was built" admonition."""
    keys = ", ".join(f"`{r.config.key()}`" for r in results.all_runs)
    d = results.data
    return (
        f"profile **{s.profile}** ({description}); data set **{results.all_runs[0].config.dataset}** "
        f"({len(d.y_train):,} training, {len(d.y_val):,} validation and {len(d.y_test):,} test "
        f"examples); seeds {', '.join(map(str, s.seeds))}; device **{results.device}**; "
        f"executed {dt.date.today().isoformat()}. {run_costs(results.all_runs)} Stored runs: {keys}"
    )


def run_costs(runs: list[Run]) -> str:
    """How long ``runs`` took and on what, from their stored provenance, in one sentence."""
    if not runs:
        return "No run is at hand."
    hours = sum(float(r.provenance.get("wall_seconds", 0.0)) for r in runs) / 3600
    train = sum(float(r.metrics.get("train_seconds", 0.0)) for r in runs) / 3600
    measure = sum(float(r.metrics.get("hessian_seconds", 0.0)) for r in runs) / 3600
    devices = sorted(
        {
            f"{r.provenance.get('device', 'unknown device')} ({r.provenance.get('platform', '')})"
            for r in runs
        }
    )
    threads = sorted({int(r.provenance["threads"]) for r in runs if "threads" in r.provenance})
    days = sorted(str(r.provenance.get("finished", ""))[:10] for r in runs)
    published = sum(r.path.parent.name == "published" for r in runs)
    resumed = sum(int(r.provenance.get("sittings", 1)) > 1 for r in runs)
    on = " and ".join(devices) + (
        f" ({'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''} per run)"
        if threads
        else ""
    )
    return (
        f"The {len(runs)} runs took {hours:.3g} hours in all (training {train:.3g} h, Hessian "
        f"measurements {measure:.3g} h) on {on}, finished {days[0]} to {days[-1]}"
        + (
            f"; {resumed} resumed from a checkpoint (their time sums the sittings, less the "
            "epochs an interruption lost)"
            if resumed
            else ""
        )
        + (f"; {published} of them published." if published else ".")
    )


def decay_arms(models, decays) -> tuple[Arm, ...]:
    """One SGD arm per (model, weight decay), labelled ``"<model>, wd <decay>"``."""
    return tuple(Arm(f"{m}, wd {wd:g}", m, "sgd", wd) for m in models for wd in decays)


def decay_comparisons(models, decays) -> tuple[tuple[str, str], ...]:
    """Each model's largest weight decay against its smallest (C3)."""
    lo, hi = min(decays), max(decays)
    return tuple((f"{m}, wd {hi:g}", f"{m}, wd {lo:g}") for m in models)


def shrinkage(config: RunConfig, train_examples: int) -> float:
    """How far coupled L2 pulls the weights in a whole run: lr x weight decay x steps.

    With SGD, each step multiplies the weights by ``1 - lr * wd`` besides the gradient step, so
    this product (at the initial lr) compares weight decays across runs of different lengths.
    """
    steps = config.epochs * -(-train_examples // config.batch_size)
    return config.lr * config.weight_decay * steps


def effect_rows(found: list[Claim], half: str = "sharper") -> pd.DataFrame:
    """Rows for :func:`flatness.analysis.plotting.forest`: one per claim and measure of ``half``."""
    rows = []
    for c in found:
        h = c.sharper if half == "sharper" else c.better
        for measure, iv in h.effects.items():
            if half == "sharper" and iv.null != 1.0:
                continue  # a difference (values not all positive) has no place on a ratio axis
            rows.append(
                {
                    "row": f"{names.words(c.arm.split(',')[0])}: {plain_name(measure)}",
                    "interval": iv,
                    "group": plain_name(measure),
                }
            )
    return pd.DataFrame(rows)


def summary_table(results: Results, columns=None) -> pd.DataFrame:
    """Per arm: seeds, and mean ± sample standard deviation over seeds of the final metrics,
    with plain-word headers (accuracy in %); the final training loss stands beside the
    measures, since the claims concern low-loss solutions."""
    table = final_table(results)
    if columns is None:
        columns = ("test_acc", "train_loss", "weight_norm", *MEASURES, *BN_MEASURES)
    columns = [c for c in columns if c in table and table[c].notna().any()]
    rows = []
    for label, group in table.groupby("arm", sort=False):
        row = {"runs": names.words(label), "seeds": len(group)}
        for c in columns:
            scale = 100 if c.endswith("acc") else 1
            mean, sd = scale * group[c].mean(), scale * group[c].std(ddof=1)
            spread = f" ± {sd:.2g}" if len(group) > 1 else ""
            header = plain_name(c) + (" (%)" if scale == 100 else "")
            row[header] = f"{mean:.4g}{spread}"
        rows.append(row)
    return pd.DataFrame(rows)


def claims_markdown(
    found: list[Claim], unjudged: tuple[tuple[str, str], ...] = (), *, context: bool = False
) -> str:
    """A Markdown list: one item per claim with its outcome and both halves' evidence, then
    one per comparison in ``unjudged`` (:attr:`Results.unjudged`) saying it is not yet judged.
    With ``context`` the items carry no outcome: they are context, not verdicts on the claim."""
    if context:
        lines = [f"- **{c.arm.split(',')[0]}** (context): {c.text}" for c in found]
    else:
        lines = [f"- **{c.arm.split(',')[0]}**: *{c.outcome}*. {c.text}" for c in found]
    lines += [
        f"- **{arm.split(',')[0]}**: *not yet judged*: {arm} vs {base} has an arm without "
        "runs at hand (the runs missing, or excluded, are listed at the top of the page)."
        for arm, base in unjudged
    ]
    return names.words("\n".join(lines))


def rules_markdown(s: TrainingSettings, dataset: str | None = None) -> str:
    """How a training page judges its claim, with the paper's effects and the training loss
    that counts as a minimum, and every outcome label it can give, defined."""
    dataset = dataset or s.dataset or next(iter(s.run_configs().values()))[0].dataset
    bound = s.minimum_loss_share * math.log(datasets.num_classes(dataset))
    ref = s.reference
    ratios = ", ".join(f"{plain_name(m)} ×{v:.3g}" for m, v in ref.ratios.items())
    which = " (BatchNorm in train mode)" if s.measures == BN_MEASURES else ""
    lines = [
        f"*Sharper* is judged on each measure's ratio{which} between the arms (Welch t on the "
        "logarithms over seeds; for a measure that is not positive in every run, the "
        "difference of means); *generalises better* on the test-accuracy gain (a bootstrap "
        "over seeds and, paired, over test examples).",
        f"The paper's effects, which an interval must exclude to count against the claim: "
        f"{ratios} ({ref.source}); "
        + (
            f"a test-accuracy gain of {ref.accuracy_points:.3g} points."
            if ref.accuracy_points is not None
            else "no test-accuracy gain, since the paper's are not recorded for this claim: an "
            "unclear gain is inconclusive, never evidence against it."
        ),
        f"Every run must end below training loss {bound:.3g} ({s.minimum_loss_share:g} ln K, "
        f"K = {datasets.num_classes(dataset)} classes) for its comparison to be judged.",
        "The outcomes:",
        "",
    ]
    lines += [f"- *{o}*: {OUTCOME_DEFINITIONS[o]}." for o in OUTCOMES]
    return "\n".join(lines)


def _describe_runs(configs: list[RunConfig]) -> str:
    seen = {}
    for c in configs:
        width = "" if c.width == 1 else f" at width {c.width:g}"
        seen.setdefault(f"{c.model}{width}", c)
    first = configs[0]
    subset = first.hessian_examples
    return (
        f"{', '.join(seen)} on {names.display(first.dataset)}"
        f"{'' if first.train_size is None else f' ({first.train_size:,} training examples)'}, "
        f"{first.epochs} epochs"
        + ("" if subset is None else f", Hessians on the first {subset:,} training examples")
    )


def stand_in(s: TrainingSettings, paper: TrainingSettings) -> str:
    """A sentence saying whether this page runs the paper's setting or a reduced stand-in."""
    here, theirs = s.runs(), paper.runs()
    if [c.key() for c in here] == [c.key() for c in theirs]:
        return names.words(f"This page runs the paper's setting: {_describe_runs(here)}.")
    return names.words(
        f"**A reduced stand-in.** The paper's setting is {_describe_runs(theirs)} (the `paper` "
        f"profile); this page, built with the `{s.profile}` profile, trains "
        f"{_describe_runs(here)} instead, on real data, so that it runs without a GPU. "
        "Its verdicts are about the stand-in."
    )


def bn_mode_sentence(table: pd.DataFrame) -> str:
    """How the train-mode measures compare with the eval-mode ones, over every run."""
    parts = []
    for m in MEASURES:
        bn = f"{m}_bn_train"
        if bn not in table or m not in table:
            continue
        r = (table[bn] / table[m]).to_numpy()
        above = int((r > 1).sum())
        parts.append(
            f"{plain_name(m)} in train mode over eval mode ranges from {r.min():.3g} to "
            f"{r.max():.3g} (above 1 in {above} of {len(r)} runs)"
        )
    if not parts:
        return "These networks have no BatchNorm layers: there is one Hessian."
    return "Over the runs of this page, " + "; ".join(parts) + "."


def compare_with_authors(found: list[Claim], authors: pd.DataFrame) -> str:
    """Our lambda_max ratios against SGD beside the authors' PreResNet-110 ones."""
    ours = {c.arm: c.sharper.effects for c in found}
    lines = []
    for _, row in authors.iterrows():
        name = row["optimiser"]
        if name in ours and ours[name]:
            measure, iv = next(iter(ours[name].items()))
            lines.append(
                f"{name}: {plain_name(measure)} over SGD's is {iv.estimate:.3g} here against "
                f"{row['λ_max']:.3g} in the authors' PreResNet-110"
            )
    if not lines:
        return "No optimiser of this page has a counterpart in the authors' table."
    return "; ".join(lines) + "."


def parameter_changes(*, dataset=None, seeds=None, weight_decays=None, epochs=None) -> dict:
    """The chapter parameters that are not ``None``, validated, as settings fields.

    Raises:
        FlatnessError: an unknown data set, duplicate or negative seeds, a negative weight
            decay, or epochs below 1.
    """
    changes: dict = {}
    if dataset is not None:
        changes["dataset"] = check_choice("dataset", dataset, DATASETS)
    if seeds is not None:
        changes["seeds"] = stats.check_seeds(seeds)
    if weight_decays is not None:
        changes["weight_decays"] = as_tuple(
            "weight_decays", weight_decays, lambda n, v: as_float(n, v, minimum=0.0)
        )
    if epochs is not None:
        changes["epochs"] = as_int("epochs", epochs, minimum=1)
    return changes
