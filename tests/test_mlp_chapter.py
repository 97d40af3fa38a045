"""The MLP chapter's weight-decay sentence, against lr x wd x steps counted by hand."""

from types import SimpleNamespace

import numpy as np

from flatness.chapters import mlp
from flatness.training.config import RunConfig


def _results(train_examples, *configs, missing=()):
    runs = [SimpleNamespace(config=c) for c in configs]
    data = SimpleNamespace(y_train=np.zeros(train_examples))
    return SimpleNamespace(all_runs=runs, data=data, missing=tuple(missing))


def _config(model, lr, weight_decay, epochs=10, batch_size=100):
    return RunConfig(
        model=model,
        dataset="digits",
        seed=0,
        lr=lr,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
    )


def test_each_network_gets_its_own_product_of_lr_decay_and_steps():
    small = _config("mlp-10-100", 0.1, 0.01)
    wide = _config("mlp-512-256", 0.3, 0.01)
    no_decay = _config("mlp-10-100", 0.1, 0.0)
    # 1,001 examples in batches of 100: 11 steps an epoch, 110 in all
    sentence = mlp.shrinkage_sentence(_results(1001, no_decay, small, wide), "cpu")
    assert "at weight decay 0.01 it is MLP 10-100 0.11, MLP 512-256 0.33, against" in sentence
    # the paper profile's: 0.01 / 0.03 x 5e-4 x 300 epochs x ceil(55,000 / 128) = 430 steps
    assert "MLP 10-100 0.645, MLP 512-256 1.94 for the `paper` profile" in sentence


def test_the_paper_profile_is_not_compared_with_itself():
    run = _config("mlp-5-200-50", 0.01, 5e-4, epochs=300, batch_size=128)
    sentence = mlp.shrinkage_sentence(_results(55_000, run), "paper")
    assert sentence.endswith("at weight decay 0.0005 it is MLP 5-200-50 0.645.")
    assert "against" not in sentence


def test_a_network_whose_decayed_runs_are_missing_gets_their_product_not_zero():
    small = _config("mlp-10-100", 0.1, 0.01)
    wide, wide_decayed = _config("mlp-512-256", 0.3, 0.0), _config("mlp-512-256", 0.3, 0.01)
    sentence = mlp.shrinkage_sentence(_results(1001, small, wide, missing=[wide_decayed]), "cpu")
    assert "at weight decay 0.01 it is MLP 10-100 0.11, MLP 512-256 0.33, against" in sentence
