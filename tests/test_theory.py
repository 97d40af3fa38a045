"""The theory chapter's six facts, each against a reference that shares no code with the chapter:
dense Hessians of losses written out here (``torch.autograd.functional``), finite differences,
closed forms and invariances."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian as autograd_hessian
from torch.autograd.functional import jacobian

from flatness.chapters import theory
from flatness.chapters.theory import softmax
from flatness.errors import FlatnessError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data


@pytest.fixture(scope="module")
def sample():
    """Float64 inputs in general position: 30 examples, 5 features, 3 classes (all present)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    y = torch.arange(30) % 3
    return x, y


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def mlp_logits(theta, x, d, h, k):
    """``relu(x W1^T + b1) W2^T + b2`` from a flat vector [W1, b1, W2, b2] (row-major)."""
    sizes = [h * d, h, k * h, k]
    w1, b1, w2, b2 = theta.split(sizes)
    return torch.relu(x @ w1.reshape(h, d).T + b1) @ w2.reshape(k, h).T + b2


def cross_entropy(logits, y):
    """Mean cross-entropy written out: ``-z_y + m + log sum_k exp(z_k - m)``, m the row maximum."""
    m = logits.max(1, keepdim=True).values
    logp = logits - m - torch.log(torch.exp(logits - m).sum(1, keepdim=True))
    return -logp[torch.arange(len(y)), y].mean()


# 1. the Gauss-Newton split ---------------------------------------------------------------


def test_gauss_newton_split_matches_closed_form_parts_and_an_autograd_hessian(sample):
    x, y = sample
    d, h, k = 5, 4, 3
    model = theory.mlp(d, h, k, seed=1)
    row, mats = theory.gauss_newton_split(model, x, y)
    theta = flat_params(model)

    def logits(t):
        return mlp_logits(t, x, d, h, k)

    full = autograd_hessian(lambda t: cross_entropy(logits(t), y), theta)
    jac = jacobian(logits, theta)  # (N, K, P)
    p = torch.softmax(logits(theta), 1)
    s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    ggn = torch.einsum("nkp,nkl,nlq->pq", jac, s, jac) / len(x)
    resid = (p - torch.nn.functional.one_hot(y, k)).detach()
    residual = autograd_hessian(lambda t: (resid * logits(t)).sum() / len(x), theta)
    assert torch.allclose(mats["G"], ggn, atol=1e-13, rtol=0)
    assert torch.allclose(mats["R"], residual, atol=1e-13, rtol=0)
    assert torch.allclose(mats["H"], full, atol=1e-13, rtol=0)
    assert (full - ggn - residual).abs().max() < 1e-13
    assert row["split_error"] == pytest.approx(
        (full - mats["G"] - mats["R"]).abs().max().item(), abs=1e-15
    )
    assert row["split_error"] < 1e-12
    # G is PSD; a ReLU net is linear in each layer, so R has zero diagonal blocks and trace
    assert torch.linalg.eigvalsh(ggn)[0] > -1e-12
    assert abs(row["trace_R"]) < 1e-14 and row["trace_H"] == pytest.approx(
        row["trace_G"], rel=1e-12
    )
    assert row["lambda_max_H"] == pytest.approx(torch.linalg.eigvalsh(full)[-1].item(), rel=1e-10)


def test_the_chapter_hessian_agrees_with_finite_differences_of_the_gradient(sample):
    x, y = sample
    d, h, k = 5, 4, 3
    model = theory.mlp(d, h, k, seed=2)
    full = theory.autograd_hessian(model, x, y)
    theta = flat_params(model)

    def grad(t):
        t = t.clone().requires_grad_(True)
        return torch.autograd.grad(cross_entropy(mlp_logits(t, x, d, h, k), y), t)[0]

    step = 1e-6
    for j in (0, 7, len(theta) - 1):
        e = torch.zeros_like(theta)
        e[j] = step
        column = (grad(theta + e) - grad(theta - e)) / (2 * step)
        assert torch.allclose(full[:, j], column, atol=1e-7, rtol=0)


def test_training_lowers_the_loss(sample):
    x, y = sample
    model = theory.mlp(5, 4, 3, seed=0)
    before = cross_entropy(model(x), y).item()
    theory.train(model, x, y, 200)
    assert cross_entropy(model(x), y).item() < 0.75 * before


# 2. softmax regression's Kronecker form and rank ------------------------------------------


def softmax_regression_loss(theta, x, y, k):
    d = x.shape[1]
    w, b = theta[: k * d].reshape(k, d), theta[k * d :]
    return cross_entropy(x @ w.T + b, y)


def test_kronecker_form_is_the_autograd_hessian_and_its_rank_meets_the_bound(sample):
    x, y = sample
    k, d = 3, x.shape[1]
    model = theory.softmax_model(d, k, seed=4)
    h = theory.kronecker_hessian(model, x)
    full = autograd_hessian(lambda t: softmax_regression_loss(t, x, y, k), flat_params(model))
    assert torch.allclose(h, full, atol=1e-14, rtol=0)
    row, evals = theory.kronecker_rank(model, x)
    assert row["bound"] == (k - 1) * (d + 1) == 12 and row["data_bound"] == 12
    assert (
        row["rank"]
        == int((np.abs(np.linalg.eigvalsh(full.numpy())) > 1e-10 * evals.max()).sum())
        == 12
    )
    assert row["formula_error"] < 1e-14
    # the all-ones class vector kron anything is a null vector
    null = torch.kron(torch.ones(k, dtype=torch.float64), torch.ones(d + 1, dtype=torch.float64))
    order = torch.cat(
        [torch.arange(d) + (d + 1) * c for c in range(k)] + [d + (d + 1) * torch.arange(k)]
    )
    assert (full @ null[order]).abs().max() < 1e-14


def test_a_constant_input_column_lowers_the_rank_by_k_minus_one(sample):
    x, _ = sample
    x = x.clone()
    x[:, 2] = 0.7  # constant: its column is a multiple of the bias's
    row, _ = theory.kronecker_rank(theory.softmax_model(5, 3, seed=0), x)
    assert row["bound"] == 12 and row["data_bound"] == 10 and row["rank"] == 10


# 3. scaling a separating solution -----------------------------------------------------------


def test_accurate_loss_keeps_precision_where_log_softmax_rounds_to_zero():
    for t in (1.0, 20.0, 50.0, 600.0):
        logits = torch.tensor([[0.0, -t, -t - 1.0]], dtype=torch.float64)
        exact = np.log1p(np.exp(-t) + np.exp(-t - 1.0))  # log(1 + e^-t + e^-(t+1))
        got = theory.softmax_loss(logits, torch.tensor([0])).item()
        assert got == pytest.approx(exact, rel=1e-13)
    assert theory.softmax_loss(
        torch.tensor([[1.0, 3.0]], dtype=torch.float64), torch.tensor([0])
    ).item() == (pytest.approx(np.log1p(np.exp(2.0)), rel=1e-14))


def test_scaling_a_separating_solution_flattens_it_under_the_trace_bound():
    # three well-separated clusters: W = the cluster centres separates them
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(24) % 3
    x = centres[y] + 0.3 * torch.randn(24, 2, generator=gen, dtype=torch.float64)
    model = softmax._linear(centres, torch.zeros(3, dtype=torch.float64))
    assert (model(x).argmax(1) == y).all()
    alphas = [0.5, 1.0, 2.0, 5.0, 20.0]
    table = theory.scaling(model, x, y, alphas)
    for alpha, row in zip(alphas, table.itertuples()):
        theta = alpha * flat_params(model)
        full = autograd_hessian(lambda t: softmax_regression_loss(t, x, y, 3), theta)
        if alpha <= 5:  # autograd's loss is exact only while it is far above 1e-16
            assert row.trace == pytest.approx(torch.trace(full).item(), rel=1e-10)
            assert row.lambda_max == pytest.approx(torch.linalg.eigvalsh(full)[-1].item(), rel=1e-8)
        p = torch.softmax(alpha * model(x), 1)
        closed = (
            ((1 - (p**2).sum(1)) * ((x**2).sum(1) + 1)).mean().item()
        )  # (1/N) sum tr S_i ||x~||^2
        if alpha <= 5:
            assert row.trace == pytest.approx(closed, rel=1e-10)
        max_norm2 = ((x**2).sum(1) + 1).max().item()
        assert row.bound == pytest.approx(2 * row.train_loss * max_norm2, rel=1e-14)
        assert 0 < row.ratio <= 1
    for column in ("train_loss", "lambda_max", "trace", "frobenius"):
        assert (np.diff(table[column]) < 0).all(), column
    assert table.trace.iloc[-1] < 1e-10 * table.trace.iloc[0]


# 4. the L2 optimum by Newton's method ------------------------------------------------------


def test_newton_reaches_a_zero_gradient_of_the_regularised_loss(sample):
    x, y = sample
    gamma = 1e-2
    result = theory.newton(x, y, gamma)
    theta = flat_params(result.model).requires_grad_(True)
    objective = softmax_regression_loss(theta, x, y, 3) + 0.5 * gamma * (theta**2).sum()
    (grad,) = torch.autograd.grad(objective, theta)
    assert grad.norm() < 1e-10 and result.grad_norm < 1e-10
    # a minimum: the regularised Hessian is positive definite, and any nearby point is worse
    full = autograd_hessian(lambda t: softmax_regression_loss(t, x, y, 3), theta.detach())
    assert torch.linalg.eigvalsh(full)[0] > -1e-12
    gen = torch.Generator().manual_seed(0)
    nudge = 1e-3 * torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    moved = theta.detach() + nudge
    assert softmax_regression_loss(moved, x, y, 3) + 0.5 * gamma * (moved**2).sum() > objective


def test_the_l2_path_norm_shrinks_with_gamma_and_reports_the_data_hessian(sample):
    x, y = sample
    gammas = [1e-3, 1e-2, 1e-1, 1.0]
    path, optima = theory.l2_path(x, y, gammas)
    assert list(path.gamma) == gammas
    # the minimiser's norm is non-increasing in gamma (compare objectives at two gammas)
    assert (np.diff(path.weight_norm) < 0).all()
    assert (path.grad_norm < 1e-10).all()
    row = path.iloc[1]
    full = autograd_hessian(
        lambda t: softmax_regression_loss(t, x, y, 3), flat_params(optima[row.gamma].model)
    )
    evals = torch.linalg.eigvalsh(full)
    assert row.lambda_max == pytest.approx(evals[-1].item(), rel=1e-9)
    assert row.trace == pytest.approx(torch.trace(full).item(), rel=1e-10)
    assert row.frobenius == pytest.approx(torch.linalg.matrix_norm(full).item(), rel=1e-9)


def test_newton_refuses_a_zero_gamma(sample):
    with pytest.raises(FlatnessError, match="positive"):
        theory.newton(*sample, 0.0)


# 5. BatchNorm scale invariance ----------------------------------------------------------


def bn_loss(u, net, x, y):
    """The BN network's loss written out: batch mean and biased variance, eps as the chapter's."""
    z = x @ u.reshape(net[0].weight.shape).T
    zhat = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + theory.BN_EPS)
    a = torch.relu(net[1].weight.detach() * zhat + net[1].bias.detach())
    return cross_entropy(a @ net[3].weight.detach().T + net[3].bias.detach(), y)


def test_batchnorm_weights_are_scale_invariant_and_their_hessian_scales_as_alpha_minus_two(sample):
    x, y = sample
    net = theory.mlp(5, 4, 3, seed=5, batchnorm=True)
    with torch.no_grad():  # give BatchNorm's affine parameters non-trivial values
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    u = net[0].weight.detach().reshape(-1).clone()
    alphas = [0.1, 0.3, 7.0]
    table = theory.batchnorm_invariance(net, x, y, alphas)
    h0 = autograd_hessian(lambda v: bn_loss(v, net, x, y), u)
    assert table.lambda_max_at_1.iloc[0] == pytest.approx(
        torch.linalg.eigvalsh(h0)[-1].item(), rel=1e-9
    )
    for alpha, row in zip(alphas, table.itertuples()):
        assert bn_loss(alpha * u, net, x, y).item() == pytest.approx(
            bn_loss(u, net, x, y).item(), rel=1e-13
        )
        h = autograd_hessian(lambda v: bn_loss(v, net, x, y), alpha * u)
        assert torch.allclose(alpha**2 * h, h0, atol=1e-10 * h0.abs().max().item(), rtol=0)
        assert row.lambda_max == pytest.approx(torch.linalg.eigvalsh(h)[-1].item(), rel=1e-9)
        assert row.loss_deviation < 1e-13 and row.hessian_deviation < 1e-10
    # the model is left as it was, every parameter trainable again
    assert torch.equal(net[0].weight.detach().reshape(-1), u)
    assert all(p.requires_grad for p in net.parameters())


# 6. Dinh et al.'s rescaling ------------------------------------------------------------


def test_dinh_rescaling_keeps_the_function_and_rescales_the_hessian(sample):
    x, y = sample
    d, h, k = 5, 4, 3
    model = theory.mlp(d, h, k, seed=6)
    full = theory.autograd_hessian(model, x, y)
    a_values = [0.2, 1.0, 3.0]
    table = theory.dinh_rescaling(model, full, x, y, a_values)
    for a, row in zip(a_values, table.itertuples()):
        copy = theory.rescaled(model, a)
        theta = flat_params(copy)
        with torch.no_grad():
            assert (mlp_logits(theta, x, d, h, k) - model(x)).abs().max() < 1e-13
        ha = autograd_hessian(lambda t: cross_entropy(mlp_logits(t, x, d, h, k), y), theta)
        assert row.lambda_max == pytest.approx(torch.linalg.eigvalsh(ha)[-1].item(), rel=1e-9)
        assert row.trace == pytest.approx(torch.trace(ha).item(), rel=1e-10)
        assert row.frobenius == pytest.approx(torch.linalg.matrix_norm(ha).item(), rel=1e-10)
        assert row.output_change < 1e-13
        # the first layer's block scales as 1/a^2, the second layer's weights' as a^2
        first, second = h * d + h, k * h
        assert torch.allclose(ha[:first, :first], full[:first, :first] / a**2, atol=1e-12, rtol=0)
        block = slice(first, first + second)
        assert torch.allclose(ha[block, block], full[block, block] * a**2, atol=1e-12, rtol=0)
    assert table.recomputed_deviation.iloc[[0, -1]].max() < 1e-12
    # the closed-form minimiser of the trace: the rescaled Hessian's trace there, and no lower nearby
    best = theory.trace_minimiser(model, full)
    at = theory.dinh_rescaling(
        model, full, x, y, [best["a_star"] * f for f in (0.9, 1.0, 1.1)]
    ).trace
    assert at.iloc[1] == pytest.approx(best["trace_min"], rel=1e-12)
    assert at.iloc[1] < min(at.iloc[0], at.iloc[2])
    assert best["trace_at_1"] == pytest.approx(torch.trace(full).item(), rel=1e-14)
    assert np.isnan(table.recomputed_deviation.iloc[1])


# settings ----------------------------------------------------------------------------


def test_settings_refuse_unknown_profiles_duplicate_seeds_and_bad_sizes():
    with pytest.raises(FlatnessError, match="unknown profile"):
        theory.settings("laptop")
    with pytest.raises(FlatnessError, match="duplicate seeds"):
        theory.settings("cpu", seeds=[0, 1, 0])
    with pytest.raises(FlatnessError, match="dataset"):
        theory.settings("cpu", dataset="imagenet")
    with pytest.raises(FlatnessError, match="exceeds"):
        theory.settings("smoke", train_size=50)  # below smoke's mlp_size of 60
    assert theory.settings("cpu", seeds=[4, 5]).seeds == (4, 5)
    assert theory.settings("cpu", seeds=None) == theory.SETTINGS["cpu"]


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_digits_profiles_build_their_sample(profile):
    s = theory.settings(profile)
    x, y = theory.load(s)
    assert x.dtype == torch.float64 and x.shape == (s.train_size, 64) and y.shape == (s.train_size,)
    assert s.mlp_size <= s.train_size
    if profile == "cpu":
        assert len(s.seeds) >= 3 and s.train_size == 1077  # every training digit


def test_paper_profile_builds_on_real_mnist():
    s = theory.settings("paper")
    assert s.dataset == "mnist" and len(s.seeds) >= 3
    d, k = 784, 10
    assert sum(p.numel() for p in theory.mlp(d, s.hidden, k, seed=0).parameters()) == 3190
    assert sum(p.numel() for p in theory.softmax_model(d, k, seed=0).parameters()) == 7850
    if not (SHARED_MNIST / "MNIST" / "raw").is_dir():
        pytest.skip("the real MNIST is not at ../shared/data")
    x, y = theory.load(
        theory.settings("paper", train_size=2000, mlp_size=100), data_root=SHARED_MNIST
    )
    assert x.shape == (2000, 784) and x.dtype == torch.float64 and set(y.tolist()) == set(range(10))


def test_a_dead_network_is_refused_not_divided_by_zero(sample):
    x, y = sample
    model = theory.mlp(5, 4, 3, seed=6)
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every pre-activation below zero on these inputs
    with pytest.raises(FlatnessError, match=r"seed 6\) has all 4 hidden ReLUs dead on its 30"):
        theory.require_alive(model, x, seed=6)
    full = theory.autograd_hessian(model, x, y)
    assert torch.count_nonzero(full[:24, :24]) == 0  # the first layer's block: nothing flows
    with pytest.raises(FlatnessError, match="no minimiser"):
        theory.trace_minimiser(model, full)


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_each_profiles_mlp_learns_with_its_lr_and_keeps_relus_alive(profile):
    # at paper, Adam at lr 0.01 left seeds 0 and 1 with every ReLU dead (loss ln 10)
    s = theory.settings(profile)
    root = None
    if s.dataset == "mnist":
        if not (SHARED_MNIST / "MNIST" / "raw").is_dir():
            pytest.skip("the real MNIST is not at ../shared/data")
        root = SHARED_MNIST
    x, y = theory.load(s, data_root=root)
    x, y = x[: s.mlp_size], y[: s.mlp_size]
    chance = float(np.log(int(y.max()) + 1))
    for seed in s.seeds:
        net = theory.train(theory.mlp(x.shape[1], s.hidden, int(y.max()) + 1, seed=seed), x, y,
                           s.train_steps, lr=s.train_lr)  # fmt: skip
        theory.require_alive(net, x, seed=seed)
        with torch.no_grad():
            assert cross_entropy(net(x), y).item() < 0.8 * chance, seed


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_c2s_sample_is_one_a_linear_model_can_separate_at_every_profile(profile):
    """Fact 3 (claim C2) scales a solution that separates its sample: the whole digits sample
    (its smallest-gamma optimum classifies every example, checked here on smoke's 100 and cpu's
    1,077), or a stated MNIST subset of at most d + 1 = 785 examples, any labelling of which is
    separable in general position; the whole 10,000 are not."""
    s = theory.settings(profile)
    d = {"digits": 64, "mnist": 784}[s.dataset]
    if s.scaling_size is not None:
        assert s.scaling_size <= d + 1 < s.train_size
        return
    x, y = theory.load(s)
    path = softmax.l2_path(x, y, [10.0 ** s.gamma_log10_range[0]])[0]
    assert path.train_acc.iloc[0] == 1.0


def test_the_scaling_sample_is_the_settings_first_examples(sample):
    x, y = sample
    s = theory.settings("smoke")
    assert theory.scaling_sample(s, x, y)[0] is x or torch.equal(
        theory.scaling_sample(s, x, y)[0], x
    )
    part = s.__class__(**{**s.__dict__, "scaling_size": 12})
    xs, ys = theory.scaling_sample(part, x, y)
    assert torch.equal(xs, x[:12]) and torch.equal(ys, y[:12])


def test_a_stated_subset_is_judged_and_said(tmp_path, monkeypatch, sample):
    """With a subset the page says which examples and why; the judgement is on the subset."""
    from flatness.chapters.theory import facts, prose

    monkeypatch.setenv("FLATNESS_RESULTS", str(tmp_path))
    x, y = sample
    s = theory.settings("smoke").with_overrides(train_size=30, mlp_size=10)
    s = s.__class__(**{**s.__dict__, "scaling_size": 5})  # 5 points in 5 dimensions
    path, scaled = facts.scaling("smoke", s, x, y)
    assert all(prose.scaling_judgement(path, scaled).values())
    full = facts.l2_path("smoke", s, x, y)
    text = prose.sample_facts(full, 5, 30, 5)["sample_text"]
    acc = 100 * full.train_acc.iloc[0]
    assert text.startswith("The sample is the first 5 of the page's 30 examples")
    assert (f"classifies {acc:.4g} %" in text) == (acc < 100)
    assert "d + 1 = 6" in text
