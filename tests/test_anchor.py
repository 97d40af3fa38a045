"""The diagonal-linear-network anchor (:mod:`flatness.chapters.predict.anchor`): its Hessian
against the closed form, the scale invariance of its adaptive sharpness, and a small run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatness.chapters.predict import anchor as A
from flatness.errors import FlatnessError
from flatness.measures.adaptive import worst_sharpness


def _problem(d=12, n=7, k=2, seed=3):
    x, y, x_test, y_test, w_star = A.sparse_regression(seed, d, n, k)
    return x, y, x_test, y_test, w_star


@pytest.fixture(scope="module")
def small():
    """A small grid: 10 networks on d = 30, n = 15, k = 2."""
    return A.diagonal_networks(
        seed=0, count=10, dimension=30, samples=15, sparsity=2, max_steps=50_000
    )


def test_sparse_regression_is_seeded_sparse_and_noiseless():
    x, y, x_test, y_test, w_star = _problem(d=20, n=9, k=3)
    assert x.dtype == torch.float64 and x.shape == (9, 20) and x_test.shape == (A.TEST_SAMPLES, 20)
    assert int((w_star != 0).sum()) == 3 and set(w_star[w_star != 0].abs().tolist()) == {1.0}
    torch.testing.assert_close(y, x @ w_star, rtol=0, atol=0)
    torch.testing.assert_close(y_test, x_test @ w_star, rtol=0, atol=0)
    again = A.sparse_regression(3, 20, 9, 3)
    assert torch.equal(again[0], x) and torch.equal(again[4], w_star)
    assert not torch.equal(A.sparse_regression(4, 20, 9, 3)[0], x)


def test_hessian_equals_the_closed_form_away_from_a_minimum():
    """For L = 0.5 mean((X (u*v) - y)^2), with S = X^T X / n and g = X^T r / n (r the
    residuals): H_uu = diag(v) S diag(v), H_vv = diag(u) S diag(u), H_uv = diag(v) S diag(u)
    + diag(g)."""
    x, y, *_ = _problem()
    n, d = x.shape
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    s = x.T @ x / n
    r = x @ (u * v) - y
    g = x.T @ r / n
    assert float(g.abs().max()) > 0.1  # the residual term is not negligible here
    uu = v[:, None] * s * v[None, :]
    vv = u[:, None] * s * u[None, :]
    uv = v[:, None] * s * u[None, :] + torch.diag(g)
    closed = torch.cat([torch.cat([uu, uv], 1), torch.cat([uv.T, vv], 1)], 0)
    h = A.hessian(u, v, x, y)
    assert h.shape == (2 * d, 2 * d)
    torch.testing.assert_close(h, closed, rtol=1e-12, atol=1e-12)


def test_training_reaches_the_target_and_flags_divergence_and_unfinished_runs():
    x, y, *_ = _problem(d=20, n=8)
    top = float(torch.linalg.eigvalsh(x.T @ x / 8)[-1])
    alpha = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    lr = torch.tensor([0.5 / top, 50.0 / top, 0.5 / top], dtype=torch.float64)
    u, v, loss, steps, status = A._train(x, y, alpha[:2], lr[:2], 1e-6, 20_000)
    assert status.tolist() == [0, 1]
    # the loss reported is the loss at the parameters returned, and below the target
    assert float(A.mse(x @ (u[0] * v[0]), y)) == pytest.approx(float(loss[0]), rel=1e-12)
    assert float(loss[0]) < 1e-6
    # a network stops at its first iterate below the target: one step earlier it was above
    _, _, loss_before, _, status_before = A._train(x, y, alpha[:1], lr[:1], 1e-6, int(steps[0]) - 1)
    assert status_before.tolist() == [2] and float(loss_before[0]) >= 1e-6
    *_, status_short = A._train(x, y, alpha[2:], lr[2:], 1e-6, 3)
    assert status_short.tolist() == [2]


def test_adaptive_sharpness_is_invariant_to_rescaling_u_and_v():
    """(u, v) -> (c u, v / c) leaves the function, hence adaptive sharpness, unchanged; the
    Hessian's top eigenvalue changes."""
    x, y, *_ = _problem()
    d = x.shape[1]
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    values, tops = [], []
    for c in (1.0, 4.0, 0.3):
        model = A.DiagonalNetwork(c * u, v / c)
        torch.testing.assert_close(model(x), x @ (u * v))
        values.append(worst_sharpness(model, A.mse, (x, y), 0.5, restarts=2, steps=10).value)
        tops.append(float(torch.linalg.eigvalsh(A.hessian(c * u, v / c, x, y))[-1]))
    assert values[0] > 0
    assert values[1] == pytest.approx(values[0], rel=1e-9)
    assert values[2] == pytest.approx(values[0], rel=1e-9)
    assert min(abs(tops[1] / tops[0] - 1), abs(tops[2] / tops[0] - 1)) > 0.5


def test_small_radius_sharpness_is_the_second_order_form_of_the_dense_hessian(small):
    """At a trained network, for small rho, the worst case is rho^2/2 lambda_max(D H D) with
    D = diag(|(u, v)|): the ascent perturbs the concatenated parameters scaled elementwise."""
    x, y, *_ = A.sparse_regression(0, 30, 15, 2)
    u, v = torch.from_numpy(small.u[0]), torch.from_numpy(small.v[0])
    scale = torch.cat([u, v]).abs()
    dhd = scale[:, None] * A.hessian(u, v, x, y) * scale[None, :]
    rho = 1e-3
    expected = rho**2 / 2 * float(torch.linalg.eigvalsh(dhd)[-1])
    model = A.DiagonalNetwork(u, v)
    found = worst_sharpness(model, A.mse, (x, y), rho, restarts=2, steps=50).value
    assert found == pytest.approx(expected, rel=0.02)


def test_small_run_keeps_only_networks_at_the_target_and_measures_them(small):
    a = small
    assert a.kept + len(a.excluded) == 10 and a.kept >= 8
    x, y, x_test, y_test, _ = A.sparse_regression(0, 30, 15, 2)
    w = a.u * a.v
    train = 0.5 * ((x.numpy() @ w.T - y.numpy()[:, None]) ** 2).mean(0)
    test = 0.5 * ((x_test.numpy() @ w.T - y_test.numpy()[:, None]) ** 2).mean(0)
    assert np.all(train < 1e-5)
    np.testing.assert_allclose(a.train_loss, train, rtol=1e-10)
    np.testing.assert_allclose(a.test_loss, test, rtol=1e-10)
    # the grid: two scales, five step sizes each, all below 1 / lambda_max(X^T X / n)
    assert a.settings["alphas"] == pytest.approx((0.01, 1.0))
    top = float(torch.linalg.eigvalsh(x.T @ x / 15)[-1])
    assert np.all(a.lr < 1 / top) and len(set(a.lr.round(12))) == 5
    # the dense Hessian's measures of the first network, recomputed
    h = A.hessian(torch.from_numpy(a.u[0]), torch.from_numpy(a.v[0]), x, y)
    assert a.lambda_max[0] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-10)
    assert a.trace[0] == pytest.approx(float(torch.diagonal(h).sum()), rel=1e-10)
    assert np.all(a.adaptive_worst_l2 > 0) and np.all(np.isfinite(a.adaptive_worst_l2))
    # the small scale finds the sparse solution, the large one generalises worse
    small_alpha = a.alpha == a.alpha.min()
    assert a.test_loss[small_alpha].max() < a.test_loss[~small_alpha].min()
    assert a.tau_adaptive < 0
    assert a.seconds < 20


def test_bad_counts_and_unreachable_targets_are_refused():
    with pytest.raises(FlatnessError, match="multiple"):
        A.diagonal_networks(seed=0, count=7)
    with pytest.raises(FlatnessError, match="reached"):
        A.diagonal_networks(seed=0, count=5, dimension=20, samples=8, max_steps=3)
