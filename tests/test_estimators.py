"""Every estimator of flatness.hessian against the dense float64 Hessian, on four small models."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness import hessian as H
from flatness.errors import FlatnessError
from flatness.models import mlp

ce = nn.functional.cross_entropy
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class SmallCNN(nn.Module):
    """conv -> BatchNorm -> ReLU -> linear on 1x6x6 inputs: 448 parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, 8)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def make(name: str, seed: int = 0):
    """A float64 model and a generic batch for it."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "cnn":
        model = SmallCNN().double()
        x = torch.randn(32, 1, 6, 6, generator=gen, dtype=torch.float64)
        with torch.no_grad():  # non-trivial running statistics for eval mode
            model.train()(x)
        model.eval()
        y = torch.randint(0, 8, (32,), generator=gen)
        return model, (x, y)
    model = {
        "logreg": lambda: nn.Linear(6, 4),
        "tanh": lambda: mlp(6, 4, widths=(8,), activation="tanh"),
        "relu": lambda: mlp(6, 4, widths=(8, 5), activation="relu"),
    }[name]().double()
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (50,), generator=gen)
    return model, (x, y)


CASES = [("logreg", "eval"), ("tanh", "eval"), ("relu", "eval"), ("cnn", "eval"), ("cnn", "train")]


@pytest.fixture(params=CASES, ids=[f"{m}-{b}" for m, b in CASES], scope="module")
def case(request):
    name, bn_mode = request.param
    model, data = make(name)
    exact = H.exact_hessian(model, ce, data, bn_mode=bn_mode)
    return model, data, bn_mode, exact, torch.linalg.eigvalsh(exact)


def test_top_k_eigenvalues_converge_to_the_exact_ones(case):
    model, data, bn_mode, _, evals = case
    result = H.top_eigenvalues(model, ce, data, k=3, tol=1e-7, bn_mode=bn_mode)
    expected = evals.flip(0)[:3]
    assert result.converged
    assert torch.allclose(result.eigenvalues, expected, rtol=1e-6, atol=0)
    assert (result.residuals <= 1e-7 * result.eigenvalues.abs()).all()
    # blocks of 2 (no eigenvalue repeats here, so the block never widens)
    assert 0 < result.hvps == 2 * result.steps < len(evals)


def test_eigenvectors_are_eigenvectors(case):
    model, data, bn_mode, exact, _ = case
    result = H.top_eigenvalues(model, ce, data, k=2, tol=1e-8, bn_mode=bn_mode, eigenvectors=True)
    evals, evecs = torch.linalg.eigh(exact)
    for i, (value, vector) in enumerate(zip(result.eigenvalues, result.eigenvectors)):
        assert torch.linalg.vector_norm(vector).item() == pytest.approx(1.0, abs=1e-10)
        assert torch.linalg.vector_norm(exact @ vector - value * vector) < 1e-6 * abs(value)
        # aligned with eigh's eigenvector (the top two are distinct here), up to sign
        assert abs(torch.dot(vector, evecs[:, -1 - i]).item()) == pytest.approx(1.0, abs=1e-8)
    assert evals[-1] - evals[-2] > 1e-3 * evals[-1] and evals[-2] - evals[-3] > 1e-3 * evals[-1]


def test_trace_and_frobenius_within_three_standard_errors(case):
    model, data, bn_mode, exact, _ = case
    true_trace = torch.trace(exact).item()
    true_frob = torch.linalg.matrix_norm(exact).item()
    for method in ("hutch++", "hutchinson"):
        t = H.trace(model, ce, data, probes=60, method=method, seed=1, bn_mode=bn_mode)
        f = H.frobenius_norm(model, ce, data, probes=60, method=method, seed=1, bn_mode=bn_mode)
        assert abs(t.estimate - true_trace) <= 3 * t.stderr, (method, t)
        assert abs(f.estimate - true_frob) <= 3 * f.stderr, (method, f)
        assert t.hvps == f.hvps == 60


def test_hutchinson_error_shrinks_like_one_over_sqrt_probes():
    model, data = make("tanh")
    ratios = []
    for seed in range(3):
        small = H.trace(model, ce, data, probes=40, method="hutchinson", seed=seed)
        large = H.trace(model, ce, data, probes=80, method="hutchinson", seed=seed + 100)
        ratios.append(large.stderr / small.stderr)
    assert 0.55 < sum(ratios) / len(ratios) < 0.85  # 1/sqrt(2) = 0.71


def test_slq_moments_match_trace_and_trace_of_square(case):
    model, data, bn_mode, exact, evals = case
    density = H.spectral_density(model, ce, data, steps=30, probes=8, seed=2, bn_mode=bn_mode)
    assert torch.allclose(density.weights.sum(dim=1), torch.ones(8, dtype=torch.float64))
    m1, se1 = density.moment(1)
    m2, se2 = density.moment(2)
    assert abs(m1 - torch.trace(exact).item()) <= 3 * se1
    assert abs(m2 - (evals**2).sum().item()) <= 3 * se2
    # Ritz values lie inside the spectrum, and the extreme ones are found
    assert density.nodes.max() <= evals.max() + 1e-9
    assert density.nodes.max() == pytest.approx(evals.max().item(), rel=1e-6)
    grid = torch.linspace(evals.min() - 1, evals.max() + 1, 4001)
    integral = torch.trapezoid(density.evaluate(grid, sigma=0.05), grid)
    assert integral.item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", ["logreg", "tanh", "relu", "cnn"])
def test_hvps_match_pyhessian_on_the_same_batch(name):
    model, data = make(name)
    mode = model.training
    op = H.HessianOperator(model, ce, data)
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ours = op.matvec(v)
    theirs = H.pyhessian_hvp(model, ce, data, v)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6 * ours.abs().max().item())
    assert model.training == mode and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name,bn_mode", CASES)
def test_ggn_plus_residual_is_the_hessian(name, bn_mode):
    model, data = make(name)
    exact = {
        c: H.exact_hessian(model, ce, data, curvature=c, bn_mode=bn_mode) for c in H.CURVATURES
    }
    assert torch.allclose(exact["ggn"] + exact["residual"], exact["hessian"], atol=1e-12)
    v = torch.randn(
        3, exact["ggn"].shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    for curvature in H.CURVATURES:
        op = H.HessianOperator(model, ce, data, curvature=curvature, bn_mode=bn_mode)
        assert torch.allclose(op.matmat(v), v @ exact[curvature], atol=1e-10), curvature
    # the GGN of a convex loss is positive semi-definite
    assert torch.linalg.eigvalsh(exact["ggn"]).min() > -1e-10


def test_softmax_regression_rank_is_exact():
    model, data = make("logreg")
    rank = H.hessian_rank(H.exact_hessian(model, ce, data), rtols=(1e-10,))
    assert rank.ranks[1e-10] == (6 + 1) * (4 - 1) and rank.size == 28


def test_a_loader_is_the_same_operator_as_the_whole_batch():
    model, (x, y) = make("tanh")
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # batches of 16, 16, 16 and 2
    dense = H.exact_hessian(model, ce, (x, y))
    assert torch.allclose(H.exact_hessian(model, ce, loader), dense, atol=1e-12)
    op = H.HessianOperator(model, ce, loader)
    v = torch.randn(2, op.size, dtype=torch.float64)
    assert torch.allclose(op.matmat(v), v @ dense, atol=1e-12)
    assert op.passes == 1 and op.hvps == 2
    top = H.top_eigenvalues(model, ce, loader, k=1, tol=1e-8)
    assert top.eigenvalues[0].item() == pytest.approx(
        torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-6
    )


@pytest.mark.parametrize("keep", ["all", "half", "none"])
@pytest.mark.parametrize(
    "name, bn_mode, curvature",
    [
        ("tanh", "eval", "hessian"),
        ("tanh", "eval", "residual"),
        ("cnn", "train", "hessian"),
        ("cnn", "eval", "ggn"),
    ],
)
def test_a_loader_kept_from_its_first_pass_is_the_same_operator(
    monkeypatch, name, bn_mode, curvature, keep
):
    """Later passes reuse the batches and gradient graphs of the first while they fit in
    KEEP_BYTES; each pass, kept or read again, multiplies by the dense Hessian of its curvature."""
    from flatness.hessian import operator

    model, (x, y) = make(name)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    dense = H.exact_hessian(model, ce, loader, curvature=curvature, bn_mode=bn_mode)
    whole = H.HessianOperator(model, ce, loader, curvature=curvature, bn_mode=bn_mode)
    whole.matvec(torch.zeros(whole.size, dtype=torch.float64))
    assert whole.kept_bytes > x.numel() * 8  # the inputs, and for the Hessian its graphs
    budget = {"all": operator.KEEP_BYTES, "half": whole.kept_bytes // 2, "none": 0}
    monkeypatch.setattr(operator, "KEEP_BYTES", budget[keep])
    op = H.HessianOperator(model, ce, loader, curvature=curvature, bn_mode=bn_mode)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(3, op.size, dtype=torch.float64, generator=gen)
        assert torch.allclose(op.matmat(v), v @ dense, atol=1e-10)
    assert (op._kept is not None) == (keep == "all")
    assert op.passes == 3 and op.hvps == 9


def test_a_kept_graph_is_counted_by_what_autograd_saves():
    """The graph of a linear model's gradient saves its inputs (for the weight's gradient)."""
    from flatness.hessian.operator import _SavedBytes

    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(50, 6, dtype=torch.float64)
    saved = _SavedBytes([w])
    with saved:
        torch.autograd.grad((x @ w.T).square().sum(), w, create_graph=True)
    assert x.numel() * 8 <= saved.bytes <= 10 * x.numel() * 8


def test_l2_shifts_the_spectrum():
    model, data = make("tanh")
    evals = torch.linalg.eigvalsh(H.exact_hessian(model, ce, data))
    shifted = H.top_eigenvalues(model, ce, data, k=1, tol=1e-8, l2=0.5)
    assert shifted.eigenvalues[0].item() == pytest.approx(evals[-1].item() + 0.5, rel=1e-6)


def test_same_seed_same_results_and_modes_restored():
    model, data = make("cnn")
    model.train()
    runs = [
        (
            H.top_eigenvalues(model, ce, data, k=2, seed=4, bn_mode="train").eigenvalues,
            H.trace(model, ce, data, probes=9, seed=4, bn_mode="eval").estimate,
            H.spectral_density(model, ce, data, steps=5, probes=2, seed=4, bn_mode="eval").nodes,
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])
    assert model.training and model.bn.training and model.bn.track_running_stats
    assert H.trace(model, ce, data, probes=9, seed=5, bn_mode="eval").estimate != runs[0][1]


@pytest.mark.parametrize("device", DEVICES)
def test_float32_model_on_each_device(device):
    model, (x, y) = make("relu")
    exact_top = torch.linalg.eigvalsh(H.exact_hessian(model, ce, (x, y)))[-1].item()
    model32 = model.float().to(device)
    result = H.top_eigenvalues(model32, ce, (x.float().to(device), y.to(device)), k=1, tol=1e-4)
    assert result.eigenvalues[0].item() == pytest.approx(exact_top, rel=1e-4)


def test_bad_input_gets_a_clear_error():
    model, (x, y) = make("tanh")
    with pytest.raises(FlatnessError, match="empty"):
        H.trace(model, ce, (x[:0], y[:0]))
    with pytest.raises(FlatnessError, match="empty"):
        H.trace(model, ce, DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4))
    with pytest.raises(FlatnessError, match="scalar"):
        H.top_eigenvalues(model, lambda out, t: ce(out, t, reduction="none"), (x, y))
    with pytest.raises(FlatnessError, match=r"inputs of the batch have \d+ inf or NaN entries"):
        H.top_eigenvalues(model, ce, (x * math.nan, y))

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.extra = model, nn.Linear(2, 2).double()

        def forward(self, inputs):
            return self.body(inputs)

    unused = WithUnused()
    with pytest.raises(FlatnessError, match=r"extra\.weight, extra\.bias do not affect the loss"):
        H.trace(unused, ce, (x, y))
    with pytest.raises(FlatnessError, match="unknown curvature 'fisher'"):
        H.trace(model, ce, (x, y), curvature="fisher")
    with pytest.raises(FlatnessError, match="unknown bn_mode"):
        H.trace(model, ce, (x, y), bn_mode="batch")
    with pytest.raises(FlatnessError, match="probes must be an integer of at least 3"):
        H.trace(model, ce, (x, y), probes=2, method="hutch++")


def test_loaders_that_change_the_operator_are_refused():
    torchvision = pytest.importorskip("torchvision")
    x = torch.rand(8, 3, 8, 8)
    y = torch.zeros(8, dtype=torch.long)

    class Augmented(TensorDataset):
        transform = torchvision.transforms.Compose([torchvision.transforms.RandomHorizontalFlip()])

    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 2), nn.BatchNorm1d(2))
    with pytest.raises(FlatnessError, match="RandomHorizontalFlip.*test-time transform"):
        H.trace(model, ce, DataLoader(Augmented(x, y), batch_size=4), bn_mode="eval")
    shuffled = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    with pytest.raises(FlatnessError, match="shuffle=False"):
        H.trace(model, ce, shuffled, bn_mode="train")
    # fine in eval mode
    assert math.isfinite(H.trace(model, ce, shuffled, probes=3, bn_mode="eval").estimate)


@pytest.mark.parametrize("name,k,max_steps", [("tanh", 1, 40), ("logreg", 3, None)])
def test_float32_residuals_never_claim_more_than_float32_gives(name, k, max_steps):
    """Against the float64 Hessian of the same model: the Lanczos recurrence's residual
    estimate falls far below float32 round-off (and, in a basis that fills the whole space,
    below a lost orthogonality), so tol=1e-10 must not be reported as met in float32."""
    model, (x, y) = make(name)
    for dtype in (torch.float32, torch.float64):
        run_model, data = copy.deepcopy(model).to(dtype), (x.to(dtype), y)
        exact = H.exact_hessian(run_model, ce, data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = H.top_eigenvalues(
                run_model, ce, data, k=k, tol=1e-10, eigenvectors=True, max_steps=max_steps
            )
        said = [w for w in caught if issubclass(w.category, H.ConvergenceWarning)]
        assert len(said) == (0 if run.converged else 1), said  # the user hears of a miss
        assert not said or said[0].filename == __file__  # at the caller's line
        vectors = run.eigenvectors.double()
        true = torch.linalg.vector_norm(vectors @ exact - run.eigenvalues[:, None] * vectors, dim=1)
        assert (run.residuals >= true).all(), (dtype, run.residuals, true)
        expected = torch.linalg.eigvalsh(exact).flip(0)[:k]
        if dtype == torch.float32:
            assert not run.converged  # 1e-10 is below what float32 products can verify
            assert torch.allclose(run.eigenvalues, expected, rtol=1e-5, atol=0)
        else:
            assert run.converged and (run.residuals <= 1e-10 * run.eigenvalues.abs()).all()
            assert torch.allclose(run.eigenvalues, expected, rtol=1e-12, atol=0)


def test_spectral_density_refuses_widths_and_powers_that_define_nothing():
    model, data = make("tanh")
    density = H.spectral_density(model, ce, data, steps=10, probes=3)
    grid = torch.linspace(-1.0, 1.0, 5)
    for sigma in (0, 0.0, -0.05, math.nan, math.inf, True, "0.1"):
        with pytest.raises(FlatnessError, match="sigma must be a positive finite number"):
            density.evaluate(grid, sigma=sigma)
    for power in (1.5, -1, -2, True, "2"):
        with pytest.raises(FlatnessError, match="power must be a non-negative integer"):
            density.moment(power)
    # each probe's weights sum to 1, so the zeroth moment is P exactly
    assert density.moment(0)[0] == pytest.approx(density.size, rel=1e-12)
    assert torch.isfinite(density.evaluate(grid, sigma=0.1)).all()


@pytest.mark.parametrize("method,behind", [("hutch++", 4), ("hutchinson", 12)])
def test_a_fixed_budget_reports_the_random_probes_behind_its_standard_error(method, behind):
    # the docstrings of trace and frobenius_norm state these counts (12 - 2 (12 // 3) = 4)
    model, data = make("tanh")
    for fn in (H.trace, H.frobenius_norm):
        run = fn(model, ce, data, probes=12, method=method, seed=3)
        assert run.probes == behind and run.hvps == 12, fn
        assert "probes - 2 (probes // 3)" in fn.__doc__


def test_every_method_an_estimate_reports_is_one_it_accepts():
    model, data = make("tanh")
    truth = torch.trace(H.exact_hessian(model, ce, data)).item()
    ran = {
        H.trace(model, ce, data, rtol=0.05, seed=s, method=m).method
        for s in (0, 1)
        for m in H.METHODS
    }
    assert "ggn+hutch++" in H.METHODS and ran <= set(H.METHODS) - {"auto"}, ran
    for method in ran:
        again = H.trace(model, ce, data, rtol=0.05, seed=3, method=method)
        assert again.method == method
        assert abs(again.estimate - truth) <= 4 * again.stderr + 1e-9 * abs(truth), method


def test_a_fixed_budget_has_no_convergence_to_report():
    model, data = make("tanh")
    for fn in (H.trace, H.frobenius_norm):
        for method in ("hutchinson", "hutch++"):
            assert fn(model, ce, data, 30, method=method).converged is None
    assert H.trace(model, ce, data, rtol=0.2).converged is True


def test_a_gauss_newton_product_warns_of_nothing_the_user_can_change():
    # torch loads its forward-mode decompositions through its deprecated torch.jit.script the
    # first time a process takes a Gauss-Newton product
    import subprocess
    import sys

    code = (
        "import torch; from torch import nn; from flatness import hessian as H\n"
        "m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()\n"
        "x = torch.randn(8, 3, dtype=torch.float64); y = torch.randint(0, 2, (8,))\n"
        "H.top_eigenvalues(m, nn.functional.cross_entropy, (x, y), k=1, curvature='ggn')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("curvature", H.CURVATURES)
@pytest.mark.parametrize("loader", [False, True])
@pytest.mark.parametrize("change", ["in place", "optimiser step", "replaced"])
def test_an_operator_refuses_products_once_its_model_changed(curvature, loader, change):
    """An operator is a snapshot: a loader's kept graphs hold the old parameters, so a product
    after the model changed would belong to neither model; it is refused, whatever the data."""
    model, (x, y) = make("tanh")
    data = DataLoader(TensorDataset(x, y), batch_size=16) if loader else (x, y)
    op = H.HessianOperator(model, ce, data, curvature=curvature)
    v = torch.randn(2, op.size, dtype=torch.float64)
    before = op.matmat(v)
    assert torch.equal(op.matmat(v), before)  # products themselves change nothing
    first = next(model.parameters())
    if change == "in place":
        with torch.no_grad():
            first.mul_(1.5)
    elif change == "optimiser step":
        ce(model(x), y).backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    else:
        model[0].weight = nn.Parameter(model[0].weight.detach().clone())
    with pytest.raises(FlatnessError, match="parameters have changed since this operator"):
        op.matmat(v)
    fresh = H.HessianOperator(model, ce, data, curvature=curvature)
    dense = H.exact_hessian(model, ce, data, curvature=curvature)
    assert torch.allclose(fresh.matmat(v), v @ dense, atol=1e-10)
