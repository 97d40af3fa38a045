"""Softmax regression's closed-form Hessian and its reduced spectrum, against a dense float64
Hessian from torch.autograd of a loss written out here, and against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from flatness import hessian
from flatness.errors import FlatnessError
from flatness.hessian import softmax


def problem(d, k, n, *, zero=(), constant=(), scale=1.5, seed=0):
    """A random Linear(d, k) in float64 and n inputs; the columns in ``zero`` are 0 for every
    example and those in ``constant`` hold one non-zero value (like MNIST's -1 background)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, k).double()
    with torch.no_grad():
        model.weight.copy_(scale * torch.randn(k, d, generator=gen, dtype=torch.float64))
        model.bias.copy_(scale * torch.randn(k, generator=gen, dtype=torch.float64))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x[:, list(zero)] = 0.0
    for j, c in zip(constant, (-1.0, 0.7, 2.5, -3.0)):
        x[:, j] = c
    return model, x


def dense_hessian(model: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The autograd Hessian of the mean cross-entropy in the parameters() order (weight
    row-major, then bias), written without the package. Labels do not enter the Hessian."""
    k, d = model.weight.shape
    x = x.reshape(len(x), -1).double()
    y = torch.arange(len(x)) % k

    def loss(flat):
        w, b = flat[: k * d].reshape(k, d), flat[k * d :]
        logits = x @ w.T + b
        return -(torch.log_softmax(logits, dim=1)[torch.arange(len(x)), y]).mean()

    flat = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).double()
    return torch.autograd.functional.hessian(loss, flat)


CASES = [
    # d, k, n, zero columns, constant columns
    (3, 2, 7, (), ()),
    (5, 4, 40, (), ()),
    (6, 3, 25, (1, 4), ()),
    (6, 4, 30, (), (0, 5)),
    (7, 5, 50, (2,), (3, 6)),
    (4, 6, 3, (), ()),  # fewer examples than features: rank set by the data
]


@pytest.mark.parametrize("d, k, n, zero, constant", CASES)
def test_closed_form_equals_autograd_hessian(d, k, n, zero, constant):
    model, x = problem(d, k, n, zero=zero, constant=constant)
    dense = dense_hessian(model, x)
    fast = hessian.softmax_regression_hessian(model, x)
    assert fast.dtype == torch.float64 and fast.shape == (k * (d + 1),) * 2
    assert dense.abs().max() > 1e-2  # not a comparison of zeros
    assert torch.allclose(fast, dense, rtol=0, atol=1e-10)
    # one example per chunk, and chunks of three, give the same matrix
    for elements in (1, 3 * max(d + 1, k * k)):
        chunked = hessian.softmax_regression_hessian(model, x, max_chunk_elements=elements)
        assert torch.allclose(chunked, dense, rtol=0, atol=1e-10)


@pytest.mark.parametrize("d, k, n, zero, constant", CASES)
def test_spectrum_equals_eigenvalues_of_the_autograd_hessian(d, k, n, zero, constant):
    model, x = problem(d, k, n, zero=zero, constant=constant)
    dense = dense_hessian(model, x)
    truth = torch.linalg.eigvalsh(dense).numpy()
    s = hessian.softmax_regression_spectrum(model, x, max_chunk_elements=2 * max(d + 1, k * k))
    assert s.eigenvalues.shape == (k * (d + 1),) and s.eigenvalues.dtype == np.float64
    assert np.all(np.diff(s.eigenvalues) >= 0)
    assert np.abs(s.eigenvalues - truth).max() < 1e-10
    assert s.lambda_max == pytest.approx(truth[-1], abs=1e-12) and s.lambda_max > 1e-2
    assert s.trace == pytest.approx(torch.trace(dense).item(), abs=1e-12)
    assert s.frobenius == pytest.approx(torch.linalg.matrix_norm(dense).item(), abs=1e-12)
    by_hand = int((np.abs(truth) > 1e-4 * np.abs(truth).max()).sum())
    assert s.rank == by_hand and s.rtol == 1e-4
    assert s.rank_at(1e-4) == by_hand
    assert s.seconds > 0


@pytest.mark.parametrize(
    "d, k, zero, constant", [(5, 3, (), ()), (5, 3, (0,), ()), (6, 4, (1, 2), (4,))]
)
def test_rank_drops_by_k_minus_1_per_zero_or_constant_column(d, k, zero, constant):
    model, x = problem(d, k, 60, zero=zero, constant=constant, scale=0.5)
    # (d + 1) columns of x~, of which the bias and the constant ones span one direction; the
    # all-ones vector of every softmax block is a null vector: (K - 1) per direction
    expected = (d + 1 - len(zero) - len(constant)) * (k - 1)
    s = hessian.softmax_regression_spectrum(model, x)
    assert s.solved_size == expected
    assert s.rank_at(1e-10) == expected
    assert np.count_nonzero(s.eigenvalues == 0.0) >= k * (d + 1) - expected  # exact zeros
    truth = torch.linalg.eigvalsh(dense_hessian(model, x))
    assert int((truth > 1e-10 * truth.max()).sum()) == expected


def test_trace_closed_form_by_hand():
    """Tr H = (1/N) sum_i (1 - ||p_i||^2) ||x~_i||^2, from probabilities computed here."""
    model, x = problem(4, 3, 9, constant=(2,))
    p = torch.softmax(x @ model.weight.detach().T + model.bias.detach(), dim=1)
    by_hand = ((1 - (p**2).sum(dim=1)) * ((x**2).sum(dim=1) + 1)).mean().item()
    assert hessian.softmax_regression_spectrum(model, x).trace == pytest.approx(by_hand, rel=1e-13)
    h = hessian.softmax_regression_hessian(model, x)
    assert torch.trace(h).item() == pytest.approx(by_hand, rel=1e-13)


def test_a_saturated_softmax_keeps_its_relative_precision():
    """Two classes, one example, logit gap 60: p = sigmoid(60) rounds to 1 in float64, yet
    S = p (1 - p) [[1, -1], [-1, 1]] with p (1 - p) = e^-60 / (1 + e^-60)^2."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[30.0, 0.0], [0.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 1.0]], dtype=torch.float64)  # x~ = (2, 1, 1), ||x~||^2 = 6
    assert torch.softmax(model(x), dim=1)[0, 0].item() == 1.0
    s = math.exp(-60) / (1 + math.exp(-60)) ** 2
    spectrum = hessian.softmax_regression_spectrum(model, x)
    # one non-zero eigenvalue: ||(1, -1)||^2 ||x~||^2 s = 12 s
    assert spectrum.lambda_max == pytest.approx(12 * s, rel=1e-12, abs=0)
    assert spectrum.trace == pytest.approx(12 * s, rel=1e-12, abs=0)
    assert spectrum.rank_at(1e-8) == 1
    h = hessian.softmax_regression_hessian(model, x)
    # parameters: W00, W01, W10, W11, b0, b1
    assert h[4, 4].item() == pytest.approx(s, rel=1e-12, abs=0)
    assert h[0, 2].item() == pytest.approx(-4 * s, rel=1e-12, abs=0)  # x~_0 x~_0 S_01
    assert h[0, 3].item() == pytest.approx(-2 * s, rel=1e-12, abs=0)  # x~_0 x~_1 S_01


def test_image_shaped_float32_inputs_are_flattened():
    model, x = problem(6, 3, 12, zero=(5,))
    images = x.float().reshape(12, 1, 2, 3)
    dense = dense_hessian(model.float(), images)  # the float32 values, promoted
    assert torch.allclose(
        hessian.softmax_regression_hessian(model.float(), images), dense, rtol=0, atol=1e-10
    )
    spectrum = hessian.softmax_regression_spectrum(model.float(), images)
    assert np.abs(spectrum.eigenvalues - torch.linalg.eigvalsh(dense).numpy()).max() < 1e-10


def test_chunked_grams_match_one_chunk():
    """Examples taken a few at a time (the batched Grams added up chunk by chunk) give the
    dense Hessian as one chunk does."""
    model, x = problem(5, 4, 30, constant=(1,))
    whole = hessian.softmax_regression_hessian(model, x)
    # 45 numbers per chunk: one example at a time (6 class pairs x 6 Gram columns = 36)
    pieces = hessian.softmax_regression_hessian(model, x, max_chunk_elements=45)
    assert torch.allclose(pieces, whole, rtol=0, atol=1e-13)
    assert torch.allclose(pieces, dense_hessian(model, x), rtol=0, atol=1e-10)


def test_syrk_path_matches_the_batched_one(monkeypatch):
    """Wide inputs take SciPy's syrk, narrow ones one batched product: both give the dense
    Hessian and the same spectrum."""
    model, x = problem(5, 4, 30, constant=(1,))
    batched = hessian.softmax_regression_hessian(model, x)
    narrow = hessian.softmax_regression_spectrum(model, x).eigenvalues
    monkeypatch.setattr(softmax, "SYRK_COLUMNS", 1)
    wide = hessian.softmax_regression_hessian(model, x)
    assert torch.allclose(wide, batched, rtol=0, atol=1e-13)
    assert torch.allclose(wide, dense_hessian(model, x), rtol=0, atol=1e-10)
    assert np.abs(hessian.softmax_regression_spectrum(model, x).eigenvalues - narrow).max() < 1e-12


def test_one_class_has_a_zero_hessian():
    model, x = problem(3, 1, 5)
    s = hessian.softmax_regression_spectrum(model, x)
    assert s.solved_size == 0 and s.eigenvalues.tolist() == [0.0] * 4 and s.rank == 0
    assert hessian.softmax_regression_hessian(model, x).abs().max().item() == 0.0


def test_bad_input_is_refused():
    model, x = problem(3, 2, 4)
    checks = [
        (lambda: hessian.softmax_regression_hessian(nn.Linear(3, 2, bias=False), x), "bias"),
        (lambda: hessian.softmax_regression_spectrum(nn.Conv2d(1, 1, 1), x), "nn.Linear"),
        (lambda: hessian.softmax_regression_spectrum(model, x[:, :2]), "takes 3"),
        (lambda: hessian.softmax_regression_spectrum(model, x[:0]), "N >= 1"),
        (lambda: hessian.softmax_regression_spectrum(model, x[0]), "(N, d)"),
        (lambda: hessian.softmax_regression_spectrum(model, x.long()), "floating point"),
        (lambda: hessian.softmax_regression_spectrum(model, x * math.nan), "NaN"),
        (lambda: hessian.softmax_regression_spectrum(model, x, rtol=1.0), "rtol"),
        (lambda: hessian.softmax_regression_hessian(model, x, max_chunk_elements=0), "positive"),
    ]
    for call, words in checks:
        with pytest.raises(FlatnessError, match=None) as info:
            call()
        assert words in str(info.value)
    with torch.no_grad():
        model.bias[0] = math.inf
    with pytest.raises(FlatnessError, match="NaN or inf"):
        hessian.softmax_regression_spectrum(model, x)
