"""The results store: round trip, stable keys, atomic writes, damage, failures, one training."""

import functools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from flatness.errors import FlatnessError, RunDiverged
from flatness.results import entries
from flatness.results import store as store_module
from flatness.results.entries import Damaged, Failed
from flatness.results.published import Published
from flatness.results.runs import load_or_run
from flatness.results.store import Store, describe_store
from flatness.training.config import RunConfig

TINY = dict(model="logreg", dataset="digits", weight_decay=1e-3, seed=0, epochs=2, train_size=60)
ARRAYS = {"epoch": np.arange(1.0, 3.0), "param.weight": np.ones((64, 10), dtype=np.float32)}


class FakeTrain:
    """A train function that records its calls and returns fixed metrics and arrays."""

    def __init__(self, error: BaseException | None = None):
        self.calls = []
        self.error = error

    def __call__(self, config, *, data_root, device, progress, checkpoint):
        self.calls.append((config, checkpoint))
        if self.error is not None:
            raise self.error
        return SimpleNamespace(metrics={"test_acc": 0.75}, arrays=ARRAYS)


def _hidden_leftovers(root):
    return [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


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
    assert Store(tmp_path).damaged() == [] and Store(tmp_path).failed() == []
    assert describe_store(Store(tmp_path)) == ""


def test_config_key_is_stable():
    cfg = RunConfig(**TINY)
    # the key of this config must never change by accident: stored runs would be orphaned
    assert cfg.key() == "55cdfbca50820bec"  # RUN_FORMAT 3
    code = f"from flatness.training.config import RunConfig;print(RunConfig(**{TINY!r}).key())"
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
    from flatness.training import loop as train_module

    cfg = RunConfig(**TINY)
    calls = []
    real_train = train_module.train

    def counting_train(*args, **kwargs):
        calls.append(kwargs["checkpoint"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", counting_train)
    first = load_or_run(cfg)
    second = load_or_run(cfg)
    assert calls == [store_root / ".checkpoints" / f"{cfg.key()}.pt"]
    assert not calls[0].exists()  # the checkpoint goes once the run is stored
    assert first.path == second.path == store_root / cfg.key()
    assert json.loads((first.path / "config.json").read_text()) == cfg.to_dict()
    prov = second.provenance
    assert prov["device"].startswith("cpu") and prov["wall_seconds"] > 0
    assert prov["versions"]["torch"] and prov["versions"]["pyhessian"] == "0.1"


def test_a_foreign_or_partial_folder_is_not_a_run(tmp_path):
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "config.json").write_text("{}")
    (tmp_path / ".tmp-abc").mkdir()
    partial = tmp_path / RunConfig(**TINY).key()
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps(RunConfig(**TINY).to_dict()))
    store = Store(tmp_path)
    assert store.runs() == []
    # folders not named by a key are someone else's; hidden ones are being written
    expected = "missing metrics.json, arrays.npz, provenance.json"
    assert store.damaged() == [Damaged(partial.name, partial, expected)]


def _corrupt_arrays(path):
    data = bytearray(path.read_bytes())
    start = data.index(b"\x93NUMPY", data.index(b"param.weight.npy"))
    data[start + 200] ^= 0xFF  # a byte inside the weights; the zip's CRC no longer matches
    path.write_bytes(bytes(data))


DAMAGE = {
    "config.json invalid": (
        lambda p: (p / "config.json").write_text('{"model": "logreg",'),
        r"config\.json is not valid JSON",
    ),
    "metrics.json invalid": (
        lambda p: (p / "metrics.json").write_text("{nan}"),
        r"metrics\.json is not valid JSON",
    ),
    "provenance.json invalid": (
        lambda p: (p / "provenance.json").write_bytes(b"\xff\xfe"),
        r"provenance\.json is not valid JSON",
    ),
    "provenance.json not an object": (
        lambda p: (p / "provenance.json").write_text("[1, 2]"),
        r"provenance\.json is not valid JSON \(holds a list",
    ),
    "arrays.npz truncated": (
        lambda p: (p / "arrays.npz").write_bytes((p / "arrays.npz").read_bytes()[:1000]),
        r"arrays\.npz is unreadable \(BadZipFile",
    ),
    "arrays.npz bit flip": (
        lambda p: _corrupt_arrays(p / "arrays.npz"),
        r"arrays\.npz is unreadable \(BadZipFile: Bad CRC-32 for file 'param\.weight\.npy'",
    ),
    "arrays.npz overwritten": (
        lambda p: (p / "arrays.npz").write_bytes(b"x"),
        r"arrays\.npz is unreadable \(BadZipFile: File is not a zip file\)$",
    ),
    "arrays.npz missing": (lambda p: (p / "arrays.npz").unlink(), r"^missing arrays\.npz$"),
    "metrics.json missing": (lambda p: (p / "metrics.json").unlink(), r"^missing metrics\.json$"),
    "config of another run": (
        lambda p: (p / "config.json").write_text(json.dumps({**TINY, "seed": 1})),
        r"config\.json hashes to [0-9a-f]{16}, not to the folder's name",
    ),
    "config of an unknown field": (
        lambda p: (p / "config.json").write_text(json.dumps({**TINY, "colour": "red"})),
        r"config\.json does not make a RunConfig \(.*colour",
    ),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_run_is_listed_refused_and_retrained(tmp_path, kind):
    damage, reason = DAMAGE[kind]
    cfg = RunConfig(**TINY)
    store = Store(tmp_path)
    path = store.save(cfg, {"test_acc": 0.5}, ARRAYS, {"finished": "then"}).path
    assert store.load(cfg) is not None  # checked whole once, so a cached check must notice
    time.sleep(0.01)  # a later modification time even on coarse clocks
    damage(path)

    [found] = store.damaged()
    assert (found.key, found.path) == (cfg.key(), path)
    assert re.search(reason, found.reason), found.reason
    assert "\n" not in found.reason
    assert store.runs() == [] and store.failed() == [] and store.load(cfg) is None
    text = describe_store(store)
    assert f"{cfg.key()}  {found.reason}" in text and "--retrain" in text
    # where the folder's config.json names another run, retraining that run cannot help
    wrong_name = kind == "config of another run"
    assert ("writes another folder, not this one: delete this folder" in text) == wrong_name

    fake = FakeTrain()
    with pytest.raises(FlatnessError) as err:
        load_or_run(cfg, store=store, device="cpu", train_fn=fake)
    message = str(err.value)
    assert str(path) in message and found.reason in message
    assert "retrain=True" in message and "--retrain" in message
    assert fake.calls == []

    run = load_or_run(cfg, store=store, device="cpu", train_fn=fake, retrain=True)
    assert len(fake.calls) == 1
    assert run.metrics == {"test_acc": 0.75} and run.path == path
    assert np.array_equal(run.arrays["param.weight"], ARRAYS["param.weight"])
    assert store.damaged() == [] and [r.key for r in store.runs()] == [cfg.key()]
    assert _hidden_leftovers(tmp_path) == []
    # a good run is reused even when asked to retrain
    assert load_or_run(cfg, store=store, device="cpu", train_fn=fake, retrain=True) == run
    assert len(fake.calls) == 1


def test_a_failed_run_is_recorded_and_never_a_result(tmp_path):
    cfg = RunConfig(**TINY)
    store = Store(tmp_path)
    failing = FakeTrain(RunDiverged("the training loss is nan after epoch 7"))
    checkpoint = store.checkpoint_path(cfg)

    def failing_after_a_checkpoint(config, **kwargs):
        kwargs["checkpoint"].write_bytes(b"epoch 6")
        return failing(config, **kwargs)

    with pytest.raises(FlatnessError, match="nan after epoch 7"):
        load_or_run(cfg, store=store, device="cpu", train_fn=failing_after_a_checkpoint)
    assert not checkpoint.exists()  # a retrain starts afresh
    [failed] = store.failed()
    assert isinstance(failed, Failed) and failed.config == cfg and failed.key == cfg.key()
    assert failed.message == "the training loss is nan after epoch 7"
    record = json.loads((failed.path / "failed.json").read_text())
    assert record["config"] == cfg.to_dict() and record["time"] == failed.time
    assert record["provenance"]["device"].startswith("cpu")
    assert store.runs() == [] and store.damaged() == [] and store.load(cfg) is None
    assert f"{cfg.key()}  {cfg.label()}  {failed.time}  {failed.message}" in describe_store(store)

    with pytest.raises(FlatnessError) as err:
        load_or_run(cfg, store=store, device="cpu", train_fn=failing)
    assert "nan after epoch 7" in str(err.value) and "--retrain" in str(err.value)
    assert len(failing.calls) == 1

    fine = FakeTrain()
    run = load_or_run(cfg, store=store, device="cpu", train_fn=fine, retrain=True)
    assert len(fine.calls) == 1 and run.metrics == {"test_acc": 0.75}
    assert store.failed() == [] and [r.key for r in store.runs()] == [cfg.key()]
    assert _hidden_leftovers(tmp_path) == []


def test_bad_input_during_training_is_not_recorded_as_a_failed_run(tmp_path):
    store = Store(tmp_path)
    missing = FakeTrain(FlatnessError("mnist is not available offline"))
    with pytest.raises(FlatnessError, match="not available offline"):
        load_or_run(RunConfig(**TINY), store=store, device="cpu", train_fn=missing)
    assert store.failed() == [] and store.runs() == [] and store.damaged() == []


def test_an_interrupted_training_leaves_only_its_checkpoint(tmp_path):
    cfg = RunConfig(**TINY)
    store = Store(tmp_path)
    seen = []

    def interrupted(config, *, checkpoint, **kwargs):
        checkpoint.write_text("epoch 1")
        raise KeyboardInterrupt

    def resuming(config, *, checkpoint, **kwargs):
        seen.append(checkpoint.read_text())
        return FakeTrain()(config, checkpoint=checkpoint, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        load_or_run(cfg, store=store, device="cpu", train_fn=interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoints", ".locks"]
    assert store.failed() == [] and store.damaged() == [] and store.runs() == []

    run = load_or_run(cfg, store=store, device="cpu", train_fn=resuming)
    assert seen == ["epoch 1"] and run.metrics == {"test_acc": 0.75}
    assert list((tmp_path / ".checkpoints").iterdir()) == []


def _leftovers(root, key):
    """What a writer of ``key``'s run killed mid-write leaves: a checkpoint's temporary file, a
    run folder being written and one being deleted."""
    (root / ".checkpoints").mkdir(parents=True, exist_ok=True)
    checkpoint_tmp = root / ".checkpoints" / f".{key}.pt.tmp-k1113d"
    checkpoint_tmp.write_bytes(b"half a checkpoint")
    folders = [root / f".tmp-{key}-w21t1ng", root / f".trash-{key}-d31et1ng"]
    for folder in folders:
        folder.mkdir()
        (folder / "metrics.json").write_text("{")
    return [checkpoint_tmp, *folders]


@pytest.mark.parametrize("outcome", ["saved", "diverged"])
def test_what_a_killed_writer_left_goes_when_its_run_trains_again(tmp_path, outcome):
    cfg, other = RunConfig(**TINY), RunConfig(**{**TINY, "seed": 1})
    store = Store(tmp_path)
    stale = _leftovers(tmp_path, cfg.key())
    others = _leftovers(tmp_path, other.key())  # another run's, perhaps being written now
    at_start = []

    def train_fn(config, *, checkpoint, **kwargs):
        at_start.append([p for p in stale if p.exists()])  # gone before training resumes
        checkpoint.write_bytes(b"epoch 1")
        if outcome == "diverged":
            raise RunDiverged("the training loss is nan after epoch 2")
        return FakeTrain()(config, checkpoint=checkpoint, **kwargs)

    if outcome == "diverged":
        with pytest.raises(RunDiverged):
            load_or_run(cfg, store=store, device="cpu", train_fn=train_fn)
    else:
        load_or_run(cfg, store=store, device="cpu", train_fn=train_fn)
    assert at_start == [[]]
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in others)
    assert list((tmp_path / ".checkpoints").iterdir()) == [others[0]]
    assert sorted(_hidden_leftovers(tmp_path)) == sorted(p.name for p in others[1:])


def test_save_replaces_a_failure_but_a_failure_never_replaces_a_run(tmp_path):
    cfg = RunConfig(**TINY)
    store = Store(tmp_path)
    assert isinstance(store.record_failure(cfg, "diverged"), Failed)
    run = store.save(cfg, {"test_acc": 0.5}, ARRAYS, {})
    assert store.failed() == [] and store.load(cfg) == run
    assert store.record_failure(cfg, "diverged") == run
    assert store.load(cfg) == run and _hidden_leftovers(tmp_path) == []


def _race_train(config, *, data_root, device, progress, checkpoint, counter):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    return SimpleNamespace(metrics={"trained_by": os.getpid()}, arrays={"x": np.arange(3.0)})


def _racer(root, counter, start, results):
    start.wait()  # all eight ask at once, so all eight find no run before any stores one
    train_fn = functools.partial(_race_train, counter=counter)
    run = load_or_run(RunConfig(**TINY), store=Store(root), device="cpu", train_fn=train_fn)
    results.put({"key": run.key, "metrics": run.metrics})


def test_processes_racing_for_one_run_train_it_once(tmp_path):
    root, counter = tmp_path / "results", tmp_path / "counter"
    # fresh processes, not forks of this one; the server imports flatness (and torch) once
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["flatness.results.store"])
    start, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(root, counter, start, results)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        outputs = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            p.kill()
    assert [p.exitcode for p in procs] == [0] * 8
    trainers = counter.read_text().split()
    assert len(trainers) == 1
    key = RunConfig(**TINY).key()
    assert outputs == [{"key": key, "metrics": {"trained_by": int(trainers[0])}}] * 8
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [key]
    assert _hidden_leftovers(root) == []
    assert [r.key for r in Store(root).runs()] == [key]
    assert list((root / ".checkpoints").iterdir()) == []


def test_arrays_check_reads_every_array(tmp_path):
    # the reference: zipfile's own CRC check agrees with the store on a damaged file
    cfg = RunConfig(**TINY)
    path = Store(tmp_path).save(cfg, {}, ARRAYS, {}).path / "arrays.npz"
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
    _corrupt_arrays(path)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() == "param.weight.npy"
    assert "Bad CRC-32" in Store(tmp_path).damaged()[0].reason


def test_a_store_that_cannot_be_a_folder_or_written_is_refused_before_any_write(
    tmp_path, monkeypatch
):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(FlatnessError, match=f"the results store {a_file} is not a folder"):
        Store(a_file)
    with pytest.raises(FlatnessError, match=f"cannot create the results store's folder {a_file}/x"):
        Store(a_file / "x" / "y")
    with pytest.raises(FlatnessError, match=r"/dev/null is not a folder"):
        Store("/dev/null/x")
    Store(tmp_path / "new" / "store").check_writable()  # creatable: fine, and nothing made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    # as for a user without permission (root may write anywhere)
    monkeypatch.setattr(entries, "os", SimpleNamespace(access=lambda *a: False, W_OK=2, X_OK=1))
    for root, message in ((tmp_path, "cannot write to"), (tmp_path / "s", "cannot create")):
        with pytest.raises(FlatnessError, match=f"{message} the results store.*cannot be written"):
            Store(root).check_writable()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_leftovers_of_a_killed_final_save_are_listed_and_a_sweep_removes_stale_ones(tmp_path):
    from flatness.chapters import grids
    from flatness.results import sweep

    cfg = RunConfig(**TINY)
    store = Store(tmp_path / "store")
    store.save(cfg, {"test_acc": 0.5}, ARRAYS, {"finished": "then"})
    # what a SIGKILL in the middle of saving another run leaves: its half-written folder, a
    # folder being deleted and a checkpoint being written
    other = RunConfig(**{**TINY, "seed": 5})
    half = store.root / f".tmp-{other.key()}-abc123"
    half.mkdir()
    (half / "metrics.json").write_text("{")
    (store.root / f".trash-{other.key()}-def456").mkdir()
    (store.root / ".checkpoints").mkdir()
    (store.root / ".checkpoints" / f".{other.key()}.pt.tmp-789").write_bytes(b"x")
    assert [r.key for r in store.runs()] == [cfg.key()] and not store.damaged()
    text = describe_store(store)
    assert "3 temporary entries left by a killed process" in text
    assert (
        f".tmp-{other.key()}-abc123" in text and f".checkpoints/.{other.key()}.pt.tmp-789" in text
    )
    # a run being trained keeps its leftovers: its lock is held
    with store.lock(other):
        assert store.remove_stale_leftovers() == []
    # a sweep (here of the stored run only: nothing to train but the clean-up) removes them
    out = sweep.sweep(
        grids.Grid("g", "smoke", (cfg, other)),
        store=store,
        published=Published(tmp_path / "none"),
        max_parallel=1,
    )
    assert store.leftovers() == [] and describe_store(store) == ""
    assert out.states[other.key()] == "done"
