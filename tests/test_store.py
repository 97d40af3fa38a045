"""The results store: round trip, stable keys, atomic writes, no retraining."""

import json
import subprocess
import sys

import numpy as np
import pytest

from flatness import store as store_module
from flatness import train as train_module
from flatness.config import RunConfig
from flatness.store import Store, load_or_run

TINY = dict(model="logreg", dataset="digits", weight_decay=1e-3, seed=0, epochs=2, train_size=60)


def test_round_trip(tmp_path):
    cfg = RunConfig(**TINY)
    arrays = {"epoch": np.arange(3.0), "param.weight": np.ones((2, 2), dtype=np.float32)}
    run = Store(tmp_path).save(cfg, {"test_acc": 0.5}, arrays, {"device": "cpu"})
    again = Store(tmp_path).load(cfg)
    assert again.config == cfg and again.key == cfg.key() == run.path.name
    assert again.metrics == {"test_acc": 0.5}
    assert again.provenance == {"device": "cpu"}
    assert set(again.arrays) == set(arrays)
    assert all(np.array_equal(again.arrays[k], v) for k, v in arrays.items())
    assert [r.key for r in Store(tmp_path).runs()] == [cfg.key()]


def test_config_key_is_stable():
    cfg = RunConfig(**TINY)
    # the key of this config must never change by accident: stored runs would be orphaned
    assert cfg.key() == "c34a1fa697caac31"
    code = f"from flatness.config import RunConfig;print(RunConfig(**{TINY!r}).key())"
    other_process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert other_process.stdout.strip() == cfg.key()
    assert (
        RunConfig(**{**TINY, "weight_decay": 0}).key()
        == RunConfig(**{**TINY, "weight_decay": 0.0}).key()
    )
    for field, value in [
        ("seed", 1),
        ("weight_decay", 1e-4),
        ("epochs", 3),
        ("lr", 0.05),
        ("train_size", None),
    ]:
        assert RunConfig(**{**TINY, field: value}).key() != cfg.key(), field


def test_interrupted_write_leaves_no_run(tmp_path, monkeypatch):
    cfg = RunConfig(**TINY)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way through the write

    monkeypatch.setattr(store_module.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Store(tmp_path).save(cfg, {"a": 1}, {"x": np.zeros(2)}, {})
    assert Store(tmp_path).load(cfg) is None
    assert list(tmp_path.iterdir()) == []  # not even a temporary folder


def test_stored_run_is_not_trained_again(store_root, monkeypatch):
    cfg = RunConfig(**TINY)
    calls = []
    real_train = train_module.train

    def counting_train(*args, **kwargs):
        calls.append(args)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", counting_train)
    first = load_or_run(cfg)
    second = load_or_run(cfg)
    assert len(calls) == 1
    assert first.path == second.path == store_root / cfg.key()
    assert json.loads((first.path / "config.json").read_text()) == cfg.to_dict()
    prov = second.provenance
    assert prov["device"].startswith("cpu") and prov["wall_seconds"] > 0
    assert prov["versions"]["torch"] and prov["versions"]["pyhessian"] == "0.1"


def test_a_foreign_or_partial_folder_is_not_a_run(tmp_path):
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "config.json").write_text("{}")
    (tmp_path / ".tmp-abc").mkdir()
    assert Store(tmp_path).runs() == []
