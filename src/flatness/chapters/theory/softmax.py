"""The softmax-regression facts 2-4 of the theory chapter, each measured in float64.

2. softmax regression's Kronecker form and its rank bound (K-1)(d+1);
3. scaling a separating solution by alpha: loss and every measure fall to 0, under the bound
   Tr H <= 2 L max_i ||x~_i||^2 (Granziol 2020, paper notes section 2);
4. the exact L2 optimum by Newton's method: the data Hessian against the L2 coefficient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from flatness import hessian
from flatness.chapters.theory.design import TheorySettings, log_range
from flatness.errors import FlatnessError


def softmax_model(d: int, k: int, *, seed: int, device="cpu") -> nn.Linear:
    """Float64 ``nn.Linear(d, k)`` with PyTorch's default initialisation under ``seed``."""
    torch.manual_seed(seed)
    return nn.Linear(d, k).to(device, torch.float64)


def kronecker_hessian(model: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``(1/N) sum_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T`` term by term, (K(d+1), K(d+1)).

    Ordered as the flat vector ``[W; b]`` with W (K, d) row-major: each K x K curvature block
    is spread over the weight and bias entries. Deliberately naive (an einsum over examples),
    as the plain reading of the formula beside the package's Gram-matrix closed form.
    """
    k, d = model.weight.shape
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, K, K)
    xt = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (N, d+1)
    full = torch.empty(k, d + 1, k, d + 1, dtype=torch.float64, device=x.device)
    for a in range(k):  # one class row at a time: N K (d+1) numbers in flight, not N K^2 (d+1)
        full[a] = torch.einsum("nb,ni,nj->ibj", s[:, a], xt, xt) / len(x)
    order = [torch.arange(d) + (d + 1) * c for c in range(k)] + [d + (d + 1) * torch.arange(k)]
    index = torch.cat(order)
    return full.reshape(k * (d + 1), k * (d + 1))[index][:, index]


def kronecker_rank(
    model: nn.Linear, x: torch.Tensor, *, rtol: float = 1e-10
) -> tuple[dict, np.ndarray]:
    """The rank of softmax regression's Hessian against its bounds, and its eigenvalues (ascending).

    Bounds: (K-1)(d+1) (each S_i has the all-ones null vector), and the sharper
    (K-1) rank([X, 1]) (constant pixels add nothing). Rank counts eigenvalues above
    ``rtol * lambda_max``, the rule of :func:`flatness.hessian.hessian_rank`.
    """
    k, d = model.weight.shape
    h = kronecker_hessian(model, x)
    closed = hessian.softmax_regression_hessian(model, x)
    xt = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    rank = hessian.hessian_rank(h, rtols=(rtol,))
    row = {
        "parameters": k * (d + 1),
        "rank": rank.ranks[rtol],
        "bound": (k - 1) * (d + 1),
        "data_bound": (k - 1) * int(torch.linalg.matrix_rank(xt).item()),
        "formula_error": (h - closed).abs().max().item(),
    }
    return row, rank.eigenvalues.cpu().numpy()


def softmax_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``softplus(logsumexp_{k != y}(z_k - z_y))``, accurate when tiny.

    ``-log_softmax`` computes ``log(1 + e)`` and returns 0 once ``e < 1e-16``; this form keeps
    full relative precision down to ``1e-308``, which the trace bound at large alpha needs.
    """
    diff = logits - logits.gather(1, y[:, None])
    diff = diff.scatter(1, y[:, None], -math.inf)
    return nn.functional.softplus(torch.logsumexp(diff, dim=1), threshold=30.0)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    model = nn.Linear(weight.shape[1], weight.shape[0]).to(weight).double()
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


@dataclass(frozen=True)
class NewtonResult:
    """The minimiser of ``L(w) + gamma/2 ||w||^2`` for softmax regression."""

    model: nn.Linear
    gamma: float
    grad_norm: float
    iterations: int


def newton(
    x, y, gamma: float, *, start: nn.Linear | None = None, tol: float = 1e-12, max_iter: int = 200
):
    """The exact L2-regularised softmax-regression optimum by damped Newton, float64.

    Objective ``(1/N) sum_i CE(W x_i + b, y_i) + gamma/2 (||W||^2 + ||b||^2)`` (bias penalised, as
    the authors' weight decay does). Step ``-(H + gamma I)^{-1} g`` with Armijo backtracking;
    stops when ``||g|| <= tol``. Strictly convex for gamma > 0, so the optimum is unique.

    Raises:
        FlatnessError: gamma not positive, or no convergence within ``max_iter`` steps.
    """
    if not gamma > 0:
        raise FlatnessError(f"gamma must be positive for a finite optimum, got {gamma!r}")
    k = int(y.max().item()) + 1
    w = torch.zeros(k, x.shape[1] + 1, dtype=torch.float64, device=x.device)  # [W | b]
    if start is not None:
        w = torch.cat([start.weight.detach(), start.bias.detach()[:, None]], dim=1).clone()
    xt = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    onehot = nn.functional.one_hot(y, k).double()

    def objective(w):
        return softmax_loss(xt @ w.T, y).mean().item() + 0.5 * gamma * (w**2).sum().item()

    def flat(m):  # [W | b] (K, d+1) -> the model's parameter order: W row-major, then b
        return torch.cat([m[:, :-1].reshape(-1), m[:, -1]])

    for iteration in range(max_iter):
        grad = (torch.softmax(xt @ w.T, dim=1) - onehot).T @ xt / len(x) + gamma * w
        norm = grad.norm().item()
        if norm <= tol:
            return NewtonResult(_linear(w[:, :-1], w[:, -1]), gamma, norm, iteration)
        h = hessian.softmax_regression_hessian(_linear(w[:, :-1], w[:, -1]), x)
        h.diagonal().add_(gamma)
        step = torch.linalg.solve(h, flat(grad))
        step = torch.cat([step[:-k].reshape(k, -1), step[-k:, None]], dim=1)
        f0, slope, t = objective(w), -(flat(grad) @ flat(step)).item(), 1.0
        while objective(w - t * step) > f0 + 1e-4 * t * slope and t > 1e-10:
            t /= 2
        if t <= 1e-10:  # rounding dominates the decrease: the step is as small as it gets
            w = w - step
        else:
            w = w - t * step
    raise FlatnessError(
        f"Newton's method did not reach ||g|| <= {tol:g} in {max_iter} steps (gamma {gamma:g})"
    )


def l2_path(x, y, gammas) -> tuple[pd.DataFrame, dict[float, NewtonResult]]:
    """The optimum for each gamma (largest first, each warm-started from the previous), with its
    weight norm, training loss, gradient norm and the data-loss Hessian's measures."""
    rows, results, start = [], {}, None
    for gamma in sorted(gammas, reverse=True):
        res = newton(x, y, float(gamma), start=start)
        start, results[res.gamma] = res.model, res
        with torch.no_grad():
            logits = res.model(x)
        m = hessian.softmax_regression_spectrum(res.model, x)
        rows.append(
            {
                "gamma": res.gamma,
                "weight_norm": hessian.weight_norm(res.model),
                "train_loss": softmax_loss(logits, y).mean().item(),
                "train_acc": (logits.argmax(1) == y).double().mean().item(),
                "grad_norm": res.grad_norm,
                "newton_steps": res.iterations,
                "lambda_max": m.lambda_max,
                "trace": m.trace,
                "frobenius": m.frobenius,
            }
        )
    return pd.DataFrame(rows).sort_values("gamma", ignore_index=True), results


def scaling(model: nn.Linear, x, y, alphas) -> pd.DataFrame:
    """Loss, measures and the bound ``2 L max_i ||x~_i||^2`` with W and b scaled by alpha."""
    max_norm2 = ((x**2).sum(dim=1) + 1).max().item()
    rows = []
    for alpha in alphas:
        scaled = _linear(alpha * model.weight.detach(), alpha * model.bias.detach())
        with torch.no_grad():
            loss = softmax_loss(scaled(x), y).mean().item()
        m = hessian.softmax_regression_spectrum(scaled, x)
        bound = 2 * loss * max_norm2
        rows.append(
            {
                "alpha": float(alpha),
                "train_loss": loss,
                "lambda_max": m.lambda_max,
                "trace": m.trace,
            }
            | {"frobenius": m.frobenius, "bound": bound, "ratio": m.trace / bound}
        )
    return pd.DataFrame(rows)


def separating_scaling(
    s: TheorySettings, x, y
) -> tuple[pd.DataFrame, dict[float, NewtonResult], pd.DataFrame]:
    """Fact 3 as the theory page and the verdict page's C2 row both compute it: the
    :func:`l2_path` over the settings' gammas, its optima, and the smallest gamma's optimum
    scaled by every alpha of the settings (:func:`scaling`)."""
    path, optima = l2_path(x, y, log_range(s.gamma_log10_range, s.gamma_count))
    alphas = log_range(s.alpha_log10_range, s.alpha_count)
    return path, optima, scaling(optima[path.gamma.iloc[0]].model, x, y, alphas)
