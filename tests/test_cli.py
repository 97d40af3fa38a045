"""The command line: runs, listing, and one clear message (exit 2) for bad input."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from flatness.models import names

MODELS = set(names())


def flatness(*args, results, cwd=ROOT):
    env = {**os.environ, "FLATNESS_RESULTS": str(results), "FLATNESS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flatness", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


@pytest.mark.parametrize(
    "args,listed",
    [
        (["run", "logreg", "--profile", "huge"], "'smoke', 'cpu', 'paper'"),
        (["run", "resnet"], "'logreg', 'mlp'"),
        (["run", "logreg", "--optimiser", "rmsprop"], "'sgd', 'adam', 'adamw', 'swa', 'gadam'"),
        (["run", "logreg", "--device", "tpu"], "use cpu, cuda"),
        (["run", "logreg", "-p", "lr", "[1, "], "-p lr: cannot read"),
        (["run", "logreg", "-p", "lr", "-0.01"], "lr must be above 0"),
        (["run", "logreg", "-p", "colour", "red"], "unknown run setting 'colour'"),
        (["run", "logreg", "--dataset", "cifar"], "'digits', 'mnist', 'fashion-mnist'"),
        (["chapter", "nope", "--profile", "smoke"], "'logreg'"),
        (["chapter", "logreg", "--profile", "smoke", "-p", "sed", "1"], "'seeds'"),
        (["chapter", "logreg", "--profile", "nope"], "'smoke', 'cpu', 'paper'"),
        (["book", "--profile", "nope"], "'smoke', 'cpu', 'paper'"),
    ],
)
def test_unknown_names_list_the_valid_ones_and_write_nothing(tmp_path, args, listed):
    done = flatness(*args, results=tmp_path / "results")
    assert done.returncode == 2, done.stderr
    assert listed in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()


def test_missing_data_offline_is_one_message(tmp_path):
    (tmp_path / "nothing").mkdir()
    done = flatness(
        "run",
        "logreg",
        "--profile",
        "smoke",
        "--dataset",
        "mnist",
        "--data-root",
        str(tmp_path / "nothing"),
        results=tmp_path / "results",
    )
    assert done.returncode == 2
    assert "train-images-idx3-ubyte" in done.stderr and "dataset='digits'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()


def test_run_then_ls(tmp_path):
    results = tmp_path / "results"
    done = flatness(
        "run",
        "logreg",
        "--profile",
        "smoke",
        "--wd",
        "0",
        "1e-2",
        "--seeds",
        "0",
        "--epochs",
        "2",
        results=results,
    )
    assert done.returncode == 0, done.stderr
    assert "2 run(s) of logreg with sgd on digits" in done.stdout
    listing = flatness("ls", results=results)
    assert listing.returncode == 0
    assert "2 run(s)" in listing.stdout
    assert len([p for p in results.iterdir() if not p.name.startswith(".")]) == 2
    keys = {line.split()[0] for line in done.stdout.splitlines()[2:]}
    assert keys <= set(listing.stdout.split())


def test_a_wrong_parameter_type_reaching_a_chapter_is_bad_input(tmp_path):
    done = flatness(
        "chapter",
        "logreg",
        "--profile",
        "smoke",
        "-p",
        "seeds",
        "abc",
        "--out",
        str(tmp_path),
        results=tmp_path / "results",
    )
    assert done.returncode == 2, done.stderr
    assert "chapter logreg: seeds must be a list of integers, got 'abc'" in done.stderr
    assert not (tmp_path / "results").exists()


def test_run_fields_read_like_numbers_and_any_optimiser_trains(tmp_path):
    results = tmp_path / "results"
    done = flatness(
        "run", "mlp-10-100", "--optimiser", "gadam", "--profile", "smoke",
        "-p", "lr", "1e-2", "-p", "hessian_every", "0", "-p", "epochs", "4",
        results=results,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 run(s) of mlp-10-100 with gadam on digits" in done.stdout
    (config,) = results.glob("*/config.json")
    stored = json.loads(config.read_text())
    assert stored["lr"] == 0.01 and stored["optimiser"] == "adamw"
    # the paper's averaging start, 161 of 300 epochs, scaled to 4 epochs: round(2.15) = 2
    assert stored["average_start"] == 2 and stored["average_lr"] == 5e-4 and stored["epochs"] == 4


def test_parameter_values_are_numbers_where_they_look_like_numbers():
    from flatness.cli import parse_value

    assert parse_value("lr", "1e-2") == 0.01
    assert parse_value("weight_decays", "[0, 1e-2, 5e-4]") == [0, 0.01, 0.0005]
    assert parse_value("dataset", "mnist") == "mnist"
    assert parse_value("augment", "false") is False


def test_plan_lists_every_run_with_hours_and_a_total(tmp_path):
    done = flatness("plan", "--profile", "smoke", results=tmp_path / "results")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    total = next(line for line in lines if "run(s); total" in line)
    runs = int(total.split()[0])
    assert runs == len([line for line in lines if line.split()[:1] and line.split()[0] in MODELS])
    assert "preresnet-110" in done.stdout and "CPU-hours on this machine" in total
    assert float(total.split("total")[1].split()[0]) > 0
