"""The chapter "Adaptive optimisers with iterate averaging": claim C5 on VGG-16-BN.

``paper``: VGG-16-BN on CIFAR-100 with the authors' five recipes (``../shared/paper-notes.md``
section 4; :mod:`flatness.training.recipes`): SGD (lr 0.1, wd 5e-4), SWA (SGD + averaging from epoch
161 at lr 0.02), Adam (lr 5e-4, coupled L2 0), AdamW (lr 5e-4, decoupled 0.25) and Gadam
(AdamW + averaging at lr 5e-4). ``cpu`` keeps the recipes and trains VGG-16-BN at an eighth of
its width on scikit-learn's digits for 30 epochs, averaging from the same fraction of training,
and measures the Hessian after the last epoch on a fixed subset of 128 training images.
Every optimiser is compared with SGD; the authors' own PreResNet-110 spectra are shown beside.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flatness.chapters.common import BN_MEASURES, C5_REFERENCE, Arm, TrainingSettings
from flatness.profiles import get_profile

OPTIMISERS = ("sgd", "swa", "adam", "adamw", "gadam")
NAMES = {"sgd": "SGD", "swa": "SWA", "adam": "Adam", "adamw": "AdamW", "gadam": "Gadam"}


def _settings(profile, model, seeds, dataset, **overrides) -> TrainingSettings:
    arms = tuple(Arm(NAMES[o], model, o) for o in OPTIMISERS)
    return TrainingSettings(
        profile=profile,
        dataset=dataset,
        seeds=seeds,
        arms=arms,
        comparisons=tuple((NAMES[o], "SGD") for o in OPTIMISERS[1:]),
        claim="C5",
        overrides=overrides,
        measures=BN_MEASURES,
        reference=C5_REFERENCE,
        # the claim concerns Gadam; SWA, Adam and AdamW against SGD are context
        claimed=("Gadam",),
    )


SETTINGS = {
    "smoke": _settings(
        "smoke",
        "vgg16-bn",
        (0, 1),
        "digits",
        epochs=3,
        width=1 / 16,
        hessian_every=3,
        hessian_examples=64,
    ),
    "cpu": _settings(
        "cpu",
        "vgg16-bn",
        (0, 1, 2),
        "digits",
        epochs=30,
        width=1 / 8,
        hessian_every=40,
        hessian_rtol=0.2,
        hessian_max_probes=32,
        hessian_examples=128,
        slq_steps=20,
    ),
    "paper": _settings("paper", "vgg16-bn", (0, 1, 2), None),
}


def settings(profile: str, **overrides) -> TrainingSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced."""
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def grid(profile: str) -> list:
    """The runs this chapter's figures read at ``profile`` (:class:`~flatness.training.config.RunConfig`)."""
    return settings(profile).runs()


#: PreResNet-110 on CIFAR-100 at epoch 300, from the authors' stored Lanczos spectra (50 steps,
#: one probe, BatchNorm in train mode) in the repository diegogranziol/GadamX, folder
#: ``spectral_results``, as read in ``../shared/paper-notes.md`` section 5. The trace and
#: Frobenius columns come from one probe and are rough (tens of percent).
AUTHORS_PRERESNET110 = pd.DataFrame(
    [
        ("SGD", 5e-4, 30.4, 4.2e3, 80, 45.5),
        ("SGD", 0.0, 3.77, 99, 6.1, 307.3),
        ("SWA", 5e-4, 8.78, 632, 22, 60.9),
        ("SWA", 0.0, 2.50, 139, 6.1, float("nan")),
        ("AdamW", 0.25, 1295, 6.0e4, 2437, 35.7),
        ("Gadam", 0.25, 460, 1.4e4, 1058, 40.9),
        ("Adam", 0.0, 78.2, 570, 112, 333.2),
        ("Adam + averaging", 0.0, 48.4, 416, 71, float("nan")),
    ],
    columns=["optimiser", "weight decay", "λ_max", "Tr H (rough)", "‖H‖_F (rough)", "‖w‖₂"],
)


def authors_ratios() -> pd.DataFrame:
    """The authors' measures of each weight-decayed optimiser divided by SGD's (wd 5e-4)."""
    t = AUTHORS_PRERESNET110
    sgd = t[(t.optimiser == "SGD") & (t["weight decay"] == 5e-4)].iloc[0]
    rows = t[t["weight decay"] > 0].copy()
    for c in ("λ_max", "Tr H (rough)", "‖H‖_F (rough)"):
        rows[c] = rows[c] / sgd[c]
    return rows.drop(columns=["weight decay", "‖w‖₂"]).reset_index(drop=True)


def thirty_times() -> str:
    """Which of the authors' PreResNet-110 ratios to SGD (:func:`authors_ratios`) comes closest
    to the paper's "about thirty times sharper" (on a log scale), and Gadam's own ratios."""
    ratios = authors_ratios().set_index("optimiser")
    ratios = ratios.drop(index="SGD", errors="ignore")
    long = ratios.stack()
    optimiser, measure = (np.log(long.astype(float)) - np.log(30.0)).abs().idxmin()
    gadam = ratios.loc["Gadam"]
    return (
        f"In the authors' own spectra of PreResNet-110 (table below) the ratio to SGD closest to "
        f"thirty is {optimiser}'s {measure.split(' (')[0]} ({long[optimiser, measure]:.2g} times); "
        "Gadam's are "
        + ", ".join(f"{gadam[m]:.2g} times in {m.split(' (')[0]}" for m in ratios.columns)
        + "."
    )
