"""More of what users bring: parameters read outside their layer, BatchNorm without running
statistics, weighted losses on loaders, regression losses, dict inputs, and state that must be
left alone. Each kind has its right value from an independent computation or a clear refusal."""

import itertools
import math
import random
import re
import warnings

import numpy as np
import pytest
import torch
from test_estimators import make
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from flatness import hessian as H
from flatness.errors import FlatnessError

ce = nn.functional.cross_entropy


def tanh_batch(n=30, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=gen)


class ReadsWeight(nn.Module):
    """A Linear whose weight is also read directly in the forward pass."""

    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.o(torch.tanh(torch.tanh(self.a(x)) @ self.a.weight.T))


def test_a_parameter_read_outside_its_layer_still_gets_the_exact_ggn_trace():
    torch.manual_seed(0)
    model, data = ReadsWeight().double(), tanh_batch()
    ggn = torch.trace(H.exact_hessian(model, ce, data, curvature="ggn")).item()
    truth = torch.trace(H.exact_hessian(model, ce, data)).item()
    assert H.ggn_trace(model, ce, data) == pytest.approx(ggn, rel=1e-10)
    run = H.trace(model, ce, data, rtol=0.02)
    assert abs(run.estimate - truth) <= 4 * run.stderr + 1e-9 * abs(truth)


def no_running_stats():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Tanh(), nn.Linear(5, 3)
    ).double()


def test_batchnorm_without_running_statistics_is_batch_statistics_in_eval_mode():
    model, (x, y) = no_running_stats(), tanh_batch()
    shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    with pytest.raises(FlatnessError, match="without running statistics.*shuffle=False"):
        H.exact_hessian(model, ce, shuffled)
    with pytest.raises(FlatnessError, match="batch statistics"):
        H.ggn_trace(model, ce, (x, y))
    # the fixed batches of an unshuffled loader: the mean of each batch's own Hessian
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    parts = [H.exact_hessian(model, ce, (x[i : i + 10], y[i : i + 10])) for i in (0, 10, 20)]
    assert torch.allclose(H.exact_hessian(model, ce, loader), sum(parts) / 3, atol=1e-12)


@pytest.mark.parametrize(
    "loss",
    [
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64)),
        nn.CrossEntropyLoss(ignore_index=2),
    ],
    ids=["class-weights", "ignore-index"],
)
def test_losses_that_are_not_a_plain_mean_are_refused_on_loaders_only(loss):
    model, data = make("tanh")
    x, y = data[0][:, :6], data[1] % 3
    model = nn.Sequential(nn.Linear(6, 3)).double()
    with pytest.raises(FlatnessError, match="not the plain mean of per-example losses"):
        H.trace(model, loss, DataLoader(TensorDataset(x, y), batch_size=16))
    whole = H.exact_hessian(model, loss, (x, y))  # one batch: that loss's own Hessian
    assert torch.allclose(whole, whole.T) and whole.abs().max() > 1e-3


@pytest.mark.parametrize(
    "api,remedy",
    [
        ("parametrizations", r"parametrize\.remove_parametrizations\(module, 'weight'\)"),
        ("hooks", r"torch\.nn\.utils\.remove_weight_norm\(module, name='weight'\)"),
    ],
)
def test_weight_normalisation_is_refused_with_the_remedy_of_its_api(api, remedy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the hook API is deprecated
        wrap = nn.utils.parametrizations.weight_norm if api != "hooks" else nn.utils.weight_norm
        layer = wrap(nn.Linear(4, 4))
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(4, 3)).double()
    with pytest.raises(FlatnessError, match="weight normalisation.*asymmetric") as err:
        H.trace(model, ce, tanh_batch())
    assert re.search(remedy, str(err.value)) and str(err.value).count("remove") == 1
    # the remedy it names applies: without weight normalisation the model is accepted
    if api == "hooks":
        nn.utils.remove_weight_norm(layer)
    else:
        nn.utils.parametrize.remove_parametrizations(layer, "weight")
    assert math.isfinite(H.trace(model, ce, tanh_batch(), probes=4).estimate)


@pytest.mark.parametrize("name", ["mse", "huber"])
def test_regression_losses_have_a_gauss_newton_part(name):
    """For mean squared error over N examples and K outputs, H_z = 2 I / (N K): the GGN is
    2 J^T J / (N K), with J from torch.autograd.functional.jacobian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    target = torch.randn(20, 3, dtype=torch.float64) * 0.1  # Huber stays quadratic here
    loss = nn.MSELoss() if name == "mse" else nn.HuberLoss(delta=10.0)
    params = list(model.parameters())

    def logits(*flat):
        return torch.func.functional_call(
            model, {n: t for (n, _), t in zip(model.named_parameters(), flat)}, (x,)
        ).reshape(-1)

    jac = torch.cat(
        [j.reshape(60, -1) for j in torch.autograd.functional.jacobian(logits, tuple(params))], 1
    )
    scale = 2.0 if name == "mse" else 1.0  # Huber's quadratic part is (z - t)^2 / 2
    closed = scale * jac.T @ jac / 60
    assert torch.allclose(
        H.exact_hessian(model, loss, (x, target), curvature="ggn"), closed, atol=1e-12
    )
    assert H.ggn_trace(model, loss, (x, target)) == pytest.approx(torch.trace(closed).item())
    top = H.top_eigenvalues(model, loss, (x, target), k=2, curvature="ggn", tol=1e-9)
    assert torch.allclose(top.eigenvalues, torch.linalg.eigvalsh(closed).flip(0)[:2], rtol=1e-7)


class DictInput(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, batch):
        return self.body(batch["x"] * batch["scale"])


def test_a_model_taking_a_dict_of_inputs():
    model, (x, y) = make("relu")
    inputs = {"x": x / 2, "scale": torch.full((len(x), 1), 2.0, dtype=torch.float64)}
    plain = H.exact_hessian(model, ce, (x, y))
    wrapped = DictInput(model)
    assert torch.allclose(H.exact_hessian(wrapped, ce, (inputs, y)), plain, atol=1e-12)
    assert H.ggn_trace(wrapped, ce, (inputs, y)) == pytest.approx(
        torch.trace(H.exact_hessian(model, ce, (x, y), curvature="ggn")).item(), rel=1e-10
    )


class Endless(Sampler):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return itertools.cycle(range(self.n))


class RandomForward(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return nn.functional.dropout(self.body(x), 0.5, training=True)


def test_randomness_no_name_reveals_is_refused():
    model, (x, y) = make("tanh")
    plain = TensorDataset(x, y)

    def noisy_collate(items):
        xs, ys = zip(*items)
        return torch.stack(xs) + 1e-3 * torch.randn(
            len(xs), x.shape[1], dtype=x.dtype
        ), torch.stack(ys)

    with pytest.raises(FlatnessError, match="different example.*collate_fn"):
        H.trace(model, ce, DataLoader(plain, batch_size=8, collate_fn=noisy_collate))
    with pytest.raises(FlatnessError, match="forward pass draws random numbers"):
        H.trace(RandomForward(model), ce, (x, y))
    with pytest.raises(FlatnessError, match="a pass must end"):
        H.trace(model, ce, DataLoader(plain, batch_size=8, sampler=Endless(len(x))))


def test_bad_data_and_options_get_one_message():
    model, (x, y) = make("tanh")
    dicts = [{"x": a, "y": b} for a, b in zip(x, y)]
    with pytest.raises(FlatnessError, match="yields a dict"):
        H.trace(model, ce, DataLoader(dicts, batch_size=8))
    with pytest.raises(FlatnessError, match="batch_size"):
        H.trace(model, ce, DataLoader(TensorDataset(x, y), batch_size=None))
    with pytest.raises(FlatnessError, match="torch.bool"):
        H.trace(model, ce, (x, y > 1))
    with pytest.raises(FlatnessError, match="torch.float16.*torch.float32 or torch.float64"):
        H.trace(make("tanh")[0].half(), ce, (x.half(), y))
    for call, pattern in [
        (lambda: H.top_eigenvalues(model, ce, (x, y), seed=None), "seed"),
        (lambda: H.top_eigenvalues(model, ce, (x, y), max_steps=0), "max_steps"),
        (lambda: H.trace(model, ce, (x, y), l2=float("nan")), "l2"),
        (lambda: H.top_eigenvalues(model, ce, (x, y), l2=-1.0), r"l2 must be >= 0.*-1\.0"),
        (lambda: H.pyhessian_estimate(model, ce, (x, y), max_iter=0), "max_iter"),
        (lambda: H.pyhessian_hvp(model, ce, (x, y), torch.ones(3)), r"shape \(92,\)"),
        (lambda: H.hessian_rank(torch.ones(3, 2)), "square"),
        (lambda: H.softmax_regression_hessian(nn.Linear(6, 4, bias=False), x), "bias"),
        (lambda: H.trace(nn.LazyLinear(4), ce, (x, y)), "not initialised"),
    ]:
        with pytest.raises(FlatnessError, match=pattern):
            call()


class Flagged(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body, self.flag = body, True

    def train(self, mode=True):
        self.flag = mode
        return super().train(mode)

    def forward(self, x):
        return self.body(x)


def test_every_random_state_gradient_and_mode_is_left_alone():
    model, (x, y) = make("tanh")
    flagged = Flagged(model).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    v = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    H.exact_hessian(flagged, ce, loader)
    H.trace(flagged, ce, loader, probes=4, method="hutchinson")
    H.pyhessian_hvp(flagged, ce, (x, y), v)
    assert torch.equal(states[0], torch.get_rng_state())
    assert (states[1] == np.random.get_state()[1]).all() and states[2] == random.getstate()
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert flagged.training and flagged.flag


def test_ggn_trace_of_a_linear_subclass_that_flattens_images_inside_forward():
    # softmax regression on (N, 1, 4, 4) images: the layer formulas must see the flat input
    from flatness.models import softmax_regression

    torch.manual_seed(0)
    model = softmax_regression((1, 4, 4), 3).double()
    x = torch.randn(20, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(3, (20,))
    dense = H.exact_hessian(model, nn.functional.cross_entropy, (x, y), curvature="ggn")
    got = H.ggn_trace(model, nn.functional.cross_entropy, (x, y))
    assert got == pytest.approx(torch.trace(dense).item(), rel=1e-10)
    est = H.trace(model, nn.functional.cross_entropy, (x, y), rtol=0.01)
    assert est.method == "ggn+hutchinson"
    assert est.estimate == pytest.approx(torch.trace(dense).item(), rel=1e-10)
