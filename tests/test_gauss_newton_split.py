"""The trace as the exact Gauss-Newton part plus a probed residual: the closed-form softmax
factor, float32 accumulation, the residual operator derived from a checked one, and the few
probes a small residual needs, with standard errors that still cover the dense truth."""

import math
import statistics

import pytest
import torch
from scipy import stats
from test_estimators import make
from torch import nn

from flatness import hessian as H
from flatness.errors import FlatnessError
from flatness.hessian import stochastic

ce = nn.functional.cross_entropy


def dense_ggn_trace(model, loss, data) -> float:
    return torch.trace(H.exact_hessian(model, loss, data, curvature="ggn")).item()


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, y: ce(z, y, label_smoothing=0.2),
        lambda z, y: (z - torch.eye(4, dtype=z.dtype)[y]).square().sum(1).mean(),
        lambda z, y: (torch.softmax(z, 1) - torch.eye(4, dtype=z.dtype)[y]).square().mean(),
    ],
    ids=["label smoothing", "squared error", "squared error on probabilities"],
)
def test_the_ggn_trace_matches_the_dense_ggn_for_losses_beyond_plain_cross_entropy(loss):
    # smoothing keeps the softmax curvature (its closed-form factor); the squared errors have
    # other curvatures (diagonalised instead), the last one indefinite
    model, data = make("tanh")
    dense = dense_ggn_trace(model, loss, data)
    assert H.ggn_trace(model, loss, data) == pytest.approx(dense, rel=1e-10, abs=0)


def confident_one_vs_rest():
    """Logits of about +-15: every curvature entry is below 1e-6, where a loose tolerance
    would take any loss's curvature for softmax's."""
    model = nn.Linear(3, 3).double()
    with torch.no_grad():
        model.weight.copy_(30 * torch.eye(3, dtype=torch.float64) - 15)
        model.bias.zero_()
    x = torch.eye(3, dtype=torch.float64).repeat(4, 1) + 0.01
    return model, (x, torch.arange(3).repeat(4))


def confident_closed_form(model, x) -> float:
    """``mean_i (1 - sum_c p_ic^2) (||x_i||^2 + 1)``, softmax regression's GGN trace, in 50
    digits (mpmath, a dependency of torch's sympy)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        total = mpmath.mpf(0)
        for xi, zi in zip(x.tolist(), model(x).detach().tolist()):
            top = max(zi)
            e = [mpmath.e ** (mpmath.mpf(v) - top) for v in zi]
            p = [v / sum(e) for v in e]
            total += (1 - sum(q * q for q in p)) * (sum(mpmath.mpf(v) ** 2 for v in xi) + 1)
        return float(total / len(x))


@pytest.mark.parametrize(
    "case",
    [
        "one-vs-rest, confident",
        "temperature, confident",
        "z-loss 1e-5",
        "cross-entropy, confident",
    ],
)
def test_only_softmax_cross_entropy_gets_the_softmax_factor(case):
    if case == "z-loss 1e-5":  # differs from softmax's curvature by about 1e-7
        model, data = make("tanh")
        loss = lambda z, y: ce(z, y) + 1e-5 * (torch.logsumexp(z, 1) ** 2).mean()
    else:
        model, data = confident_one_vs_rest()
        loss = {
            "one-vs-rest, confident": lambda z, y: nn.functional.binary_cross_entropy_with_logits(
                z, torch.eye(3, dtype=z.dtype)[y]
            ),
            "temperature, confident": lambda z, y: ce(z / 0.5, y),
            "cross-entropy, confident": ce,
        }[case]
    if case == "cross-entropy, confident":
        # autograd's dense Hessian loses p(1 - p) ~ 1e-13 to cancellation (3e-4 relative):
        # the reference is the closed form in 50 digits (the Hessian of a linear model is
        # its Gauss-Newton part)
        dense = truth = confident_closed_form(model, data[0])
    else:
        dense = dense_ggn_trace(model, loss, data)
        truth = torch.trace(H.exact_hessian(model, loss, data)).item()
    assert H.ggn_trace(model, loss, data) == pytest.approx(dense, rel=1e-9, abs=0)
    run = H.trace(model, loss, data, rtol=0.05)
    assert run.converged and abs(run.estimate - truth) <= 3 * run.stderr


def test_a_float32_model_gets_the_float64_ggn_trace_to_float32_accuracy():
    model, data = make("cnn")
    dense = dense_ggn_trace(model, ce, data)
    x, y = data
    assert H.ggn_trace(model.float(), ce, (x.float(), y)) == pytest.approx(dense, rel=2e-5)


def test_the_residual_operator_is_the_hessian_minus_the_ggn_without_the_penalty():
    model, data = make("relu")
    op = H.HessianOperator(model, ce, data, l2=0.3)
    residual = op.residual()
    dense = H.exact_hessian(model, ce, data, curvature="residual")
    v = torch.randn(3, op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(residual.matmat(v), v @ dense, atol=1e-10)
    assert residual.hvps == 3 and op.hvps == 0 and residual.curvature == "residual"
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=16)
    on_loader = H.HessianOperator(model, ce, loader).residual()
    assert torch.allclose(on_loader.matmat(v), v @ dense, atol=1e-10)
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    with pytest.raises(FlatnessError, match="parameters have changed"):
        op.residual()


def test_the_residual_of_a_ggn_operator_is_refused():
    model, data = make("tanh")
    with pytest.raises(FlatnessError, match="residual is of the Hessian"):
        H.HessianOperator(model, ce, data, curvature="ggn").residual()


@pytest.mark.parametrize("n", [4, 5, 8, 12, 16, 24, 31])
def test_caution_is_the_upper_confidence_bound_of_the_spread(n):
    exact = math.sqrt((n - 1) / stats.chi2.ppf(0.05, n - 1))
    assert stochastic._caution(n) == pytest.approx(exact, rel=1e-9)
    assert stochastic._caution(stochastic.MIN_PROBES) == 1.0
    assert stochastic._caution(1) == math.inf


@pytest.fixture(scope="module")
def near_minimum():
    """The tanh MLP after 100 Adam steps (loss about 0.1): its residual is a small part of
    the trace, so few probes reach a loose rtol."""
    model, (x, y) = make("tanh")
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        ce(model(x), y).backward()
        opt.step()
    return model, (x, y), torch.trace(H.exact_hessian(model, ce, (x, y))).item()


def test_few_residual_probes_still_cover_the_truth(near_minimum):
    model, data, truth = near_minimum
    runs = [H.trace(model, ce, data, rtol=0.05, seed=s) for s in range(50)]
    assert {r.method for r in runs} == {"ggn+hutchinson"}
    # the floor is reached: some runs stop below the 32 probes of the other estimators
    assert min(r.probes for r in runs) == stochastic.RESIDUAL_MIN_PROBES
    assert all(r.converged and r.stderr <= 0.05 * abs(r.estimate) for r in runs)
    covered = sum(abs(r.estimate - truth) <= 3 * r.stderr for r in runs) / len(runs)
    assert covered >= 0.9
    spread = statistics.stdev(r.estimate for r in runs)
    assert 0.5 < spread / statistics.mean(r.stderr for r in runs) < 2.0


def test_a_batchnorm_cnn_in_eval_mode_gets_the_exact_ggn_split_by_default():
    model, data = make("cnn")
    truth = torch.trace(H.exact_hessian(model, ce, data)).item()
    estimate = H.trace(model, ce, data, rtol=0.05, seed=3)
    # far from a minimum its residual is large: Hutch++ probes it
    assert estimate.method.startswith("ggn+") and estimate.converged
    assert H.ggn_trace(model, ce, data) == pytest.approx(dense_ggn_trace(model, ce, data))
    assert abs(estimate.estimate - truth) <= 4 * estimate.stderr


def test_an_exact_answer_still_reports_its_rounding_as_its_standard_error():
    # softmax regression: the Hessian is its Gauss-Newton part, so the residual's samples are
    # rounding noise; the standard error must not claim less than the estimate's rounding
    model, data = make("logreg")
    truth = torch.trace(H.exact_hessian(model, ce, data)).item()
    runs = [H.trace(model, ce, data, rtol=0.01, seed=s) for s in range(5)]
    for run in runs:
        assert run.stderr >= 4 * torch.finfo(torch.float64).eps * abs(run.estimate)
        assert abs(run.estimate - truth) <= 3 * run.stderr
