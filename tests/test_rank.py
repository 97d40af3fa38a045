"""The rank chapter: ranks against independent dense Hessians, closed-form ranks, bounds."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flatness import data as datasets
from flatness import hessian, models
from flatness.chapters import rank
from flatness.chapters.rank import slq as rank_slq
from flatness.errors import FlatnessError

MNIST_ROOT = Path("/work/shared/data")


def _softmax_ce(logits, y):
    # hand-written mean cross-entropy: shares no code with torch's cross_entropy
    shifted = logits - logits.max(dim=1, keepdim=True).values
    log_p = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    return -log_p[torch.arange(len(y)), y].mean()


def _generic(n, d, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, torch.arange(n) % k


def test_ranks_match_an_independent_autograd_hessian(store_root, monkeypatch):
    x, y = _generic(30, 5, 4)
    torch.manual_seed(0)
    model = models.mlp(5, 4, widths=(3,), activation="tanh").double()
    w1, b1, w2, b2 = (p.detach().clone() for p in model.parameters())
    sizes = [w1.numel(), b1.numel(), w2.numel(), b2.numel()]

    def loss(flat):
        a, b, c, e = torch.split(flat, sizes)
        h = torch.tanh(x @ a.reshape(w1.shape).T + b)
        return _softmax_ce(h @ c.reshape(w2.shape).T + e, y)

    flat = torch.cat([w1.flatten(), b1, w2.flatten(), b2])
    reference = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
    data = SimpleNamespace(x_train=x, y_train=y)
    got = rank.spectrum(model, data, "tanh", "initial", math.nan, 0)
    assert torch.allclose(got.hessian, reference, atol=1e-12 * reference.abs().max())
    ref_mags = reference.abs()
    for t in (1e-4, 1e-8):
        want = int((ref_mags > t * ref_mags.max()).sum())
        assert rank.ranks(got.hessian, (t,), 1e-4)[f"rel {t:g}"] == want
    # adding one vector to every row of [W2 b2] leaves the softmax unchanged: exactly
    # hidden + 1 = 4 null directions; on 30 generic examples nothing else vanishes
    assert rank.ranks(got.hessian, (1e-8,), 1e-4)["rel 1e-08"] == len(flat) - 4
    assert rank.Architecture.of(model).ceiling == len(flat) - 4
    # kept in the store: the same net again reads it back; another net's weights compute anew
    from flatness import hessian

    calls = []
    real = hessian.exact_hessian
    monkeypatch.setattr(hessian, "exact_hessian", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = rank.spectrum(model, data, "tanh", "initial", math.nan, 0)
    assert calls == [] and torch.equal(again.hessian, got.hessian)
    with torch.no_grad():
        model[0].weight.mul_(1.01)
    rank.spectrum(model, data, "tanh", "initial", math.nan, 0)
    assert len(calls) == 2  # the Hessian and its GGN


def test_softmax_regression_rank_is_d_plus_one_times_k_minus_one():
    d, k = 4, 3
    x, y = _generic(50, d, k, seed=1)
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(k * (d + 1), generator=gen, dtype=torch.float64)

    def loss(flat):
        w = flat.reshape(k, d + 1)
        return _softmax_ce(x @ w[:, :d].T + w[:, d], y)

    evals = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w0))
    got = rank.ranks(evals, (1e-8,), 1e-12)["rel 1e-08"]
    assert got == (d + 1) * (k - 1) == 10
    bound = rank.bounds(rank.Architecture(d, (), k), 50, d)
    assert bound["fan_in"] == bound["deep_linear"] == got


@pytest.mark.parametrize(
    ("d", "hidden", "k", "expected"),
    [(6, (3,), 5, 25), (4, (8, 2), 4, 13), (3, (10,), 6, 20), (5, (4, 4), 3, 12)],
)
def test_deep_linear_ggn_rank_is_the_formula(d, hidden, k, expected):
    x, y = _generic(40, d, k, seed=3)
    torch.manual_seed(4)
    net = rank.linear_mlp(d, hidden, k).double()
    params = [p.detach().clone() for p in net.parameters()]
    sizes = [p.numel() for p in params]

    def logits(flat):
        pieces = torch.split(flat, sizes)
        h = x
        for i in range(0, len(pieces), 2):
            w = pieces[i].reshape(params[i].shape)
            h = h @ w.T + pieces[i + 1]
        return h

    flat = torch.cat([p.flatten() for p in params])
    jac = torch.autograd.functional.jacobian(logits, flat)  # (N, K, P)
    p = torch.softmax(logits(flat), dim=1)
    h_z = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    ggn = torch.einsum("nkp,nkl,nlq->pq", jac, h_z, jac) / len(y)
    got = rank.ranks(torch.linalg.eigvalsh(ggn), (1e-9,), 1e-12)["rel 1e-09"]
    formula = rank.bounds(rank.Architecture(d, hidden, k), len(y), d)["deep_linear"]
    assert got == formula == expected


def test_bounds_of_hand_counted_architectures():
    arch = rank.Architecture(64, (5, 50), 10)
    assert arch.parameters == 65 * 5 + 6 * 50 + 51 * 10 == 1135
    assert rank.bounds(arch, 100, 57) == {
        "examples": 900,
        "fan_in": 9 * (65 + 6 + 51),
        "neurons": 10 * (5 + 50 + 10),
        "deep_linear": 5 * (57 + 9 - 5) + 9,
    }
    authors = rank.Architecture.of(models.build("mlp-10-100", (1, 28, 28), 10))
    assert (authors.inputs, authors.hidden, authors.classes) == (784, (10, 100), 10)
    assert authors.parameters == 9960
    assert rank.bounds(authors, 500, 400)["deep_linear"] == 9 * (400 + 9 - 9) + 9
    with pytest.raises(FlatnessError):
        rank.bounds(arch, 0, 5)


def test_data_rank_is_the_affine_dimension():
    gen = torch.Generator().manual_seed(5)
    basis = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64) @ basis + 4.0  # shifted 3-plane
    assert rank.data_rank(x) == 3


def test_slq_bracket_by_hand():
    # one probe, nodes -1, 1e-6, 2 with weights 0.2, 0.5, 0.3: at t = 1e-3 the Gauss rule
    # counts the middle node (0.5); CMS brackets the mass of [-t, t] by [0, 1]
    dens = hessian.SpectralDensity(
        nodes=torch.tensor([[2.0, -1.0, 1e-6]], dtype=torch.float64),
        weights=torch.tensor([[0.3, 0.2, 0.5]], dtype=torch.float64),
        size=3,
        hvps=0,
        seconds=0.0,
    )
    got = rank_slq.slq_fraction(dens, 1e-3)
    assert got["slq"] == pytest.approx(0.5)
    assert (got["low"], got["high"]) == (pytest.approx(0.0), pytest.approx(1.0))
    # at t = 1.5 the nodes -1 and 1e-6 are inside: CDF(1.5) in [0.2, 1], CDF(-1.5) in [0, 0.2]
    wide = rank_slq.slq_fraction(dens, 1.5)
    assert wide["slq"] == pytest.approx(0.7)
    assert (wide["low"], wide["high"]) == (pytest.approx(0.0), pytest.approx(1.0))


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_the_sample_does_not_cap_the_rank_below_p(profile):
    # N(K-1) >= P: the GGN's sample bound leaves room for every rank up to the ceiling, so
    # "rank-deficient" is a finding about the network, not about too few examples
    s = rank.settings(profile)
    shape = (1, 8, 8) if s.dataset == "digits" else (1, 28, 28)
    torch.manual_seed(0)
    net = models.build(rank.REGISTERED["relu"], shape, 10, width=s.width)
    p = models.parameter_count(net)
    assert s.train_size * (10 - 1) >= p, (s.train_size, p)


def test_settings_validation():
    assert rank.settings("cpu").seeds == (0, 1, 2)
    assert rank.settings("cpu", seeds=[4, 5]).seeds == (4, 5)
    with pytest.raises(FlatnessError, match="duplicate"):
        rank.settings("cpu", seeds=[1, 1])
    with pytest.raises(FlatnessError):
        rank.settings("laptop")
    with pytest.raises(FlatnessError):
        rank.settings("cpu", dataset="imagenet")
    with pytest.raises(FlatnessError):
        rank.settings("cpu", weight_decays=[-1.0])


@pytest.mark.skipif(not (MNIST_ROOT / "MNIST" / "raw").is_dir(), reason="real MNIST not here")
def test_paper_settings_build_their_model_and_data():
    s = rank.settings("paper")
    data = datasets.load(s.dataset, data_root=MNIST_ROOT, train_size=s.train_size, download=False)
    assert data.x_train.shape == (1200, 1, 28, 28) and data.num_classes == 10
    for activation in rank.ACTIVATIONS:
        model = rank.initial_model(s, activation, 0, data)
        assert models.parameter_count(model) == 9960  # the authors' 784-10-100-10
        assert model(data.x_train[:2]).shape == (2, 10)
    for activation in rank.REGISTERED:
        assert s.run_config(activation, 0.0, 0).train_size == 1200
    large = s.run_config("relu", 0.0, 0, large=True)
    assert models.parameter_count(models.build(large.model, (1, 28, 28), 10)) == 535818
    # the exact Hessian of the paper's nets fits under the package's limit
    assert 9960 <= hessian.MAX_EXACT_PARAMS
    # the same initial weights for the linear twin and the ReLU net of a seed
    lin, relu = (rank.initial_model(s, a, 0, data) for a in ("linear", "relu"))
    for a, b in zip(lin.parameters(), relu.parameters()):
        assert torch.equal(a, b)
    assert isinstance(lin[1], nn.Identity)
