"""The chapter "Residual networks": claim C3 for PreResNet and WRN, both BatchNorm modes.

``paper``: PreResNet-110 and WRN-28-10 on CIFAR-100 with SGD at weight decay 0 and 5e-4
(``../shared/paper-notes.md`` section 4). Both are far beyond a CPU, so ``cpu`` trains the
shallowest members of the same families (one residual block per stage), PreResNet-8 at a
quarter of its width and WRN-10-4 at an eighth, on scikit-learn's digits, with weight decay 0
against 1e-2, measuring the Hessian after the last epoch on a fixed subset of 128 training
images. BatchNorm makes the
Hessian depend on how the normalisation is evaluated: every measure is taken in eval mode
(running statistics, PyHessian's convention) and in train mode (batch statistics, the authors'
convention, the one the verdict uses), after the statistics are re-estimated.
"""

from __future__ import annotations

from flatness.chapters.common import (
    BN_MEASURES,
    TrainingSettings,
    decay_arms,
    decay_comparisons,
)
from flatness.profiles import get_profile

PAPER_DECAYS = (0.0, 5e-4)
CPU_DECAYS = (0.0, 1e-2)


def _settings(profile, models, decays, seeds, dataset, model_overrides=None, **overrides):
    return TrainingSettings(
        profile=profile,
        dataset=dataset,
        seeds=seeds,
        arms=decay_arms(models, decays),
        comparisons=decay_comparisons(models, decays),
        overrides=overrides,
        model_overrides=model_overrides or {},
        measures=BN_MEASURES,
    )


_CPU_WIDTHS = {"preresnet-8": {"width": 0.25}, "wrn-10-4": {"width": 0.125}}

SETTINGS = {
    "smoke": _settings(
        "smoke",
        ("preresnet-8", "wrn-10-4"),
        CPU_DECAYS,
        (0, 1),
        "digits",
        model_overrides={m: {"width": 0.0625} for m in _CPU_WIDTHS},
        epochs=2,
        hessian_every=2,
        hessian_examples=64,
    ),
    "cpu": _settings(
        "cpu",
        ("preresnet-8", "wrn-10-4"),
        CPU_DECAYS,
        (0, 1, 2),
        "digits",
        model_overrides=_CPU_WIDTHS,
        epochs=40,
        hessian_every=40,
        hessian_rtol=0.2,
        hessian_max_probes=32,
        hessian_examples=128,
        slq_steps=20,
    ),
    "paper": _settings("paper", ("preresnet-110", "wrn-28-10"), PAPER_DECAYS, (0, 1, 2), None),
}


def settings(profile: str, **overrides):
    """The profile's settings with the chapter parameters that are not ``None`` replaced."""
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def grid(profile: str) -> list:
    """The runs this chapter's figures read at ``profile`` (:class:`~flatness.training.config.RunConfig`)."""
    return settings(profile).runs()
