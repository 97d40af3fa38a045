"""The sharpness measures against references that share no code with them: dense float64
Hessians of hand-written losses, closed forms of quadratic losses, random feasible points,
Richardson ratios of the expansion's order, and Dinh et al.'s function-preserving rescaling."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flatness import measures as M
from flatness.errors import FlatnessError


def relu_net(seed=0, hidden=5, bias=False, activation=nn.ReLU):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, hidden, bias=bias), activation(), nn.Linear(hidden, 3, bias=bias)]
    return nn.Sequential(*layers).double()


def batch(seed=1, n=24):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def hand_loss(model, x, y):
    """The mean cross-entropy of ``model`` (Linear, ReLU, Linear) as a function of its flat
    parameters, written out with logsumexp."""
    shapes = [p.shape for p in model.parameters()]
    has_bias = model[0].bias is not None

    def loss(theta):
        pieces = torch.split(theta, [s.numel() for s in shapes])
        ps = [t.reshape(s) for t, s in zip(pieces, shapes)]
        if has_bias:
            w1, b1, w2, b2 = ps
        else:
            (w1, w2), b1, b2 = ps, 0.0, 0.0
        z = torch.clamp(x @ w1.T + b1, min=0) @ w2.T + b2
        return (torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]).mean()

    return loss


def dense(model, x, y):
    theta = flat_params(model)
    loss = hand_loss(model, x, y)
    return theta, loss, torch.autograd.functional.hessian(loss, theta)


def test_the_weighted_trace_and_top_eigenvalue_are_those_of_d_h_d():
    model, (x, y) = relu_net(bias=True), batch()
    theta, _, h = dense(model, x, y)
    d = theta.abs()
    dhd = d[:, None] * h * d[None, :]
    c = M.adaptive_curvature(model, F.cross_entropy, (x, y), rho=0.1, rtol=0.01, tol=1e-8)
    exact_trace = float((theta**2 * torch.diagonal(h)).sum())
    assert abs(c.weighted_trace - exact_trace) <= 3 * c.weighted_trace_stderr + 1e-9 * abs(
        exact_trace
    )
    assert c.weighted_lambda_max == pytest.approx(float(torch.linalg.eigvalsh(dhd)[-1]), rel=1e-6)
    assert c.average == pytest.approx(0.005 * c.weighted_trace, rel=1e-12)
    assert c.worst == pytest.approx(0.005 * c.weighted_lambda_max, rel=1e-12)
    assert c.hvps > 0 and c.passes > 0


def test_scaled_sharpness_multiplies_the_exact_measures_by_the_squared_weight_norm():
    model, (x, y) = relu_net(bias=True), batch()
    theta, _, h = dense(model, x, y)
    s = M.scaled_sharpness(model, F.cross_entropy, (x, y), rtol=0.01, tol=1e-8)
    w2 = float(theta @ theta)
    assert s.weight_norm_squared == pytest.approx(w2, rel=1e-12)
    assert s.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-6)
    assert abs(s.trace - float(torch.trace(h))) <= 3 * s.trace_stderr + 1e-9
    assert s.scaled_lambda_max == pytest.approx(s.lambda_max * w2, rel=1e-12)
    assert s.scaled_trace == pytest.approx(s.trace * w2, rel=1e-12)


def least_squares():
    """A linear model at the exact least-squares solution: the loss is quadratic in the
    weights, the gradient 0, so every answer has a closed form in ``H = 2 X^T X / n``."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    x = x * torch.tensor([3.0, 1.0, 0.5, 2.0, 0.2], dtype=torch.float64)
    y = torch.randn(30, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, (x, y), 2 * x.T @ x / len(x)


def test_on_a_quadratic_loss_the_second_order_forms_are_exact():
    model, data, h = least_squares()
    w = model.weight.detach().reshape(-1)
    dhd = w.abs()[:, None] * h * w.abs()[None, :]
    rho = 0.3
    top = float(torch.linalg.eigvalsh(dhd)[-1])
    worst = M.worst_sharpness(model, F.mse_loss, data, rho, steps=100, restarts=2)
    assert worst.value == pytest.approx(rho**2 / 2 * top, rel=1e-6)
    avg = M.average_sharpness(model, F.mse_loss, data, rho, pairs=400, seed=2)
    quad = rho**2 / 2 * float(torch.trace(dhd))
    assert abs(avg.value - quad) <= 4 * avg.stderr and avg.stderr < 0.1 * quad
    curv = M.adaptive_curvature(model, F.mse_loss, data, rho, tol=1e-10)
    assert curv.worst == pytest.approx(rho**2 / 2 * top, rel=1e-8)
    assert curv.average == pytest.approx(quad, rel=1e-8)  # 5 parameters: the Krylov space is all


def test_the_average_case_approaches_its_second_order_form_at_the_predicted_order():
    # with one seed, the draws are the same at every rho, so value / rho^2 = c + d rho^2 + ...:
    # halving rho divides the difference of successive ratios by 4 (Richardson); a smooth
    # activation, as a ReLU's kinks have no second-order expansion across them
    model, (x, y) = relu_net(seed=2, hidden=6, bias=True, activation=nn.Tanh), batch()
    run = lambda rho: M.average_sharpness(model, F.cross_entropy, (x, y), rho, pairs=64, seed=5)
    ratios = [run(r).value / r**2 for r in (0.2, 0.1, 0.05)]
    order = (ratios[0] - ratios[1]) / (ratios[1] - ratios[2])
    assert 3.0 < order < 5.0, ratios
    # and the limit is the weighted trace within the Monte Carlo error
    curv = M.adaptive_curvature(model, F.cross_entropy, (x, y), 1.0, rtol=0.005)
    small = run(0.01)
    assert (
        abs(small.value - 1e-4 * curv.average) <= 4 * small.stderr + 3 * 1e-4 * curv.average_stderr
    )


@pytest.mark.parametrize("norm", M.NORMS)
def test_worst_case_ascent_stays_inside_its_set_and_beats_random_feasible_points(norm):
    model, (x, y) = relu_net(seed=4, bias=True), batch()
    theta, loss, _ = dense(model, x, y)
    rho = 0.5
    worst = M.worst_sharpness(model, F.cross_entropy, (x, y), rho, norm=norm, seed=1)
    u = worst.direction
    size = float(u.abs().max() if norm == "linf" else u.norm())
    assert size <= rho * (1 + 1e-12)
    base = float(loss(theta))
    assert worst.base_loss == pytest.approx(base, rel=1e-12)
    assert worst.value == pytest.approx(float(loss(theta + theta.abs() * u)) - base, rel=1e-10)
    g = torch.Generator().manual_seed(9)
    best = -math.inf
    for _ in range(300):
        z = torch.randn(len(theta), generator=g, dtype=torch.float64)
        if norm == "linf":
            signs = torch.rand(len(theta), generator=g, dtype=torch.float64) < 0.5
            v = rho * torch.where(signs, -1.0, 1.0).double()
        else:
            v = rho * z / z.norm()
        best = max(best, float(loss(theta + theta.abs() * v)) - base)
    assert worst.value >= best
    assert worst.restarts == 4 and worst.backward_passes <= worst.restarts * worst.steps


def rescaled(model, alpha):
    """Dinh et al.'s rescaling of a bias-free ReLU net: the first layer's rows times
    ``alpha`` (a number or one per hidden neuron), the second layer's columns divided by it."""
    out = relu_net(hidden=model[0].out_features)
    alpha = torch.as_tensor(alpha, dtype=torch.float64).expand(model[0].out_features)
    with torch.no_grad():
        out[0].weight.copy_(model[0].weight * alpha[:, None])
        out[2].weight.copy_(model[2].weight / alpha[None, :])
    return out


@pytest.mark.parametrize("alpha", [5.0, [0.2, 3.0, 1.0, 7.0, 0.5]], ids=["layer", "neuron"])
def test_adaptive_measures_are_invariant_to_function_preserving_rescaling(alpha):
    model, (x, y) = relu_net(seed=6), batch()
    other = rescaled(model, alpha)
    assert torch.allclose(model(x), other(x), rtol=1e-12, atol=1e-12)  # the same function
    args = (F.cross_entropy, (x, y))
    a = [M.average_sharpness(m, *args, 0.2, pairs=8, seed=3).value for m in (model, other)]
    assert a[0] == pytest.approx(a[1], rel=1e-9)
    w = [M.worst_sharpness(m, *args, 0.2, steps=5, seed=3).value for m in (model, other)]
    assert w[0] == pytest.approx(w[1], rel=1e-6)
    c = [M.adaptive_curvature(m, *args, 0.2, tol=1e-9) for m in (model, other)]
    assert c[0].weighted_lambda_max == pytest.approx(c[1].weighted_lambda_max, rel=1e-6)
    # 20 parameters: the Krylov space is everything, so the weighted traces are exact
    assert c[0].weighted_trace == pytest.approx(c[1].weighted_trace, rel=1e-6)
    # while the raw measures change visibly
    s = [M.scaled_sharpness(m, *args, tol=1e-9) for m in (model, other)]
    assert abs(s[0].lambda_max / s[1].lambda_max - 1) > 0.1
    assert abs(s[0].trace / s[1].trace - 1) > 0.1


def per_example_reference(model, x, y):
    """mean_i <w, grad l_i>^2 from one autograd gradient per example."""
    params = [p for p in model.parameters()]
    total = 0.0
    for i in range(len(y)):
        li = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(li, params)
        total += float(sum((p.detach() * g).sum() for p, g in zip(params, grads))) ** 2
    return total / len(y)


def test_the_fisher_rao_norm_matches_per_example_gradients_and_liangs_identity():
    model, (x, y) = relu_net(seed=7, bias=True), batch()
    fr = M.fisher_rao_norm(model, F.cross_entropy, (x, y))
    assert fr.value == pytest.approx(per_example_reference(model, x, y), rel=1e-10)
    assert fr.examples == len(y)
    # bias-free, two weight layers: <w, grad l_i> = 2 <dl_i/dz_i, z_i> (Liang et al., Lemma 2.1)
    bare = relu_net(seed=7)
    z = bare(x).detach()
    dz = torch.softmax(z, 1) - F.one_hot(y, 3)
    identity = float(((2 * (dz * z).sum(1)) ** 2).mean())
    assert M.fisher_rao_norm(bare, F.cross_entropy, (x, y)).value == pytest.approx(
        identity, rel=1e-10
    )
    # over a loader of the same examples
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    assert M.fisher_rao_norm(model, F.cross_entropy, loader).value == pytest.approx(
        fr.value, rel=1e-10
    )


def test_a_loader_gives_the_measures_of_its_whole_pass():
    model, (x, y) = relu_net(seed=8, bias=True), batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    one = M.average_sharpness(model, F.cross_entropy, (x, y), 0.1, pairs=4, seed=1)
    many = M.average_sharpness(model, F.cross_entropy, loader, 0.1, pairs=4, seed=1)
    assert many.value == pytest.approx(one.value, rel=1e-9)
    assert many.base_loss == pytest.approx(one.base_loss, rel=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, d: M.average_sharpness(m, F.cross_entropy, d, 0.0), "rho must be a positive"),
        (lambda m, d: M.average_sharpness(m, F.cross_entropy, d, 0.1, pairs=1), "pairs must"),
        (lambda m, d: M.worst_sharpness(m, F.cross_entropy, d, 0.1, norm="l1"), "'l2', 'linf'"),
        (
            lambda m, d: M.worst_sharpness(
                m, lambda o, t: F.cross_entropy(o, t, reduction="sum"), d, 0.1
            ),
            "sum",
        ),
        (lambda m, d: M.average_sharpness(m, F.cross_entropy, d, 0.1, seed=-1), "seed"),
    ],
)
def test_bad_input_gets_one_clear_error(call, message):
    model, data = relu_net(bias=True), batch()
    with pytest.raises(FlatnessError, match=message):
        call(model, data)


def test_the_fisher_rao_norm_refuses_examples_that_interact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    with pytest.raises(FlatnessError, match="depend on other examples"):
        M.fisher_rao_norm(model, F.cross_entropy, batch(), bn_mode="train")
    # with running statistics the examples are independent
    assert M.fisher_rao_norm(model.eval(), F.cross_entropy, batch()).value > 0


def test_the_model_comes_back_as_it_was():
    model, data = relu_net(bias=True), batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        M.worst_sharpness(model, F.cross_entropy, data, 0.3, steps=3)
        M.average_sharpness(model, F.cross_entropy, data, 0.3, pairs=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_relative_flatness_is_the_gram_weighted_trace_of_the_layers_hessian_blocks():
    model, (x, y) = relu_net(seed=10, hidden=6, bias=True), batch()
    theta, _, h = dense(model, x, y)
    w2 = model[2].weight.detach()  # (3, 6): the default layer, the last Linear
    start = 4 * 6 + 6  # after the first layer's weight and bias
    block = h[start : start + w2.numel(), start : start + w2.numel()].reshape(3, 6, 3, 6)
    gram = w2 @ w2.T
    exact = float(
        sum(gram[s, t] * block[s, :, t, :].diagonal().sum() for s in range(3) for t in range(3))
    )
    # softmax cross-entropy's closed form: mean_i ||phi_i||^2 Tr(G (diag p_i - p_i p_i^T))
    phi = torch.relu(model[0](x)).detach()
    p = torch.softmax(model(x), 1).detach()
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    closed = float((phi.pow(2).sum(1) * torch.einsum("st,its->i", gram, a)).mean())
    assert exact == pytest.approx(closed, rel=1e-10)
    r = M.relative_flatness(model, F.cross_entropy, (x, y), rtol=0.01)
    assert r.layer == "2" and r.converged and r.stderr <= 0.01 * abs(r.value)
    assert abs(r.value - exact) <= 3 * r.stderr


def test_relative_flatness_is_invariant_to_rescaling_the_features_it_reads():
    model, (x, y) = relu_net(seed=11), batch()
    args = (F.cross_entropy, (x, y))
    values = [M.relative_flatness(m, *args, seed=4).value for m in (model, rescaled(model, 4.0))]
    # the same signs at each seed: equal up to rounding
    assert values[1] == pytest.approx(values[0], rel=1e-9)
    raw = [M.scaled_sharpness(m, *args, tol=1e-9).lambda_max for m in (model, rescaled(model, 4.0))]
    assert abs(raw[0] / raw[1] - 1) > 0.1


def test_relative_flatness_names_the_layers_it_can_take():
    model, data = relu_net(bias=True), batch()
    with pytest.raises(FlatnessError, match="'0', '2'"):
        M.relative_flatness(model, F.cross_entropy, data, layer="1")


def test_the_average_cases_standard_error_covers_the_exact_value():
    # the engine's criterion: within 3 reported standard errors in at least 90 % of 200 seeds
    model, data, h = least_squares()
    w = model.weight.detach().reshape(-1).abs()
    rho = 0.3
    exact = rho**2 / 2 * float((w**2 * torch.diagonal(h)).sum())
    z = torch.tensor(
        [
            (r.value - exact) / r.stderr
            for r in (
                M.average_sharpness(model, F.mse_loss, data, rho, pairs=10, seed=s)
                for s in range(200)
            )
        ]
    )
    assert float((z.abs() <= 3).double().mean()) >= 0.9
    # the skew the docstring states: more runs fall 2 SE below than rise 2 SE above
    assert (z < -2).sum() > (z > 2).sum()


def test_losses_that_are_not_a_plain_mean_of_their_examples_are_refused_by_fisher_rao():
    model, (x, y) = relu_net(seed=7, bias=True), batch()
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    ignoring = nn.CrossEntropyLoss(ignore_index=-100)
    y_ignored = y.clone()
    y_ignored[:6] = -100
    for loss, targets in ((weighted, y), (ignoring, y_ignored)):
        with pytest.raises(FlatnessError, match="needs each example's own loss"):
            M.fisher_rao_norm(model, loss, (x, targets))


def test_a_loss_increase_below_the_rounding_of_the_loss_is_flagged():
    model, (x, y) = relu_net(seed=3, bias=True), batch()
    small = model.float()
    with pytest.warns(M.PrecisionWarning, match="float64"):
        M.average_sharpness(small, F.cross_entropy, (x.float(), y), 1e-4, pairs=4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", M.PrecisionWarning)
        M.average_sharpness(model.double(), F.cross_entropy, (x, y), 1e-4, pairs=4)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 3).double()

    def forward(self, x):
        return {"out": self.layer(x), "feat": x[:, :3]}


def test_an_output_no_parameter_reaches_is_one_clear_error_everywhere():
    from flatness import hessian

    model, (x, y) = TwoOutputs(), batch()
    calls = [
        lambda: M.average_sharpness(model, F.cross_entropy, (x, y), 0.1, output="feat"),
        lambda: M.fisher_rao_norm(model, F.cross_entropy, (x, y), output="feat"),
        lambda: hessian.trace(model, F.cross_entropy, (x, y), output="feat"),
    ]
    for call in calls:
        with pytest.raises(FlatnessError, match="does not depend on any trainable parameter"):
            call()
    assert M.average_sharpness(model, F.cross_entropy, (x, y), 0.1, output="out", pairs=2)


class StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.clamp(-1, 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5).double(), nn.Linear(5, 3).double()

    def forward(self, x):
        return self.b(StraightThrough.apply(self.a(x)))


def test_a_function_without_forward_mode_is_refused_by_fisher_rao_only():
    model, data = Quantised(), batch()
    with pytest.raises(FlatnessError, match="forward mode.*jvp"):
        M.fisher_rao_norm(model, F.cross_entropy, data)
    assert M.average_sharpness(model, F.cross_entropy, data, 0.1, pairs=2).forward_passes == 5


class Tied(nn.Module):
    """A language-model-like net whose output layer shares the embedding's weight, and a
    hidden layer registered under two names."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(3, 4).double()
        self.a = nn.Linear(4, 4).double()
        self.b = self.a
        self.head = nn.Linear(4, 3, bias=False).double()
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(self.b(x)))


def test_relative_flatness_takes_tied_and_shared_layers_by_any_of_their_names():
    model, (x, y) = Tied(), batch()
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def loss(t):
        ps = dict(
            zip(
                names,
                (c.reshape(s) for c, s in zip(torch.split(t, [s.numel() for s in shapes]), shapes)),
            )
        )
        z = torch.tanh(x @ ps["a.weight"].T + ps["a.bias"]) @ ps["emb.weight"].T
        return F.cross_entropy(z, y)

    h = torch.autograd.functional.hessian(loss, theta)
    w = model.emb.weight.detach()
    block = h[:12, :12].reshape(3, 4, 3, 4)  # emb.weight comes first
    exact = float(
        sum(
            (w @ w.T)[s, t] * block[s, :, t, :].diagonal().sum() for s in range(3) for t in range(3)
        )
    )
    for layer in (None, "head"):
        r = M.relative_flatness(model, F.cross_entropy, (x, y), layer=layer)
        assert abs(r.value - exact) <= 3 * r.stderr + 1e-9 * abs(exact)
    assert M.relative_flatness(model, F.cross_entropy, (x, y), layer="b").layer == "b"


def test_nan_in_a_loader_is_named_as_such():
    from flatness import hessian

    x, y = batch()
    x[3, 1] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    model = relu_net(bias=True)
    for call in (
        lambda: hessian.trace(model, F.cross_entropy, loader),
        lambda: M.average_sharpness(model, F.cross_entropy, loader, 0.1),
    ):
        with pytest.raises(FlatnessError, match="inf or NaN"):
            call()


def test_options_take_numpy_numbers_and_refuse_the_rest_by_name():
    import numpy as np

    model, data = relu_net(bias=True), batch()
    a = M.average_sharpness(model, F.cross_entropy, data, np.float32(0.05), pairs=np.int64(3))
    b = M.average_sharpness(model, F.cross_entropy, data, torch.tensor(0.05), pairs=3)
    assert a.rho == pytest.approx(0.05) and b.rho == pytest.approx(0.05) and a.pairs == 3
    with pytest.raises(FlatnessError, match="step_size must be a positive"):
        M.worst_sharpness(model, F.cross_entropy, data, 0.1, step_size=0)
    with pytest.raises(FlatnessError, match="rho is too large"):
        M.adaptive_curvature(model, F.cross_entropy, data, 1e200)
    with pytest.raises(FlatnessError, match="torch.nn.Module"):
        M.relative_flatness(None, F.cross_entropy, data)
    one = M.worst_sharpness(model, F.cross_entropy, data, 0.1, steps=2, seed=1)
    assert one == M.worst_sharpness(model, F.cross_entropy, data, 0.1, steps=2, seed=1)


def trained(seed=12, hidden=8, n=60):
    """A bias-free ReLU net fitted to ``n`` random examples, so that noise can lower its
    training accuracy."""
    model, (x, y) = relu_net(seed=seed, hidden=hidden), batch(seed=seed, n=n)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, (x, y)


def hand_accuracy(model, x, y, theta):
    w1, w2 = torch.split(theta, [model[0].weight.numel(), model[2].weight.numel()])
    z = torch.relu(x @ w1.reshape(model[0].weight.shape).T) @ w2.reshape(model[2].weight.shape).T
    return float((z.argmax(1) == y).double().mean())


@pytest.mark.parametrize("magnitude_aware", [False, True], ids=["plain", "magnitude"])
def test_pac_bayes_sigma_is_where_the_accuracy_has_dropped_by_the_target(magnitude_aware):
    model, (x, y) = trained()
    r = M.pac_bayes_flatness(
        model, F.cross_entropy, (x, y), magnitude_aware=magnitude_aware, samples=20, seed=1
    )
    theta = flat_params(model)
    base = hand_accuracy(model, x, y, theta)
    assert r.accuracy == pytest.approx(base) and base > 0.5 and r.converged
    assert r.flatness == pytest.approx(1 / r.sigma**2)
    # an independent Monte Carlo estimate of the drop at sigma', with our own draws
    g = torch.Generator().manual_seed(99)
    scale = (r.sigma**2 * theta**2 + r.eps**2).sqrt() if magnitude_aware else r.sigma
    drops = torch.tensor(
        [
            base
            - hand_accuracy(
                model,
                x,
                y,
                theta + scale * torch.randn(len(theta), generator=g, dtype=torch.float64),
            )
            for _ in range(400)
        ]
    )
    se = float(drops.std() / math.sqrt(len(drops)))
    assert abs(float(drops.mean()) - 0.1) <= 0.01 + 4 * (se + r.drop_stderr)
    # the bound's term, by hand, about 0 (no initial weights given)
    m, omega = len(y), len(theta)
    if magnitude_aware:
        num = r.eps**2 + (r.sigma**2 + 1) * float(theta @ theta) / omega
        bound = float(0.25 * torch.log(num / (r.eps**2 + r.sigma**2 * theta**2)).sum())
    else:
        bound = float(theta @ theta) / (4 * r.sigma**2)
    assert r.bound == pytest.approx(bound + math.log(m / r.sigma) + 10, rel=1e-10)


def test_magnitude_aware_pac_bayes_is_invariant_to_rescaling_and_the_plain_one_is_not():
    model, data = trained()
    other = rescaled(model, [0.5, 2.0, 3.0, 1.0, 0.25, 4.0, 1.5, 0.7])
    run = lambda m, aware: M.pac_bayes_flatness(
        m, F.cross_entropy, data, magnitude_aware=aware, eps=0.0, samples=8, seed=2
    )
    assert run(model, True).sigma == run(other, True).sigma
    assert run(model, False).sigma != run(other, False).sigma


def test_pac_bayes_measures_the_bound_about_the_initial_weights():
    model, data = trained()
    start = relu_net(seed=12, hidden=8)
    r = M.pac_bayes_flatness(model, F.cross_entropy, data, initial=start, samples=4, depth=3)
    distance = flat_params(model) - flat_params(start)
    expected = float(distance @ distance) / (4 * r.sigma**2) + math.log(60 / r.sigma) + 10
    assert r.bound == pytest.approx(expected, rel=1e-10)
    with pytest.raises(FlatnessError, match="initial must be a module"):
        M.pac_bayes_flatness(model, F.cross_entropy, data, initial=torch.zeros(3))


def test_pac_bayes_refuses_what_has_no_accuracy_or_no_target():
    model, data = least_squares()[:2]
    with pytest.raises(FlatnessError, match="an accuracy needs class scores"):
        M.pac_bayes_flatness(model, F.mse_loss, data)
    net, batch_ = trained()
    with pytest.raises(FlatnessError, match="target must lie in"):
        M.pac_bayes_flatness(net, F.cross_entropy, batch_, target=0.1, tolerance=0.2)
