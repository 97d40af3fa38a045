"""The network facts of the theory chapter, each measured in float64 on a one-hidden-layer MLP.

1. the Gauss-Newton split H = G + R of the MLP's Hessian (Sagun et al. 2017; Papyan 2019);
5. BatchNorm scale invariance: L(alpha u) = L(u), H(alpha u) = H(u) / alpha^2;
6. Dinh et al. (2017)'s rescaling (a W1, a b1, W2 / a) of a ReLU net: one function, any sharpness.

The chapter reads them through :mod:`flatness.chapters.theory`, which serves every name here
(``theory.gauss_newton_split``).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from scipy import linalg
from torch import nn

from flatness import hessian
from flatness.errors import FlatnessError

#: BatchNorm's eps in fact 5: torch refuses 0 in training, and its default 1e-5 would break the
#: invariance L(alpha u) = L(u) once alpha^2 var(u x) nears it; 1e-30 is below any variance here.
BN_EPS = 1e-30


def mlp(
    d: int, hidden: int, k: int, *, seed: int, batchnorm: bool = False, device="cpu"
) -> nn.Sequential:
    """Float64 ``Linear(d, h) - ReLU - Linear(h, k)``, PyTorch's default initialisation.

    With ``batchnorm`` the first layer has no bias and feeds ``BatchNorm1d(h, eps=BN_EPS)``,
    so that the network is invariant to scaling the first layer's weights to rounding (fact 5).
    """
    torch.manual_seed(seed)
    if batchnorm:
        return nn.Sequential(
            nn.Linear(d, hidden, bias=False),
            nn.BatchNorm1d(hidden, eps=BN_EPS),
            nn.ReLU(),
            nn.Linear(hidden, k),
        ).double()
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k)).double()


def train(model: nn.Module, x, y, steps: int, lr: float = 0.01) -> nn.Module:
    """Full-batch Adam on the mean cross-entropy, in place; deterministic given the model."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _stats(m: torch.Tensor) -> dict[str, float]:
    evals = torch.linalg.eigvalsh(m)
    return {
        "lambda_max": evals[-1].item(),
        "lambda_min": evals[0].item(),
        "trace": torch.trace(m).item(),
        "frobenius": torch.linalg.matrix_norm(m).item(),
    }


def autograd_hessian(model: nn.Sequential, x, y) -> torch.Tensor:
    """The dense (P, P) Hessian of a ``Linear - ReLU - Linear`` net's mean cross-entropy by
    ``torch.autograd.functional.hessian`` of the loss written out by hand, float64.

    Parameters flattened in ``model.parameters()`` order (W1 row-major, b1, W2, b2); shares no
    code with :func:`flatness.hessian.exact_hessian`.
    """
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        w1, b1, w2, b2 = (
            t.reshape(s) for t, s in zip(theta.split([s.numel() for s in shapes]), shapes)
        )
        logits = torch.relu(x @ w1.T + b1) @ w2.T + b2
        return (torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None])[:, 0]).mean()

    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


def gauss_newton_split(
    model: nn.Sequential, x, y
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Measures of the Hessian H, its Gauss-Newton part G = J^T (diag p - p p^T) J / N and the
    residual R = (1/N) sum_i sum_k (p_ik - y_ik) d2 z_ik (Sagun et al. 2017, Papyan 2019).

    G and R come from :func:`flatness.hessian.exact_hessian` (each its own derivative), H from
    :func:`autograd_hessian`, so ``split_error = max |H - (G + R)|`` is a real check.
    Returns a row of numbers and the three (P, P) float64 matrices.
    """
    g, r = (
        hessian.exact_hessian(model, nn.functional.cross_entropy, (x, y), curvature=c)
        for c in ("ggn", "residual")
    )
    h = autograd_hessian(model, x, y)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y).item()
    row = {"parameters": len(h), "loss": loss, "split_error": (h - g - r).abs().max().item()}
    for name, m in (("H", h), ("G", g), ("R", r)):
        row |= {f"{k}_{name}": v for k, v in _stats(m).items()}
    return row, {"H": h, "G": g, "R": r}


def batchnorm_invariance(model: nn.Sequential, x, y, alphas) -> pd.DataFrame:
    """Loss and the Hessian block of the weights u feeding BatchNorm (batch statistics), at u
    and at alpha u: relative deviations of ``L(alpha u)`` from ``L(u)`` and of
    ``alpha^2 H(alpha u)`` from ``H(u)`` (max entry over max entry), and ``lambda_max``."""
    u = model[0].weight
    for p in model.parameters():
        p.requires_grad_(p is u)
    original = u.detach().clone()

    def measure():
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model.train()(x), y).item()
        h = hessian.exact_hessian(model, nn.functional.cross_entropy, (x, y), bn_mode="train")
        return loss, h

    try:
        loss0, h0 = measure()
        rows = []
        for alpha in alphas:
            with torch.no_grad():
                u.copy_(alpha * original)
            loss, h = measure()
            rows.append(
                {
                    "alpha": float(alpha),
                    "loss_deviation": abs(loss / loss0 - 1),
                    "hessian_deviation": ((alpha**2 * h - h0).abs().max() / h0.abs().max()).item(),
                    "lambda_max": torch.linalg.eigvalsh(h)[-1].item(),
                    "lambda_max_at_1": torch.linalg.eigvalsh(h0)[-1].item(),
                }
            )
    finally:
        with torch.no_grad():
            u.copy_(original)
        for p in model.parameters():
            p.requires_grad_(True)
    return pd.DataFrame(rows)


def rescaled(model: nn.Sequential, a: float) -> nn.Sequential:
    """Dinh et al. (2017)'s copy ``(a W1, a b1, W2 / a, b2)``: the same function for a > 0."""
    out = nn.Sequential(
        nn.Linear(*model[0].weight.shape[::-1]), nn.ReLU(), nn.Linear(*model[2].weight.shape[::-1])
    )
    out = out.double().to(model[0].weight.device)
    with torch.no_grad():
        out[0].weight.copy_(a * model[0].weight)
        out[0].bias.copy_(a * model[0].bias)
        out[2].weight.copy_(model[2].weight / a)
        out[2].bias.copy_(model[2].bias)
    return out


def dinh_rescaling(model: nn.Sequential, h: torch.Tensor, x, y, a_values) -> pd.DataFrame:
    """Measures of the Hessian of the rescaled net for each a, from ``D^-1 H D^-1`` (D scales the
    first layer's entries by a and the second layer's weights by 1/a: the chain rule of the
    reparametrisation), and the largest change of any output over the sample. At the smallest
    and largest a the Hessian is also recomputed from scratch: ``recomputed_deviation`` is
    ``max |H_a - D^-1 H D^-1| / max |H_a|`` there (NaN elsewhere)."""
    first = model[0].weight.numel() + model[0].bias.numel()
    second = model[2].weight.numel()
    rows = []
    for a in a_values:
        scale = torch.ones(len(h), dtype=torch.float64, device=h.device)
        scale[:first], scale[first : first + second] = 1 / a, a
        ha = scale[:, None] * h * scale[None, :]
        copy = rescaled(model, a)
        with torch.no_grad():
            change = (copy(x) - model(x)).abs().max().item()
        deviation = math.nan
        if a in (min(a_values), max(a_values)):
            direct = hessian.exact_hessian(copy, nn.functional.cross_entropy, (x, y))
            deviation = ((direct - ha).abs().max() / direct.abs().max()).item()
        top = linalg.eigh(ha.cpu().numpy(), eigvals_only=True, subset_by_index=[len(h) - 1] * 2)[0]
        rows.append(
            {"a": float(a), "lambda_max": float(top), "trace": torch.trace(ha).item()}
            | {"frobenius": torch.linalg.matrix_norm(ha).item(), "output_change": change}
            | {"recomputed_deviation": deviation}
        )
    return pd.DataFrame(rows)


def require_alive(model: nn.Sequential, x: torch.Tensor, *, seed: int) -> None:
    """Refuse a ReLU MLP (:func:`mlp`, without BatchNorm) whose hidden units are all dead on
    ``x`` (N, d): it computes a constant, its first two layers have a zero Hessian block, and
    facts 1, 5 and 6 would be about nothing.

    Raises:
        FlatnessError: every hidden ReLU is zero on every example.
    """
    with torch.no_grad():
        active = model[1](model[0](x)) > 0
    if not bool(active.any()):
        raise FlatnessError(
            f"the trained MLP (seed {seed}) has all {active.shape[1]} hidden ReLUs dead on its "
            f"{len(x):,} examples: it predicts a constant; train it with a smaller lr "
            "(the chapter's TheorySettings.train_lr) or more hidden units"
        )


def trace_minimiser(model: nn.Sequential, h: torch.Tensor) -> dict[str, float]:
    """Where Dinh et al.'s rescaling makes the trace smallest, in closed form.

    ``Tr H(a) = T1 / a^2 + a^2 T2 + T3`` (T1 the first layer's block trace, T2 the second
    layer's weights', T3 the output bias's), smallest at ``a* = (T1 / T2)^(1/4)`` with value
    ``2 sqrt(T1 T2) + T3``.
    """
    first = model[0].weight.numel() + model[0].bias.numel()
    second = model[2].weight.numel()
    diag = h.diagonal()
    t1, t2 = diag[:first].sum().item(), diag[first : first + second].sum().item()
    t3 = diag[first + second :].sum().item()
    if not (t1 > 0 and t2 > 0):  # a dead network (see require_alive): no minimiser
        raise FlatnessError(
            f"the rescaling's trace has no minimiser: the first layer's block trace is {t1:.3g} "
            f"and the second layer's weights' {t2:.3g} (both must be > 0; all ReLUs dead?)"
        )
    return {
        "a_star": (t1 / t2) ** 0.25,
        "trace_min": 2 * math.sqrt(t1 * t2) + t3,
        "trace_at_1": t1 + t2 + t3,
    }
