"""The peers of the estimators chapter (PyHessian, hessian-eigenthings, curvlinops): what each
returns on inputs that define no fixed mean-loss Hessian, checked against dense float64
Hessians of hand-written functions; honest HVP counts; coverage counted by hand."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from torch import nn

import flatness
from flatness.chapters import estimators as E
from flatness.chapters.estimators import peers as PE
from flatness.chapters.estimators import prose, tables
from flatness.chapters.estimators.eigenvalues import Reach
from flatness.models import mlp

N, D, WIDTH, K = 50, 6, 8, 4


def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (N,), generator=gen)
    return x, y


def network():
    torch.manual_seed(0)
    return mlp(D, K, widths=(WIDTH,), activation="tanh").double()


def unflatten(theta):
    """W1 (8, 6), b1 (8,), W2 (4, 8), b2 (4,) from a flat vector, in the module's order."""
    sizes = [WIDTH * D, WIDTH, K * WIDTH, K]
    w1, b1, w2, b2 = torch.split(theta, sizes)
    return w1.reshape(WIDTH, D), b1, w2.reshape(K, WIDTH), b2


def logits(theta, x):
    w1, b1, w2, b2 = unflatten(theta)
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def mean_ce(z, y):
    """The mean cross-entropy, by hand: log-sum-exp minus the label's logit."""
    return (torch.logsumexp(z, dim=1) - z[torch.arange(len(y)), y]).mean()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def dense(f, theta) -> torch.Tensor:
    return torch.autograd.functional.hessian(f, theta)


@pytest.fixture(scope="module")
def small():
    """The chapter's :class:`Problem` on the tanh MLP 6-8-4 (76 parameters), its Hessian from
    the hand-written loss."""
    model, (x, y) = network(), data()
    hessian = dense(lambda t: mean_ce(logits(t, x), y), flat(model))
    return E.Problem(None, model, (x, y), hessian, torch.linalg.eigvalsh(hessian))


@pytest.fixture(scope="module")
def misuse(small):
    return PE.misuse_runs(small, batch_size=16)


def outcome(misuse, kind, tool):
    return misuse[(misuse.kind == kind) & (misuse.tool == tool)].iloc[0]


# -- the inputs of the probe, against hand-written references ----------------------------------
def test_a_sum_reduced_loss_is_n_times_the_mean_loss_hessian_in_every_peer(small, misuse):
    x, y = small.data
    theta = flat(small.model)
    mean_hessian = dense(lambda t: mean_ce(logits(t, x), y), theta)
    top = torch.linalg.eigvalsh(mean_hessian)[-1].item()
    # the trace of curvlinops' and hessian-eigenthings' sum-loss operators, column by column
    summed = nn.CrossEntropyLoss(reduction="sum")
    basis = torch.eye(len(theta), dtype=torch.float64)
    cl = PE.curvlinops_operator(small.model, small.data, summed)
    cl_trace = sum((basis[i] @ (cl @ basis[i])).item() for i in range(len(theta)))
    he = PE.eigenthings_operator(small.model, small.data, summed)
    he_trace = sum((basis[i] @ he.matvec(basis[i])).item() for i in range(len(theta)))
    exact = mean_hessian.trace().item()
    assert cl_trace == pytest.approx(N * exact, rel=1e-10)
    assert he_trace == pytest.approx(N * exact, rel=1e-10)
    # each peer returns N times the mean loss's top eigenvalue, and is classified wrong
    for tool, rel in (("PyHessian", 1e-4), ("hessian-eigenthings", 1e-8), ("curvlinops", 1e-8)):
        row = outcome(misuse, "sum", tool)
        assert row["values"][0] == pytest.approx(N * top, rel=rel), tool
        assert row.outcome == "silently wrong", tool
        assert row["rel error"] == pytest.approx(N - 1, rel=1e-3), tool
    refused = outcome(misuse, "sum", "flatness")
    assert refused.outcome == "refused" and refused.error.startswith("FlatnessError")


def test_the_twin_network_has_each_eigenvalue_twice_at_half_the_networks(small):
    x, y = small.data
    theta = flat(small.model)
    p = len(theta)

    def twins_loss(both):  # each copy predicts every label; the mean over both copies
        return (mean_ce(logits(both[:p], x), y) + mean_ce(logits(both[p:], x), y)) / 2

    hessian = dense(twins_loss, torch.cat([theta, theta]))
    evals = torch.linalg.eigvalsh(hessian).flip(0)
    single = torch.linalg.eigvalsh(small.hessian).flip(0)
    assert evals[0].item() == pytest.approx(evals[1].item(), rel=1e-12)
    assert evals[0].item() == pytest.approx(single[0].item() / 2, rel=1e-12)
    assert evals[2].item() == pytest.approx(single[1].item() / 2, rel=1e-12)
    assert single[0] - single[1] > 0.05 * single[0]  # a second copy is far from the next value
    # the module computes that loss, and the probe's truth is that pair
    case = next(c for c in PE.cases(small, batch_size=16) if c.kind == "repeated")
    xs, ys = case.data()
    module_loss = nn.functional.cross_entropy(case.model(xs), ys)
    assert module_loss.item() == pytest.approx(twins_loss(torch.cat([theta, theta])).item())
    assert torch.allclose(case.truth, evals[:2], rtol=1e-10, atol=0)


def test_batchnorm_in_train_mode_is_the_batch_statistics_hessian(small, misuse):
    x, y = small.data
    case = next(c for c in PE.cases(small, batch_size=16) if c.kind == "batchnorm")
    assert case.model.training
    eps = case.model[2].eps
    theta = torch.cat([flat(case.model[1]), flat(case.model[2]), flat(case.model[4])])

    def batch_statistics(t):  # Linear, BatchNorm on this batch's statistics, tanh, Linear
        w1, b1 = t[: WIDTH * D].reshape(WIDTH, D), t[WIDTH * D : WIDTH * D + WIDTH]
        rest = t[WIDTH * D + WIDTH :]
        gamma, beta, w2, b2 = rest[:WIDTH], rest[WIDTH : 2 * WIDTH], rest[2 * WIDTH : -K], rest[-K:]
        h = x @ w1.T + b1
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + eps) * gamma + beta
        return mean_ce(torch.tanh(h) @ w2.reshape(K, WIDTH).T + b2, y)

    top = torch.linalg.eigvalsh(dense(batch_statistics, theta))[-1].item()
    assert case.truth[0].item() == pytest.approx(top, rel=1e-10)
    # both modes compute the same loss here, but not the same Hessian (eval mode first: a pass
    # in train mode moves the running statistics)
    with torch.no_grad():
        evaluated = case.model.eval()(x)
        train = case.model.train()(x)
    assert torch.allclose(train, evaluated, rtol=1e-10, atol=1e-12)
    assert abs(case.eval_truth[0].item() / top - 1) > 0.05
    # PyHessian and flatness (by default) measure running statistics; flatness warns that the
    # model's mode says otherwise, and asked for train mode gets the batch statistics' Hessian
    row = outcome(misuse, "batchnorm", "PyHessian")
    assert row.outcome == "silently wrong" and row["eval mode"] is True
    row = outcome(misuse, "batchnorm", "flatness")
    assert row.outcome == "wrong, with a warning" and row["eval mode"] is True
    assert any("bn_mode was not given" in w for w in row["warned"])
    asked = outcome(misuse, "batchnorm", "flatness (bn_mode='train')")
    assert asked.outcome == "right"
    assert asked["values"][0] == pytest.approx(top, rel=1e-6)


def test_a_shuffling_loader_drops_a_different_remainder_on_every_pass(small, misuse):
    case = next(c for c in PE.cases(small, batch_size=16) if c.kind == "shuffled")
    loader = case.data()
    size = PE.shuffled_batch(N, 16)
    assert (size, N % size) == (16, 2)
    seen = [torch.cat([xb for xb, _ in loader]) for _ in range(2)]
    assert all(len(s) == N - N % size for s in seen)
    rows = [{tuple(r.tolist()) for r in s} for s in seen]
    assert rows[0] != rows[1]  # two passes cover different examples
    assert outcome(misuse, "shuffled", "flatness").error.startswith("FlatnessError")
    assert outcome(misuse, "shuffled", "curvlinops").error.startswith("RuntimeError")
    assert PE.shuffled_batch(64, 16) == 15  # 16 divides 64: one less leaves a remainder


def test_a_model_returning_a_tuple_is_taken_by_its_logits_in_flatness_and_refused_by_peers(
    small, misuse
):
    top = torch.linalg.eigvalsh(small.hessian)[-1].item()
    row = outcome(misuse, "tuple", "flatness")
    assert row.outcome == "right" and row["values"][0] == pytest.approx(top, rel=1e-8)
    for tool in ("PyHessian", "hessian-eigenthings", "curvlinops"):
        row = outcome(misuse, "tuple", tool)
        assert row.outcome == "refused" and row.error.startswith("TypeError"), tool


def test_every_tool_is_right_on_the_well_posed_problem_and_its_tolerance_follows(small, misuse):
    exact = torch.linalg.eigvalsh(small.hessian).flip(0)[:2]
    for tool in PE.TOOLS:
        row = outcome(misuse, "control", tool)
        assert row.outcome == "right", tool
        assert np.allclose(row["values"], exact.numpy(), rtol=1e-4, atol=0), tool
        assert row.tolerance == max(PE.PROBE_MARGIN * row["rel error"], PE.PROBE_FLOOR), tool


def test_classification_of_outcomes():
    truth = torch.tensor([2.0, 1.0], dtype=torch.float64)
    off = PE.Outcome((2.0, 1.000003), None)
    assert PE.classify(off, truth, 1e-6) == "silently wrong"
    assert PE.classify(off, truth, 1e-5) == "right"
    assert PE.classify(PE.Outcome((2.0, 1.000003), None, ("careful",)), truth, 1e-6) == (
        "wrong, with a warning"
    )
    assert PE.classify(PE.Outcome((2.0,), None), truth, 1.0) == "silently wrong"  # too few
    assert PE.classify(PE.Outcome(None, "TypeError: no"), truth, 1.0) == "refused"
    assert PE.tolerance(3e-6) == pytest.approx(3e-5)
    assert PE.tolerance(1e-12) == PE.PROBE_FLOOR


# -- the comparison: errors against the exact values and honest HVP counts ---------------------
@pytest.fixture
def counted(monkeypatch):
    """Products counted in the peers' own operator classes, outside the code under test."""
    import curvlinops
    import hessian_eigenthings

    counts = {"hessian-eigenthings": 0, "curvlinops": 0}
    matvec = hessian_eigenthings.HessianOperator.matvec
    matmat = curvlinops.HessianLinearOperator._matmat

    def he_matvec(self, v):
        counts["hessian-eigenthings"] += 1
        return matvec(self, v)

    def cl_matmat(self, M):
        counts["curvlinops"] += M[0].shape[-1]
        return matmat(self, M)

    monkeypatch.setattr(hessian_eigenthings.HessianOperator, "matvec", he_matvec)
    monkeypatch.setattr(curvlinops.HessianLinearOperator, "_matmat", cl_matmat)
    return counts


def test_the_peers_reach_the_exact_eigenvalues_and_count_the_hvps_they_spend(small, counted):
    exact = torch.linalg.eigvalsh(small.hessian).flip(0)
    runs = PE.eigen_runs(small, (6, 60), 3, (0, 1), tols=(1e-2, 1e-10))
    for tool in ("hessian-eigenthings", "curvlinops"):
        assert runs[runs.tool == tool].hvps.sum() == counted[tool], tool
    lanczos = runs[(runs.method == "Lanczos") & (runs.knob == 60)]
    assert (lanczos["rel error"] < 1e-9).all() and (lanczos.hvps == 60).all()
    power = runs[(runs.method == "power iteration") & (runs.quantity == "top-3")]
    assert set(power.hvps) == {6, 60}  # budget // 3 iterations for each of 3 eigenvalues
    tight = runs[(runs.method == "ARPACK") & (runs.knob == 1e-10)]
    assert (tight["rel error"] < 1e-9).all()
    # the error is that of the values a run returns, against the dense Hessian's
    op = PE.curvlinops_operator(small.model, small.data, checks=False)
    values = PE.arpack(op, 3, 1e-10, seed=0)
    assert np.allclose(values, exact[:3].numpy(), rtol=1e-9, atol=0)


def test_estimates_keep_the_standard_errors_only_where_a_tool_reports_one(small, counted):
    ours = E.trace_runs(small, (6, 12), (0, 1))
    runs = PE.estimate_runs(small, (6, 12), (0, 1), ours=ours)
    reporting = runs.tool.isin(["flatness", "hessian-eigenthings"])
    assert runs[reporting]["rel stderr"].notna().all()
    assert runs[~reporting]["rel stderr"].isna().all() and runs[~reporting].covered.isna().all()
    for tool in ("hessian-eigenthings", "curvlinops"):
        assert runs[runs.tool == tool].hvps.sum() == counted[tool], tool
    # curvlinops' Hutch++ rounds a budget down to a multiple of 3, XTrace to one of 2
    cl = runs[runs.tool == "curvlinops"].groupby(["method", "budget"]).hvps.max()
    assert cl["Hutch++"].tolist() == [6, 12] and cl["XTrace"].tolist() == [6, 12]
    trace = small.hessian.trace().item()
    he = runs[(runs.tool == "hessian-eigenthings") & (runs.method == "Hutch++")]
    se = he["rel stderr"] * abs(trace)
    assert (he.covered == ((he["rel error"] * trace).abs() <= E.Z * se)).all()


# -- coverage, counted by hand -----------------------------------------------------------------
def test_coverage_rows_count_the_runs_covered_at_the_largest_budget():
    rows = []
    for seed in range(10):
        covered = seed < 7  # 7 of 10 at the largest budget
        rows.append(("trace", "A", "m", 20, seed, covered))
        rows.append(("trace", "A", "m", 10, seed, False))  # a smaller budget does not count
        rows.append(("trace", "B", "m", 20, seed, None))  # reports no standard error
    frame = pd.DataFrame(rows, columns=["measure", "tool", "method", "budget", "seed", "covered"])
    out = PE.coverage_rows(frame).set_index("tool")
    assert (out.loc["A", "covered"], out.loc["A", "runs"]) == (7, 10)
    low = sps.beta.ppf(0.025, 7, 4)  # Clopper-Pearson, by its beta quantiles
    high = sps.beta.ppf(0.975, 8, 3)
    assert out.loc["A", "low"] == pytest.approx(low, rel=1e-6)
    assert out.loc["A", "high"] == pytest.approx(high, rel=1e-6)
    assert bool(out.loc["A", "honest"]) == (high >= E.NOMINAL)
    assert not out.loc["B", "reports"] and math.isnan(out.loc["B", "covered"])
    sentence = prose.peer_coverage_sentence(PE.coverage_rows(frame))
    assert sentence.endswith("B reports none: nothing in their output says how far off it is.")
    shown = tables.peer_coverage(PE.coverage_rows(frame)).data
    assert shown.iloc[0, 2] == "7 of 10"
    assert shown.iloc[1, 2] == "— (none reported)"


def test_reach_takes_the_cheapest_knob_where_every_seed_is_within_the_level():
    runs = pd.DataFrame(
        [
            ("trace", "A", "m", 10, 0, 10, 0.2),
            ("trace", "A", "m", 10, 1, 10, 0.01),
            ("trace", "A", "m", 20, 0, 20, 0.04),
            ("trace", "A", "m", 20, 1, 21, 0.03),
            ("trace", "B", "m", 1e-3, 0, 30, 0.2),
            ("trace", "B", "m", 1e-6, 0, 50, 0.1),
        ],
        columns=["quantity", "tool", "method", "knob", "seed", "hvps", "error"],
    )
    found = PE.reaches(runs, "trace", 0.05)
    assert [(r.method, r.reached, r.hvps) for r in found] == [
        ("A (m)", True, 21),
        ("B (m)", False, 50),
    ]
    text = prose.reach_sentence("the trace", found, 0.05)
    assert text == (
        "The trace to a relative error of 5 % in every seed: A (m) needed the fewest HVPs, 21; "
        "B (m) did not get there (within 50 HVPs)."
    )
    tied = [Reach("X", 0.1, True, 5), Reach("Y", 0.1, True, 5)]
    assert "X and Y (tied) needed the fewest HVPs, 5." in prose.reach_sentence("it", tied, 0.1)


def test_the_misuse_table_and_sentences_say_what_the_runs_hold(misuse):
    shown = tables.misuse(misuse, PE.KINDS, PE.TOOLS).data.set_index("input")
    assert shown.loc[PE.KINDS["sum"], "curvlinops"] == f"silently wrong (×{N})"
    assert shown.loc[PE.KINDS["tuple"], "PyHessian"] == "refused (TypeError)"
    assert shown.loc[PE.KINDS["batchnorm"], "flatness"] == "wrong, with a warning (eval mode)"
    assert list(shown.columns) == list(PE.TOOLS)  # the extra bn_mode='train' row is not a column
    said = prose.misuse_sentences(misuse, PE.PHRASES, PE.TOOLS)
    assert (
        "warns when that argument is left unset, and with `bn_mode='train'` gets it right"
        in (said["misuse_bn"])
    )
    assert said["misuse_0"].startswith(
        "flatness raised an error for the shuffling loader and the sum"
    )
    assert "with `bn_mode='train'` gets it right" in said["misuse_bn"]


def test_only_the_peers_module_imports_hessian_eigenthings_or_curvlinops():
    src = Path(flatness.__file__).parent
    importers = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("hessian_eigenthings", "curvlinops") for n in names):
                importers.add(path.relative_to(src).as_posix())
    assert importers == {"chapters/estimators/peers.py"}
