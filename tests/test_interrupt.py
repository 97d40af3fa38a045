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
