"""Training used as a researcher would: odd settings, hand-edited stores, one message each."""

import json

import pytest

from flatness import cli
from flatness.results.store import Store


def _cli(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


SMOKE = ("--profile", "smoke", "-p", "epochs", "1", "-p", "hessian_every", "0")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-p", "model", "lenet5"], "-p model: set the model with the MODEL argument"),
        (["-p", "optimiser", "adam"], "-p optimiser: set the optimiser with --optimiser"),
        (["-p", "seed", "1", "--seeds", "2"], "-p seed and --seeds both given"),
        (["-p", "weight_decay", "0", "--wd", "0.1"], "-p weight_decay and --wd both given"),
        (["-p", "seed", "-1"], "seed must be at least 0, got -1"),
        (["-p", "weight_decay", "nan"], "weight_decay must be finite"),
    ],
)
def test_run_identity_fields_given_by_p_are_one_message(tmp_path, capsys, extra, message):
    results = tmp_path / "results"
    code, out, err = _cli(capsys, "run", "mlp-10-100", *SMOKE, "--results", str(results), *extra)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not results.exists()


def test_p_seed_and_weight_decay_set_the_run(tmp_path, capsys):
    results = tmp_path / "results"
    args = ("run", "logreg", *SMOKE, "--results", str(results))
    code, out, err = _cli(capsys, *args, "-p", "seed", "3", "-p", "weight_decay", "0.02")
    assert code == 0, err
    (run,) = Store(results).runs()
    assert (run.config.seed, run.config.weight_decay) == (3, 0.02)


def test_train_size_beyond_the_data_is_refused_before_the_store_is_touched(tmp_path, capsys):
    results = tmp_path / "results"
    code, out, err = _cli(
        capsys, "run", "mlp-10-100", *SMOKE, "--results", str(results), "-p", "train_size", "5000"
    )
    assert code == 2
    assert "train_size=5000 is more than the 1077 examples" in err
    assert out == "" and not results.exists()


def test_ls_and_run_print_a_hand_emptied_metrics_file_without_crashing(tmp_path, capsys):
    metrics = {}
    results = tmp_path / "results"
    args = ("run", "mlp-10-100", *SMOKE, "--results", str(results))
    assert _cli(capsys, *args)[0] == 0
    (run,) = Store(results).runs()
    (run.path / "metrics.json").write_text(json.dumps(metrics))

    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    row = out.strip().splitlines()[-1].split()
    assert row[0] == run.key and row[3:] == ["nan"] * 4

    code, out, err = _cli(capsys, "ls", "--results", str(results))
    assert code == 0, err
    row = out.strip().splitlines()[-1].split()
    assert row[0] == run.key and row[8:10] == ["nan", "nan"]  # after lr, wd, seed, epochs


@pytest.mark.parametrize(
    ("metrics", "named"),
    [
        ({"test_acc": "high", "lambda_max": None, "weight_norm": True}, "'high' for test_acc"),
        ({"trace": [1]}, "[1] for trace"),
    ],
)
def test_text_where_a_metric_belongs_makes_the_run_damaged_not_a_row_of_nan(
    tmp_path, capsys, metrics, named
):
    results = tmp_path / "results"
    args = ("run", "mlp-10-100", *SMOKE, "--results", str(results))
    assert _cli(capsys, *args)[0] == 0
    (run,) = Store(results).runs()
    (run.path / "metrics.json").write_text(json.dumps(metrics))
    assert Store(results).runs() == [] and len(Store(results).damaged()) == 1

    code, out, err = _cli(capsys, *args)
    assert code == 2 and f"metrics.json holds {named}, where a number belongs" in err
    code, out, err = _cli(capsys, "ls", "--results", str(results))
    assert code == 0 and "1 damaged run folder(s)" in out and named in out


def test_averaging_from_epoch_zero_runs_every_epoch_at_the_averaging_rate():
    from flatness.training.loop import learning_rate
    from flatness.training.recipes import run_config
    from flatness.training.schedules import factor

    cfg = run_config("mlp-10-100", "swa", "smoke", average_start=0, epochs=3)
    assert [learning_rate(cfg, e) for e in range(3)] == [0.02] * 3
    # the same rule at a later start: the schedule's horizon, then the averaging rate
    rates = [factor("linear", e, epochs=10, average_start=4, average_ratio=0.2) for e in range(6)]
    assert rates == pytest.approx([1.0, 1.0, 1.0, 1.0 - 0.8 * 0.25 / 0.4, 0.2, 0.2])


@pytest.mark.parametrize("model", [3, None, ["mlp"]])
def test_a_model_that_is_not_a_name_is_one_message(model):
    from flatness.errors import FlatnessError
    from flatness.training.recipes import run_config

    with pytest.raises(FlatnessError, match="unknown model .* valid choices: 'logreg'"):
        run_config(model, "sgd", "smoke")


@pytest.mark.parametrize("train_size,batch_size", [(3, 2), (5, 1), (257, 128)])
def test_a_batch_of_one_that_batchnorm_cannot_take_is_refused_before_training(
    train_size, batch_size
):
    from flatness.errors import FlatnessError
    from flatness.training.loop import train
    from flatness.training.recipes import run_config

    # VGG's last BatchNorm sees a 1x1 map on 8x8 digits: one value per channel in a batch of one
    cfg = run_config(
        "vgg16-bn", "sgd", "smoke", train_size=train_size, batch_size=batch_size, epochs=1
    )
    with pytest.raises(FlatnessError, match=f"batch_size {batch_size} on {train_size} training"):
        train(cfg, device="cpu", callback=lambda *a: pytest.fail("training began"))


def test_batches_of_one_train_where_batchnorm_takes_them():
    from flatness.training.loop import train
    from flatness.training.recipes import run_config

    # PreResNet's smallest map on 8x8 digits is 2x2 (four values per channel); no BN in the MLP
    for model in ("preresnet-8", "mlp-10-100"):
        cfg = run_config(
            model, "sgd", "smoke", train_size=3, batch_size=2, epochs=1, hessian_every=0
        )
        result = train(cfg, device="cpu")
        assert result.metrics["train_examples"] == 3


def test_a_results_store_that_is_a_file_or_cannot_be_made_is_one_message(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a store")
    for command in (["ls"], ["run", "logreg", *SMOKE]):
        code, out, err = _cli(capsys, *command, "--results", str(a_file))
        assert code == 2 and f"the results store {a_file} is not a folder" in err
    below_a_file = a_file / "results"
    code, out, err = _cli(capsys, "run", "logreg", *SMOKE, "--results", str(below_a_file))
    assert code == 2 and f"cannot create the results store's folder {below_a_file}" in err
    assert a_file.read_text() == "not a store"


def test_plan_refuses_a_step_times_file_it_could_not_write_before_timing(tmp_path, capsys):
    target = tmp_path / "missing" / "times.json"
    code, out, err = _cli(capsys, "plan", "--profile", "smoke", "--save-step-times", str(target))
    assert code == 2 and f"the folder {target.parent} does not exist" in err
    assert out == ""


@pytest.mark.parametrize("optimiser", ["swa", "gadam"])
def test_one_epoch_of_an_averaging_recipe_names_the_epochs(optimiser):
    from flatness.errors import FlatnessError
    from flatness.training.recipes import run_config

    with pytest.raises(FlatnessError, match=f"^{optimiser} averages .* epochs must be at least 2"):
        run_config("mlp-10-100", optimiser, "smoke", epochs=1)
    # with a start of 0 the one epoch is averaged, which is a valid run
    assert run_config("mlp-10-100", optimiser, "smoke", epochs=1, average_start=0).averaging


def test_a_failed_record_without_its_config_is_damaged_naming_the_entry(tmp_path):
    from flatness.results.entries import Damaged
    from flatness.training.recipes import run_config

    store = Store(tmp_path)
    cfg = run_config("mlp-10-100", "sgd", "smoke")
    store.record_failure(cfg, "the loss is nan")
    (store.path(cfg) / "failed.json").write_text(json.dumps({"message": "m", "time": "t"}))
    found = store.inspect(cfg)
    assert isinstance(found, Damaged) and found.reason == "failed.json lacks the entry 'config'"


@pytest.mark.parametrize("flag,compiled", [([], False), (["--compile"], True)])
def test_run_compile_reaches_training(tmp_path, capsys, monkeypatch, flag, compiled):
    from types import SimpleNamespace

    import numpy as np

    import flatness.training.loop

    seen = []

    def fake_train(config, *, compile=False, **kwargs):
        seen.append(compile)
        return SimpleNamespace(metrics={"test_acc": 0.5}, arrays={"x": np.zeros(1)})

    monkeypatch.setattr(flatness.training.loop, "train", fake_train)
    code, out, err = _cli(capsys, "run", "logreg", *SMOKE, "--results", str(tmp_path), *flag)
    assert code == 0, err
    # the smoke profile trains logreg at two decays with two seeds
    assert seen == [compiled] * 4


def test_load_or_run_takes_the_store_as_a_folder(tmp_path):
    from flatness.results.runs import load_or_run
    from flatness.training.recipes import run_config

    cfg = run_config("logreg", "sgd", "smoke", epochs=1, hessian_every=0, weight_decay=0.0)
    run = load_or_run(cfg, store=str(tmp_path), device="cpu")
    assert run.path == tmp_path / cfg.key()
    assert load_or_run(cfg, store=tmp_path).metrics == run.metrics


@pytest.mark.parametrize("seed", [2**32, 2**64, 1e30])
def test_a_seed_beyond_the_generators_range_is_one_message(tmp_path, capsys, seed):
    results = tmp_path / "results"
    code, out, err = _cli(
        capsys, "run", "logreg", *SMOKE, "--results", str(results), "-p", "seed", str(seed)
    )
    assert code == 2 and "seed must be below 2**32 = 4294967296" in err
    assert not results.exists()


def test_the_largest_seed_trains_and_is_measured():
    from flatness.training.loop import train
    from flatness.training.recipes import run_config

    cfg = run_config("mlp-10-100", "sgd", "smoke", seed=2**32 - 1, epochs=1, train_size=20)
    result = train(cfg, device="cpu")
    assert 0 <= result.metrics["test_acc"] <= 1 and result.metrics["lambda_max"] > 0


def test_ls_into_a_pipe_closed_early_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    # `true` exits without reading, so every write of ls meets a closed pipe
    command = f"{sys.executable} -m flatness ls --results {tmp_path} | true"
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert done.stderr == ""


def test_a_diverged_run_is_recorded_and_the_rest_of_the_grid_still_trains(tmp_path, capsys):
    # coupled L2 of 1e6 at lr 0.1 multiplies the weights by about 1e5 a step: they overflow
    code, out, err = _cli(
        capsys, "run", "logreg", "--profile", "smoke", "--wd", "1e6", "0", "--seeds", "0",
        "--epochs", "2", "--results", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    assert "diverged (recorded)" in out and "1 of 2 run(s) diverged" in err
    store = Store(tmp_path)
    assert len(store.failed()) == 1 and len(store.runs()) == 1
    assert store.runs()[0].config.weight_decay == 0.0


def test_a_grid_rerun_past_a_failed_run_still_trains_the_others(tmp_path, capsys):
    base = ("run", "logreg", "--profile", "smoke", "--epochs", "2", "--results", str(tmp_path))
    code, _, _ = _cli(capsys, *base, "--wd", "1e6", "--seeds", "0")
    assert code == 2
    code, out, err = _cli(capsys, *base, "--wd", "1e6", "0", "--seeds", "0")
    assert code == 2 and "refused (see below)" in out and "1 of 2 run(s) gave no result" in err
    store = Store(tmp_path)
    assert len(store.failed()) == 1 and [r.config.weight_decay for r in store.runs()] == [0.0]
