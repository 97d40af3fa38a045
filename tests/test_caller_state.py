"""Measurements at the model's own precision whatever the caller's autocast.

Inside ``torch.autocast(..., dtype=torch.bfloat16)`` a Hessian-vector product would run in bf16
(three significant digits) and an estimate would converge on it. The right values here come
from a hand-written float64 forward differentiated by ``torch.autograd.functional.hessian``,
which shares no code with the package.
"""

import pytest
import torch
from torch import nn

from flatness import hessian as H

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
        top = H.top_eigenvalues(model, ce, (x, y), k=2, tol=1e-6, seed=0)
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
