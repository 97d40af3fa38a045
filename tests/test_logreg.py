"""The logistic-regression chapter: summaries over seeds, scaling, PyHessian, and its verdict."""

import numpy as np
import pytest

from flatness import data
from flatness.chapters import logreg
from flatness.results.store import Store


def test_summary_and_scaling_on_real_runs(tmp_path, store_root, monkeypatch):
    settings = logreg.settings("smoke", seeds=[0, 1], epochs=2)
    runs = logreg.sweep(settings, store=Store(tmp_path), device="cpu")
    summary = logreg.summary(runs)
    table = logreg.final_table(runs)
    assert list(summary.index) == [0.0, 0.01] and (summary["seeds"] == 2).all()
    for wd in (0.0, 0.01):
        values = table[table.weight_decay == wd]["lambda_max"]
        assert summary.loc[wd, "lambda_max_mean"] == pytest.approx(values.mean())
        assert summary.loc[wd, "lambda_max_sd"] == pytest.approx(values.std(ddof=1))
    d = data.load("digits", train_size=settings.train_size)
    scaling = logreg.scaled_measures(
        logreg.trained_model(runs[0], d), d, [1.0, 10.0, 100.0], device="cpu"
    )
    at_one = scaling.iloc[0]
    assert at_one.lambda_max == pytest.approx(runs[0].metrics["lambda_max"], rel=1e-6)
    assert np.all(np.diff(scaling.trace) < 0)
    comparison = logreg.pyhessian_comparison(runs[:1], d, settings, device="cpu")
    row = comparison.iloc[0]
    # power iteration returns a Rayleigh quotient: never above the exact largest eigenvalue
    assert 0 < row["lambda_max PyHessian"] <= row["lambda_max exact"] * (1 + 1e-6)
    assert row["lambda_max exact"] == pytest.approx(runs[0].metrics["lambda_max"], rel=1e-6)
    # both are kept in the store: asked again, they are read back, not recomputed
    from flatness.chapters.logreg import exact

    def recomputed(*args, **kwargs):
        raise AssertionError("recomputed a stored computation")

    monkeypatch.setattr(exact.theory, "scaling", recomputed)
    monkeypatch.setattr(exact, "_pyhessian_comparison", recomputed)
    again = logreg.scaled_measures(
        logreg.trained_model(runs[0], d), d, [1.0, 10.0, 100.0], device="cpu"
    )
    assert again.equals(scaling)
    assert logreg.pyhessian_comparison(runs[:1], d, settings, device="cpu").equals(comparison)


def test_the_verdict_chooses_on_validation_and_judges_on_test(tmp_path):
    settings = logreg.settings("smoke", seeds=[0, 1, 2], weight_decays=[0.0, 1e-3, 1e-2], epochs=2)
    runs = logreg.sweep(settings, store=Store(tmp_path), device="cpu")
    d = data.load("digits", train_size=settings.train_size)
    # make 1e-3 best on test and 1e-2 best on validation: the verdict must judge 1e-2
    for r in runs:
        r.metrics["val_acc"] = {0.0: 0.5, 1e-3: 0.6, 1e-2: 0.9}[r.config.weight_decay]
    claim = logreg.claim(runs, d, device="cpu", resamples=200)
    assert "weight decay 0.01 (best on validation data)" in claim.better.text
    assert claim.sharper.effects.keys() == {"lambda_max", "trace", "frobenius"}
    table = logreg.final_table(runs)
    for m, iv in claim.sharper.effects.items():
        hi, lo = table[table.weight_decay == 1e-2][m], table[table.weight_decay == 0.0][m]
        assert iv.estimate == pytest.approx(np.exp(np.log(hi).mean() - np.log(lo).mean()))
    assert logreg.best_weight_decay(runs) == 1e-2
    # the smallest weight decay is the baseline: never "best", even when best on validation
    for r in runs:
        r.metrics["val_acc"] = {0.0: 0.99, 1e-3: 0.6, 1e-2: 0.5}[r.config.weight_decay]
    assert logreg.best_weight_decay(runs) == 1e-3
    # two epochs on 200 digits end far above 0.1 ln 10: no verdict, the effects kept
    losses = logreg.final_table(runs).train_loss
    assert losses.max() > 0.1 * np.log(10)
    assert claim.outcome == claim.sharper.outcome == "not at a minimum"
    assert claim.sharper.text.startswith("Not judged:") and "λ_max ratio" in claim.sharper.text
    import flatness.chapters.common as common

    common_share = common.MINIMUM_LOSS_SHARE
    try:
        common.MINIMUM_LOSS_SHARE = 10.0  # above every loss: the intervals decide
        judged = logreg.claim(runs, d, device="cpu", resamples=200)
    finally:
        common.MINIMUM_LOSS_SHARE = common_share
    assert judged.outcome in common.OUTCOMES and judged.outcome != "not at a minimum"


def test_the_trace_bound_constant_counts_every_pixel_and_the_bound_holds(tmp_path, store_root):
    """Tr H <= 2 L max ||x~||^2 (paper notes, section 2) at every scale, with the constant
    summed over all 64 pixels of each 1x8x8 image plus the bias input."""
    d = data.load("digits", train_size=200)
    by_hand = max(sum(float(v) ** 2 for v in img.flatten()) for img in d.x_train) + 1.0
    assert by_hand > 2 * (float(d.x_train.abs().max()) ** 2 + 1.0)  # not one pixel's worth
    settings = logreg.settings("smoke", seeds=[0], epochs=2)
    run = logreg.sweep(settings, store=Store(tmp_path), device="cpu")[0]
    model = logreg.trained_model(run, d)
    scaling = logreg.scaled_measures(model, d, [0.5, 1.0, 4.0, 30.0], device="cpu")
    assert np.allclose(scaling.bound / (2 * scaling.train_loss), by_hand, rtol=1e-12)
    # the loss by hand: mean of -log softmax at the label, in float64
    w, b = model.weight.detach().double(), model.bias.detach().double()
    logits = 4.0 * (d.x_train.flatten(1).double() @ w.T + b)
    by_hand_loss = -logits.log_softmax(1).gather(1, d.y_train[:, None]).mean().item()
    assert scaling.train_loss.iloc[2] == pytest.approx(by_hand_loss, rel=1e-10)
    assert (scaling.trace <= scaling.bound).all()
    by_hand_acc = sum(
        int(model(img.flatten()[None]).argmax().item() == label)
        for img, label in zip(d.x_train.float(), d.y_train.tolist())
    ) / len(d.y_train)
    assert logreg.train_accuracy(model, d) == by_hand_acc
    assert np.allclose(scaling.ratio, scaling.trace / scaling.bound)
    assert scaling.ratio.max() > 0.05  # a bound that is not vacuous here


def test_class_blocks_are_the_exact_hessian_by_class_each_cell_its_largest_entry(
    tmp_path, store_root, monkeypatch
):
    import torch

    settings = logreg.settings("smoke", seeds=[0], epochs=2)
    run = logreg.sweep(settings, store=Store(tmp_path), device="cpu")[0]
    d = data.load("digits", train_size=settings.train_size)
    model = logreg.trained_model(run, d).double()
    x, y = d.x_train.flatten(1).double(), d.y_train
    k, dim = model.weight.shape

    def loss(w, b):  # mean cross-entropy written out, the softmax by hand
        z = x @ w.T + b
        return (torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]).mean()

    parts = torch.autograd.functional.hessian(loss, (model.weight.detach(), model.bias.detach()))
    n = k * dim
    h = torch.zeros(n + k, n + k, dtype=torch.float64)
    for i, row in enumerate(parts):
        for j, part in enumerate(row):
            h[[slice(0, n), slice(n, None)][i], [slice(0, n), slice(n, None)][j]] = part.reshape(
                (n, k)[i], (n, k)[j]
            )
    by_class = [list(range(c * dim, (c + 1) * dim)) + [n + c] for c in range(k)]
    order = sum(by_class, [])
    grouped = h[order][:, order].abs().numpy()

    whole = logreg.class_blocks(run, d, rows=k * (dim + 1))
    assert whole.pooled == 1 and whole.block == dim + 1
    np.testing.assert_allclose(whole.magnitude, grouped, rtol=1e-5, atol=1e-9)
    assert whole.sentence() == "Each pixel is one entry."

    small = logreg.class_blocks(run, d, rows=200)
    p = small.pooled
    assert p == 4 and small.block == 17 and small.magnitude.shape == (170, 170)
    for a in range(k):
        for b in range(k):
            block = grouped[a * 65 : (a + 1) * 65, b * 65 : (b + 1) * 65]
            for i in range(small.block):
                for j in range(small.block):
                    cell = block[i * p : (i + 1) * p, j * p : (j + 1) * p]
                    assert small.magnitude[a * 17 + i, b * 17 + j] == pytest.approx(
                        cell.max(), rel=1e-5, abs=1e-9
                    )
    assert "650 rows" in small.sentence() and "4 x 4 square" in small.sentence()
    # kept in the store: asked again, it is read back, not recomputed
    from flatness.chapters.logreg import exact

    monkeypatch.setattr(exact, "_class_blocks", lambda *a: pytest.fail("recomputed"))
    again = logreg.class_blocks(run, d, rows=200)
    assert np.array_equal(again.magnitude, small.magnitude)
