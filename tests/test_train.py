"""Training: per-epoch metrics, exact measures, optimisers, schedules, averaging, divergence."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from flatness import data, hessian
from flatness.errors import FlatnessError, RunDiverged
from flatness.training import schedules
from flatness.training.config import RunConfig
from flatness.training.loop import SERIES, learning_rate, load_model, make_optimiser, train

TINY = dict(model="logreg", dataset="digits", seed=0, epochs=4, train_size=120, batch_size=32)


def test_training_records_every_epoch_and_the_exact_final_measures():
    cfg = RunConfig(weight_decay=1e-3, **TINY)
    result = train(cfg, device="cpu")
    a = result.arrays
    assert set(SERIES) <= set(a)
    assert a["epoch"].tolist() == [1, 2, 3, 4]
    assert a["train_loss"][-1] < a["train_loss"][0]
    assert np.all(np.isfinite(a["lambda_max"])) and np.all(a["trace_se"] == 0)
    # the stored final measures are those of the stored final weights, from a dense Hessian
    d = data.load("digits", train_size=120)
    model = load_model(cfg, a, d.input_shape, d.num_classes)
    h = hessian.exact_hessian(model, nn.functional.cross_entropy, (d.x_train, d.y_train))
    m = hessian.Measures.of(h)
    assert result.metrics["lambda_max"] == pytest.approx(m.lambda_max, rel=1e-9)
    assert result.metrics["trace"] == pytest.approx(m.trace, rel=1e-9)
    assert result.metrics["frobenius"] == pytest.approx(m.frobenius, rel=1e-9)
    assert np.allclose(a["eigenvalues"], torch.linalg.eigvalsh(h).numpy(), atol=1e-10)
    assert result.metrics["weight_norm"] == pytest.approx(hessian.weight_norm(model), rel=1e-6)
    # validation accuracy comes from the validation split, not the test split
    assert a["val_acc"][-1] != a["test_acc"][-1] or a["val_loss"][-1] != a["test_loss"][-1]


def test_same_seed_same_run_and_other_seed_other_run():
    cfg = RunConfig(weight_decay=0.0, **TINY)
    a, b = train(cfg, device="cpu").arrays, train(cfg, device="cpu").arrays
    same = [k for k in a if not k.endswith("seconds")]
    assert all(np.array_equal(a[k], b[k]) for k in same)
    c = train(RunConfig(weight_decay=0.0, **{**TINY, "seed": 1}), device="cpu").arrays
    assert not np.array_equal(a["state.weight"], c["state.weight"])


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


def test_a_diverging_run_names_the_run_and_the_epoch():
    cfg = RunConfig(weight_decay=0.0, **{**TINY, "lr": 1e38})
    with pytest.raises(FlatnessError, match=r"logreg/digits.*epoch 1.*diverged.*Lower lr"):
        train(cfg, device="cpu")


def _counted_measurements(monkeypatch) -> list:
    import flatness.training.loop as training

    measured = []
    real = training._measure
    monkeypatch.setattr(
        training,
        "_measure",
        lambda run, epoch, final: measured.append(final) or real(run, epoch, final=final),
    )
    return measured


@pytest.mark.parametrize("lr", [1e6])
def test_a_run_ending_far_above_chance_loss_diverged_and_is_not_measured(lr, monkeypatch):
    # finite but huge losses: NaN never came, yet the network is confidently wrong
    measured = _counted_measurements(monkeypatch)
    cfg = RunConfig(weight_decay=0.0, **{**TINY, "lr": lr, "hessian_every": 2})
    with pytest.raises(
        RunDiverged, match=r"after the last epoch, above 2 x ln K = 4\.605 \(K = 10"
    ):
        train(cfg, device="cpu")
    assert measured == [False]  # the epoch-2 measurement ran; the final one did not


def test_a_run_whose_weights_overflow_diverged_at_once_and_is_never_measured(monkeypatch):
    # lr 1e30: the loss stays finite for an epoch, the weights' norm is beyond float32's reach
    measured = _counted_measurements(monkeypatch)
    cfg = RunConfig(weight_decay=0.0, **{**TINY, "lr": 1e30, "hessian_every": 1})
    with pytest.raises(RunDiverged, match=r"weights' norm is .* after epoch 1, beyond 1\.8e\+19"):
        train(cfg, device="cpu")
    assert measured == []


def test_weights_that_blow_up_beside_a_finite_loss_are_a_diverged_run():
    # a hidden unit of norm 1e31 whose output weights are 0: the loss does not see it
    cfg = RunConfig(
        model="mlp-10-100",
        dataset="digits",
        weight_decay=0.0,
        seed=0,
        epochs=2,
        train_size=200,
        batch_size=64,
        hessian_every=0,
    )

    def blow_up(epoch, model):
        first, second = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][:2]
        with torch.no_grad():
            first.weight[0] = 1e31
            second.weight[:, 0] = 0.0

    with pytest.raises(
        RunDiverged, match=r"weights' norm is [0-9.]+e\+3[12] after epoch 1.*loss is finite"
    ):
        train(cfg, device="cpu", callback=blow_up)


def test_a_run_ending_below_twice_chance_loss_is_kept():
    result = train(RunConfig(weight_decay=0.0, **TINY), device="cpu")
    assert result.metrics["train_loss"] < 2 * math.log(10)


# --- optimisers: coupled and decoupled decay, one step by hand ------------------------------


def _one_step(optimiser: str, wd: float, lr: float = 0.1):
    p0 = torch.tensor([1.0, -2.0, 0.5])
    g = torch.tensor([0.3, 0.1, -0.2])
    p = nn.Parameter(p0.clone())
    cfg = RunConfig(weight_decay=wd, optimiser=optimiser, **{**TINY, "lr": lr})
    opt = make_optimiser(cfg, [p])
    p.grad = g.clone()
    opt.step()
    return p0, g, p.detach()


def test_sgd_adds_the_decay_to_the_gradient():
    p0, g, p1 = _one_step("sgd", 0.01)
    assert torch.allclose(p1, p0 - 0.1 * (g + 0.01 * p0), atol=1e-7)


def test_adam_couples_and_adamw_decouples_the_decay():
    eps = 1e-8
    # Adam's first step with bias correction is lr * m / (sqrt(v) + eps) with m = g', v = g'^2
    p0, g, adam = _one_step("adam", 0.5)
    coupled = g + 0.5 * p0
    assert torch.allclose(adam, p0 - 0.1 * coupled / (coupled.abs() + eps), atol=1e-6)
    p0, g, adamw = _one_step("adamw", 0.5)
    assert torch.allclose(adamw, p0 * (1 - 0.1 * 0.5) - 0.1 * g / (g.abs() + eps), atol=1e-6)
    assert not torch.allclose(adam, adamw, atol=1e-3)


# --- schedules ----------------------------------------------------------------------------


def test_constant_and_linear_schedules_give_the_documented_rates():
    constant = RunConfig(weight_decay=0.0, schedule="constant", **{**TINY, "epochs": 10})
    assert [learning_rate(constant, e) for e in range(10)] == [0.1] * 10
    linear = RunConfig(weight_decay=0.0, **{**TINY, "epochs": 10})
    # t = e / 10: 1 up to t = 0.5, then 1 - 0.99 (t - 0.5) / 0.4, then 0.01 from t = 0.9
    expected = [1, 1, 1, 1, 1, 1, 1 - 0.99 * 0.25, 1 - 0.99 * 0.5, 1 - 0.99 * 0.75, 0.01]
    assert np.allclose([learning_rate(linear, e) for e in range(10)], np.array(expected) * 0.1)
    # with averaging the horizon is the averaging start and the floor the averaging lr
    swa = RunConfig(weight_decay=0.0, average_start=8, average_lr=0.02, **{**TINY, "epochs": 12})
    rates = [learning_rate(swa, e) for e in range(12)]
    assert rates[:5] == [0.1] * 5  # t = e / 8 <= 0.5
    assert rates[5] == pytest.approx(0.1 * (1 - 0.8 * (5 / 8 - 0.5) / 0.4))
    assert rates[8:] == [pytest.approx(0.02)] * 4


def test_the_recorded_learning_rates_follow_the_schedule():
    cfg = RunConfig(weight_decay=0.0, hessian_every=0, **{**TINY, "epochs": 6})
    lr = train(cfg, device="cpu").arrays["lr"]
    assert np.allclose(lr, [learning_rate(cfg, e) for e in range(6)])


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_every_schedule_starts_at_lr_and_never_rises(name):
    f = [schedules.factor(name, e, epochs=20) for e in range(20)]
    assert f[0] == 1.0 and all(b <= a + 1e-12 for a, b in zip(f, f[1:]))


# --- averaging ------------------------------------------------------------------------------


def test_averaging_equals_the_mean_of_the_iterates_it_collects():
    cfg = RunConfig(
        weight_decay=0.0, average_start=2, average_lr=0.05, hessian_every=0, **{**TINY, "epochs": 5}
    )
    iterates = []
    result = train(
        cfg,
        device="cpu",
        callback=lambda epoch, m: iterates.append(m.weight.detach().clone()),
    )
    mean = torch.stack(iterates[2:]).mean(0)  # the ends of epochs 3, 4 and 5
    assert torch.allclose(torch.as_tensor(result.arrays["state.weight"]), mean, atol=1e-6)
    assert not torch.allclose(mean, iterates[-1], atol=1e-4)
    assert result.arrays["averaged"].tolist() == [0, 0, 1, 1, 1]
    assert result.metrics["averaged"] is True


def test_batchnorm_statistics_are_recomputed_for_the_average():
    cfg = RunConfig(
        model="vgg16-bn",
        dataset="digits",
        width=1 / 16,
        train_size=96,
        batch_size=32,
        epochs=3,
        weight_decay=0.0,
        seed=0,
        optimiser="adamw",
        lr=1e-3,
        average_start=1,
        average_lr=5e-4,
        hessian_every=0,
    )
    trained = []
    result = train(cfg, device="cpu", callback=lambda e, m: trained.append(m))
    d = data.load("digits", train_size=96)
    model = load_model(cfg, result.arrays, d.input_shape, d.num_classes)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    # by hand: update_bn's cumulative average of the batch means of the first conv's output
    with torch.no_grad():
        means = [first_conv(x).mean(dim=(0, 2, 3)) for x in d.x_train.split(32)]
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    trained_bn = next(m for m in trained[-1].modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.allclose(bn.running_mean, trained_bn.running_mean, atol=1e-4)


# --- measurements of larger networks ----------------------------------------------------------


def test_networks_beyond_the_exact_limit_get_estimates_with_standard_errors():
    cfg = RunConfig(
        model="mlp-10-100",
        dataset="digits",
        train_size=200,
        epochs=2,
        weight_decay=0.0,
        seed=0,
        batch_size=64,
        hessian_every=2,
        hessian_rtol=0.1,
        slq_steps=10,
    )
    result = train(cfg, device="cpu")
    m = result.metrics
    assert m["parameters"] > 2000
    assert m["trace_se"] > 0 and m["trace_se"] <= 0.1 * abs(m["trace"]) * 1.01
    assert m["frobenius_se"] > 0 and m["lambda_max"] > 0
    assert m["lambda_max"] <= m["frobenius"] + 3 * m["frobenius_se"]
    assert result.arrays["slq_nodes"].shape == (1, 10)
    assert np.isclose(result.arrays["slq_weights"].sum(), 1.0)
    assert m["hessian_seconds"] > 0 and m["train_seconds"] > 0


def test_batchnorm_networks_are_measured_in_both_modes():
    cfg = RunConfig(
        model="preresnet-20",
        dataset="digits",
        width=1 / 8,
        train_size=64,
        epochs=1,
        batch_size=32,
        weight_decay=5e-4,
        seed=0,
        hessian_rtol=0.2,
    )
    m = train(cfg, device="cpu").metrics
    for suffix in ("", "_bn_train"):
        assert math.isfinite(m[f"lambda_max{suffix}"]) and m[f"trace_se{suffix}"] >= 0
    assert m["lambda_max"] != m["lambda_max_bn_train"]


def test_the_progress_bar_says_when_it_measures_the_hessian(capsys):
    train(RunConfig(weight_decay=0.0, **{**TINY, "hessian_every": 2}), device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "measuring the Hessian after epoch 2" in err and "after epoch 4" in err, err[-500:]
