"""Cached computations: stored once, read back equal, recomputed when damaged or changed."""

import math
import shutil
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from flatness.errors import FlatnessError
from flatness.results import computations as comp


def value():
    frame = pd.DataFrame(
        {
            "gamma": [1e-5, 1e-3, 1.0],
            "steps": np.array([3, 4, 5], dtype=np.int64),
            "separates": [True, False, True],
            "label": ["a", "b", "c"],
            "note": ["x", None, "z"],
        }
    )
    return {
        "path": frame,
        "scaled": frame.set_index("label"),
        "series": pd.Series([0.5, math.nan], name="ratio"),
        "hessian": torch.randn(
            4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        ),
        "half": torch.ones(3, dtype=torch.float32),
        "ranks": np.arange(5),
        1e-4: ("tuple", 2, math.inf, -math.inf, None),
        "nan": math.nan,
        "nested": [{"a": 1}, [2.5, "b"]],
    }


def same(a, b) -> bool:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        return True
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
        return True
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


@pytest.fixture
def layers(tmp_path, monkeypatch):
    monkeypatch.delenv(comp.REFRESH_ENV, raising=False)
    return {"results": tmp_path / "results", "published": tmp_path / "published"}


def counted(fn):
    calls = []

    def compute():
        calls.append(1)
        return fn()

    compute.calls = calls
    return compute


def test_a_value_is_computed_once_and_read_back_equal(layers):
    compute = counted(value)
    first = comp.cached("test.value", {"profile": "smoke", "n": 3}, compute, **layers)
    again = comp.cached("test.value", {"n": 3, "profile": "smoke"}, compute, **layers)
    assert len(compute.calls) == 1 and same(first, value()) and same(again, value())
    other = comp.cached("test.value", {"profile": "smoke", "n": 4}, compute, **layers)
    assert len(compute.calls) == 2 and same(other, value())
    found, damaged = comp.stored(layers["results"])
    assert [c.name for c in found] == ["test.value"] * 2 and not damaged
    assert sorted(c.inputs["n"] for c in found) == [3, 4]
    assert all(c.provenance["seconds"] >= 0 for c in found)


def test_editing_the_code_it_runs_computes_it_again(layers, tmp_path, monkeypatch):
    module = tmp_path / "mod" / "computed_here.py"
    module.parent.mkdir()
    module.write_text("def f():\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(module.parent))
    import computed_here

    compute = counted(computed_here.f)
    run = lambda: comp.cached("test.code", {}, compute, code=["computed_here"], **layers)
    run(), run()
    assert len(compute.calls) == 1
    # a comment, a docstring, other quotes and line breaks: the same code, the same key
    module.write_text(
        textwrap.dedent(
            '''
            """A module."""
            def f(
            ):
                """Returns one."""
                return 1.0  # the same, edited
            '''
        )
    )
    run()
    assert len(compute.calls) == 1
    for edited in ("def f():\n    return 1.5\n", "def f():\n    return 1.0\n\n\nX = 'x'\n"):
        module.write_text(edited)
        run()
    assert len(compute.calls) == 3
    sys.modules.pop("computed_here", None)


def test_a_code_hash_is_of_what_runs_not_of_how_it_is_written(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    sources = {
        "a": "def f(x, y):\n    return x + 'y'\n",
        "b": '"""doc"""\n\n\ndef f(x, y):  # hm\n    """doc"""\n    return (\n        x + "y"\n    )\n',
        "c": "def f(x, y):\n    return y + 'y'\n",
        "d": "def f(x, y):\n    return x + 'y '\n",
        "e": "def f(x, y):\n    'a string kept as a statement'\n    return x + 'y'\n",
        "f": "def f(x, y):\n    return x + 'y'\n    'after'\n",
    }
    for name, text in sources.items():
        (tmp_path / f"hashed_{name}.py").write_text(text)
    h = {n: comp.code_hashes([f"hashed_{n}"])[f"hashed_{n}"] for n in sources}
    assert h["a"] == h["b"] == h["e"]  # the first string of a body is its docstring
    assert len({h["a"], h["c"], h["d"], h["f"]}) == 4


@pytest.mark.parametrize(
    "damage",
    ["truncated arrays", "invalid value.json", "missing provenance", "edited inputs"],
)
def test_a_damaged_entry_is_reported_and_computed_again(layers, damage):
    compute = counted(value)
    comp.cached("test.value", {"n": 1}, compute, **layers)
    (path,) = [c.path for c in comp.stored(layers["results"])[0]]
    if damage == "truncated arrays":
        data = (path / "arrays.npz").read_bytes()
        (path / "arrays.npz").write_bytes(data[: len(data) // 2])
    elif damage == "invalid value.json":
        (path / "value.json").write_text("{")
    elif damage == "missing provenance":
        (path / "provenance.json").unlink()
    else:
        (path / "inputs.json").write_text('{"name": "test.value", "inputs": {"n": 2}, "code": {}}')
    if damage != "truncated arrays" and damage != "invalid value.json":
        assert comp.stored(layers["results"])[1]  # listed as damaged
    with pytest.warns(comp.DamagedWarning, match="damaged"):
        again = comp.cached("test.value", {"n": 1}, compute, **layers)
    assert len(compute.calls) == 2 and same(again, value())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same(comp.cached("test.value", {"n": 1}, compute, **layers), value())
    assert len(compute.calls) == 2
    assert not [p for p in path.parent.iterdir() if p.name.startswith((".tmp", ".trash"))]


def test_what_cannot_be_stored_is_refused_and_leaves_nothing(layers):
    with pytest.raises(FlatnessError, match="cannot hold a Linear"):
        comp.cached("test.model", {}, lambda: {"model": torch.nn.Linear(2, 2)}, **layers)
    assert comp.stored(layers["results"]) == ([], [])
    folder = layers["results"] / comp.FOLDER
    assert not [p for p in folder.iterdir() if p.name.startswith((".tmp", ".trash"))]
    for name in ("no spaces", ".hidden", "1st", ""):
        with pytest.raises(FlatnessError, match="name starts with a letter"):
            comp.cached(name, {}, lambda: 1, **layers)
    with pytest.raises(FlatnessError, match="inputs"):
        comp.cached("test.inputs", {"model": object()}, lambda: 1, **layers)


@pytest.mark.parametrize(
    "value, why",
    [
        (
            pd.DataFrame({"c": pd.Categorical(["a"], categories=["b", "a"], ordered=True)}),
            "would not come back",
        ),
        (pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}), "cannot hold a NAType"),
        (
            pd.DataFrame({"x": [1, 2]}, index=pd.MultiIndex.from_tuples([(0, 1), (1, 0)])),
            "MultiIndex",
        ),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), "duplicate column"),
        (np.ma.masked_array([1.0, 2.0], mask=[True, False]), "cannot be stored exactly"),
        (torch.ones(2, dtype=torch.bfloat16), "cannot be stored"),
        (__import__("collections").namedtuple("Pair", "a b")(1, 2), "cannot hold a Pair"),
        (np.longdouble(1) / 3, "lose precision"),
    ],
    ids=[
        "categorical",
        "nullable",
        "multiindex",
        "duplicate",
        "masked",
        "bfloat16",
        "named",
        "long",
    ],
)
def test_a_value_that_would_not_come_back_identical_is_refused(layers, value, why):
    compute = counted(lambda: {"v": value})
    with pytest.raises(FlatnessError, match=why):
        comp.cached("test.lossy", {}, compute, **layers)
    assert comp.stored(layers["results"]) == ([], [])


def test_indexes_names_and_dtypes_come_back_and_every_call_returns_the_same(layers):
    frame = pd.DataFrame({"s": pd.Series(["x", "y"], dtype=object), "v": [1.5, 2.5]})
    frame = frame.rename_axis("row").rename_axis("what", axis=1)
    value = {
        "frame": frame,
        "indexed": pd.Series([1.0, 2.0], index=["a", "b"], name="ratio"),
        "from": pd.DataFrame({"t": [3, 4]}, index=pd.RangeIndex(5, 7)),
        "scalar": np.float64(1.25),
    }
    first = comp.cached("test.kinds", {}, lambda: value, **layers)
    again = comp.cached("test.kinds", {}, lambda: value, **layers)
    for got in (first, again):
        pd.testing.assert_frame_equal(got["frame"], frame, check_exact=True)
        assert got["frame"]["s"].dtype == object
        pd.testing.assert_series_equal(got["indexed"], value["indexed"], check_exact=True)
        assert list(got["from"].index) == [5, 6]
        assert type(got["scalar"]) is float and got["scalar"] == 1.25  # as it reads back


def test_inputs_that_mean_different_things_get_different_keys():
    key = lambda inputs: comp.key_of("test.k", inputs, [])[0]
    assert key({"a": "nan"}) != key({"a": math.nan})
    assert key({"a": 1}) != key({"a": 1.5})
    assert key({"a": (1, 2)}) == key({"a": [1, 2]})  # the same settings, as documented
    with pytest.raises(FlatnessError, match="text keys"):
        key({"a": {1: "int"}})
    loop = []
    loop.append(loop)
    with pytest.raises(FlatnessError, match="nest deeper"):
        key({"a": loop})


def test_an_edited_entry_that_still_reads_is_damage_too(layers):
    compute = counted(lambda: {"x": 1.0})
    comp.cached("test.edit", {}, compute, **layers)
    (path,) = [c.path for c in comp.stored(layers["results"])[0]]
    (path / "value.json").write_text('{"dict": [["x", 2.0]]}')  # valid, and wrong
    assert comp.stored(layers["results"])[1][0][1].startswith("value.json does not match")
    with pytest.warns(comp.DamagedWarning, match="value.json does not match"):
        assert comp.cached("test.edit", {}, compute, **layers) == {"x": 1.0}
    assert len(compute.calls) == 2


def test_an_unwritable_store_is_refused_before_computing(layers, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    compute = counted(lambda: 1.0)
    with pytest.raises(FlatnessError, match="cannot store the computation test.x"):
        comp.cached("test.x", {}, compute, results=blocker / "results")
    assert compute.calls == []


def _slow(path: str) -> float:
    import time

    with open(path, "a") as f:
        f.write("computed\n")
    time.sleep(1.0)
    return 2.5


def test_processes_asking_for_one_key_at_once_compute_it_once(layers, tmp_path):
    import concurrent.futures
    import functools
    import multiprocessing

    log = tmp_path / "log.txt"
    call = functools.partial(_cached_in_process, str(layers["results"]), str(log))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=context) as pool:
        got = list(pool.map(call, range(3)))
    assert got == [2.5, 2.5, 2.5]
    assert log.read_text().count("computed") == 1
    assert len(comp.stored(layers["results"])[0]) == 1


def _cached_in_process(results: str, log: str, _index: int) -> float:
    import functools

    from flatness.results import computations

    return computations.cached(
        "test.once", {}, functools.partial(_slow, log), results=results, published=results + "-p"
    )


def test_a_published_computation_is_read_first_and_a_tampered_one_refused(layers):
    compute = counted(value)
    comp.cached("test.value", {"n": 1}, compute, **layers)
    written = comp.publish(comp.stored(layers["results"])[0], layers["published"])
    assert len(written) == 1 and (written[0] / "hashes.json").is_file()
    assert comp.publish(comp.stored(layers["results"])[0], layers["published"]) == []
    shutil.rmtree(layers["results"])
    assert same(comp.cached("test.value", {"n": 1}, compute, **layers), value())
    assert len(compute.calls) == 1  # from the published layer
    (written[0] / "value.json").write_text((written[0] / "value.json").read_text() + " ")
    with pytest.warns(comp.DamagedWarning, match="published computation test.value"):
        again = comp.cached("test.value", {"n": 1}, compute, **layers)
    assert len(compute.calls) == 2 and same(again, value())


def test_recompute_asks_for_everything_afresh(layers, monkeypatch):
    compute = counted(lambda: 1.5)
    comp.cached("test.x", {}, compute, **layers)
    monkeypatch.setenv(comp.REFRESH_ENV, "1")
    assert comp.cached("test.x", {}, compute, **layers) == 1.5
    assert len(compute.calls) == 2 and len(comp.stored(layers["results"])[0]) == 1
