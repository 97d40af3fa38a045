"""``measure_all``: every measure from one stream of products, against the dense float64
Hessian (``exact_hessian``, itself checked against ``torch.autograd.functional.hessian`` and
closed forms elsewhere), over seeds for its standard errors."""

import statistics
import warnings

import pytest
import torch
from test_estimators import CASES, make
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness import hessian as H
from flatness.errors import FlatnessError
from flatness.hessian import operator
from flatness.models import mlp

ce = nn.functional.cross_entropy
SEEDS = range(50)


@pytest.fixture(params=CASES, ids=[f"{m}-{b}" for m, b in CASES], scope="module")
def case(request):
    name, bn_mode = request.param
    model, data = make(name)
    exact = H.exact_hessian(model, ce, data, bn_mode=bn_mode)
    return model, data, bn_mode, exact


def test_every_measure_matches_the_dense_hessian(case):
    model, data, bn_mode, exact = case
    evals = torch.linalg.eigvalsh(exact)
    m = H.measure_all(model, ce, data, k=2, tol=1e-8, rtol=0.02, seed=3, bn_mode=bn_mode)
    assert torch.allclose(m.eigenvalues, evals.flip(0)[:2], rtol=1e-6, atol=0)
    assert m.lambda_max == m.eigenvalues[0].item()
    truth = {"trace": torch.trace(exact).item(), "frobenius": torch.linalg.matrix_norm(exact)}
    for name in ("trace", "frobenius"):
        est = getattr(m, name)
        # one run: 4 standard errors (a normal error passes them once in 16,000 runs); the rate
        # at 3 is tested over 50 seeds below
        assert abs(est.estimate - float(truth[name])) <= 4 * est.stderr + 1e-12 * est.estimate, est
        assert est.stderr <= 0.02 * abs(est.estimate)
        assert est.hvps == m.hvps and est.method == "krylov"
    # every product is counted once: the Krylov space's and the probes'
    assert m.hvps == m.krylov_dimension + m.trace.probes
    assert m.converged


def test_the_exact_parts_are_the_krylov_space_taken_exactly():
    """The exact parts equal Tr(Q H Q^T) and ||H Q^T||_F^2 for the space's basis, which is
    rebuilt here from the same seed by the Lanczos run ``top_eigenvalues`` makes."""
    model, data = make("tanh")
    exact = H.exact_hessian(model, ce, data)
    m = H.measure_all(model, ce, data, tol=1e-1, block=4, seed=7)
    op = H.HessianOperator(model, ce, data)
    gen = torch.Generator().manual_seed(7)
    from flatness.hessian.lanczos import block_krylov

    krylov = block_krylov(op, op.gaussian(4, gen), 1, 1e-1, max_steps=100, gen=gen)
    q = krylov.basis
    assert len(q) == m.krylov_dimension < op.size
    assert m.trace.exact_part == pytest.approx(torch.trace(q @ exact @ q.T).item(), rel=1e-10)
    fro2 = torch.linalg.matrix_norm(exact @ q.T).item() ** 2
    assert m.frobenius.exact_part**2 == pytest.approx(fro2, rel=1e-10)


@pytest.mark.parametrize("name,bn_mode", [("tanh", "eval"), ("relu", "eval"), ("cnn", "train")])
def test_standard_errors_cover_the_truth_over_seeds(name, bn_mode):
    """A loose tol keeps the Krylov space small, so the probes carry most of the error."""
    model, data = make(name)
    exact = H.exact_hessian(model, ce, data, bn_mode=bn_mode)
    runs = [
        H.measure_all(model, ce, data, tol=0.3, rtol=0.05, block=2, seed=s, bn_mode=bn_mode)
        for s in SEEDS
    ]
    assert max(r.krylov_dimension for r in runs) < len(exact) // 3
    for name_, truth in (
        ("trace", torch.trace(exact).item()),
        ("frobenius", torch.linalg.matrix_norm(exact).item()),
    ):
        ests = [getattr(r, name_) for r in runs]
        covered = sum(abs(e.estimate - truth) <= 3 * e.stderr for e in ests) / len(ests)
        assert covered >= 0.9, (name_, covered)
        spread = statistics.stdev(e.estimate for e in ests)
        reported = statistics.mean(e.stderr for e in ests)
        assert 0.5 < spread / reported < 2.0, (name_, spread, reported)
        assert all(e.converged and e.stderr <= 0.05 * abs(e.estimate) for e in ests)
        assert all(e.probes >= 16 for e in ests)


def test_a_loader_gives_the_measures_of_the_whole_batch():
    model, (x, y) = make("tanh")
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # batches of 16, 16, 16 and 2
    a = H.measure_all(model, ce, (x, y), rtol=0.05, seed=1)
    b = H.measure_all(model, ce, loader, rtol=0.05, seed=1)
    assert b.lambda_max == pytest.approx(a.lambda_max, rel=1e-9)
    assert b.trace.estimate == pytest.approx(a.trace.estimate, rel=1e-9)
    assert b.frobenius.estimate == pytest.approx(a.frobenius.estimate, rel=1e-9)
    # one pass over the loader per block of vectors, not one per vector
    assert b.passes < b.hvps / 2


def test_the_density_comes_from_the_same_lanczos_run():
    """With as many steps as parameters, the single-vector run's Ritz values are the whole
    spectrum, and its quadrature weights sum to one."""
    model, data = make("tanh")
    evals = torch.linalg.eigvalsh(H.exact_hessian(model, ce, data))
    p = len(evals)
    m = H.measure_all(model, ce, data, slq_steps=p, seed=2)
    d = m.density
    assert d.nodes.shape == d.weights.shape == (1, p)
    assert torch.allclose(d.nodes[0], evals, atol=1e-8 * evals.abs().max().item())
    assert d.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    # the space is everything: exact answers with no probes, and no error but rounding
    rounding = 4 * torch.finfo(torch.float64).eps * abs(m.trace.estimate)
    assert m.trace.probes == 0 and m.trace.stderr == pytest.approx(rounding, rel=1e-12)
    assert m.trace.estimate == pytest.approx(evals.sum().item(), rel=1e-10)
    assert m.hvps == p


def test_a_short_density_costs_its_steps_and_is_unbiased():
    model, data = make("relu")
    exact = H.exact_hessian(model, ce, data)
    m = H.measure_all(model, ce, data, slq_steps=12, seed=0)
    assert m.steps >= 12 and m.density.nodes.shape == (1, m.steps)
    means = []
    for seed in range(40):
        d = H.measure_all(model, ce, data, slq_steps=6, rtol=0.5, seed=seed).density
        means.append(d.moment(1)[0])
    se = statistics.stdev(means) / len(means) ** 0.5
    assert abs(statistics.mean(means) - torch.trace(exact).item()) <= 3 * se


def test_same_seed_same_measurement_and_another_seed_differs():
    model, data = make("cnn")
    a, b = (H.measure_all(model, ce, data, rtol=0.1, seed=4) for _ in range(2))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.trace.estimate == b.trace.estimate
    assert H.measure_all(model, ce, data, rtol=0.1, seed=5).trace.estimate != a.trace.estimate


def test_an_unreachable_precision_warns_and_says_so():
    model, data = make("tanh")
    with pytest.warns(H.ConvergenceWarning, match="rtol=1e-06 at max_probes=16"):
        m = H.measure_all(model, ce, data, tol=0.5, rtol=1e-6, max_probes=16, block=1)
    assert not m.converged and m.trace.converged is False and m.trace.probes == 16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), "k must be an integer from 1"),
        (dict(tol=0), "tol must be a positive finite number"),
        (dict(rtol=1.5), "rtol must be a number between 0 and 1"),
        (dict(k=3, block=2), "block must be None or an integer from k=3"),
        (dict(max_probes=8), "max_probes must be an integer of at least 16"),
        (dict(slq_steps=-1), "slq_steps must be a non-negative integer"),
        (dict(seed="a"), "seed"),
    ],
)
def test_bad_options_get_a_clear_error(kwargs, match):
    model, data = make("tanh")
    with pytest.raises(FlatnessError, match=match):
        H.measure_all(model, ce, data, **kwargs)


def test_one_by_one_products_match_the_dense_hessian(monkeypatch):
    """Blocks that go one vector at a time through a batch's graph (the CPU path for large
    batches and models) give the same products as the batched backward and the dense H."""
    torch.manual_seed(0)
    model = mlp(6, 4, widths=(8,), activation="tanh").double()
    x, y = torch.randn(70, 6, dtype=torch.float64), torch.randint(0, 4, (70,))
    dense = H.exact_hessian(model, ce, (x, y))
    v = torch.randn(5, len(dense), dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    batched = [H.HessianOperator(model, ce, d).matmat(v) for d in ((x, y), loader)]
    monkeypatch.setattr(operator, "ONE_BY_ONE_PARAMETERS", 10)
    ops = [H.HessianOperator(model, ce, d) for d in ((x, y), loader)]
    assert ops[0]._one_by_one(ops[0]._graph)
    for op, before in zip(ops, batched):
        after = op.matmat(v)
        assert torch.allclose(after, v @ dense, atol=1e-12)
        assert torch.allclose(after, before, atol=1e-13)
    # the kept graph of one batch survives the block: a second block gives the same
    assert torch.allclose(ops[0].matmat(v), v @ dense, atol=1e-12)


def test_no_warning_when_everything_converges():
    model, data = make("relu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert H.measure_all(model, ce, data, rtol=0.1).converged


def test_a_batchnorm_model_in_train_mode_warns_unless_a_mode_is_given():
    """Left unset, bn_mode is eval (running statistics); a model whose BatchNorm trains says
    otherwise, so the caller is warned, and gets exactly the eval-mode answer."""
    model, data = make("cnn")
    model.train()
    with pytest.warns(H.ModeWarning, match=r"BatchNorm layers are in training mode \(bn\)"):
        default = H.top_eigenvalues(model, ce, data, k=1, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = H.top_eigenvalues(model, ce, data, k=1, tol=1e-8, bn_mode="eval")
        H.trace(model, ce, data, probes=6, bn_mode="train")
        model.eval()
        H.measure_all(model, ce, data, rtol=0.2)  # eval mode: nothing to warn of
    assert torch.equal(default.eigenvalues, given.eigenvalues)
    assert model.bn.training is False  # the caller's modes are left as they were
    for fn in (H.trace, H.frobenius_norm, H.measure_all, H.spectral_density):
        model.train()
        with pytest.warns(H.ModeWarning) as caught:
            fn(model, ce, data, seed=0, **({} if fn is H.spectral_density else {"rtol": 0.2}))
        assert [w.filename for w in caught] == [__file__]  # the caller's line is named
        assert model.bn.training


def test_krylov_takes_no_fixed_budget_and_auto_runs_it_where_the_ggn_is_not_cheap():
    model, data = make("cnn")
    with pytest.raises(FlatnessError, match="method='krylov' stops at rtol"):
        H.trace(model, ce, data, probes=30, method="krylov")
    # batch statistics make the Gauss-Newton trace no shortcut: auto deflates against Krylov
    t = H.trace(model, ce, data, rtol=0.05, seed=0, bn_mode="train")
    f = H.frobenius_norm(model, ce, data, rtol=0.05, seed=0, bn_mode="train")
    exact = H.exact_hessian(model, ce, data, bn_mode="train")
    assert t.method == f.method == "krylov" and t.probes >= 16
    assert abs(t.estimate - torch.trace(exact).item()) <= 4 * t.stderr
    assert abs(f.estimate - torch.linalg.matrix_norm(exact).item()) <= 4 * f.stderr
    # with a fixed budget auto stays Hutch++
    assert H.trace(model, ce, data, probes=30, bn_mode="train").method == "hutch++"


def test_what_a_breaking_review_found_is_refused_or_exact():
    """Non-finite products, an infinite tol, a Hessian that is exactly 0 and zero eigenvalues
    in a space that spans everything: one clear error, or an exact answer called converged."""

    class Sqrt(nn.Module):
        def forward(self, h):
            return torch.relu(h).sqrt()

    torch.manual_seed(0)
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    model = nn.Sequential(nn.Linear(4, 6), Sqrt(), nn.Linear(6, 3)).double()
    for fn in (H.measure_all, H.top_eigenvalues, H.trace):
        with pytest.raises(FlatnessError, match="Hessian-vector products are not finite"):
            fn(model, ce, (x, y))
    tanh, data = make("tanh")
    for fn in (H.measure_all, H.top_eigenvalues):
        with pytest.raises(FlatnessError, match="tol must be a positive finite number"):
            fn(tanh, ce, data, tol=float("inf"))
    # softmax regression's residual curvature is exactly 0: no probe spread, nothing to chase
    logreg, data = make("logreg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero = H.measure_all(logreg, ce, data, curvature="residual")
    assert zero.trace.estimate == 0.0 and zero.trace.stderr == 0.0 and zero.converged
    assert zero.trace.probes == 16
    # least squares on 2 examples of 5 inputs: eigenvalues 2 non-zero and 3 exact zeros
    lsq = nn.Linear(5, 1).double()
    x2, y2 = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64)
    dense = H.exact_hessian(lsq, nn.functional.mse_loss, (x2, y2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = H.measure_all(lsq, nn.functional.mse_loss, (x2, y2), k=3)
    assert m.converged and m.krylov_dimension == 6
    assert torch.allclose(m.eigenvalues, torch.linalg.eigvalsh(dense).flip(0)[:3], atol=1e-12)


class DenseOperator:
    """A symmetric matrix behind the operator's interface (products, probes, counters)."""

    model = None

    def __init__(self, a: torch.Tensor):
        self.a, self.size, self.dtype, self.device = a, len(a), a.dtype, a.device
        self.hvps = self.passes = 0

    def matmat(self, v):
        self.hvps, self.passes = self.hvps + len(v), self.passes + 1
        return v @ self.a

    rademacher = H.HessianOperator.rademacher
    gaussian = H.HessianOperator.gaussian


def test_a_trace_near_zero_is_held_to_the_hessians_scale_not_its_own():
    """A spectrum whose eigenvalues sum to 0, so Tr H = 0: the trace's error is held to rtol times
    ||H||_F, and the run stops instead of spending max_probes on a relative precision that
    does not exist."""
    from flatness.hessian.joint import joint_measurement

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    # two outliers above a flat bulk (a gap for Lanczos), shifted so that they sum to 0
    values = torch.cat([torch.tensor([4.0, 3.0]), torch.linspace(-1, 1, 198)]).double()
    values -= values.mean()
    a = q @ torch.diag(values) @ q.T
    fro = values.norm().item()
    runs = [joint_measurement(DenseOperator(a), rtol=0.05, seed=s) for s in range(20)]
    assert all(m.converged and m.trace.probes < 1000 for m in runs)
    assert all(m.trace.stderr <= 0.05 * fro for m in runs)
    assert sum(abs(m.trace.estimate) <= 3 * m.trace.stderr for m in runs) >= 18
    assert all(abs(m.frobenius.estimate - fro) <= 4 * m.frobenius.stderr for m in runs)
