"""Hessian measurements of a network during training, exact where the size allows.

What is measured is the Hessian of the mean cross-entropy over the whole training split,
without the L2 term (as the authors did, ``../shared/paper-notes.md`` section 3), on the
deterministic, unaugmented images:

- up to :data:`EXACT_LIMIT` parameters and without BatchNorm, the exact Hessian (softmax
  regression from its closed form, anything else from :func:`flatness.hessian.exact_hessian`),
  so ``lambda_max``, trace and Frobenius norm carry no error (their standard errors are 0);
  BatchNorm networks always get the estimators, as their dense Hessian in two modes over a
  loader of batches takes minutes even at a thousand parameters;
- larger models, one joint measurement (:func:`flatness.hessian.measure_all`): ``lambda_max``
  by block Lanczos, and trace and Frobenius norm from the same probes, deflated against that
  Lanczos run's space, with their standard errors down to the run's ``hessian_rtol``;
- after the last epoch, the whole spectrum: exact eigenvalues up to :data:`EXACT_LIMIT`
  (softmax regression up to :data:`SOFTMAX_EXACT_LIMIT`), otherwise a stochastic Lanczos
  quadrature density with the run's ``slq_steps``, from the Lanczos run that also gives
  ``lambda_max`` (as the authors took theirs).

After the last epoch the run also records every measure of :mod:`flatness.measures.suite`
(scale-aware, adaptive, relative, PAC-Bayes, Fisher-Rao) on the same examples, reusing the
final ``lambda_max`` and trace, so that chapters judging those measures need no weights.

Networks with BatchNorm are measured in both modes: ``eval`` (running statistics, PyHessian's
convention; the columns without suffix) and ``train`` (each batch's own statistics, batches of
the run's batch size in a fixed order, the authors' convention; columns ending ``_bn_train``).
The authors re-estimate the running statistics before measuring in train mode; batch
statistics do not read the running ones, so that step changes nothing measured here.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness import hessian, models
from flatness.hessian.softmax import softmax_regression_spectrum
from flatness.measures.suite import measure_suite

#: Largest model whose exact Hessian is formed at every measurement (P^2 float64 numbers).
EXACT_LIMIT = 2_000
#: Largest softmax regression whose exact spectrum is computed after the last epoch.
SOFTMAX_EXACT_LIMIT = 20_000
#: Examples per batch when batch statistics are not in play (the operator does not depend on it).
EVAL_BATCH = 2048
#: Names of the per-epoch measurement series (without the ``_bn_train`` variants).
MEASURES = ("lambda_max", "trace", "trace_se", "frobenius", "frobenius_se")

_loss = nn.functional.cross_entropy


def measured_columns(model: nn.Module) -> tuple[str, ...]:
    """The series a measurement of ``model`` fills: both BatchNorm modes for BN networks."""
    if models.has_batchnorm(model):
        return MEASURES + tuple(f"{m}_bn_train" for m in MEASURES)
    return MEASURES


def _is_softmax_regression(model: nn.Module) -> bool:
    return isinstance(model, nn.Linear)


def _data(x: torch.Tensor, y: torch.Tensor, batch_size: int, bn_train: bool):
    """The whole split as one batch where that is cheap, else a fixed-order loader."""
    size = batch_size if bn_train else EVAL_BATCH
    if len(y) <= size:
        return (x, y)
    return DataLoader(TensorDataset(x, y), batch_size=size, shuffle=False)


def _exact(model, x, y, bn_mode: str, batch_size: int) -> tuple[dict, np.ndarray]:
    if _is_softmax_regression(model):
        spectrum = softmax_regression_spectrum(model, x)
        values = {
            "lambda_max": spectrum.lambda_max,
            "trace": spectrum.trace,
            "frobenius": spectrum.frobenius,
        }
        return values | {"trace_se": 0.0, "frobenius_se": 0.0}, spectrum.eigenvalues
    data = _data(x, y, batch_size, bn_mode == "train")
    h = hessian.exact_hessian(model, _loss, data, bn_mode=bn_mode)
    eigenvalues = torch.linalg.eigvalsh(h).cpu().numpy()
    values = {
        "lambda_max": float(eigenvalues[-1]),
        "trace": float(eigenvalues.sum()),
        "frobenius": float(np.sqrt((eigenvalues**2).sum())),
    }
    return values | {"trace_se": 0.0, "frobenius_se": 0.0}, eigenvalues


def _estimated(
    model,
    x,
    y,
    bn_mode: str,
    batch_size: int,
    *,
    rtol: float,
    seed: int,
    max_probes: int,
    slq_steps: int = 0,
) -> tuple[dict, dict]:
    """One joint measurement (:func:`flatness.hessian.measure_all`): ``lambda_max`` to a
    relative residual of 1e-3, trace and Frobenius norm to ``rtol``, and the SLQ density of
    ``slq_steps`` steps from the same Lanczos run."""
    data = _data(x, y, batch_size, bn_mode == "train")
    with warnings.catch_warnings():
        # a stop at max_probes is in the standard errors the run records beside the estimates
        warnings.simplefilter("ignore", hessian.ConvergenceWarning)
        m = hessian.measure_all(
            model,
            _loss,
            data,
            tol=1e-3,
            rtol=rtol,
            max_probes=max_probes,
            slq_steps=slq_steps,
            seed=seed,
            bn_mode=bn_mode,
        )
    values = {
        "lambda_max": m.lambda_max,
        "trace": m.trace.estimate,
        "trace_se": m.trace.stderr,
        "frobenius": m.frobenius.estimate,
        "frobenius_se": m.frobenius.stderr,
    }
    arrays = {}
    if m.density is not None:
        arrays = {
            "slq_nodes": m.density.nodes.cpu().numpy(),
            "slq_weights": m.density.weights.cpu().numpy(),
        }
    return values, arrays


def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    rtol: float,
    seed: int,
    final: bool = False,
    slq_steps: int = 0,
    max_probes: int = 1000,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Measure the data-loss Hessian of ``model`` on ``(x, y)``.

    Args:
        model: the network, in the dtype and on the device of ``x``.
        x, y: the training split, ``(N, C, H, W)`` float and ``(N,)`` int64 labels.
        batch_size: the batches of train-mode BatchNorm (the run's batch size).
        rtol: relative standard error at which the trace and Frobenius estimators stop.
        seed: seeds the randomised estimators.
        final: also compute the whole spectrum (exact eigenvalues or an SLQ density).
        slq_steps: Lanczos steps of that density (0 skips it).
        max_probes: the most random probes the trace and Frobenius estimators may use.

    Returns:
        ``(values, arrays)``: the columns of :func:`measured_columns` plus ``hessian_seconds``,
        and for ``final`` the arrays ``eigenvalues`` (ascending, all P) or
        ``slq_nodes`` / ``slq_weights`` (with ``_bn_train`` variants for BatchNorm networks).
    """
    start = time.perf_counter()
    count = models.parameter_count(model)
    final_limit = SOFTMAX_EXACT_LIMIT if _is_softmax_regression(model) else EXACT_LIMIT
    modes = ("eval", "train") if models.has_batchnorm(model) else ("eval",)
    values: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    for mode in modes:
        suffix = "" if mode == "eval" else "_bn_train"
        if len(modes) == 1 and count <= (final_limit if final else EXACT_LIMIT):
            found, eigenvalues = _exact(model, x, y, mode, batch_size)
            if final:
                arrays[f"eigenvalues{suffix}"] = eigenvalues
        else:
            found, density = _estimated(
                model,
                x,
                y,
                mode,
                batch_size,
                rtol=rtol,
                seed=seed,
                max_probes=max_probes,
                slq_steps=slq_steps if final else 0,
            )
            arrays |= {f"{k}{suffix}": v for k, v in density.items()}
        values |= {f"{k}{suffix}": float(v) for k, v in found.items()}
    values["hessian_seconds"] = time.perf_counter() - start
    return values, arrays


def unmeasured(model: nn.Module) -> dict[str, float]:
    """NaN in every measurement column, for epochs without a measurement."""
    return {k: math.nan for k in measured_columns(model)} | {"hessian_seconds": 0.0}


def sharpness(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int, values: dict
) -> dict:
    """Every measure of :mod:`flatness.measures.suite` of ``model`` on ``(x, y)``, reusing the
    eval-mode ``lambda_max`` and trace of a measurement's ``values``.

    Returns:
        The suite's columns, ``measures_seconds``, and 1.0 in ``<measure>_imprecise`` and
        ``<measure>_unconverged`` for the measures the suite flags so (a stored run's metrics
        are numbers); a measure the model does not define is NaN.
    """
    found = measure_suite(
        model,
        _loss,
        _data(x, y, EVAL_BATCH, False),
        seed=seed,
        lambda_max=values["lambda_max"],
        trace=(values["trace"], values["trace_se"]),
    )
    flags = {f"{m}_imprecise": 1.0 for m in found.imprecise}
    flags |= {f"{m}_unconverged": 1.0 for m in found.unconverged}
    return found.values | {"measures_seconds": found.seconds} | flags
