"""The exact Hessian, the closed form, the flatness measures and PyHessian's estimates."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from flatness import hessian
from flatness.errors import FlatnessError

ce = nn.functional.cross_entropy


def random_softmax_regression(d=5, k=4, seed=0, scale=1.0) -> nn.Linear:
    torch.manual_seed(seed)
    model = nn.Linear(d, k).double()
    with torch.no_grad():
        model.weight.mul_(scale)
        model.bias.mul_(scale)
    return model


def kronecker_closed_form(model: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """H = (1/N) sum_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T, written as plainly as possible,
    in the x~ ordering (class-major, bias last within each class)."""
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    p = torch.softmax(model(x), dim=1).detach()
    h = sum(
        torch.kron(torch.diag(pi) - torch.outer(pi, pi), torch.outer(xi, xi))
        for pi, xi in zip(p, xt)
    )
    return h / len(x)


def to_parameter_order(h: torch.Tensor, d: int, k: int) -> torch.Tensor:
    index = torch.arange(k * (d + 1)).reshape(k, d + 1)
    order = torch.cat([index[:, :d].reshape(-1), index[:, d]])
    return h[order][:, order]


def test_exact_hessian_equals_kronecker_closed_form(generic_batch):
    x, y = generic_batch
    model = random_softmax_regression(scale=2.0)
    exact = hessian.exact_hessian(model, ce, (x, y))
    closed = to_parameter_order(kronecker_closed_form(model, x), d=5, k=4)
    assert exact.dtype == torch.float64
    assert exact.shape == (24, 24)
    assert torch.allclose(exact, closed, rtol=0, atol=1e-10)
    assert exact.abs().max() > 1e-3  # not a trivially zero comparison


def test_fast_closed_form_matches_exact_hessian_in_chunks(generic_batch):
    x, y = generic_batch
    model = random_softmax_regression(scale=3.0)
    exact = hessian.exact_hessian(model, ce, (x, y))
    for elements in (2**24, 36 * 7):  # one chunk; chunks of 7 examples
        fast = hessian.softmax_regression_hessian(model, x, max_chunk_elements=elements)
        assert torch.allclose(fast, exact, rtol=0, atol=1e-10)


def test_exact_hessian_of_a_float32_model_is_float64_and_leaves_the_model_alone(generic_batch):
    x, y = generic_batch
    model = random_softmax_regression().float()
    before = [p.detach().clone() for p in model.parameters()]
    h = hessian.exact_hessian(model, ce, (x.float(), y))
    assert h.dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_softmax_regression_rank_is_d_plus_1_times_k_minus_1(generic_batch):
    x, _ = generic_batch
    h = hessian.softmax_regression_hessian(random_softmax_regression(), x)
    evals = torch.linalg.eigvalsh(h)
    rank = int((evals > 1e-10 * evals.max()).sum())
    assert rank == (5 + 1) * (4 - 1)


def test_measures_of_a_matrix_with_known_spectrum():
    q, _ = torch.linalg.qr(
        torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    spectrum = torch.tensor([5.0, 2.0, 1.0, 0.0, 0.0, -0.5], dtype=torch.float64)
    m = hessian.Measures.of(q @ torch.diag(spectrum) @ q.T)
    assert m.lambda_max == pytest.approx(5.0, abs=1e-12)
    assert m.lambda_min == pytest.approx(-0.5, abs=1e-12)
    assert m.trace == pytest.approx(7.5, abs=1e-12)
    assert m.frobenius == pytest.approx(math.sqrt(25 + 4 + 1 + 0.25), abs=1e-12)


def test_trace_bound_low_loss_forces_flatness(generic_batch):
    """Tr H <= 2 L max ||x~||^2 for any weights, and both sides fall as a separator grows."""
    x, _ = generic_batch
    model = random_softmax_regression()
    y = model(x).argmax(dim=1)  # labels the model separates perfectly
    max_norm2 = float((x**2).sum(dim=1).max()) + 1.0
    traces, losses = [], []
    for alpha in (1.0, 10.0, 100.0, 1000.0):
        scaled = random_softmax_regression(scale=alpha)
        loss = ce(scaled(x), y).item()
        trace = torch.trace(hessian.softmax_regression_hessian(scaled, x)).item()
        assert trace <= 2 * loss * max_norm2
        traces.append(trace)
        losses.append(loss)
    assert np.all(np.diff(traces) < 0) and np.all(np.diff(losses) < 0)
    assert traces[-1] < 1e-3 * traces[0]


def test_weight_norm_covers_every_parameter():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(2.0)
    assert hessian.weight_norm(model) == pytest.approx(math.sqrt(4 * 1 + 2 * 4))


@pytest.mark.parametrize("train_mode", [True, False])
def test_pyhessian_estimate_matches_exact_values(generic_batch, train_mode):
    x, y = generic_batch
    model = random_softmax_regression(scale=2.0).float().train(train_mode)
    exact = hessian.Measures.of(hessian.softmax_regression_hessian(model, x))
    rng_before = torch.random.get_rng_state()
    est = hessian.pyhessian_estimate(model, ce, (x.float(), y), max_iter=1000, tol=1e-7, seed=3)
    assert torch.equal(rng_before, torch.random.get_rng_state())  # global RNG untouched
    assert model.training is train_mode  # PyHessian's model.eval() undone
    assert all(p.grad is None for p in model.parameters())  # its graph freed
    assert est.top_eigenvalue == pytest.approx(exact.lambda_max, rel=1e-3)
    assert 1 <= est.trace_probes <= 1000
    # Hutchinson with Rademacher probes: per-probe variance 2 (||H||_F^2 - sum h_ii^2),
    # from the dense matrix; the estimate must lie within 4 of its standard errors
    h = hessian.softmax_regression_hessian(model, x)
    variance = 2 * (exact.frobenius**2 - (h.diagonal() ** 2).sum().item())
    stderr = math.sqrt(variance / est.trace_probes)
    assert stderr < 0.2 * exact.trace  # a tolerance well below the value itself
    assert abs(est.trace - exact.trace) < 4 * stderr
    again = hessian.pyhessian_estimate(model, ce, (x.float(), y), max_iter=1000, tol=1e-7, seed=3)
    assert again.top_eigenvalue == est.top_eigenvalue and again.trace == est.trace


def test_exact_hessian_refuses_a_large_model_and_names_the_size():
    model = nn.Linear(200, 100)
    with pytest.raises(FlatnessError, match=r"20,100 parameters.*GiB.*max_params"):
        hessian.exact_hessian(model, ce, (torch.zeros(3, 200), torch.zeros(3, dtype=torch.long)))


def test_exact_hessian_rejects_bad_input(generic_batch):
    x, y = generic_batch
    model = random_softmax_regression()
    with pytest.raises(FlatnessError, match="empty"):
        hessian.exact_hessian(model, ce, (x[:0], y[:0]))
    with pytest.raises(FlatnessError, match="scalar"):
        hessian.exact_hessian(model, lambda out, t: ce(out, t, reduction="none"), (x, y))
    with pytest.raises(FlatnessError, match=r"inputs of the batch have \d+ inf or NaN entries"):
        hessian.exact_hessian(model, ce, (x * float("nan"), y))
    broken = random_softmax_regression()
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(FlatnessError, match="the loss is nan .not finite."):
        hessian.exact_hessian(broken, ce, (x, y))
    with pytest.raises(FlatnessError, match="pair"):
        hessian.exact_hessian(model, ce, x)


def test_hessian_rank_refuses_what_has_no_rank_and_takes_one_tolerance():
    spectrum = torch.tensor([2.0, 1.0, 1e-7, 0.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(
        torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    h = q @ torch.diag(spectrum) @ q.T
    assert hessian.hessian_rank(h, rtols=1e-3).ranks == {1e-3: 2}
    assert hessian.hessian_rank(h, rtols=(1e-3, 1e-9)).ranks == {1e-3: 2, 1e-9: 3}
    # rounding-level asymmetry is a symmetric matrix, in float64 and in float32
    assert hessian.hessian_rank(h + 1e-13 * torch.triu(h, 1), rtols=1e-3).ranks == {1e-3: 2}
    assert hessian.hessian_rank(h.float(), rtols=1e-3).ranks == {1e-3: 2}
    skew = h + 1e-3 * torch.triu(torch.ones(4, 4, dtype=torch.float64), 1)
    for matrix, pattern in [
        (skew, "symmetric.*more than rounding"),
        (torch.randn(4, 4), "symmetric"),
        (torch.zeros(0, 0), "non-empty"),
        (torch.ones(3, 2), "square"),
    ]:
        with pytest.raises(FlatnessError, match=pattern):
            hessian.hessian_rank(matrix)
    for rtols in (-1, (-1,), 0, (1e-4, 0.0), 1.0, math.nan, (math.inf,), (), "1e-3", True):
        with pytest.raises(FlatnessError, match=r"rtols must be a relative tolerance in \(0, 1\)"):
            hessian.hessian_rank(h, rtols=rtols)


@pytest.mark.parametrize("max_params", [-1, 0, 2.5, True, "100", None])
def test_exact_hessian_refuses_a_max_params_that_is_no_count(generic_batch, max_params):
    x, y = generic_batch
    with pytest.raises(FlatnessError, match=r"max_params must be a positive integer.*got"):
        hessian.exact_hessian(random_softmax_regression(), ce, (x, y), max_params=max_params)
