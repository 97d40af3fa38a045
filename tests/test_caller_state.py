"""What the caller brings stays the caller's: autocast does not reach a measurement, and a
model comes back as it was, a submodule registered under two names included.

Inside ``torch.autocast(..., dtype=torch.bfloat16)`` a Hessian-vector product would run in bf16
(three significant digits) and an estimate would converge on it. ``torch.func.functional_call``
left a shared submodule holding the swapped-in tensors (pytorch#164759). The right values come
from hand-written float64 forwards differentiated by ``torch.autograd.functional.hessian``,
which share no code with the package.
"""

import pytest
import torch
from test_model_kinds import assert_estimates_match
from torch import nn

from flatness import hessian as H
from flatness.errors import FlatnessError

ce = nn.functional.cross_entropy


def tanh_mlp(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def batch(dtype, n=40):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=gen).to(dtype)
    return x, torch.randint(0, 3, (n,), generator=gen)


def reference_hessian(model, x, y) -> torch.Tensor:
    """The dense float64 Hessian of the mean cross-entropy, from a hand-written forward."""
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def loss(theta):
        w1, b1, w2, b2 = torch.split(theta, [s.numel() for s in shapes])
        h = torch.tanh(x.double() @ w1.reshape(shapes[0]).T + b1)
        logits = h @ w2.reshape(shapes[2]).T + b2
        return (torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean()

    return torch.autograd.functional.hessian(loss, flat)


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_the_reference_would_see_bf16_inside_autocast():
    # the premise: the model's own forward does run in bf16 inside the caller's autocast
    model, (x, _) = tanh_mlp(torch.float32), batch(torch.float32)
    with bf16_autocast():
        assert model(x).dtype == torch.bfloat16


def test_the_exact_hessian_ignores_the_callers_autocast():
    model, (x, y) = tanh_mlp(torch.float64), batch(torch.float64)
    truth = reference_hessian(model, x, y)
    with bf16_autocast():
        found = H.exact_hessian(model, ce, (x, y))
    assert found.dtype == torch.float64
    torch.testing.assert_close(found, truth, rtol=1e-10, atol=1e-12)


def test_a_float32_estimate_inside_bf16_autocast_has_float32_accuracy():
    model, (x, y) = tanh_mlp(torch.float32), batch(torch.float32)
    truth = torch.linalg.eigvalsh(reference_hessian(model, x, y))
    with bf16_autocast():
        # 1e-5: a float32 product's rounding already takes 4.8e-7 of the largest eigenvalue
        top = H.top_eigenvalues(model, ce, (x, y), k=2, tol=1e-5, seed=0)
        ggn = H.ggn_trace(model, ce, (x, y))
    # bf16 products are off by about 1e-3 relative; float32 ones by about 1e-6
    expected = truth.flip(0)[:2].to(top.eigenvalues)
    torch.testing.assert_close(top.eigenvalues, expected, rtol=2e-5, atol=0.0)
    with torch.autocast("cpu", enabled=False):
        plain = H.ggn_trace(model, ce, (x, y))
    assert ggn == pytest.approx(plain, rel=1e-6)


@pytest.mark.filterwarnings("ignore::flatness.hessian.ConvergenceWarning")
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_a_trace_estimate_inside_bf16_autocast_equals_the_same_estimate_outside(method):
    model, data = tanh_mlp(torch.float32), batch(torch.float32)
    outside = H.trace(model, ce, data, method=method, max_probes=64, rtol=1e-9, seed=3)
    with bf16_autocast():
        inside = H.trace(model, ce, data, method=method, max_probes=64, rtol=1e-9, seed=3)
    assert inside.estimate == pytest.approx(outside.estimate, rel=1e-6)
    assert inside.stderr == pytest.approx(outside.stderr, rel=1e-5)


def test_pyhessian_beside_flatness_also_runs_at_the_models_precision():
    model, (x, y) = tanh_mlp(torch.float32), batch(torch.float32)
    truth = torch.linalg.eigvalsh(reference_hessian(model, x, y))[-1].item()
    with bf16_autocast():
        found = H.pyhessian_estimate(model, ce, (x, y), max_iter=200, tol=1e-7, seed=0)
    assert found.top_eigenvalue == pytest.approx(truth, rel=1e-4)


def test_the_callers_autocast_is_on_again_after_a_measurement():
    model, data = tanh_mlp(torch.float32), batch(torch.float32)
    with bf16_autocast():
        H.top_eigenvalues(model, ce, data, k=1, tol=1e-3, seed=0)
        assert torch.is_autocast_enabled("cpu")
        assert model(data[0]).dtype == torch.bfloat16


# -- a submodule registered under two names ----------------------------------------------------


class Siamese(nn.Module):
    """One Linear registered as ``a`` and as ``b`` (pytorch#164759)."""

    def __init__(self):
        super().__init__()
        shared = nn.Linear(4, 4)
        self.a = shared
        self.b = shared
        self.o = nn.Linear(4, 3)

    def forward(self, x):
        return self.o(torch.tanh(self.a(x)) + torch.tanh(self.b(-x)))


def siamese_reference(model, x, y) -> torch.Tensor:
    """Its dense float64 Hessian from a hand-written forward, the shared weights used twice."""
    shapes = [p.shape for p in model.parameters()]  # a.weight, a.bias, o.weight, o.bias
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def loss(theta):
        w, b, v, c = (
            t.reshape(s) for t, s in zip(torch.split(theta, [s.numel() for s in shapes]), shapes)
        )
        xd = x.double()
        logits = (torch.tanh(xd @ w.T + b) + torch.tanh(-xd @ w.T + b)) @ v.T + c
        return (torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean()

    return torch.autograd.functional.hessian(loss, flat)


def siamese(dtype):
    torch.manual_seed(0)
    model = Siamese().to(dtype)
    model.o.eval()  # a mode of the user's own, which must come back as it was
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(24, 4, generator=gen).to(dtype)
    return model, (x, torch.randint(0, 3, (24,), generator=gen))


def _operator_products(curvature):
    def run(model, data):
        op = H.HessianOperator(model, ce, data, curvature=curvature)
        return op.matmat(torch.ones(2, op.size, dtype=op.dtype))

    return run


EVERY_FUNCTION = {
    "exact_hessian": lambda m, d: H.exact_hessian(m, ce, d),
    "exact_hessian ggn": lambda m, d: H.exact_hessian(m, ce, d, curvature="ggn"),
    "exact_hessian residual": lambda m, d: H.exact_hessian(m, ce, d, curvature="residual"),
    "ggn_trace": lambda m, d: H.ggn_trace(m, ce, d),
    "top_eigenvalues": lambda m, d: H.top_eigenvalues(m, ce, d, k=2, seed=0),
    "top_eigenvalues ggn": lambda m, d: H.top_eigenvalues(m, ce, d, curvature="ggn", seed=0),
    "trace": lambda m, d: H.trace(m, ce, d, rtol=0.05, seed=0),
    "trace hutch++": lambda m, d: H.trace(m, ce, d, method="hutch++", rtol=0.05, seed=0),
    "frobenius_norm": lambda m, d: H.frobenius_norm(m, ce, d, rtol=0.05, seed=0),
    "spectral_density": lambda m, d: H.spectral_density(m, ce, d, steps=8, probes=2, seed=0),
    "HessianOperator hessian": _operator_products("hessian"),
    "HessianOperator ggn": _operator_products("ggn"),
    "HessianOperator residual": _operator_products("residual"),
    "pyhessian_estimate": lambda m, d: H.pyhessian_estimate(m, ce, d, max_iter=5, seed=0),
    "pyhessian_hvp": lambda m, d: H.pyhessian_hvp(
        m, ce, d, torch.ones(sum(p.numel() for p in m.parameters()), dtype=d[0].dtype)
    ),
}


def state(model):
    """Every registered tensor by module and name (shared modules under each name), with the
    object itself, its class, dtype and a copy of its values; and every module's mode."""
    tensors = [
        (name, key, t, type(t), t.dtype, t.detach().clone())
        for name, m in model.named_modules(remove_duplicate=False)
        for key, t in [*m._parameters.items(), *m._buffers.items()]
    ]
    modes = [(name, m.training) for name, m in model.named_modules(remove_duplicate=False)]
    return tensors, modes


@pytest.mark.filterwarnings("ignore::flatness.hessian.ConvergenceWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("function", sorted(EVERY_FUNCTION))
def test_every_public_function_leaves_a_shared_submodule_as_it_was(function, dtype):
    model, data = siamese(dtype)
    (before, modes) = state(model)
    EVERY_FUNCTION[function](model, data)
    after, modes_after = state(model)
    assert modes_after == modes
    for (name, key, t, kind, dt, values), (_, _, t2, kind2, dt2, values2) in zip(before, after):
        assert t2 is t, f"{name}.{key} was replaced by a {kind2.__name__}"
        assert (kind2, dt2) == (kind, dt) and torch.equal(values2, values)
    assert model.a.weight is model.b.weight and isinstance(model.a.weight, nn.Parameter)
    assert model(data[0]).dtype == dtype  # the model still runs at its own dtype


def test_a_shared_submodule_gets_its_hessian_with_the_weights_used_twice():
    model, (x, y) = siamese(torch.float64)
    truth = siamese_reference(model, x, y)
    torch.testing.assert_close(H.exact_hessian(model, ce, (x, y)), truth, rtol=1e-10, atol=1e-12)
    run = assert_estimates_match(model, (x, y), truth)
    # a second call, after the first, sees the same shared layer (it used to be refused)
    again = H.trace(model, ce, (x, y), rtol=0.01, seed=0)
    assert again.estimate == pytest.approx(run.estimate, rel=1e-12)


# -- the user's gradient hooks, buffers the forward pass updates, a model with no values ------


def hooked_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, batch(torch.float64)


HOOKS = {
    "scales the gradient": lambda m: m[0].weight.register_hook(lambda g: 10 * g),
    "prunes the gradient": lambda m: m[0].weight.register_hook(
        lambda g: g * (torch.arange(g.numel()).reshape(g.shape) % 2)
    ),
    "zeroes a module's input gradient": lambda m: m[2].register_full_backward_hook(
        lambda mod, grad_in, grad_out: (torch.zeros_like(grad_in[0]),)
    ),
}


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_the_users_gradient_hooks_do_not_change_the_hessian(hook):
    # a hook changes what autograd returns (for training), not the loss the Hessian is of
    model, (x, y) = hooked_mlp()
    truth = reference_hessian(model, x, y)
    handle = HOOKS[hook](model)
    torch.testing.assert_close(H.exact_hessian(model, ce, (x, y)), truth, rtol=1e-10, atol=1e-12)
    assert_estimates_match(model, (x, y), truth)
    # and the hook is the user's again afterwards
    plain = torch.autograd.grad(ce(model(x), y), model[0].weight)[0]
    handle.remove()
    unhooked = torch.autograd.grad(ce(model(x), y), model[0].weight)[0]
    assert not torch.equal(plain, unhooked)


@pytest.mark.filterwarnings("ignore::flatness.hessian.ConvergenceWarning")
def test_a_logging_hook_calling_item_neither_crashes_nor_runs_during_a_measurement():
    model, (x, y) = hooked_mlp()
    seen = []
    model[0].weight.register_hook(lambda g: seen.append(g.norm().item()))
    truth = torch.trace(reference_hessian(model, x, y)).item()
    for method in ("hutchinson", "hutch++", "auto"):
        run = H.trace(model, ce, (x, y), method=method, rtol=0.01, seed=0)
        assert abs(run.estimate - truth) <= 4 * run.stderr + 1e-9 * abs(truth)
    H.frobenius_norm(model, ce, (x, y), rtol=0.05, seed=0)
    assert seen == []
    ce(model(x), y).backward()
    assert len(seen) == 1  # still the user's


class Counting(nn.Module):
    """Counts its forward calls in a buffer; ``ema``: its output uses its own running mean."""

    def __init__(self, ema: bool):
        super().__init__()
        self.a, self.b, self.ema = nn.Linear(6, 8), nn.Linear(8, 3), ema
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(8))

    def forward(self, x):
        self.calls += 1
        h = torch.tanh(self.a(x))
        if self.ema:
            with torch.no_grad():
                self.mean.mul_(0.9).add_(0.1 * h.mean(0))
            h = h - self.mean
        return self.b(h)


def test_a_buffer_the_forward_pass_updates_comes_back_as_it_was():
    torch.manual_seed(0)
    model, data = Counting(ema=False).double(), batch(torch.float64)
    H.top_eigenvalues(model, ce, data, k=1, seed=0)
    H.trace(model, ce, data, rtol=0.05, seed=0)
    # torch.func cannot run a forward that writes a buffer in place: one clear refusal
    with pytest.raises(FlatnessError, match="^torch.func cannot differentiate this model"):
        H.exact_hessian(model, ce, data)
    assert model.calls.item() == 0


def test_a_forward_whose_output_follows_its_own_buffer_is_refused_for_that_and_left_alone():
    torch.manual_seed(0)
    model, data = Counting(ema=True).double(), batch(torch.float64)
    for call in (
        lambda: H.trace(model, ce, data),
        lambda: H.exact_hessian(model, ce, data),
        lambda: H.pyhessian_estimate(model, ce, data, max_iter=3),
    ):
        with pytest.raises(
            FlatnessError, match=r"forward pass changes its buffer\(s\) calls, mean"
        ):
            call()
        assert model.calls.item() == 0 and torch.equal(
            model.mean, torch.zeros(8, dtype=torch.float64)
        )


def test_a_model_on_the_meta_device_is_refused_with_the_way_to_give_it_values():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    data = batch(torch.float32)
    for call in (
        lambda: H.trace(model, ce, data),
        lambda: H.exact_hessian(model, ce, data),
        lambda: H.pyhessian_estimate(model, ce, data),
    ):
        with pytest.raises(
            FlatnessError,
            match=r"^the model's tensors 0\.weight, 0\.bias, 2\.weight and more are on the meta",
        ):
            call()
