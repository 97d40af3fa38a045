"""The cross-entropy stopping rule as a snapshot of one run, checked against a run stopped there."""

import hashlib
import json
import math

import numpy as np
import pytest

from flatness.errors import FlatnessError
from flatness.training.config import RUN_FORMAT, RunConfig
from flatness.training.loop import train


def _config(**changes):
    fields = dict(
        model="mlp-10-100",
        dataset="digits",
        weight_decay=1e-4,
        seed=3,
        epochs=12,
        batch_size=32,
        lr=0.05,
        width=0.3,
        train_size=200,
        schedule="constant",
        hessian_every=12,
        hessian_examples=100,
    )
    return RunConfig(**(fields | changes))


def test_the_snapshot_is_the_run_stopped_at_the_first_epoch_below_the_loss():
    run = train(_config(snapshot_loss=1.1))
    epoch = run.metrics["snapshot.epoch"]
    losses = run.arrays["train_loss"]
    assert epoch == int(np.flatnonzero(losses <= 1.1)[0]) + 1 and epoch < 12
    # the same run, told to stop there: a constant rate makes its last epoch the snapshot
    stopped = train(_config(epochs=epoch, hessian_every=epoch)).metrics
    for name in (
        "train_loss",
        "test_acc",
        "lambda_max",
        "trace",
        "weight_norm",
        "path_norm",
        "distance_from_init",
        "adaptive_worst_l2",
        "pac_bayes",
        "fisher_rao",
    ):
        assert run.metrics[f"snapshot.{name}"] == pytest.approx(stopped[name], rel=1e-6), name
    # its predictions are the stopped run's, and accuracy reads them
    correct = run.arrays["snapshot.test_correct"]
    assert correct.mean() == pytest.approx(run.metrics["snapshot.test_acc"])


def test_a_run_that_never_reaches_the_loss_says_so():
    run = train(_config(snapshot_loss=1e-6, epochs=3, hessian_every=3))
    assert run.metrics["snapshot.epoch"] is None
    assert not any(k.startswith("snapshot.") and k != "snapshot.epoch" for k in run.metrics)
    assert "snapshot.test_correct" not in run.arrays


def test_eval_every_scores_the_test_split_on_its_epochs_and_the_last():
    arrays = train(_config(eval_every=5, hessian_every=0)).arrays
    scored = np.flatnonzero(~np.isnan(arrays["test_acc"])) + 1
    assert scored.tolist() == [5, 10, 12]
    assert not np.isnan(arrays["train_loss"]).any()


def test_fields_added_later_leave_every_earlier_key_unchanged():
    cfg = _config()
    payload = {"format": RUN_FORMAT, **cfg.to_dict()}
    del payload["snapshot_loss"], payload["eval_every"]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert cfg.key() == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert _config(snapshot_loss=0.01).key() != cfg.key()
    assert _config(eval_every=2).key() != cfg.key()
    # scoring every epoch is what None means: the same run, the same key
    assert _config(eval_every=1).key() == cfg.key()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("snapshot_loss", 0.0, "snapshot_loss"),
        ("snapshot_loss", math.nan, "snapshot_loss"),
        ("eval_every", 0, "eval_every"),
    ],
)
def test_bad_stopping_settings_are_refused(field, value, match):
    with pytest.raises(FlatnessError, match=match):
        _config(**{field: value})
