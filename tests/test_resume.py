"""A run killed with SIGKILL resumes from its checkpoint and ends bit for bit as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from flatness.results.store import Store
from flatness.training.checkpoint import load_checkpoint
from flatness.training.config import RunConfig

# dropout, augmentation, averaging and measurements: every random state in play
CONFIG = dict(
    model="vgg16",
    dataset="digits",
    width=1 / 16,
    train_size=128,
    batch_size=32,
    epochs=6,
    weight_decay=5e-4,
    seed=3,
    augment=True,
    average_start=3,
    average_lr=0.02,
    hessian_every=3,
    hessian_rtol=0.3,
)

SCRIPT = """
import json, sys, time
from flatness.training.config import RunConfig
from flatness.results.runs import load_or_run
from flatness.results.store import Store
from flatness.training.loop import train

def slow_train(config, **kwargs):
    # a pause after every epoch, so that the kill lands in the middle of the run
    return train(config, checkpoint_every=1, callback=lambda e, m: time.sleep(0.4), **kwargs)

run = load_or_run(RunConfig(**json.loads(sys.argv[1])), store=Store(sys.argv[2]),
                  device="cpu", train_fn=slow_train)
print(run.key)
"""


def _command(results):
    return [sys.executable, "-c", SCRIPT, json.dumps(CONFIG), str(results)]


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(_command(results), env=env, stdout=subprocess.PIPE)
    config = RunConfig(**CONFIG)
    checkpoints = results / ".checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(checkpoints.glob("*.pt")) if checkpoints.is_dir() else []
        state = load_checkpoint(found[0]) if found else None
        if state is not None and state["epoch"] >= 3:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    assert Store(results).load(config) is None  # nothing but the checkpoint was left
    resumed_from = load_checkpoint(found[0])["epoch"]
    assert 3 <= resumed_from < CONFIG["epochs"]

    second = subprocess.run(_command(results), env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    run = Store(results).load(config)
    assert run is not None and run.key == second.stdout.strip()
    assert not list(checkpoints.glob("*.pt"))  # removed once the run is stored
    # two sittings, and the time counts both: at least the 0.4 s pause of each of the 6 epochs
    assert run.provenance["sittings"] == 2
    assert run.provenance["wall_seconds"] >= 0.4 * CONFIG["epochs"]

    # the same command, never interrupted, in a store of its own
    other = tmp_path / "uninterrupted"
    done = subprocess.run(_command(other), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole = Store(other).load(config).arrays
    stored = run.arrays
    timing = {"epoch_seconds", "hessian_seconds"}
    compared = [k for k in whole if k not in timing]
    assert set(compared) <= set(stored)
    for k in compared:
        assert np.array_equal(stored[k], whole[k], equal_nan=True), k


class _Stop(Exception):
    pass


def test_a_resumed_run_counts_the_wall_time_of_its_earlier_sittings(tmp_path):
    from flatness.training.loop import train

    config = RunConfig(model="logreg", dataset="digits", train_size=64, batch_size=32, epochs=5,
                       hessian_every=0, seed=0, weight_decay=0.0)  # fmt: skip
    checkpoint = tmp_path / "run.pt"

    def pause_then_stop(epoch, model):
        time.sleep(0.3)  # the first sitting lasts at least 0.3 s per epoch
        if epoch == 2:
            raise _Stop  # dies in epoch 3, after the checkpoint of epoch 2

    try:
        train(
            config,
            device="cpu",
            checkpoint=checkpoint,
            checkpoint_every=1,
            callback=pause_then_stop,
        )
    except _Stop:
        pass
    saved = load_checkpoint(checkpoint)
    assert (saved["epoch"], saved["sittings"]) == (2, 1)
    assert saved["seconds"]["wall"] >= 2 * 0.3
    result = train(config, device="cpu", checkpoint=checkpoint, checkpoint_every=1)
    assert result.sittings == 2
    assert result.earlier_wall_seconds == saved["seconds"]["wall"]
    fresh = train(config, device="cpu")
    assert (fresh.sittings, fresh.earlier_wall_seconds) == (1, 0.0)
