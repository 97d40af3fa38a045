"""The command line: runs, listing, and one clear message (exit 2) for bad input."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT


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
    assert "2 run(s) of logreg on digits" in done.stdout
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
    assert "chapter logreg: seeds must be a list, got 'abc'" in done.stderr
    assert not (tmp_path / "results").exists()
