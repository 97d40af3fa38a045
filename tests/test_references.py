"""The package's Hessians against references that share no code with flatness.hessian.

Every reference here is computed from scratch, in float64, with plain torch:

- central finite differences of ``torch.autograd.grad`` of the real model's loss, perturbing its
  parameters in place (on a copy, so running statistics are never touched);
- ``torch.autograd.functional.hessian`` of hand-written forwards (linear layers, tanh/ReLU,
  ``conv2d`` + BatchNorm with running or batch statistics) and a hand-written cross-entropy
  ``logsumexp(z) - z_y`` over one flat parameter vector, sliced in ``model.parameters()`` order;
- the GGN as an explicit ``J^T H_z J`` with ``J`` from ``torch.autograd.functional.jacobian``
  and ``H_z`` block-diagonal in closed form, ``(diag p_i - p_i p_i^T) / N``.

No flatness.hessian function computes a reference; the package is only the thing compared.
"""

import copy

import pytest
import torch
from test_estimators import CASES, make
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness import hessian as H

ce = nn.functional.cross_entropy
IDS = [f"{m}-{b}" for m, b in CASES]
FD_STEP = 1e-5
FD_RTOL = 1e-6  # finite differences: truncation ~ h^2, rounding ~ 1e-16 / h
AD_RTOL = 1e-10  # two exact automatic differentiations in float64


def close(actual, expected, rtol):
    """``actual == expected`` to ``rtol`` times the largest entry of a non-trivial ``expected``."""
    scale = expected.abs().max().item()
    assert scale > 1e-3, "the reference is (nearly) zero: the comparison would be vacuous"
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"max error {err:.3e} vs scale {scale:.3e} (rtol {rtol:g})"


def params_of(model):
    return [p for p in model.parameters() if p.requires_grad]


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in params_of(model)]).clone()


def in_mode(model, bn_mode):
    """A copy of ``model`` in eval mode, or with BatchNorm on batch statistics (no updates)."""
    model = copy.deepcopy(model).eval()
    if bn_mode == "train":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.track_running_stats = False
    return model


# -- finite differences of the real model's gradient ------------------------------------------
def finite_difference_hessian(model, data, bn_mode, h=FD_STEP):
    model = in_mode(model, bn_mode)
    x, y = data
    params = params_of(model)

    def gradient():
        grads = torch.autograd.grad(ce(model(x), y), params)
        return torch.cat([g.reshape(-1) for g in grads])

    columns = []
    with torch.no_grad():
        saved = [p.clone() for p in params]
    for p, p0 in zip(params, saved):
        for j in range(p.numel()):
            value = p0.reshape(-1)[j].item()
            with torch.no_grad():
                p.view(-1)[j] = value + h
            plus = gradient()
            with torch.no_grad():
                p.view(-1)[j] = value - h
            minus = gradient()
            with torch.no_grad():
                p.view(-1)[j] = value
            columns.append((plus - minus) / (2 * h))
    assert all(torch.equal(p, p0) for p, p0 in zip(params, saved))
    fd = torch.stack(columns, dim=1)
    asym = (fd - fd.T).abs().max().item()
    assert asym <= FD_RTOL * fd.abs().max().item(), f"FD asymmetry {asym:.3e}"
    return (fd + fd.T) / 2


# -- hand-written forwards over one flat parameter vector -------------------------------------
def unflat(flat, model):
    pieces, start = [], 0
    for p in params_of(model):
        pieces.append(flat[start : start + p.numel()].reshape(p.shape))
        start += p.numel()
    assert start == len(flat)
    return pieces


def logits_fn(name, model, x, bn_mode="eval"):
    """``flat -> logits`` written by hand for each test model."""

    def dense(flat):
        *hidden, w, b = unflat(flat, model)
        act = torch.tanh if name == "tanh" else torch.relu
        z = x
        for wi, bi in zip(hidden[::2], hidden[1::2]):
            z = act(z @ wi.T + bi)  # tanh: tanh(x @ W1.T + b1) @ W2.T + b2
        return z @ w.T + b

    def cnn(flat):
        cw, cb, gamma, beta, hw, hb = unflat(flat, model)
        z = nn.functional.conv2d(x, cw, cb)
        if bn_mode == "train":
            mean, var = z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = model.bn.running_mean, model.bn.running_var
        c = lambda t: t[None, :, None, None]
        z = (z - c(mean)) / torch.sqrt(c(var) + 1e-5) * c(gamma) + c(beta)
        return torch.relu(z).flatten(1) @ hw.T + hb

    return cnn if name == "cnn" else dense


def mean_cross_entropy(z, y):
    return (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None])[:, 0]).mean()


def functional_hessian(name, model, data, bn_mode="eval"):
    x, y = data
    f = logits_fn(name, model, x, bn_mode)
    return torch.autograd.functional.hessian(
        lambda flat: mean_cross_entropy(f(flat), y), flat_params(model)
    )


def operator_dense(model, data, **kw):
    op = H.HessianOperator(model, ce, data, **kw)
    return op.matmat(torch.eye(op.size, dtype=torch.float64)).T  # column i is H e_i


# -- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,bn_mode", CASES, ids=IDS)
def test_finite_differences_match_exact_hessian_and_operator(name, bn_mode):
    model, data = make(name)
    fd = finite_difference_hessian(model, data, bn_mode)
    close(H.exact_hessian(model, ce, data, bn_mode=bn_mode), fd, FD_RTOL)
    close(operator_dense(model, data, bn_mode=bn_mode), fd, FD_RTOL)


@pytest.mark.parametrize("name,bn_mode", CASES, ids=IDS)
def test_hand_written_functional_hessian_matches(name, bn_mode):
    model, data = make(name)
    x, y = data
    # the hand-written forward is the model's forward (in the right BatchNorm mode)
    with torch.no_grad():
        close(
            logits_fn(name, model, x, bn_mode)(flat_params(model)),
            in_mode(model, bn_mode)(x),
            1e-13,
        )
    ref = functional_hessian(name, model, data, bn_mode)
    close(H.exact_hessian(model, ce, data, bn_mode=bn_mode), ref, AD_RTOL)
    close(operator_dense(model, data, bn_mode=bn_mode), ref, AD_RTOL)


@pytest.mark.parametrize("name,bn_mode", CASES, ids=IDS)
def test_ggn_is_explicit_jacobian_sandwich(name, bn_mode):
    model, (x, y) = make(name)
    f = logits_fn(name, model, x, bn_mode)
    flat = flat_params(model)
    z = f(flat).detach()
    n, k = z.shape
    jac = torch.autograd.functional.jacobian(lambda w: f(w).reshape(-1), flat)  # (N K, P)
    p = torch.softmax(z, dim=1)
    h_z = torch.block_diag(*[(torch.diag(pi) - torch.outer(pi, pi)) / n for pi in p])
    ggn = jac.T @ h_z @ jac
    close(H.exact_hessian(model, ce, (x, y), curvature="ggn", bn_mode=bn_mode), ggn, AD_RTOL)
    close(operator_dense(model, (x, y), curvature="ggn", bn_mode=bn_mode), ggn, AD_RTOL)
    if name != "logreg":  # a real non-linear model: the GGN is not the Hessian
        full = functional_hessian(name, model, (x, y), bn_mode)
        assert (full - ggn).abs().max() > 1e-3 * full.abs().max()


@pytest.mark.parametrize("name,bn_mode", CASES, ids=IDS)
def test_exact_hessians_are_symmetric(name, bn_mode):
    model, data = make(name)
    scale = H.exact_hessian(model, ce, data, bn_mode=bn_mode).abs().max().item()
    assert scale > 1e-3
    for curvature in H.CURVATURES:  # relative to the Hessian: softmax regression's residual is 0
        m = H.exact_hessian(model, ce, data, curvature=curvature, bn_mode=bn_mode)
        assert m.dtype == torch.float64 and m.shape[0] == m.shape[1], curvature
        assert (m - m.T).abs().max().item() <= 1e-12 * scale, curvature


def test_residual_vanishes_exactly_when_logits_are_linear_in_the_parameters():
    for name, vanishes in (("logreg", True), ("tanh", False)):
        model, data = make(name)
        full = H.exact_hessian(model, ce, data)
        residual = H.exact_hessian(model, ce, data, curvature="residual")
        ratio = residual.abs().max().item() / full.abs().max().item()
        assert ratio <= 1e-12 if vanishes else ratio > 1e-3, (name, ratio)


def test_batchnorm_train_mode_is_the_batch_statistics_hessian():
    model, data = make("cnn")
    running = [b.clone() for b in model.buffers()]
    train = H.exact_hessian(model, ce, data, bn_mode="train")
    evaluation = H.exact_hessian(model, ce, data, bn_mode="eval")
    gap = torch.linalg.matrix_norm(train - evaluation) / torch.linalg.matrix_norm(evaluation)
    assert gap > 1e-2, gap
    ref = functional_hessian("cnn", model, data, bn_mode="train")
    close(train, ref, AD_RTOL)
    close(operator_dense(model, data, bn_mode="train"), ref, AD_RTOL)
    # against the eval-mode reference it must fail: the two modes are told apart
    assert (functional_hessian("cnn", model, data) - train).abs().max() > 1e-3 * ref.abs().max()
    assert not model.training
    assert all(torch.equal(b, b0) for b, b0 in zip(model.buffers(), running))


def test_dataloader_hessian_is_the_whole_data_set_mean():
    model, (x, y) = make("tanh")
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    assert [len(b) for b, _ in loader] == [16, 16, 16, 2]
    ref = functional_hessian("tanh", model, (x, y))
    close(operator_dense(model, loader), ref, AD_RTOL)
    close(H.exact_hessian(model, ce, loader), ref, AD_RTOL)
    fd = finite_difference_hessian(model, (x, y), "eval")
    close(ref, fd, FD_RTOL)  # the functional reference is itself right
    # an unweighted mean over batches (the 2-example batch counted like the others) is wrong
    naive = torch.stack([functional_hessian("tanh", model, b) for b in loader]).mean(dim=0)
    assert (naive - ref).abs().max() > 1e-3 * ref.abs().max()
