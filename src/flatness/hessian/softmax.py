"""Softmax regression's exact Hessian and its spectrum, from the Kronecker closed form.

For logits ``z = W x + b`` and the mean cross-entropy over N examples (paper notes, section 2)

    H = (1/N) sum_i S_i kron x~_i x~_i^T,   S_i = diag(p_i) - p_i p_i^T,   x~ = [x; 1].

Since ``S = sum_{k<l} p_k p_l (e_k - e_l)(e_k - e_l)^T`` (its off-diagonal entries are
``-p_k p_l``, and ``p_k (1 - p_k) = sum_{l != k} p_k p_l``),

    H = sum_{k<l} (e_k - e_l)(e_k - e_l)^T kron G_kl,   G_kl = (1/N) X~^T diag(p_k p_l) X~,

so ``H``'s class block (k, l) is ``-G_kl`` and block (k, k) is ``sum_{l != k} G_kl``. Each of the
K(K-1)/2 symmetric Gram matrices ``G_kl`` is one rank-N update of the rows of ``X~`` scaled by
``sqrt(p_k p_l)``, taken from the log-probabilities (BLAS ``syrk`` for wide inputs, one batched
product for narrow ones). No weight is a difference, so a saturated softmax (``p_k`` rounding
to 1) keeps its relative precision.

The spectrum is taken on a smaller matrix with the same non-zero eigenvalues. Let ``Q`` be a
K x (K-1) orthonormal basis of the complement of the all-ones vector ``1``, and let ``V`` be the
orthonormal D x r basis ``[e_j for the columns j of x~ that vary; u / ||u||]``, where ``u`` holds
the values of the columns that are the same for every example (the bias 1, MNIST's background
pixels) and 0 elsewhere; then ``x~_i = V z_i`` with ``z_i = [x_i over the varying columns;
||u||]``. Since ``S_i 1 = 0`` we have ``S_i = Q Q^T S_i Q Q^T``, hence

    H = (Q kron V) M (Q kron V)^T,   M = (1/N) sum_i (Q^T S_i Q) kron z_i z_i^T
      = sum_{k<l} (q_k - q_l)(q_k - q_l)^T kron (1/N) Z^T diag(p_k p_l) Z,

with ``q_k`` the k-th row of ``Q``. As ``Q kron V`` has orthonormal columns, ``H`` has exactly
the eigenvalues of the (K-1) r x (K-1) r matrix ``M`` plus ``P - (K-1) r`` zeros, ``Tr H = Tr M``
and ``||H||_F = ||M||_F``. Each zero or constant input column removes K - 1 from the rank.

Two classes, one example ``x = 0`` (so ``z = [1]``) and zero weights: ``p = (1/2, 1/2)``, only
the bias block is non-zero, ``diag(p) - p p^T``, with eigenvalues 0 and 1/2:

>>> import torch
>>> model = torch.nn.Linear(1, 2)
>>> _ = torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
>>> softmax_regression_hessian(model, torch.zeros(1, 1))[2:, 2:].tolist()
[[0.25, -0.25], [-0.25, 0.25]]
>>> s = softmax_regression_spectrum(model, torch.zeros(1, 1))
>>> s.eigenvalues.round(12).tolist(), s.trace, s.rank
([0.0, 0.0, 0.0, 0.5], 0.5, 1)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import blas
from torch import nn

from flatness.errors import FlatnessError
from flatness.hessian.checks import in_model_precision

#: Default bound on the numbers in any one work array of a chunk of examples (128 MiB float64).
CHUNK_ELEMENTS = 2**24


@dataclass(frozen=True)
class SoftmaxSpectrum:
    """The exact spectrum of softmax regression's Hessian of the mean cross-entropy.

    Attributes:
        eigenvalues: all P eigenvalues, ascending, float64 numpy array of shape (P,), the
            ``P - solved_size`` exact zeros of the split-off null space included.
        lambda_max: the largest eigenvalue.
        trace: ``Tr H = (1/N) sum_i (1 - ||p_i||^2) ||x~_i||^2`` (the closed form).
        frobenius: ``||H||_F``, from the reduced matrix (equal to it, see the module text).
        rank: eigenvalues with ``|lambda| > rtol * max |lambda|``, the rule of
            :func:`flatness.hessian.hessian_rank`.
        rtol: the relative tolerance of ``rank``.
        solved_size: the order ``(K-1) r`` of the matrix handed to the eigensolver.
        seconds: wall-clock time of the whole computation.
    """

    eigenvalues: np.ndarray
    lambda_max: float
    trace: float
    frobenius: float
    rank: int
    rtol: float
    solved_size: int
    seconds: float

    def rank_at(self, rtol: float) -> int:
        """The number of eigenvalues with ``|lambda| > rtol * max |lambda|``."""
        scale = np.abs(self.eigenvalues).max(initial=0.0)
        return int((np.abs(self.eigenvalues) > rtol * scale).sum())


@in_model_precision
def softmax_regression_hessian(
    model: nn.Linear, inputs: torch.Tensor, *, max_chunk_elements: int = CHUNK_ELEMENTS
) -> torch.Tensor:
    """The closed-form Hessian of mean cross-entropy for softmax regression, float64 (P, P).

    ``H = (1/N) sum_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T`` with ``x~ = [x; 1]`` (paper
    notes, section 2), returned in the order of ``model.parameters()``: the (K, d) weight
    row-major, then the K biases, ``P = K (d + 1)``. It does not depend on the labels. Computed
    from K(K-1)/2 symmetric Gram matrices (see the module text), on the model's device.

    Args:
        model: an ``nn.Linear(d, K)`` with a bias (any floating dtype; promoted to float64).
        inputs: (N, d) or (N, ...) floating inputs, flattened from dim 1 to d features.
        max_chunk_elements: examples are taken in chunks so that no work array of a chunk holds
            more than this many numbers (but a chunk has at least one example); the result and
            K(K-1)/2 Gram matrices of ``(d+1)^2`` numbers come on top.

    Raises:
        FlatnessError: not an ``nn.Linear`` with a bias, non-finite parameters, or inputs that
            are empty, not floating, not finite or of the wrong width.
    """
    weight, bias, x = _checked(model, inputs, max_chunk_elements)
    k, d = weight.shape
    keep = torch.arange(d, device=x.device)
    grams, _ = _pair_grams(weight, bias, x, keep, 1.0, max_chunk_elements)
    h = torch.zeros(k * (d + 1), k * (d + 1), dtype=torch.float64, device=weight.device)
    w, b = slice(0, k * d), slice(k * d, None)  # weight rows/columns, bias rows/columns
    hw, hwb, hb = h[w, w].view(k, d, k, d), h[w, b].view(k, d, k), h[b, b]
    for (i, j), g in zip(_pairs(k), grams):
        # block (k, l) is -G_kl, block (k, k) adds up G_kl; G is symmetric, so (l, k) = (k, l)
        for r, c, sign in ((i, j, -1.0), (j, i, -1.0), (i, i, 1.0), (j, j, 1.0)):
            hw[r, :, c, :] += sign * g[:d, :d]
            hwb[r, :, c] += sign * g[:d, d]
            hb[r, c] += sign * g[d, d]
    h[b, w] = h[w, b].T
    return h


@in_model_precision
def softmax_regression_spectrum(
    model: nn.Linear,
    inputs: torch.Tensor,
    *,
    rtol: float = 1e-4,
    max_chunk_elements: int = CHUNK_ELEMENTS,
) -> SoftmaxSpectrum:
    """All eigenvalues of softmax regression's exact Hessian, without forming the (P, P) matrix.

    The Hessian of :func:`softmax_regression_hessian`, reduced exactly to the
    ``(K-1) r x (K-1) r`` matrix ``M`` of the module text (r = 1 + the number of input columns
    that are not the same for every example), whose eigenvalues ``torch.linalg.eigvalsh`` takes
    in float64 on the model's device; the remaining ``P - (K-1) r`` eigenvalues are exactly 0.
    At MNIST size (d = 784, K = 10, N = 60,000; 67 constant pixels) ``M`` has order 6,462
    instead of 7,850; on a 2-core 2.8 GHz Xeon it took 30 s with two threads and 44 s with one,
    and under 0.7 GB beyond the data (``benchmarks/softmax_bench.py``).

    Args:
        model: an ``nn.Linear(d, K)`` with a bias.
        inputs: (N, d) or (N, ...) floating inputs, flattened from dim 1 to d features.
        rtol: relative tolerance of the reported ``rank`` (see :class:`SoftmaxSpectrum`).
        max_chunk_elements: as for :func:`softmax_regression_hessian`.

    Raises:
        FlatnessError: as :func:`softmax_regression_hessian`, or ``rtol`` not in [0, 1).
    """
    start = time.perf_counter()
    if not (isinstance(rtol, int | float) and 0 <= rtol < 1):
        raise FlatnessError(f"rtol must be a number in [0, 1), got {rtol!r}")
    weight, bias, x = _checked(model, inputs, max_chunk_elements)
    k, d = weight.shape
    keep, norm_u = _varying_columns(x)
    grams, trace = _pair_grams(weight, bias, x, keep, norm_u, max_chunk_elements)
    r = len(keep) + 1
    q = _ones_complement(k)
    # block (a, b) of M for a <= b is sum_{k<l} (Q_ka - Q_la)(Q_kb - Q_lb) G_kl: one product
    coef = np.array(
        [
            [(q[i, a] - q[j, a]) * (q[i, b] - q[j, b]) for i, j in _pairs(k)]
            for a, b in _blocks(k - 1)
        ]
    ).reshape(len(_blocks(k - 1)), len(grams))
    coef = torch.from_numpy(coef).to(grams.device)
    reduced = (coef @ grams.reshape(len(grams), r * r)).reshape(-1, r, r)
    del grams
    m = torch.empty((k - 1) * r, (k - 1) * r, dtype=torch.float64, device=weight.device)
    view = m.view(k - 1, r, k - 1, r)
    for (a, b), block in zip(_blocks(k - 1), reduced):
        view[a, :, b, :] = block
        view[b, :, a, :] = block
    del reduced
    frobenius = torch.linalg.matrix_norm(m).item() if len(m) else 0.0
    solved = torch.linalg.eigvalsh(m).cpu().numpy() if len(m) else np.zeros(0)
    del m
    evals = np.sort(np.concatenate([solved, np.zeros(k * (d + 1) - len(solved))]))
    scale = np.abs(evals).max(initial=0.0)
    return SoftmaxSpectrum(
        eigenvalues=evals,
        lambda_max=float(evals[-1]),
        trace=trace,
        frobenius=frobenius,
        rank=int((np.abs(evals) > rtol * scale).sum()),
        rtol=float(rtol),
        solved_size=len(solved),
        seconds=time.perf_counter() - start,
    )


def _checked(model, inputs, max_chunk_elements):
    """The float64 weight and bias, and the inputs as (N, d) on the model's device."""
    if not isinstance(model, nn.Linear) or model.bias is None:
        raise FlatnessError(
            "softmax regression's closed form takes an nn.Linear with a bias (logits = W x + b); "
            f"got {type(model).__name__}"
            + (" without a bias" if isinstance(model, nn.Linear) else "")
            + ": use exact_hessian for other models"
        )
    weight, bias = model.weight.detach().double(), model.bias.detach().double()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise FlatnessError("the model's weight or bias has NaN or inf entries")
    if not isinstance(max_chunk_elements, int) or max_chunk_elements < 1:
        raise FlatnessError(
            f"max_chunk_elements must be a positive int, got {max_chunk_elements!r}"
        )
    if not torch.is_tensor(inputs) or inputs.dim() < 2 or len(inputs) == 0:
        shape = tuple(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__
        raise FlatnessError(
            f"inputs must be a tensor of N >= 1 examples, (N, d) or (N, C, H, W); got {shape}"
        )
    if not inputs.is_floating_point():
        raise FlatnessError(
            f"inputs must be floating point, got {inputs.dtype}: convert them with the model's "
            "transform first (MNIST pixels: x / 255, then (x - 0.5) / 0.5)"
        )
    x = inputs.detach().reshape(len(inputs), -1).to(weight.device)
    if x.shape[1] != weight.shape[1]:
        raise FlatnessError(
            f"inputs have {x.shape[1]} features per example (flattened from dim 1) but the model "
            f"takes {weight.shape[1]}"
        )
    if not bool(torch.isfinite(x).all()):
        raise FlatnessError("inputs have NaN or inf entries")
    return weight, bias, x


def _pairs(k: int) -> list[tuple[int, int]]:
    """The K(K-1)/2 class pairs (k, l) with k < l, in the order the Gram matrices are stored."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def _blocks(k: int) -> list[tuple[int, int]]:
    """The K(K+1)/2 block positions (a, b) with a <= b of a symmetric K x K block matrix."""
    return [(i, j) for i in range(k) for j in range(i, k)]


def _varying_columns(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The columns that vary over the examples, and ``||u|| = sqrt(1 + sum of c_j^2)`` over
    the constant columns' values c_j (the bias's 1 included)."""
    constant = x.amax(dim=0) == x.amin(dim=0)  # exact equality: only exact structure is used
    values = x[0, constant].double()
    return torch.nonzero(~constant).flatten(), float(torch.sqrt(1 + (values**2).sum()))


def _ones_complement(k: int) -> np.ndarray:
    """An orthonormal K x (K-1) basis ``Q`` of the vectors orthogonal to the all-ones vector."""
    basis = np.eye(k)
    basis[:, 0] = 1.0
    q, _ = np.linalg.qr(basis)  # first column +-1/sqrt(K); the rest span its complement
    return q[:, 1:]


#: from this many Gram columns on, BLAS ``syrk`` (half the flops) beats one batched product:
#: at MNIST size (r = 718) it took 18 s against 23 s for the batched product
SYRK_COLUMNS = 256


def _pair_grams(weight, bias, x, keep, last, max_chunk_elements):
    """The K(K-1)/2 Gram matrices ``G_kl = (1/N) Z^T diag(p_k p_l) Z`` for k < l as a
    (K(K-1)/2, r, r) tensor, with ``z_i = [x_i[keep]; last]``, and the trace closed form
    ``(1/N) sum_i (1 - ||p_i||^2) ||x~_i||^2``: by ``syrk`` for wide inputs on the CPU, else
    batched in torch."""
    if weight.device.type == "cpu" and len(keep) + 1 >= SYRK_COLUMNS:
        return _syrk_grams(weight, bias, x, keep, last, max_chunk_elements)
    return _batched_grams(weight, bias, x, keep, last, max_chunk_elements)


def _chunks(weight, bias, x, keep, last, chunk):
    """Per chunk of examples: the log-probabilities, the rows ``z_i = [x_i[keep]; last]`` and
    the chunk's share of the trace closed form ``(1/N) sum_i (1 - ||p_i||^2) ||x~_i||^2``."""
    n, k = len(x), weight.shape[0]
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=weight.device)
    for start in range(0, n, chunk):
        xc = x[start : start + chunk].double()
        logp = torch.log_softmax(xc @ weight.T + bias, dim=1)
        # 1 - ||p||^2 = sum_{k != l} p_k p_l: a sum of positive terms, exact when saturated
        products = torch.exp(logp[:, :, None] + logp[:, None, :])
        tr_s = (products * off_diagonal).sum(dim=(1, 2))
        part = (tr_s * ((xc**2).sum(dim=1) + 1)).sum().item() / n
        z = torch.cat([xc[:, keep], torch.full_like(xc[:, :1], last)], dim=1)
        del xc, products
        yield logp, z, part


def _batched_grams(weight, bias, x, keep, last, max_chunk_elements):
    """The K(K-1)/2 Gram matrices ``G_kl = (1/N) Z^T diag(p_k p_l) Z`` for k < l as a
    (K(K-1)/2, r, r) tensor, with ``z_i = [x_i[keep]; last]``, and the trace closed form
    ``(1/N) sum_i (1 - ||p_i||^2) ||x~_i||^2``.

    All K(K-1)/2 Grams of a chunk are one batched product in torch, for small ``r``: there,
    SciPy's ``syrk`` calls are so short that its thread pool and torch's spin against each
    other, and with one other busy process on 2 cores the digits-size measurement (r = 65)
    took 0.26 s instead of 0.02 s under syrk (a cpu logreg run's 100 measurements: 25.7 s
    beside a busy process, 2.2 s alone); ``make bench`` times this path quiet and beside one."""
    n, d = x.shape
    k = weight.shape[0]
    pairs = _pairs(k)
    first = torch.tensor([i for i, _ in pairs], dtype=torch.long, device=weight.device)
    second = torch.tensor([j for _, j in pairs], dtype=torch.long, device=weight.device)
    r = len(keep) + 1
    grams = torch.zeros(len(pairs), r, r, dtype=torch.float64, device=weight.device)
    # the largest arrays of a chunk of c examples: c x (d + 1), c x K x K and K(K-1)/2 x c x r
    chunk = max(1, max_chunk_elements // max(d + 1, k * k, len(pairs) * r))
    trace = 0.0
    for logp, z, part in _chunks(weight, bias, x, keep, last, chunk):
        trace += part
        # rows scaled by sqrt(p_k p_l), from the log-probabilities: no weight is a difference
        scale = torch.exp(0.5 * (logp[:, first] + logp[:, second])).T  # (pairs, c)
        rows = z[None] * scale[:, :, None]
        grams.baddbmm_(rows.transpose(1, 2), rows, alpha=1 / n)
        del rows
    return (grams + grams.transpose(1, 2)) / 2, trace


def _syrk_grams(weight, bias, x, keep, last, max_chunk_elements):
    """The K(K-1)/2 Gram matrices ``G_kl = (1/N) Z^T diag(p_k p_l) Z`` for k < l as a
    (K(K-1)/2, r, r) tensor, with ``z_i = [x_i[keep]; last]``, and the trace closed form
    ``(1/N) sum_i (1 - ||p_i||^2) ||x~_i||^2``; one ``syrk`` (half the flops of a general
    product) per pair and chunk on the CPU, where ``r`` is large enough for it to pay."""
    n, d = x.shape
    k = weight.shape[0]
    pairs = _pairs(k)
    r = len(keep) + 1
    grams = torch.zeros(len(pairs), r, r, dtype=torch.float64, device=weight.device)
    # the largest arrays of a chunk of c examples: c x (d + 1) and c x K x K numbers
    chunk = max(1, max_chunk_elements // max(d + 1, k * k))
    scaled = None  # one buffer for the scaled rows: no fresh pages for each of K(K-1)/2 copies
    trace = 0.0
    for logp, z, part in _chunks(weight, bias, x, keep, last, chunk):
        trace += part
        if scaled is None:
            scaled = torch.empty_like(z)
        rows = scaled[: len(z)]
        for index, (i, j) in enumerate(pairs):
            torch.mul(z, torch.exp(0.5 * (logp[:, i] + logp[:, j]))[:, None], out=rows)
            _add_gram_blas(grams[index], rows, 1 / n)
    for g in grams:  # each holds its lower triangle: mirror it
        g.copy_(g.tril() + g.tril(diagonal=-1).T)
    return grams, trace


def _add_gram_blas(acc: torch.Tensor, rows: torch.Tensor, alpha: float) -> None:
    """``acc += alpha * rows^T rows`` in the lower triangle of a CPU ``acc`` (r, r), by BLAS
    syrk: half the flops of a general product, written in place."""
    target = acc.numpy().T  # the Fortran-ordered view: its upper triangle is acc's lower one
    rows = rows.contiguous()
    out = blas.dsyrk(alpha, rows.numpy().T, beta=1.0, c=target, trans=0, overwrite_c=1)
    if not np.shares_memory(out, target):
        target[...] = out
