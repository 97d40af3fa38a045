"""The chapter "A simple CNN": claim C3 for a convolutional network.

The paper's "simple CNN" is most likely All-CNN-C (1,387,108 parameters with a CIFAR-100 head;
``../shared/paper-notes.md`` section 4), trained on CIFAR-100 with SGD at weight decay 0 and
5e-4: that is the ``paper`` profile. CIFAR is not available offline and All-CNN-C needs a GPU,
so ``cpu`` trains LeNet-5 on scikit-learn's digits instead for 30 epochs at lr 0.03
(:data:`CPU_LENET_LR`, chosen on validation data), comparing weight decay 0 with 1e-2 (its
lr x wd x steps is of the order of the paper's; see the MLP chapter), and
measures the Hessian on a fixed subset of 128 training images (a convolution's Hessian-vector
product costs about 0.3 s on all 1,077 here).
"""

from __future__ import annotations

from flatness.chapters.common import TrainingSettings, decay_arms, decay_comparisons
from flatness.profiles import get_profile

PAPER_DECAYS = (0.0, 5e-4)
CPU_DECAYS = (0.0, 1e-2)
#: LeNet-5's SGD lr at ``cpu``, chosen on validation data by
#: ``python benchmarks/mlp_lr.py --profile cpu --models lenet5 --lrs 0.1 0.03 --decays 0 0.01
#: --seeds 0 1 2 --epochs 30 --results STORE``: at the recipes' 0.1, seed 0 at weight decay 0.01
#: collapsed to chance (validation accuracy 0.100, training loss 2.3025 = ln 10); at 0.03 no run
#: collapsed, and the worst minimum validation accuracy over the second half of training, over
#: both decays and three seeds, was 0.353 against 0.097 at 0.1.
CPU_LENET_LR = 0.03


def _settings(
    profile, model, decays, seeds, dataset, model_overrides=None, **overrides
) -> TrainingSettings:
    return TrainingSettings(
        profile=profile,
        dataset=dataset,
        seeds=seeds,
        arms=decay_arms((model,), decays),
        comparisons=decay_comparisons((model,), decays),
        overrides=overrides,
        model_overrides=model_overrides or {},
    )


SETTINGS = {
    "smoke": _settings(
        "smoke",
        "lenet5",
        CPU_DECAYS,
        (0, 1),
        "digits",
        epochs=2,
        hessian_every=2,
        hessian_examples=64,
        width=0.5,
    ),
    "cpu": _settings(
        "cpu",
        "lenet5",
        CPU_DECAYS,
        (0, 1, 2),
        "digits",
        {"lenet5": {"lr": CPU_LENET_LR}},
        epochs=30,
        hessian_every=15,
        hessian_rtol=0.2,
        hessian_max_probes=32,
        hessian_examples=128,
        slq_steps=20,
    ),
    "paper": _settings("paper", "allcnn", PAPER_DECAYS, (0, 1, 2), None),
}


def settings(profile: str, **overrides) -> TrainingSettings:
    """The profile's settings with the chapter parameters that are not ``None`` replaced."""
    return SETTINGS[get_profile(profile).name].with_overrides(**overrides)


def grid(profile: str) -> list:
    """The runs this chapter's figures read at ``profile`` (:class:`~flatness.training.config.RunConfig`)."""
    return settings(profile).runs()
