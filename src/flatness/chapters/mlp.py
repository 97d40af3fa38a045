"""The chapter "Multi-layer perceptrons": claim C3 for the paper's three MLPs.

The paper trains 784-10-100-10, 784-512-256-10 and 784-5-200-50-10 ReLU networks on MNIST with
SGD, with and without weight decay (``../shared/paper-notes.md`` section 4). ``paper`` does the
same (weight decay 0 and 5e-4, 300 epochs, SGD's lr chosen on validation data:
:data:`flatness.training.recipes.MLP_PAPER_LR`); ``cpu`` trains them on scikit-learn's digits (64
inputs), where 100 epochs of about 9 steps give weight decay 5e-4 almost no time to act, so it
compares 0 with 1e-2, whose lr x wd x steps is of the order of the paper's (the page shows both).
Networks of at most 2,000 parameters get exact Hessians, larger ones Lanczos and Hutch++.
"""

from __future__ import annotations

from flatness.analysis import names
from flatness.chapters.common import (
    Results,
    TrainingSettings,
    decay_arms,
    decay_comparisons,
    shrinkage,
)
from flatness.profiles import get_profile

MODELS = ("mlp-10-100", "mlp-512-256", "mlp-5-200-50")
PAPER_DECAYS = (0.0, 5e-4)
CPU_DECAYS = (0.0, 1e-2)


def _settings(profile, decays, seeds, dataset, **overrides) -> TrainingSettings:
    return TrainingSettings(
        profile=profile,
        dataset=dataset,
        seeds=seeds,
        arms=decay_arms(MODELS, decays),
        comparisons=decay_comparisons(MODELS, decays),
        overrides=overrides,
    )


SETTINGS = {
    "smoke": _settings(
        "smoke", CPU_DECAYS, (0, 1), "digits", epochs=3, hessian_every=3, hessian_examples=64
    ),
    "cpu": _settings(
        "cpu", CPU_DECAYS, (0, 1, 2), "digits", epochs=100, hessian_every=50, hessian_rtol=0.1
    ),
    "paper": _settings("paper", PAPER_DECAYS, (0, 1, 2), None),
}


def settings(profile: str, **overrides) -> TrainingSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced."""
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def grid(profile: str) -> list:
    """The runs this chapter's figures read at ``profile`` (:class:`~flatness.training.config.RunConfig`)."""
    return settings(profile).runs()


def shrinkage_sentence(results: Results, profile: str) -> str:
    """How far weight decay pulls each network's weights here, against the ``paper`` profile.

    Per network, lr x wd x steps (:func:`~flatness.chapters.common.shrinkage`) of this page's
    largest weight decay; unless the page is the ``paper`` profile, the same product for the
    ``paper`` runs (the authors' 5e-4 and 300 epochs of MNIST's 55,000 training images, at the
    lr chosen on validation, :data:`flatness.training.recipes.MLP_PAPER_LR`: the authors give none, so
    their own product is unknown). Returns one Markdown sentence.
    """
    here = {}
    # the product is set by a run's config: the missing runs' count too (a network whose
    # decayed runs are not at hand would otherwise show its undecayed runs' 0)
    configs = [r.config for r in results.all_runs] + list(getattr(results, "missing", ()))
    for c in configs:  # the largest decay's product, one per network
        if c.model not in here or c.weight_decay > here[c.model][0]:
            here[c.model] = (c.weight_decay, shrinkage(c, len(results.data.y_train)))
    paper = {c.model: shrinkage(c, 55_000) for c in SETTINGS["paper"].runs() if c.weight_decay}
    wd = max(w for w, _ in here.values())
    listed = ", ".join(f"{names.display(m)} {v:.3g}" for m, (_, v) in here.items())
    sentence = (
        f"Weight decay acts through the product of learning rate, decay and the number of steps;"
        f" at weight decay {wd:g} it is {listed}"
    )
    if get_profile(profile).name == "paper":
        return sentence + "."
    theirs = ", ".join(f"{names.display(m)} {paper[m]:.3g}" for m in here if m in paper)
    return (
        f"{sentence}, against {theirs} for the `paper` profile (weight decay 5e-4 for 300 epochs"
        " of MNIST, at the learning rates chosen there)."
    )
