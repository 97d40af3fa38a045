"""Checkpoints: atomic writes, weights_only reads, damage treated as absence, every RNG restored."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from flatness.errors import FlatnessError
from flatness.training.checkpoint import (
    CheckpointWarning,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

UNPICKLED = []


class Payload:
    """An arbitrary object: unpickling it runs ``__setstate__``, i.e. code from the file."""

    def __init__(self):
        self.note = "ran"

    def __setstate__(self, state):
        UNPICKLED.append(state)


class Crash:
    """Stops pickling half-way, like a full disk or a kill in the middle of a write."""

    def __reduce__(self):
        raise OSError("simulated crash mid-write")


def _draws() -> tuple:
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        np.random.standard_normal(3).tolist(),
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
    )


def _net():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def _step(model, optimisers, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    for opt in optimisers:
        opt.zero_grad()
    loss.backward()
    for opt in optimisers:
        opt.step()


def _training(seed=0):
    torch.manual_seed(seed)
    model = _net()
    head, body = list(model[3].parameters()), list(model[:2].parameters())
    sgd = torch.optim.SGD(body, lr=0.1, momentum=0.9, weight_decay=1e-3)
    adam = torch.optim.Adam(head, lr=0.01)
    return model, (sgd, adam)


def test_a_training_state_round_trips_and_resumes_exactly(tmp_path):
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 2, (16,), generator=gen)
    model, (sgd, adam) = _training()
    _step(model, (sgd, adam), x, y)
    order = torch.Generator().manual_seed(3)
    torch.randperm(10, generator=order)
    series = {"train_loss": [[0.5, 0.25], [0.125]], "epoch": [1.0, 2.0]}
    state = {
        "model": model.state_dict(),
        "sgd": sgd.state_dict(),
        "adam": adam.state_dict(),
        "order": order.get_state(),
        "series": series,
        "epoch": 1,
        "rng": rng_state(),
    }
    path = tmp_path / "run.pt"
    save_checkpoint(path, state)
    # the file itself loads with weights_only, not only through our reader
    assert torch.load(path, weights_only=True)["series"] == series
    loaded = load_checkpoint(path)
    assert loaded["series"] == series and loaded["epoch"] == 1
    assert set(loaded["sgd"]["state"]) == set(sgd.state_dict()["state"]) and loaded["sgd"]["state"]
    assert int(loaded["adam"]["state"][0]["step"]) == 1

    # uninterrupted: a second step and a batch order drawn from the generator
    _step(model, (sgd, adam), x, y)
    expected = [p.detach().clone() for p in model.state_dict().values()]
    expected_order = torch.randperm(10, generator=order)

    # resumed in a fresh model and optimisers from the loaded state
    resumed, (sgd2, adam2) = _training(seed=1)
    resumed.load_state_dict(loaded["model"])
    sgd2.load_state_dict(loaded["sgd"])
    adam2.load_state_dict(loaded["adam"])
    order2 = torch.Generator()
    order2.set_state(loaded["order"])
    _step(resumed, (sgd2, adam2), x, y)
    got = list(resumed.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert torch.equal(torch.randperm(10, generator=order2), expected_order)


def test_rng_state_restores_torch_numpy_and_python(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    # leave a cached Gaussian in numpy's legacy generator and in random.gauss
    np.random.standard_normal()
    random.gauss(0, 1)
    assert np.random.get_state()[3] == 1 and random.getstate()[2] is not None
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": rng_state()})
    expected = _draws()
    assert _draws() != expected  # the draws do move every generator on
    set_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == expected


def test_cuda_states_are_captured_and_restored_per_device(monkeypatch):
    states = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((s, d)))
    state = rng_state()
    assert state["cuda"] is states
    set_rng_state(state)
    # resumed on one GPU: the first device's state goes to device 0, the second is unused
    assert len(restored) == 1 and restored[0][1] == 0 and torch.equal(restored[0][0], states[0])


def test_rng_state_names_missing_parts():
    state = rng_state()
    del state["numpy"]
    with pytest.raises(FlatnessError, match="lacks numpy"):
        set_rng_state(state)


def test_a_crash_mid_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"epoch": 3, "w": torch.arange(4.0)})
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"epoch": 4, "w": torch.zeros(10_000), "crash": Crash()})
    old = load_checkpoint(path)
    assert old["epoch"] == 3 and torch.equal(old["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left


class Interrupt:
    """Pickled half-way through a checkpoint, as if Ctrl-C arrived inside torch.save."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_ctrl_c_inside_torch_save_is_an_interruption_and_keeps_the_old_checkpoint(
    tmp_path, monkeypatch
):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"epoch": 3})
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 4, "w": torch.zeros(10_000), "stop": Interrupt()})
    # torch's zip writer, closed half-done, raises over the interruption: still one
    real = torch.save

    def breaks_on_close(obj, f):
        try:
            real(obj, f)
        except KeyboardInterrupt:
            raise RuntimeError("unexpected pos 40320 vs 40240")  # noqa: B904, as torch does

    monkeypatch.setattr(torch, "save", breaks_on_close)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 5, "stop": Interrupt()})
    # an error of its own, with no interruption behind it, stays what it is
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"epoch": 6, "crash": Crash()})
    assert load_checkpoint(path) == {"epoch": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_saving_removes_the_temporary_files_a_killed_writer_left(tmp_path):
    path = tmp_path / "abc.pt"
    killed = tmp_path / ".abc.pt.tmp-k1113d"  # as left by a SIGKILL during torch.save
    killed.write_bytes(b"half a checkpoint")
    other = tmp_path / ".abcd.pt.tmp-w21t1ng"  # another checkpoint's
    other.write_bytes(b"")
    save_checkpoint(path, {"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".abcd.pt.tmp-w21t1ng", "abc.pt"]
    assert load_checkpoint(path) == {"epoch": 1}


def test_an_absent_checkpoint_is_none(tmp_path, recwarn):
    assert load_checkpoint(tmp_path / "none.pt") is None
    assert len(recwarn) == 0


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncated", "RuntimeError"),
        ("empty", "EOFError"),
        ("garbage", "not a weights_only checkpoint"),
        ("a list", "not a dict"),
    ],
)
def test_a_damaged_checkpoint_warns_and_counts_as_absent(tmp_path, damage, reason):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"w": torch.arange(1000.0)})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint" * 10)
    else:
        torch.save([1, 2], path)
    with pytest.warns(CheckpointWarning, match=reason) as caught:
        assert load_checkpoint(path) is None
    assert str(path) in str(caught[0].message) and "restarts from scratch" in str(caught[0].message)


def test_a_pickled_object_is_never_unpickled(tmp_path):
    path = tmp_path / "run.pt"
    torch.save({"epoch": 1, "payload": Payload()}, path)
    UNPICKLED.clear()
    with pytest.warns(CheckpointWarning, match=r"test_checkpoint\.Payload.*weights_only"):
        assert load_checkpoint(path) is None
    assert UNPICKLED == []
    # control: an unrestricted load would have run the object's code
    torch.load(path, weights_only=False)
    assert UNPICKLED == [{"note": "ran"}]
