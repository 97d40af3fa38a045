"""The MLP chapter's weight-decay sentence, against lr x wd x steps counted by hand."""

from types import SimpleNamespace

import numpy as np

from flatness.chapters import mlp
from flatness.config import RunConfig


def _results(train_examples, *configs):
    runs = [SimpleNamespace(config=c) for c in configs]
    return SimpleNamespace(all_runs=runs, data=SimpleNamespace(y_train=np.zeros(train_examples)))


def test_each_network_gets_its_own_product_of_lr_decay_and_steps():
    small = RunConfig(
        model="mlp-10-100",
        dataset="digits",
        seed=0,
        lr=0.1,
        weight_decay=0.01,
        epochs=10,
        batch_size=100,
    )
    wide = RunConfig(
        model="mlp-512-256",
        dataset="digits",
        seed=0,
        lr=0.3,
        weight_decay=0.01,
        epochs=10,
        batch_size=100,
    )
    no_decay = RunConfig(
        model="mlp-10-100",
        dataset="digits",
        seed=0,
        lr=0.1,
        weight_decay=0.0,
        epochs=10,
        batch_size=100,
    )
    # 1,001 examples in batches of 100: 11 steps an epoch, 110 in all
    sentence = mlp.shrinkage_sentence(_results(1001, no_decay, small, wide), "cpu")
    assert "at weight decay 0.01 it is mlp-10-100 0.11, mlp-512-256 0.33, against" in sentence
    # the paper profile's: 0.01 / 0.03 x 5e-4 x 300 epochs x ceil(55,000 / 128) = 430 steps
    assert "mlp-10-100 0.645, mlp-512-256 1.94 for the `paper` profile" in sentence


def test_the_paper_profile_is_not_compared_with_itself():
    run = RunConfig(
        model="mlp-5-200-50",
        dataset="digits",
        seed=0,
        lr=0.01,
        weight_decay=5e-4,
        epochs=300,
        batch_size=128,
    )
    sentence = mlp.shrinkage_sentence(_results(55_000, run), "paper")
    assert sentence.endswith("at weight decay 0.0005 it is mlp-5-200-50 0.645.")
    assert "against" not in sentence
