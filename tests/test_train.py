"""Training: per-epoch metrics, exact measures along the way, determinism, divergence."""

import numpy as np
import pytest
import torch

from flatness import data, hessian
from flatness.config import RunConfig
from flatness.errors import FlatnessError
from flatness.store import Store, load_or_run
from flatness.train import SERIES, load_model, train

TINY = dict(model="logreg", dataset="digits", seed=0, epochs=4, train_size=120, batch_size=32)


def test_training_records_every_epoch_and_the_exact_final_measures():
    cfg = RunConfig(weight_decay=1e-3, **TINY)
    result = train(cfg, device="cpu")
    a = result.arrays
    assert set(SERIES) <= set(a)
    assert a["epoch"].tolist() == [1, 2, 3, 4]
    assert a["train_loss"][-1] < a["train_loss"][0]
    assert np.all(np.isfinite(a["lambda_max"]))
    # the stored final measures are those of the stored final weights
    d = data.load("digits", train_size=120)
    model = load_model(cfg, a, d.input_dim, d.num_classes)
    m = hessian.Measures.of(
        hessian.exact_hessian(model, torch.nn.functional.cross_entropy, (d.x_train, d.y_train))
    )
    assert result.metrics["lambda_max"] == pytest.approx(m.lambda_max, rel=1e-9)
    assert result.metrics["trace"] == pytest.approx(m.trace, rel=1e-9)
    assert result.metrics["frobenius"] == pytest.approx(m.frobenius, rel=1e-9)
    assert result.metrics["weight_norm"] == pytest.approx(hessian.weight_norm(model), rel=1e-6)


def test_same_seed_same_run_and_other_seed_other_run():
    cfg = RunConfig(weight_decay=0.0, **TINY)
    a, b = train(cfg, device="cpu").arrays, train(cfg, device="cpu").arrays
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = train(RunConfig(weight_decay=0.0, **{**TINY, "seed": 1}), device="cpu").arrays
    assert not np.array_equal(a["param.weight"], c["param.weight"])


def test_hessian_every_skips_epochs_but_measures_the_last():
    cfg = RunConfig(weight_decay=0.0, hessian_every=3, **TINY)
    lam = train(cfg, device="cpu").arrays["lambda_max"]
    assert np.isnan(lam[[0, 1]]).all() and np.isfinite(lam[[2, 3]]).all()  # epochs 3 and 4
    never = train(RunConfig(weight_decay=0.0, hessian_every=0, **TINY), device="cpu").arrays
    assert np.isnan(never["lambda_max"]).all() and np.isfinite(never["train_loss"]).all()


def test_weight_decay_shrinks_the_weights():
    norms = [
        train(RunConfig(weight_decay=wd, **TINY), device="cpu").metrics["weight_norm"]
        for wd in (0.0, 0.1)
    ]
    assert norms[1] < norms[0]


def test_a_diverging_run_says_so_and_stores_nothing(tmp_path):
    cfg = RunConfig(weight_decay=0.0, **{**TINY, "lr": 1e38})
    with pytest.raises(FlatnessError, match="diverged.*Lower lr"):
        load_or_run(cfg, store=Store(tmp_path), device="cpu")
    assert Store(tmp_path).runs() == [] and not any(tmp_path.iterdir())
