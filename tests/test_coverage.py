"""Standard errors that mean what they say: over 50 seeds the truth (the dense float64
Hessian) lies within three reported standard errors nearly always, the reported error matches
the spread of the estimates, and an adaptive run stops at the precision it was asked for."""

import statistics

import pytest
import torch
from test_estimators import make
from torch import nn

from flatness import hessian as H

ce = nn.functional.cross_entropy
SEEDS = range(50)


@pytest.fixture(scope="module")
def tanh():
    model, data = make("tanh")
    exact = H.exact_hessian(model, ce, data)
    return model, data, torch.trace(exact).item(), torch.linalg.matrix_norm(exact).item()


def check(runs, truth, rtol=None):
    covered = sum(abs(r.estimate - truth) <= 3 * r.stderr for r in runs) / len(runs)
    spread = statistics.stdev(r.estimate for r in runs)
    reported = statistics.mean(r.stderr for r in runs)
    assert covered >= 0.9, (covered, [r.method for r in runs][:3])
    # the reported standard error is the spread of the estimates, within a factor of two
    assert 0.5 < spread / reported < 2.0, (spread, reported)
    if rtol is not None:
        assert all(r.converged for r in runs)
        assert all(r.stderr <= rtol * abs(r.estimate) for r in runs)
        assert max(abs(r.estimate / truth - 1) for r in runs) < 5 * rtol


@pytest.mark.parametrize("method", ["auto", "hutchinson", "hutch++", "ggn+hutchinson"])
def test_adaptive_trace_covers_the_truth(tanh, method):
    model, data, trace, _ = tanh
    runs = [H.trace(model, ce, data, rtol=0.05, method=method, seed=s) for s in SEEDS]
    check(runs, trace, rtol=0.05)


@pytest.mark.parametrize("method", ["auto", "hutchinson", "hutch++"])
def test_adaptive_frobenius_norm_covers_the_truth(tanh, method):
    model, data, _, frobenius = tanh
    runs = [H.frobenius_norm(model, ce, data, rtol=0.05, method=method, seed=s) for s in SEEDS]
    check(runs, frobenius, rtol=0.05)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_fixed_budget_standard_errors_cover_the_truth(tanh, method):
    model, data, trace, frobenius = tanh
    check([H.trace(model, ce, data, 48, method=method, seed=s) for s in SEEDS], trace)
    check([H.frobenius_norm(model, ce, data, 48, method=method, seed=s) for s in SEEDS], frobenius)


def test_an_unreachable_precision_says_so(tanh):
    model, data, trace, _ = tanh
    run = H.trace(model, ce, data, rtol=1e-4, max_probes=40, method="hutchinson")
    assert not run.converged and run.probes == 40 and run.stderr > 1e-4 * abs(run.estimate)
