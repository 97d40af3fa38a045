"""The published layer: read before the local store, checked against its hashes, written only by
publish; weights left out above the size limit without losing paired comparisons."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from flatness.chapters import common
from flatness.data import load
from flatness.errors import FlatnessError
from flatness.results import published as pub
from flatness.results.runs import load_or_run
from flatness.results.store import Store
from flatness.training.config import RunConfig
from flatness.training.loop import load_model

TINY = dict(
    model="logreg", dataset="digits", epochs=2, train_size=200, batch_size=64, hessian_every=0
)


def _refuse(*args, **kwargs):
    raise AssertionError("trained, but the run is published")


@pytest.fixture
def published_run(tmp_path):
    cfg = RunConfig(weight_decay=1e-3, seed=0, **TINY)
    local = Store(tmp_path / "local")
    run = load_or_run(cfg, store=local, published=False)
    layer = pub.Published(tmp_path / "published")
    assert pub.publish([run], layer) == [layer.root / cfg.key()]
    return cfg, run, layer


def test_a_published_run_is_read_before_the_local_store_and_trains_nothing(tmp_path, published_run):
    cfg, run, layer = published_run
    empty = Store(tmp_path / "empty")
    found = load_or_run(cfg, store=empty, published=layer, train_fn=_refuse)
    assert found.path == layer.root / cfg.key()
    assert found.metrics == run.metrics
    for k, v in run.arrays.items():
        np.testing.assert_array_equal(found.arrays[k], v)
    assert not empty.root.exists()
    assert found.provenance["weights_published"] is True


@pytest.mark.parametrize("name", ["metrics.json", "arrays.npz", "config.json", "provenance.json"])
def test_a_published_file_that_does_not_match_its_hash_is_refused_naming_the_run(
    tmp_path, published_run, name
):
    cfg, _, layer = published_run
    path = layer.root / cfg.key() / name
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(FlatnessError) as err:
        load_or_run(cfg, store=Store(tmp_path / "empty"), published=layer, train_fn=_refuse)
    message = str(err.value)
    assert cfg.label() in message and f"{name} does not match the SHA-256" in message
    # this layer is no git checkout's: git cannot restore it
    assert "git checkout" not in message and "git -C" not in message
    again = "publish it again from a store that holds it with `python -m flatness publish GRID"
    assert f"{again} --to {layer.root}`" in message


def test_a_damaged_run_tracked_by_git_says_to_restore_it_from_git(tmp_path, published_run):
    cfg, _, layer = published_run
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "published"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "publish"], check=True)
    path = layer.root / cfg.key() / "metrics.json"
    path.write_text("{}")
    with pytest.raises(FlatnessError) as err:
        load_or_run(cfg, store=Store(tmp_path / "empty"), published=layer, train_fn=_refuse)
    assert f"restore it with `git -C {layer.root} checkout -- {cfg.key()}`" in str(err.value)
    subprocess.run([*git[:3], "-C", str(layer.root), "checkout", "--", cfg.key()], check=True)
    assert layer.find(cfg).metrics == json.loads(path.read_text())


def test_a_published_run_without_hashes_is_refused(tmp_path, published_run):
    cfg, _, layer = published_run
    (layer.root / cfg.key() / pub.HASHES).unlink()
    with pytest.raises(FlatnessError, match=f"{cfg.label()}.*no readable hashes.json"):
        load_or_run(cfg, store=Store(tmp_path / "empty"), published=layer, train_fn=_refuse)


def test_weights_above_the_limit_are_left_out_and_paired_comparisons_still_work(
    tmp_path, monkeypatch
):
    cfg = RunConfig(weight_decay=0.0, seed=1, **TINY)
    run = load_or_run(cfg, store=Store(tmp_path / "local"), published=False)
    weights = sum(v.nbytes for k, v in run.arrays.items() if k.startswith("state."))
    monkeypatch.setattr(pub, "WEIGHTS_LIMIT_BYTES", weights - 1)
    layer = pub.Published(tmp_path / "published")
    pub.publish([run], layer)
    found = layer.find(cfg)
    assert not any(k.startswith("state.") for k in found.arrays)
    assert found.provenance["weights_published"] is False
    assert found.provenance["weights_bytes"] == weights
    # per-example correctness, recorded at training, against the model rebuilt from weights
    data = load("digits", train_size=200)
    model = load_model(cfg, run.arrays, data.input_shape, data.num_classes).eval()
    expected = (model(data.x_test).argmax(1) == data.y_test).numpy()
    np.testing.assert_array_equal(common.correct(found, data), expected)
    assert 0 < expected.mean() < 1


def test_publishing_without_weights_keeps_metrics_and_test_predictions(tmp_path):
    cfg = RunConfig(weight_decay=0.0, seed=2, **TINY)
    run = load_or_run(cfg, store=Store(tmp_path / "local"), published=False)
    layer = pub.Published(tmp_path / "published")
    pub.publish([run], layer, weights=False)
    found = layer.find(cfg)
    assert not any(k.startswith("state.") for k in found.arrays)
    assert found.provenance["weights_published"] is False
    assert found.metrics == run.metrics
    np.testing.assert_array_equal(found.arrays["test_correct"], run.arrays["test_correct"])


def test_publishing_again_leaves_published_runs_as_they_are(published_run):
    cfg, run, layer = published_run
    before = {p.name: p.stat().st_mtime_ns for p in (layer.root / cfg.key()).iterdir()}
    assert pub.publish([run], layer) == []
    after = {p.name: p.stat().st_mtime_ns for p in (layer.root / cfg.key()).iterdir()}
    assert before == after


def test_training_a_run_that_is_not_published_writes_only_the_local_store(tmp_path, published_run):
    _, _, layer = published_run
    before = sorted(p.name for p in layer.root.iterdir())
    other = RunConfig(weight_decay=0.0, seed=5, **TINY)
    run = load_or_run(other, store=Store(tmp_path / "local2"), published=layer)
    assert run.path.parent == tmp_path / "local2"
    assert sorted(p.name for p in layer.root.iterdir()) == before


def test_publish_status_and_sweep_on_the_command_line(tmp_path, capsys):
    from flatness.cli import main

    grid = tmp_path / "g.yaml"
    grid.write_text(json.dumps({"runs": [{**TINY, "weight_decay": 0, "seed": [0, 1]}]}))
    common_args = ["--profile", "smoke", "--results", str(tmp_path / "local")]
    common_args += ["--published", str(tmp_path / "published")]
    assert main(["sweep", str(grid), *common_args, "--max-parallel", "1"]) == 0
    assert main(["publish", str(grid), *common_args, "--to", str(tmp_path / "published")]) == 0
    out = capsys.readouterr().out
    assert "published 2 run(s)" in out
    assert main(["sweep-status", str(grid), *common_args]) == 0
    out = capsys.readouterr().out
    assert "2 point(s): 2 published" in out
    assert main(["sweep", str(grid), *common_args, "--dry-run"]) == 0
    assert "0 to train" in capsys.readouterr().out
    key = next((tmp_path / "published").iterdir())
    (key / "metrics.json").write_text("{}")
    assert main(["sweep-status", str(grid), *common_args]) == 0
    out = capsys.readouterr().out
    assert "1 published, 1 damaged" in out and "does not match the SHA-256" in out
    # publishing again from the store repairs it
    assert main(["publish", str(grid), *common_args, "--to", str(tmp_path / "published")]) == 0
    out = capsys.readouterr().out
    assert "published 1 run(s)" in out and "1 were published already" in out
    assert main(["sweep-status", str(grid), *common_args]) == 0
    assert "2 point(s): 2 published" in capsys.readouterr().out
    assert all(
        p.stat().st_mode & 0o777 == 0o755 for p in (tmp_path / "published").iterdir() if p.is_dir()
    )


def test_a_page_says_how_long_its_runs_took_and_on_what(published_run, tmp_path):
    cfg, run, layer = published_run
    other = load_or_run(RunConfig(weight_decay=0.0, seed=3, **TINY), store=Store(tmp_path / "l"))
    runs = [layer.find(cfg), other]
    text = common.run_costs(runs)
    hours = (run.provenance["wall_seconds"] + other.provenance["wall_seconds"]) / 3600
    assert text.startswith(f"The 2 runs took {hours:.3g} hours in all")
    assert other.provenance["device"] in text and "1 of them published" in text
    assert "resumed" not in text
    other.provenance["sittings"] = 3
    assert "; 1 resumed from a checkpoint (their time sums the sittings" in common.run_costs(runs)


def test_a_run_that_learnt_nothing_is_not_published_without_being_asked(tmp_path, published_run):
    cfg, good, layer = published_run
    stalled = load_or_run(
        RunConfig(weight_decay=0.0, seed=1, lr=1e-9, **TINY), store=Store(tmp_path / "s")
    )
    # by hand: a network that learnt nothing has the loss of predicting each of 10 classes alike
    assert stalled.metrics["train_loss"] >= 0.95 * np.log(10) > good.metrics["train_loss"]
    assert pub.collapsed(stalled) and not pub.collapsed(good)
    before = sorted(p.name for p in layer.root.iterdir())
    with pytest.raises(FlatnessError, match=r"1 run\(s\) learnt nothing") as err:
        pub.publish([good, stalled], layer)
    assert stalled.key in str(err.value) and "--allow-collapsed" in str(err.value)
    assert f"{stalled.config.label()} ({stalled.key}, training loss" in str(err.value)
    assert sorted(p.name for p in layer.root.iterdir()) == before  # nothing written
    assert pub.publish([good, stalled], layer, allow_collapsed=True) == [layer.root / stalled.key]


def test_a_refusal_says_by_its_loss_whether_a_run_diverged_or_predicts_classes_alike(tmp_path):
    store, arrays = Store(tmp_path / "s"), {"x": np.zeros(1)}
    runs = [
        store.save(RunConfig(weight_decay=0.0, seed=0, lr=lr, **TINY), {"train_loss": loss}, arrays, {})
        for lr, loss in ((1e6, 2.8e6), (1e-7, 2.31), (1e-7 * 3, 4.0))
    ]  # fmt: skip
    with pytest.raises(FlatnessError) as err:
        pub.publish(runs, pub.Published(tmp_path / "published"))
    message = str(err.value)
    assert message.startswith("3 run(s) learnt nothing")
    labels = [f"logreg/digits sgd lr={lr} wd=0 seed=0" for lr in ("1e+06", "1e-07", "3e-07")]
    assert (
        f"{labels[0]} ({runs[0].key}, training loss 2.8e+06, far above ln K = 2.303: it diverged)"
        in message
    )
    alike = "about ln K = 2.303: it predicts every class alike"
    assert f"{labels[1]} ({runs[1].key}, training loss 2.31, {alike})" in message
    # 4.0 is below 2 ln 10 = 4.6, so not diverged, but well above ln K: not "about" it
    assert f"({runs[2].key}, training loss 4, above ln K = 2.303 (the loss of predicting" in message
    assert "(choose it on validation data)" in message and "train on validation" not in message
    assert not (tmp_path / "published").exists()


def test_publish_refuses_to_and_published_naming_different_folders(tmp_path, capsys):
    from flatness.cli import main

    grid = tmp_path / "g.yaml"
    grid.write_text(json.dumps({"runs": [{**TINY, "weight_decay": 0, "seed": 0}]}))
    load_or_run(RunConfig(weight_decay=0.0, seed=0, **TINY), store=Store(tmp_path / "local"))
    args = ["publish", str(grid), "--profile", "smoke", "--results", str(tmp_path / "local")]
    to, other = ["--to", str(tmp_path / "a")], ["--published", str(tmp_path / "b")]
    assert main([*args, *to, *other]) == 2
    err = capsys.readouterr().err
    assert f"--to {tmp_path / 'a'} and --published {tmp_path / 'b'} name different" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the same folder twice is one folder; either option alone names it
    assert main([*args, *to, "--published", str(tmp_path / "x" / ".." / "a")]) == 0
    assert "published 1 run(s)" in capsys.readouterr().out
    assert main([*args, *other]) == 0
    assert f"published 1 run(s) of grid g into {tmp_path / 'b'}" in capsys.readouterr().out


def test_what_a_killed_publish_left_is_never_a_run_and_goes_on_the_next_publish(published_run):
    cfg, run, layer = published_run
    folder = layer.root / cfg.key()
    writing, old = layer.root / f".tmp-{cfg.key()}-w21t1ng", layer.root / f".old-{cfg.key()}"
    for leftover in (writing, old):
        shutil.copytree(folder, leftover)  # whole copies, hashes.json included
    assert [r.key for r in layer.runs()] == [cfg.key()]
    (folder / "metrics.json").write_text("{}")  # damaged: publish replaces it, via .old-<key>
    assert pub.publish([run], layer) == [folder]
    assert sorted(p.name for p in layer.root.iterdir()) == [cfg.key()]
    assert layer.find(cfg).metrics == run.metrics


def test_publish_to_an_empty_folder_name_is_refused_not_the_default(tmp_path, capsys, monkeypatch):
    from flatness.cli import main

    grid = tmp_path / "g.yaml"
    grid.write_text(json.dumps({"runs": [{**TINY, "weight_decay": 0, "seed": 0}]}))
    load_or_run(RunConfig(weight_decay=0.0, seed=0, **TINY), store=Store(tmp_path / "local"))
    monkeypatch.setenv(pub.PUBLISHED_ENV, str(tmp_path / "default"))
    monkeypatch.chdir(tmp_path)
    args = ["publish", str(grid), "--profile", "smoke", "--results", str(tmp_path / "local")]
    for empty in (["--to", ""], ["--published", ""]):
        assert main([*args, *empty]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"flatness: error: {empty[0]} is empty; give a folder, or leave")
        assert err.count("\n") == 1 and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml", "local"]


def test_allow_collapsed_help_names_both_kinds_of_run_it_lets_through(capsys):
    from flatness.cli import main

    with pytest.raises(SystemExit):
        main(["publish", "--help"])
    # argparse wraps the help at the terminal's width
    text = " ".join(capsys.readouterr().out.split())
    flag = text.split("--allow-collapsed ")[-1].split(" --results")[0]
    assert "predict every class alike" in flag and "diverged" in flag, flag
    assert f"{pub.COLLAPSED_SHARE:g} ln K" in flag and "far above ln K" in flag, flag
