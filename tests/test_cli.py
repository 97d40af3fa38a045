"""The command line: runs, listing, and one clear message (exit 2) for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from flatness.cli import main
from flatness.errors import FlatnessError
from flatness.models import names
from flatness.results.store import Store
from flatness.training.config import RunConfig

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
        (["run", "logreg", "-p", "lr", "1e300"], "lr must lie in float32's range"),
        (["run", "logreg", "-p", "weight_decay", "1e39"], "weight_decay must lie in float32's"),
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
    from flatness.cli.commands import parse_value

    assert parse_value("lr", "1e-2") == 0.01
    assert parse_value("weight_decays", "[0, 1e-2, 5e-4]") == [0, 0.01, 0.0005]
    assert parse_value("dataset", "mnist") == "mnist"
    assert parse_value("augment", "false") is False
    # YAML keeps the last of a key given twice; the command line refuses it instead
    with pytest.raises(FlatnessError, match=r"-p x: cannot read .*duplicate key 'a'"):
        parse_value("x", "{a: 1, b: {c: 2}, a: 3}")


def _main(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


GRID = "runs: [{model: logreg, weight_decay: 0, seed: 0, epochs: 1, hessian_every: 0}]"
# every folder option of every command, given a path that cannot be (or hold) a folder: a file,
# a path below a file, a path below /dev/null
UNUSABLE = [
    ("publish", "{grid}", "--results", "{store}", "--to", "/dev/null/x"),
    ("publish", "{grid}", "--results", "{store}", "--to", "{file}"),
    ("publish", "{grid}", "--results", "{store}", "--published", "{file}"),
    ("publish", "{grid}", "--results", "{below}", "--to", "{layer}"),
    ("sweep", "{grid}", "--results", "/dev/null/x", "--published", "{layer}"),
    ("sweep", "{grid}", "--results", "{below}", "--published", "{layer}", "--dry-run"),
    ("sweep", "{grid}", "--results", "{store}", "--published", "{file}", "--dry-run"),
    ("sweep", "{grid}", "--results", "{store}", "--published", "{layer}", "--data-root", "{file}"),
    ("sweep-status", "{grid}", "--results", "{store}", "--published", "{below}"),
    ("sweep-status", "{grid}", "--results", "{file}", "--published", "{layer}"),
    ("run", "logreg", "--results", "/dev/null/x"),
    ("run", "logreg", "--results", "{below}"),
    ("run", "logreg", "--results", "{store}", "--data-root", "{file}"),
    ("ls", "--results", "{below}"),
    ("chapter", "logreg", "--results", "{store}", "--out", "/dev/null/x"),
    ("chapter", "logreg", "--results", "{file}", "--out", "{layer}"),
    ("chapter", "logreg", "--results", "{store}", "--data-root", "{below}"),
    ("book", "--results", "{store}", "--out", "{file}"),
]


@pytest.mark.parametrize("command", UNUSABLE, ids=lambda c: " ".join(c))
def test_a_folder_option_that_cannot_be_a_folder_is_one_message_and_writes_nothing(
    tmp_path, capsys, command
):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    (tmp_path / "g.yaml").write_text(GRID)
    paths = dict(
        grid=tmp_path / "g.yaml",
        store=tmp_path / "store",
        layer=tmp_path / "layer",
        file=a_file,
        below=a_file / "x",
    )
    args = [a.format(**paths) for a in command]
    profile = [] if command[0] == "ls" else ["--profile", "smoke"]
    code, out, err = _main(capsys, *args, *profile)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flatness: error: "), err
    bad = next(a for a in args if a.startswith(("/dev/null/", str(a_file))))
    assert bad.split("/x")[0] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "g.yaml"]
    assert a_file.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_store_that_cannot_be_written_is_one_message_up_front(
    tmp_path, capsys, monkeypatch, command
):
    from types import SimpleNamespace

    from flatness.results import entries

    # as for a user without permission (root may write anywhere)
    monkeypatch.setattr(entries, "os", SimpleNamespace(access=lambda *a: False, W_OK=2, X_OK=1))
    (tmp_path / "g.yaml").write_text(GRID.replace("seed: 0", "seed: [0, 1, 2]"))
    target = ["logreg"] if command == "run" else [tmp_path / "g.yaml", "--published", tmp_path]
    store = tmp_path / "store"
    code, out, err = _main(capsys, command, *target, "--profile", "smoke", "--results", store)
    assert code == 2 and err.count("\n") == 1, err  # one line, for all 3 or 4 runs
    assert err.startswith(f"flatness: error: cannot create the results store's folder {store} ")
    assert "cannot be written to" in err and "--results" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]


# the rest of a valid command line, per command, to which one empty path option is added
VALID = {
    "run": ("logreg", "--profile", "smoke"),
    "plan": ("logreg", "--profile", "smoke", "--device", "cpu"),
    "ls": (),
    "chapter": ("logreg", "--profile", "smoke"),
    "book": ("--profile", "smoke"),
    "sweep": ("{grid}", "--profile", "smoke"),
    "sweep-status": ("{grid}", "--profile", "smoke"),
    "publish": ("{grid}", "--profile", "smoke"),
}


def _path_options() -> list[tuple[str, str]]:
    """(command, option) for every option of every command that names a file or folder."""
    import argparse

    from flatness.cli.commands import PATH_OPTIONS, _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [
        (command, action.option_strings[-1])
        for command, parser in sub.choices.items()
        for action in parser._actions
        if action.dest in PATH_OPTIONS
    ]


def test_every_command_with_a_path_option_is_tried_empty():
    options = _path_options()
    assert {c for c, _ in options} == set(VALID)
    assert {o for _, o in options} == {
        "--results", "--published", "--to", "--data-root", "--out", "--step-times",
        "--save-step-times",
    }  # fmt: skip


@pytest.mark.parametrize("empty", ["", " "])
@pytest.mark.parametrize("command,option", _path_options())
def test_an_empty_path_option_is_one_message_and_writes_nothing(
    tmp_path, capsys, monkeypatch, command, option, empty
):
    # neither the working directory (an empty path) nor the default (an empty option read as
    # unset) is used: both are here, and must stay empty
    monkeypatch.chdir(tmp_path)
    for name in ("RESULTS", "PUBLISHED", "DATA"):
        monkeypatch.setenv(f"FLATNESS_{name}", str(tmp_path / name.lower()))
    (tmp_path / "g.yaml").write_text(GRID)
    args = [a.format(grid=tmp_path / "g.yaml") for a in VALID[command]]
    code, out, err = _main(capsys, command, *args, option, empty)
    assert code == 2, (out, err)
    assert err.startswith(f"flatness: error: {option} is empty; give a "), err
    assert err.count("\n") == 1 and f"or leave {option} out (default: " in err
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]


def test_p_lists_only_the_fields_it_sets(tmp_path, capsys):
    code, _, err = _main(capsys, "run", "logreg", "-p", "lrr", "1", "--results", tmp_path / "r")
    assert code == 2 and "unknown run setting 'lrr'; valid choices: 'dataset'" in err
    assert "'lr'" in err and "'slq_steps'" in err
    assert "'model'" not in err and "'optimiser'" not in err
    assert not (tmp_path / "r").exists()


def test_ls_names_each_runs_lr(tmp_path, capsys):
    store = Store(tmp_path / "r")
    fields = dict(model="logreg", dataset="digits", weight_decay=0.0, seed=0, epochs=1)
    for lr in (0.1, 1e-7):
        store.save(RunConfig(**fields, lr=lr), {"test_acc": 0.5}, {"x": np.zeros(1)}, {})
    code, out, _ = _main(capsys, "ls", "--results", store.root)
    assert code == 0
    header, *rows = out.splitlines()[1:]
    assert header.split()[4:6] == ["lr", "wd"]
    assert sorted(row.split()[4] for row in rows) == ["0.1", "1e-07"]


def test_step_times_that_give_a_key_twice_are_refused(tmp_path):
    from flatness.results.plan import read_step_times

    path = tmp_path / "times.json"
    path.write_text('{"logreg|digits|1|128": 0.001, "logreg|digits|1|128": 0.002}')
    with pytest.raises(FlatnessError, match="'logreg|digits|1|128' is given twice"):
        read_step_times(path)


def test_plan_lists_every_run_with_hours_and_a_total(tmp_path):
    done = flatness("plan", "--profile", "smoke", results=tmp_path / "results")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    total = next(line for line in lines if "run(s); total" in line)
    runs = int(total.split()[0])
    assert runs == len([line for line in lines if line.split()[:1] and line.split()[0] in MODELS])
    assert "preresnet-110" in done.stdout and "CPU-hours on this machine" in total
    assert float(total.split("total")[1].split()[0]) > 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["-p", "width", "1e8"], "width must be at most 1,000.0"),
        (["-p", "epochs", "1e10"], "epochs must be at most 10,000"),
        # a negative number in scientific notation is a value, as papermill reads it
        (["-p", "epochs", "-1e-3"], "epochs must be an integer, got -0.001"),
        (["-p", "epochs", "-2"], "epochs must be at least 1, got -2"),
    ],
)
def test_sizes_beyond_their_bounds_get_one_message_and_exit_2(tmp_path, capsys, value, message):
    store = tmp_path / "results"
    code, out, err = _main(
        capsys, "run", "logreg", "--profile", "smoke", "--results", store, *value
    )
    assert code == 2 and out == ""
    assert err.startswith("flatness: error: ") and message in err and len(err.splitlines()) == 1
    assert not store.exists() or not any(store.iterdir())


def test_ls_lists_cached_computations_and_publish_copies_a_profiles_own(tmp_path, capsys):
    from flatness.results import computations

    results = tmp_path / "r"
    for profile in ("smoke", "cpu"):
        computations.cached(
            "theory.example", {"profile": profile}, lambda: {"x": 1.0}, results=results
        )
    bad = computations.cached("test.bad", {"profile": "smoke"}, lambda: 2.0, results=results)
    assert bad == 2.0
    (next((results / "computations").glob("test.bad-*")) / "value.json").unlink()
    code, out, _ = _main(capsys, "ls", "--results", results)
    assert code == 0
    assert "2 computation(s)" in out and out.count("theory.example") == 2
    assert "damaged: test.bad-" in out and "value.json is missing" in out
    to = tmp_path / "published"
    code, out, _ = _main(
        capsys, "publish", "computations", "--profile", "smoke", "--to", to, "--results", results
    )
    assert code == 0 and "published 1 computation(s) of profile smoke" in out
    assert "not published, damaged: test.bad-" in out
    (folder,) = (to / "computations").iterdir()
    assert folder.name.startswith("theory.example-") and (folder / "hashes.json").is_file()
    assert json.loads((folder / "inputs.json").read_text())["inputs"]["profile"] == "smoke"


def test_computations_of_code_changed_since_are_marked_stale_and_withdrawn_not_published(
    tmp_path, capsys, monkeypatch
):
    from flatness.results import computations

    module = tmp_path / "mod" / "made_here.py"
    module.parent.mkdir()
    module.write_text("def f():\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(module.parent))
    import made_here

    results, to = tmp_path / "r", tmp_path / "published"
    run = lambda: computations.cached(
        "theory.made", {"profile": "smoke"}, made_here.f, code=["made_here"], results=results
    )
    run()
    _main(capsys, "publish", "computations", "--profile", "smoke", "--to", to, "--results", results)
    (first,) = (to / "computations").iterdir()
    module.write_text("def f():\n    return 2.0\n")  # what it runs changed: a new key
    sys.modules.pop("made_here", None)
    run()
    code, out, _ = _main(capsys, "ls", "--results", results)
    assert code == 0 and "2 computation(s)" in out
    assert out.count("stale: computed by code changed since") == 1
    code, out, _ = _main(
        capsys, "publish", "computations", "--profile", "smoke", "--to", to, "--results", results
    )
    assert code == 0 and "published 1 computation(s)" in out
    assert f"not published, computed by code changed since: {first.name}" in out
    assert (
        f"withdrawn from the published layer, computed by code changed since: {first.name}" in out
    )
    (now,) = (to / "computations").iterdir()
    assert now.name != first.name
    assert json.loads((now / "inputs.json").read_text())["code"] == computations.code_hashes(
        ["made_here"]
    )
