"""Ctrl-C during a run: one line, exit code 130, a checkpoint that loads, and a rerun that
resumes from it."""

import json
import os
import signal
import subprocess
import sys
import time

from flatness.results.store import Store
from flatness.training.checkpoint import load_checkpoint
from flatness.training.recipes import run_config

FIELDS = {"epochs": 400, "hessian_every": 0}


def _command(results):
    args = [arg for k, v in FIELDS.items() for arg in ("-p", k, str(v))]
    return [sys.executable, "-m", "flatness", "run", "mlp-10-100", "--profile", "smoke",
            "--results", str(results), *args]  # fmt: skip


def test_ctrl_c_during_a_run_exits_130_with_one_line_and_the_rerun_resumes(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        _command(results), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    config = run_config("mlp-10-100", "sgd", "smoke", **FIELDS)
    checkpoint = results / ".checkpoints" / f"{config.key()}.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert first.poll() is None, first.communicate()[1].decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    err = err.decode()
    assert first.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("flatness: interrupted; a run being trained")
    state = load_checkpoint(checkpoint)
    assert 0 < state["epoch"] < FIELDS["epochs"]
    assert Store(results).runs() == [] and not Store(results).failed()

    again = subprocess.run(_command(results), env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    (run,) = Store(results).runs()
    assert run.key == config.key() and run.provenance["sittings"] == 2
    assert len(run.arrays["test_loss"]) == FIELDS["epochs"]
    assert not checkpoint.exists()
    assert json.loads((run.path / "config.json").read_text())["epochs"] == FIELDS["epochs"]


def _kernels() -> set[str]:
    found = subprocess.run(["pgrep", "-f", "ipykernel_launcher"], capture_output=True, text=True)
    return set(found.stdout.split())


def test_ctrl_c_during_a_chapter_leaves_no_kernel_and_keeps_the_last_good_notebook(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    base = [sys.executable, "-m", "flatness", "chapter", "theory", "--profile", "smoke",
            "--out", str(out), "--results", str(results)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(base, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    notebook = out / "_build" / "executed" / "theory.ipynb"
    good = notebook.read_bytes()
    before = _kernels()

    # other parameters, so that the chapter executes again; Ctrl-C reaches the whole process
    # group, as a terminal sends it
    again = subprocess.Popen(
        [*base, "-y", "seeds: [1]"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not _kernels() - before:
        assert again.poll() is None, again.communicate()[1].decode()
        assert time.monotonic() < deadline, "no kernel started"
        time.sleep(0.1)
    time.sleep(2)  # inside the chapter's cells
    os.killpg(again.pid, signal.SIGINT)
    _, err = again.communicate(timeout=60)
    err = err.decode()
    assert again.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("flatness: interrupted")
    deadline = time.monotonic() + 30
    while _kernels() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _kernels() - before, "a kernel was left running"
    assert notebook.read_bytes() == good
    leftovers = [p.name for p in notebook.parent.iterdir() if p.name != "theory.ipynb"]
    assert leftovers == []
