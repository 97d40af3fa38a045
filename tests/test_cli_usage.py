"""The command line's usage: argparse's errors, option names and help texts, a store that is
not there, what plan and ls say of each run, and where publish may write."""

import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from flatness.cli import main
from flatness.cli.commands import _parser
from flatness.results import published as pub
from flatness.results.store import Store
from flatness.training.config import RunConfig
from flatness.training.recipes import run_config

TINY = dict(
    model="logreg", dataset="digits", epochs=2, train_size=200, batch_size=64, hessian_every=0
)


def _main(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flatness: error: "), err
    return lines[0]


def _saved(store: Store, metrics: dict, **fields) -> pub.Run:
    return store.save(RunConfig(**{**TINY, **fields}), metrics, {"x": np.zeros(1)}, {})


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["run", "logreg", "--profile", "smok"],
            "run: argument --profile: invalid choice: 'smok' (choose from 'smoke', 'cpu', "
            "'paper'); see `python -m flatness run --help`",
        ),
        (["run", "logreg", "--seeds", "a"], "run: argument --seeds: invalid int value: 'a'; see"),
        (["run", "logreg", "--epochz", "2"], "run: unrecognized arguments: --epochz 2"),
        (["run"], "run: the following arguments are required: model"),
        (["sweep", "mlp", "--executor", "k8s"], "sweep: argument --executor: invalid choice"),
        (["sweep-status"], "sweep-status: the following arguments are required: GRID"),
        (["plan", "mlp", "--max-parallel", "2"], "plan: unrecognized arguments: --max-parallel 2"),
        ([], "the following arguments are required: COMMAND; see `python -m flatness --help`"),
        (["nope"], "argument COMMAND: invalid choice: 'nope' (choose from 'run', 'plan'"),
    ],
)
def test_an_argparse_error_is_one_line_naming_the_subcommand(tmp_path, capsys, args, message):
    code, out, err = _main(capsys, *args, *(["--results", tmp_path / "r"] if args else []))
    assert code == 2 and out == ""
    assert _one_error_line(err).startswith(f"flatness: error: {message}"), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_subcommand_reports_its_own_argparse_errors(capsys, command):
    code, _, err = _main(capsys, command, "--no-such-option")
    assert code == 2
    line = _one_error_line(err)
    assert line.startswith(f"flatness: error: {command}: "), err
    assert line.endswith(f"see `python -m flatness {command} --help`"), err


def test_python_m_flatness_prints_the_subcommands_usage_error_as_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "flatness", "run", "logreg", "--epochz", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "FLATNESS_RESULTS": str(tmp_path / "r")},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "flatness: error: run: unrecognized arguments: --epochz 2 (did you mean --epochs?); "
        "see `python -m flatness run --help`\n"
    )


def test_an_abbreviated_option_is_refused_naming_the_whole_one(tmp_path, capsys):
    assert _parser().allow_abbrev is False
    assert all(p.allow_abbrev is False for p in _subparsers().values())
    args = ["run", "logreg", "--profile", "smoke", "--epoch", "1", "--results", tmp_path / "r"]
    code, out, err = _main(capsys, *args)
    assert code == 2 and out == ""
    assert "run: unrecognized arguments: --epoch 1 (did you mean --epochs?)" in err
    assert not (tmp_path / "r").exists()


def test_plan_takes_the_store_options_of_the_grid_commands(capsys):
    def options(command):
        return {o for a in _subparsers()[command]._actions for o in a.option_strings}

    store_options = {"--results", "--data-root", "--published"}
    for command in ("plan", "sweep", "sweep-status", "publish"):
        assert store_options <= options(command), command
    # and --data-root is refused as the grid commands refuse it
    code, out, err = _main(capsys, "plan", "--profile", "smoke", "--data-root", "/dev/null/x")
    assert code == 2 and out == ""
    assert _one_error_line(err) == (
        "flatness: error: --data-root /dev/null/x: /dev/null is not a folder; give a folder"
    )


def test_every_profile_option_says_its_default_and_the_choices():
    defaults = {}
    for command, parser in _subparsers().items():
        (action,) = [a for a in parser._actions if "--profile" in a.option_strings] or [None]
        if action is None:
            continue
        defaults[command] = action.default
        text = " ".join(parser.format_help().split())  # argparse wraps at the terminal's width
        assert f"smoke, cpu, paper (default: {action.default})" in text, (command, text)
    # the defaults themselves stay: commands that train here start small, grid commands do not
    assert defaults == {
        "run": "cpu", "chapter": "cpu", "book": "cpu", "plan": "paper", "sweep": "paper",
        "sweep-status": "paper", "publish": "paper",
    }  # fmt: skip


GRID = {"runs": [{**TINY, "weight_decay": 0, "seed": [0, 1, 2]}]}


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(json.dumps(GRID))
    return path


@pytest.mark.parametrize("named_by", ["option", "environment"])
@pytest.mark.parametrize("command", ["ls", "sweep-status", "publish"])
def test_a_command_that_only_reads_the_store_refuses_one_that_does_not_exist(
    tmp_path, capsys, monkeypatch, grid, command, named_by
):
    missing = tmp_path / "typo"
    monkeypatch.setenv("FLATNESS_PUBLISHED", str(tmp_path / "layer"))
    args = [] if command == "ls" else [grid, "--profile", "smoke"]
    if named_by == "option":
        args += ["--results", missing]
        named = f"--results {missing}"
    else:
        monkeypatch.setenv("FLATNESS_RESULTS", str(missing))
        named = f"$FLATNESS_RESULTS={missing}"
    code, out, err = _main(capsys, command, *args)
    assert code == 2 and out == ""
    assert _one_error_line(err).startswith(
        f"flatness: error: {named}: no such folder; `{command}` only reads a results store"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]


def test_commands_that_create_the_store_or_plan_for_one_take_a_new_folder(
    tmp_path, capsys, monkeypatch, grid
):
    monkeypatch.setenv("FLATNESS_PUBLISHED", str(tmp_path / "layer"))
    new = tmp_path / "new"
    code, out, err = _main(
        capsys, "sweep", grid, "--profile", "smoke", "--results", new, "--dry-run"
    )
    assert code == 0 and "3 to train" in out, err
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"logreg|1|digits|64": 1.0, "logreg|1|digits|64|hvp": 1.0}))
    plan = ["plan", grid, "--profile", "smoke", "--device", "cpu", "--step-times", times]
    code, out, err = _main(capsys, *plan, "--results", new)
    assert code == 0, err
    assert out.startswith(f"store: {new} (no such folder yet: nothing stored there); ")
    assert not new.exists()
    # the default store of a checkout that has trained nothing is no mistyped path
    checkout = tmp_path / "checkout"
    (checkout / "book").mkdir(parents=True)
    (checkout / "_toc.yml").write_text("")
    monkeypatch.chdir(checkout)
    monkeypatch.delenv("FLATNESS_RESULTS", raising=False)
    code, out, err = _main(capsys, "ls")
    assert code == 0 and out == f"0 run(s) in {checkout / 'results'}\n", err


def test_plan_gives_each_runs_lr_and_state_and_the_hours_left_to_train(tmp_path, capsys, grid):
    store = Store(tmp_path / "store")
    layer = pub.Published(tmp_path / "layer")
    good = {"train_loss": 0.1, "test_acc": 0.9}
    pub.publish([_saved(Store(tmp_path / "elsewhere"), good, weight_decay=0.0, seed=0)], layer)
    _saved(store, good, weight_decay=0.0, seed=1)
    times = tmp_path / "times.json"
    # 2 epochs of 4 steps (200 examples in batches of 64) at 900 s: 2 hours a run
    times.write_text(json.dumps({"logreg|1|digits|64": 900.0, "logreg|1|digits|64|hvp": 1.0}))
    code, out, err = _main(
        capsys, "plan", grid, "--profile", "smoke", "--device", "cpu", "--step-times", times,
        "--results", store.root, "--published", layer.root, "--data-root", tmp_path,
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"store: {store.root}; published: {layer.root}"
    header, rows = lines[1].split(), [line.split() for line in lines[2:5]]
    assert header[:4] == ["model", "optimiser", "lr", "wd"] and header[-1] == "state"
    assert [(row[0], row[2], row[4], row[-1]) for row in rows] == [
        ("logreg", "0.1", "0", "published"),
        ("logreg", "0.1", "1", "done"),
        ("logreg", "0.1", "2", "missing"),
    ]
    assert lines[5] == (
        "3 run(s); total 6.0 CPU-hours on this machine; left to train (not published or "
        "done): 1 run(s), 2.0 CPU-hours"
    )


@pytest.mark.parametrize("load", [0.1, 3.0])
def test_plan_says_when_it_timed_on_a_busy_machine(tmp_path, capsys, monkeypatch, grid, load):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    base = ["plan", grid, "--profile", "smoke", "--device", "cpu", "--results", tmp_path / "s"]
    code, out, err = _main(capsys, *base)
    assert code == 0 and "total" in out, err
    busy = f"warning: the machine was busy while timing (load average {load:.1f} on "
    assert (busy in err) == (load >= 0.5), err
    # step times read from a file were not taken here: no warning
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"logreg|1|digits|64": 1.0, "logreg|1|digits|64|hvp": 1.0}))
    code, out, err = _main(capsys, *base, "--step-times", times)
    assert code == 0 and "busy" not in err, err


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A checkout of the book (its default published layer is ``checkout/published``), as the
    working directory; the real checkout's ``published/`` is never the default here."""
    folder = tmp_path / "checkout"
    (folder / "book").mkdir(parents=True)
    (folder / "_toc.yml").write_text("")
    monkeypatch.chdir(folder)
    monkeypatch.delenv(pub.PUBLISHED_ENV, raising=False)
    return folder


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_publish_refuses_another_profile_than_paper_into_the_default_layer(
    tmp_path, capsys, monkeypatch, checkout, grid, profile
):
    from flatness.chapters import grids

    grid.write_text(json.dumps({"runs": [{**TINY, "weight_decay": 0, "seed": 0}]}))
    (config,) = grids.load(str(grid), profile).configs
    store = Store(tmp_path / "store")
    store.save(config, {"train_loss": 0.1}, {"x": np.zeros(1)}, {})
    args = ["publish", grid, "--profile", profile, "--results", store.root]
    code, out, err = _main(capsys, *args)
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert f"the default published folder {checkout / 'published'} holds the paper " in line
    assert "give --to FOLDER" in line
    assert not (checkout / "published").exists()
    # a layer named on purpose takes any profile: by --to, --published or the environment
    for chosen in (["--to", tmp_path / "to"], ["--published", tmp_path / "published"]):
        code, out, err = _main(capsys, *args, *chosen)
        assert code == 0 and f"published 1 run(s) of grid g into {chosen[1]}" in out, err
    monkeypatch.setenv(pub.PUBLISHED_ENV, str(tmp_path / "env"))
    code, out, err = _main(capsys, *args)
    assert code == 0 and f"into {tmp_path / 'env'};" in out, err
    assert not (checkout / "published").exists()


def test_publish_of_the_paper_profile_still_writes_the_default_layer(
    tmp_path, capsys, checkout, grid
):
    from flatness.chapters import grids

    grid.write_text(json.dumps({"runs": [{**TINY, "weight_decay": 0, "seed": 0}]}))
    (config,) = grids.load(str(grid), "paper").configs
    store = Store(tmp_path / "store")
    store.save(config, {"train_loss": 0.1}, {"x": np.zeros(1)}, {})
    code, out, err = _main(capsys, "publish", grid, "--results", store.root)
    assert code == 0, err
    assert f"published 1 run(s) of grid g into {checkout / 'published'}" in out
    assert (checkout / "published" / config.key()).is_dir()


def test_run_warns_of_and_ls_marks_a_run_that_learnt_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(pub.PUBLISHED_ENV, str(tmp_path / "layer"))
    store = Store(tmp_path / "store")
    fields = dict(weight_decay=0.0, epochs=1, hessian_every=0)
    # stored already, so run loads them: one at about ln 10, one that learnt
    alike = run_config("logreg", "sgd", "smoke", seed=0, **fields)
    learnt = run_config("logreg", "sgd", "smoke", seed=1, **fields)
    store.save(alike, {"train_loss": math.log(10), "test_acc": 0.1}, {"x": np.zeros(1)}, {})
    store.save(learnt, {"train_loss": 0.2, "test_acc": 0.9}, {"x": np.zeros(1)}, {})
    reason = "training loss 2.303, about ln K = 2.303: it predicts every class alike"
    code, out, err = _main(
        capsys, "run", "logreg", "--profile", "smoke", "--wd", "0", "--seeds", "0", "1",
        "-p", "epochs", "1", "-p", "hessian_every", "0", "--results", store.root,
    )  # fmt: skip
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[2:]] == [alike.key(), learnt.key()]
    assert err.splitlines() == [
        f"flatness: warning: {alike.key()} ({alike.label()}) learnt nothing: {reason}; "
        "`python -m flatness publish` refuses it (without --allow-collapsed)"
    ]
    code, out, err = _main(capsys, "ls", "--results", store.root)
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
    assert rows[alike.key()].endswith(f"  collapsed: {reason}")
    assert "collapsed" not in rows[learnt.key()]
    assert out.splitlines()[4].startswith("1 run(s) marked collapsed learnt nothing")
    assert "`python -m flatness publish` refuses them" in out.splitlines()[4]
