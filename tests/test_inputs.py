"""The inputs users bring: each kind that once gave a silent wrong number, with the right value
from an independent computation (closed forms, eigvalsh of a known matrix, the whole batch)."""

import math
import re

import pytest
import torch
from test_estimators import make
from torch import nn
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    RandomSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from flatness import hessian as H
from flatness.errors import FlatnessError
from flatness.hessian.checks import check_data
from flatness.hessian.gauss_newton import NotSeparable

ce = nn.functional.cross_entropy


# -- 1. repeated eigenvalues ------------------------------------------------------------------
def zero_softmax_regression(classes: int):
    """Zero weights: p = 1/K for every example, so diag(p) - p p^T has the eigenvalue 1/K
    K-1 times and every non-zero eigenvalue of H = (diag p - p p^T) kron Sigma repeats K-1
    times."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (12,), generator=gen)
    model = nn.Linear(2, classes).double()
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    xt = torch.cat([x, torch.ones(12, 1, dtype=torch.float64)], dim=1)
    sigma = torch.linalg.eigvalsh(xt.T @ xt / 12)
    closed = torch.cat([sigma / classes] * (classes - 1)).sort(descending=True).values
    return model, (x, y), closed


@pytest.mark.parametrize("classes,k", [(3, 2), (3, 3), (3, 4), (4, 3), (4, 4), (5, 8)])
def test_repeated_eigenvalues_are_found_as_often_as_they_occur(classes, k):
    model, data, closed = zero_softmax_regression(classes)
    result = H.top_eigenvalues(model, ce, data, k=k, tol=1e-10, eigenvectors=True)
    assert result.converged
    # the reported residuals bound the true ones, widened block included
    exact = H.exact_hessian(model, ce, data)
    v = result.eigenvectors
    true = torch.linalg.vector_norm(v @ exact - result.eigenvalues[:, None] * v, dim=1)
    assert (result.residuals >= true).all(), (result.residuals, true)
    assert torch.allclose(result.eigenvalues, closed[:k], rtol=1e-9, atol=0), (
        result.eigenvalues,
        closed[:k],
    )


class Quadratic(nn.Module):
    """Every example's output is the parameter vector w; with ``half_quadratic`` the mean loss
    is w^T D w / 2, whose Hessian is D exactly."""

    def __init__(self, size: int):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.1, 1.0, size, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(len(x), -1)


def quadratic_problem(spectrum):
    gen = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=gen).double())
    d = q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T

    def half_quadratic(out, targets):
        return 0.5 * ((out @ d) * out).sum(dim=1).mean()

    data = (torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    return Quadratic(len(spectrum)), half_quadratic, data, d


@pytest.mark.parametrize(
    "spectrum,k",
    [
        ([2.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, -0.4], 2),
        ([2.0, 2.0, 2.0, 0.5, 0.3, 0.2, 0.1, -0.4], 3),
        ([2.0, 2.0 - 1e-12, 1.0, 0.5, 0.3, 0.2, 0.1, -0.4], 2),
        ([2.0, 2.0 - 1e-12, 2.0 - 2e-12, 0.9, 0.3, 0.2, 0.1, 0.0], 4),
        # more copies than the default start block of 2 sees: it must widen to find them
        ([3.0, 3.0, 3.0, 3.0, 1.0, 0.5, 0.2, 0.1, -0.4, 0.05], 5),
        ([1.0, 0.9, 0.9, 0.9, 0.5, 0.4, 0.2, 0.1, -0.4, 0.05], 5),
        # a widened block needs steps before the hidden copy shows: judged too early, the top 4
        # came out as 5, 4, 4, 3
        ([5.0, 4.0, 4.0, 4.0, 3.0, 2.0, *torch.linspace(0.0, 0.9, 34).tolist()], 4),
    ],
)
def test_multiplicities_and_near_ties_against_eigvalsh(spectrum, k):
    model, loss, data, d = quadratic_problem(spectrum)
    assert torch.allclose(H.exact_hessian(model, loss, data), d, atol=1e-14)
    truth = torch.tensor(sorted(spectrum, reverse=True), dtype=torch.float64)
    result = H.top_eigenvalues(model, loss, data, k=k, tol=1e-10, eigenvectors=True)
    assert result.converged
    assert torch.allclose(result.eigenvalues, truth[:k], rtol=0, atol=1e-10)
    gram = result.eigenvectors @ result.eigenvectors.T
    assert torch.allclose(gram, torch.eye(k, dtype=torch.float64), atol=1e-8)


def test_a_given_block_is_kept_and_the_default_widens_only_where_copies_may_hide():
    tail = torch.linspace(-0.5, 0.8, 80).tolist()  # a space the basis does not fill
    model, loss, data, _ = quadratic_problem([3.0, 3.0, 3.0, 1.0, *tail])
    fixed = H.top_eigenvalues(model, loss, data, k=4, tol=1e-10, block=4)
    assert fixed.converged and fixed.hvps == 4 * fixed.steps
    default = H.top_eigenvalues(model, loss, data, k=4, tol=1e-10)
    assert default.converged and default.hvps > 2 * default.steps  # it widened
    assert torch.allclose(default.eigenvalues, fixed.eigenvalues, rtol=0, atol=1e-10)
    plain = quadratic_problem([3.0, 2.0, 1.5, 1.0, *tail])
    run = H.top_eigenvalues(plain[0], plain[1], plain[2], k=4, tol=1e-10)
    assert run.converged and run.hvps == 2 * run.steps  # nothing repeats: blocks of 2


def test_products_too_large_to_keep_are_made_again_for_the_explicit_residuals(monkeypatch):
    from flatness.hessian import lanczos

    spectrum = [5.0, 4.0, 4.0, 4.0, 3.0, *torch.linspace(0.0, 0.9, 35).tolist()]
    model, loss, data, d = quadratic_problem(spectrum)
    kept = H.top_eigenvalues(model, loss, data, k=4, tol=1e-8, eigenvectors=True)
    monkeypatch.setattr(lanczos, "KEEP_BYTES", 0)
    made = H.top_eigenvalues(model, loss, data, k=4, tol=1e-8, eigenvectors=True)
    assert made.converged and made.hvps > kept.hvps  # k more products per explicit residual
    assert torch.allclose(made.eigenvalues, kept.eigenvalues, rtol=0, atol=1e-12)
    v = made.eigenvectors
    true = torch.linalg.vector_norm(v @ d - made.eigenvalues[:, None] * v, dim=1)
    assert (made.residuals >= true).all()


def test_a_block_smaller_than_k_is_refused():
    model, data, _ = zero_softmax_regression(3)
    with pytest.raises(FlatnessError, match="block must be an integer from k=2"):
        H.top_eigenvalues(model, ce, data, k=2, block=1)


# -- 2. loaders that are a different operator on every pass ---------------------------------
def tanh_data():
    model, (x, y) = make("tanh")
    return model, x, y, H.exact_hessian(model, ce, (x, y))


class Noisy(Dataset):
    """Adds fresh noise in __getitem__: no name gives it away."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.01 * torch.randn_like(self.x[i]), self.y[i]


class Holding(TensorDataset):
    """A custom data set holding a random transform under a name of its own."""

    def __init__(self, x, y, aug):
        super().__init__(x, y)
        self.aug = aug

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return self.aug(x), y


def random_loaders(x, y):
    flip = pytest.importorskip("torchvision").transforms.RandomHorizontalFlip()
    plain = TensorDataset(x, y)
    images = x.reshape(len(x), 1, 2, 3)

    class WithTransform(TensorDataset):
        transform = flip

    yield "shuffle+drop_last", DataLoader(plain, batch_size=16, shuffle=True, drop_last=True)
    yield (
        "replacement",
        DataLoader(plain, batch_size=16, sampler=RandomSampler(plain, replacement=True)),
    )
    yield (
        "weighted",
        DataLoader(plain, batch_size=16, sampler=WeightedRandomSampler(torch.ones(len(x)), len(x))),
    )
    yield "subset", DataLoader(Subset(WithTransform(x, y), range(30)), batch_size=8)
    yield "concat", DataLoader(ConcatDataset([plain, WithTransform(x, y)]), batch_size=8)
    yield "held", DataLoader(Holding(images, y, flip), batch_size=8)
    yield "noise", DataLoader(Noisy(x, y), batch_size=8)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_loaders_whose_passes_differ_are_refused_everywhere(bn_mode):
    model, x, y, _ = tanh_data()
    rng = torch.random.get_rng_state()
    for name, loader in random_loaders(x, y):
        for fn in (H.trace, H.top_eigenvalues, H.exact_hessian, H.spectral_density):
            with pytest.raises(FlatnessError, match="different Hessian") as err:
                fn(model, ce, loader, bn_mode=bn_mode)
            assert "shuffle=False" in str(err.value) or "test-time" in str(err.value), name
    assert torch.equal(rng, torch.random.get_rng_state())


def test_shuffling_without_dropping_is_the_whole_batch_in_eval_mode_only():
    model, x, y, dense = tanh_data()
    gen = torch.Generator().manual_seed(7)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=gen)
    state = gen.get_state()
    check_data(shuffled)
    assert torch.equal(gen.get_state(), state)  # checking the loader drew nothing from it
    assert torch.allclose(H.exact_hessian(model, ce, shuffled), dense, atol=1e-12)
    a = H.trace(model, ce, shuffled, probes=8, method="hutchinson", seed=3).estimate
    b = H.trace(model, ce, shuffled, probes=8, method="hutchinson", seed=3).estimate
    assert a == pytest.approx(b, rel=1e-10)
    subset = DataLoader(TensorDataset(x, y), batch_size=16, sampler=SubsetRandomSampler(range(20)))
    assert torch.allclose(
        H.exact_hessian(model, ce, subset), H.exact_hessian(model, ce, (x[:20], y[:20])), atol=1e-12
    )
    # batch composition matters only where BatchNorm uses batch statistics
    assert math.isfinite(H.trace(model, ce, shuffled, probes=8, bn_mode="train").estimate)
    cnn, (xc, yc) = make("cnn")
    for loader in (
        DataLoader(TensorDataset(xc, yc), batch_size=8, shuffle=True),
        DataLoader(TensorDataset(xc, yc), batch_size=8, sampler=SubsetRandomSampler(range(20))),
    ):
        with pytest.raises(FlatnessError, match="shuffle=False"):
            H.trace(cnn, ce, loader, bn_mode="train")
    with pytest.raises(FlatnessError, match="a batch of one example"):
        H.trace(cnn, ce, DataLoader(TensorDataset(xc[:9], yc[:9]), batch_size=8), bn_mode="train")


# -- 3. losses that are not a mean ------------------------------------------------------------
def test_a_loss_that_is_not_a_mean_is_refused_on_batches_and_loaders():
    model, x, y, _ = tanh_data()
    total = lambda out, t: ce(out, t, reduction="sum")  # noqa: E731
    odd = lambda out, t: ce(out, t, reduction="sum") / math.sqrt(len(t))  # noqa: E731
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    for data in ((x, y), loader):
        for fn in (H.trace, H.top_eigenvalues, H.exact_hessian, H.pyhessian_estimate):
            with pytest.raises(FlatnessError, match="a sum over examples.*reduction='mean'"):
                fn(model, total, data)
            with pytest.raises(FlatnessError, match="neither a mean nor a sum"):
                fn(model, odd, data)


# -- 4. frozen parameters and float32 models in exact_hessian --------------------------------
def test_frozen_layer_of_a_float32_model_is_a_constant():
    """With the hidden layer frozen, the Hessian in the head is softmax regression's on the
    hidden features: (1/N) sum_i (diag p_i - p_i p_i^T) kron h~_i h~_i^T, written out here."""
    model, (x, y) = make("tanh")
    model = model.float()
    hidden, head = model[0], model[-1]
    for p in hidden.parameters():
        p.requires_grad_(False)
    x32 = x.float()
    h = torch.tanh(x @ hidden.weight.double().T + hidden.bias.double())
    p = torch.softmax(h @ head.weight.double().T + head.bias.double(), dim=1)
    k, d = head.weight.shape
    closed = torch.zeros(k * d + k, k * d + k, dtype=torch.float64)
    for pi, hi in zip(p, h):
        curv = torch.diag(pi) - torch.outer(pi, pi)
        grad_rows = torch.cat(
            [torch.kron(torch.eye(k, dtype=torch.float64), hi[None]), torch.eye(k).double()], 1
        )
        closed += grad_rows.T @ curv @ grad_rows
    closed /= len(x)
    exact = H.exact_hessian(model, ce, (x32, y))
    assert exact.shape == closed.shape and exact.dtype == torch.float64
    assert torch.allclose(exact, closed, atol=1e-6 * closed.abs().max().item())
    top = H.top_eigenvalues(model, ce, (x32, y), k=1, tol=1e-6)
    assert top.eigenvalues[0].item() == pytest.approx(
        torch.linalg.eigvalsh(closed)[-1].item(), rel=1e-4
    )


# -- 5. models that return a tuple or a dict --------------------------------------------------
class Wrapped(nn.Module):
    def __init__(self, body, kind):
        super().__init__()
        self.body, self.kind = body, kind

    def forward(self, x):
        z = self.body(x)
        if self.kind == "tuple":
            return z, x.sum()
        if self.kind == "dict":
            return {"aux": x.sum(), "logits": z}
        return {"scores": z}


@pytest.mark.parametrize("kind,output", [("tuple", None), ("dict", None), ("named", "scores")])
def test_tuple_and_dict_outputs_follow_one_rule_everywhere(kind, output):
    model, data = make("relu")
    wrapped = Wrapped(model, kind)
    for curvature in H.CURVATURES:
        plain = H.exact_hessian(model, ce, data, curvature=curvature)
        got = H.exact_hessian(wrapped, ce, data, curvature=curvature, output=output)
        assert torch.allclose(got, plain, atol=1e-12) and plain.abs().max() > 1e-3
        op = H.HessianOperator(wrapped, ce, data, curvature=curvature, output=output)
        v = torch.randn(2, op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(op.matmat(v), v @ plain, atol=1e-10)
    same = dict(probes=9, method="hutch++", seed=2)
    assert H.trace(wrapped, ce, data, output=output, **same).estimate == pytest.approx(
        H.trace(model, ce, data, **same).estimate, rel=1e-10
    )
    assert H.ggn_trace(wrapped, ce, data, output=output) == pytest.approx(
        torch.trace(H.exact_hessian(model, ce, data, curvature="ggn")).item(), rel=1e-10
    )
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    hessian = H.exact_hessian(model, ce, data)
    assert torch.allclose(
        H.pyhessian_hvp(wrapped, ce, data, v, output=output), hessian @ v, atol=1e-10
    )


def test_a_dict_without_logits_names_its_keys():
    model, data = make("relu")
    with pytest.raises(FlatnessError, match=r"keys \['scores'\].*output="):
        H.trace(Wrapped(model, "named"), ce, data)


# -- 6 and 7. PyHessian wrappers and dtypes ---------------------------------------------------
class WithUnused(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body, self.extra = body, nn.Linear(2, 2).double()

    def forward(self, x):
        return self.body(x)


def every_function(model, data, loss=ce, vector=None):
    """Each public function that checks its inputs, as a call; ``vector`` (default ones) is
    the direction for ``pyhessian_hvp``, given where ``model`` is not a module."""
    if vector is None:
        vector = torch.ones(sum(q.numel() for q in model.parameters()))
    return {
        "exact_hessian": lambda: H.exact_hessian(model, loss, data),
        "operator": lambda: H.HessianOperator(model, loss, data),
        "top_eigenvalues": lambda: H.top_eigenvalues(model, loss, data),
        "trace": lambda: H.trace(model, loss, data),
        "frobenius_norm": lambda: H.frobenius_norm(model, loss, data),
        "spectral_density": lambda: H.spectral_density(model, loss, data),
        "ggn_trace": lambda: H.ggn_trace(model, loss, data),
        "pyhessian_estimate": lambda: H.pyhessian_estimate(model, loss, data),
        "pyhessian_hvp": lambda: H.pyhessian_hvp(model, loss, data, vector),
    }


def test_pyhessian_wrappers_run_the_same_checks():
    model, data = make("tanh")
    for call in every_function(WithUnused(model), data).values():
        with pytest.raises(FlatnessError, match=r"extra\.weight, extra\.bias do not affect"):
            call()


def test_dtype_mismatches_get_one_message_from_every_function():
    model, (x, y) = make("tanh")
    for name, call in every_function(model.float(), (x, y)).items():
        with pytest.raises(FlatnessError, match=r"inputs are torch\.float64.*torch\.float32"):
            call()
        assert name
    model = model.double()
    for name, call in every_function(model, (x, y.int())).items():
        with pytest.raises(FlatnessError, match=r"targets are torch\.int32.*torch\.int64"):
            call()
        assert name


# -- non-finite data and labels out of range --------------------------------------------------
def test_an_infinite_input_that_keeps_the_loss_finite_is_refused_everywhere():
    model, (x, y) = make("tanh")
    bad = x.clone()
    bad[0, 0] = math.inf
    # the kind: tanh saturates, so the loss stays finite while its Hessian is NaN
    assert torch.isfinite(ce(model(bad), y))
    first, last = model[0], model[2]

    def loss(w):  # the loss as a function of the first layer's weights, by hand
        hidden = torch.tanh(nn.functional.linear(bad, w, first.bias))
        return ce(nn.functional.linear(hidden, last.weight, last.bias), y)

    dense = torch.autograd.functional.hessian(loss, first.weight.detach().clone())
    assert torch.isnan(dense).any()
    for name, call in every_function(model, (bad, y)).items():
        with pytest.raises(FlatnessError, match=r"inputs of the batch have 1 inf or NaN entry"):
            call()
        assert name
    # in a later batch of a loader (the first is checked with the model), named by its index
    loader = DataLoader(TensorDataset(bad.flip(0), y.flip(0)), batch_size=10)
    for call in (lambda: H.trace(model, ce, loader), lambda: H.exact_hessian(model, ce, loader)):
        with pytest.raises(FlatnessError, match=r"inputs of the loader's batch 4 have 1 inf"):
            call()


def test_labels_out_of_range_name_the_labels_and_the_output_shape():
    model, (x, y) = make("tanh")
    wrong = y.clone()
    wrong[3] = 7  # four classes
    for name, call in every_function(model, (x, wrong)).items():
        with pytest.raises(
            FlatnessError,
            match=r"loss_fn fails on the first batch \(model output of shape \(50, 4\), "
            r"targets of shape \(50,\) torch\.int64, labels 0 to 7\)",
        ):
            call()
        assert name


# -- the exact GGN trace ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["logreg", "tanh", "relu", "cnn"])
def test_ggn_trace_equals_the_dense_gauss_newton_trace(name):
    model, data = make(name)
    dense = torch.trace(H.exact_hessian(model, ce, data, curvature="ggn")).item()
    assert H.ggn_trace(model, ce, data, chunk_bytes=2**12) == pytest.approx(dense, rel=1e-10)
    # an rtol the probe budget reaches: the check below is then at the stated accuracy
    estimate = H.trace(model, ce, data, method="ggn+hutchinson", rtol=0.05, seed=1)
    truth = torch.trace(H.exact_hessian(model, ce, data)).item()
    assert estimate.converged and estimate.exact_part == pytest.approx(dense, rel=1e-10)
    assert abs(estimate.estimate - truth) <= 4 * estimate.stderr + 1e-12 * abs(truth)


def test_ggn_trace_refuses_batch_statistics():
    model, data = make("cnn")
    with pytest.raises(FlatnessError, match="bn_mode='train'"):
        H.ggn_trace(model, ce, data, bn_mode="train")


class TwiceApplied(nn.Module):
    """One Linear used twice: its per-example gradient is no single outer product."""

    def __init__(self):
        super().__init__()
        self.square = nn.Linear(6, 6).double()
        self.head = nn.Linear(6, 4).double()

    def forward(self, x):
        return self.head(torch.tanh(self.square(torch.tanh(self.square(x)))))


class Sequence(nn.Module):
    """A Linear over (examples, positions, features), BatchNorm1d and LayerNorm (the last has
    no outer-product form: per-example products instead)."""

    def __init__(self, norm):
        super().__init__()
        self.mix = nn.Linear(3, 5).double()
        self.norm = (nn.BatchNorm1d(10) if norm == "bn" else nn.LayerNorm(10)).double()
        self.head = nn.Linear(10, 4).double()

    def forward(self, x):
        h = torch.tanh(self.mix(x.reshape(len(x), 2, 3))).reshape(len(x), 10)
        return self.head(self.norm(h))


@pytest.mark.parametrize("build", ["frozen-first", "twice", "mlp", "bn", "ln", "cnn"])
def test_ggn_trace_from_layer_gradients_matches_the_dense_gauss_newton(build):
    model, data = make("cnn" if build == "cnn" else "tanh")
    torch.manual_seed(3)
    if build == "frozen-first":
        model[0].weight.requires_grad_(False)
    if build == "twice":
        model = TwiceApplied()
    if build in ("bn", "ln"):
        model = Sequence(build)
        with torch.no_grad():  # running statistics that are not the batch's own
            model.train()(data[0] * 1.5 + 0.2)
        model.eval()
    dense = torch.trace(H.exact_hessian(model, ce, data, curvature="ggn")).item()
    assert H.ggn_trace(model, ce, data) == pytest.approx(dense, rel=1e-10)
    run = H.trace(model, ce, data, rtol=0.02, seed=4)
    truth = torch.trace(H.exact_hessian(model, ce, data)).item()
    # LayerNorm has no layer-gradient form: only there does "auto" go straight to probes
    assert run.method.startswith("ggn+") == (build != "ln") and run.converged
    assert abs(run.estimate - truth) <= 4 * run.stderr + 1e-9 * abs(truth)


def one_hot_squared_error(out, t):
    """A mean squared error against one-hot labels: F.one_hot reads the labels' values, which
    torch.func.vmap cannot do one example at a time."""
    return ((out - nn.functional.one_hot(t, out.shape[1]).to(out)) ** 2).mean()


def test_a_loss_vmap_cannot_split_falls_back_to_probes():
    model, data = make("tanh")
    truth = torch.trace(H.exact_hessian(model, one_hot_squared_error, data)).item()
    with pytest.raises(NotSeparable, match="one example at a time"):
        H.ggn_trace(model, one_hot_squared_error, data)
    with pytest.raises(NotSeparable, match="one example at a time"):
        H.trace(model, one_hot_squared_error, data, method="ggn+hutchinson")
    run = H.trace(model, one_hot_squared_error, data, rtol=0.02, seed=1)
    assert not run.method.startswith("ggn+") and run.converged
    assert abs(run.estimate - truth) <= 4 * run.stderr and abs(truth) > 1e-3


# -- gradients off in the caller --------------------------------------------------------------
def every_value(model, data):
    """What each public function that differentiates returns, as tensors and numbers."""
    p = sum(q.numel() for q in model.parameters())
    v = torch.linspace(-1, 1, p, dtype=torch.float64)
    return {
        "exact_hessian": H.exact_hessian(model, ce, data),
        "operator": H.HessianOperator(model, ce, data).matmat(torch.stack([v, 2 * v])),
        "top_eigenvalues": H.top_eigenvalues(model, ce, data, k=2).eigenvalues,
        "trace": H.trace(model, ce, data, probes=9).estimate,
        "auto trace": H.trace(model, ce, data, rtol=0.05).estimate,
        "frobenius_norm": H.frobenius_norm(model, ce, data, probes=9).estimate,
        "spectral_density": H.spectral_density(model, ce, data, steps=5, probes=2).nodes,
        "ggn_trace": H.ggn_trace(model, ce, data),
        "pyhessian_estimate": H.pyhessian_estimate(model, ce, data, max_iter=5).trace,
        "pyhessian_hvp": H.pyhessian_hvp(model, ce, data, v),
    }


def test_every_function_works_under_no_grad_and_inference_mode():
    model, (x, y) = make("tanh")
    expected = every_value(model, (x, y))
    with torch.no_grad():
        got = {"no_grad": every_value(model, (x, y))}
    with torch.inference_mode():
        got["inference_mode"] = every_value(model, (x, y))
        made_there = x.clone(), y.clone()  # inference tensors, which autograd may not save
        got["data made in inference_mode"] = every_value(model, made_there)
    for mode, values in got.items():
        for name, value in values.items():
            want = expected[name]
            same = torch.equal(value, want) if torch.is_tensor(want) else value == want
            assert same, (mode, name)
    with torch.inference_mode():
        frozen = make("tanh")[0]
    with pytest.raises(FlatnessError, match="inference_mode.*outside inference_mode"):
        H.trace(frozen, ce, (x, y))


# -- arguments of the wrong kind --------------------------------------------------------------
class ScalarFirst(nn.Module):
    """Returns (a scalar, the logits): the default rule takes the scalar."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x.mean(), self.body(x)


def test_arguments_of_the_wrong_kind_get_one_message_from_every_function():
    model, (x, y) = make("tanh")
    v = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    cases = [
        (None, ce, (x, y), r"model must be a torch\.nn\.Module, got NoneType"),
        (lambda t: t, ce, (x, y), r"model must be a torch\.nn\.Module, got a function"),
        (model, None, (x, y), "loss_fn must be a callable"),
        (model, "cross_entropy", (x, y), "loss_fn must be a callable.*'cross_entropy'"),
        (model, ce, (x, y[:30]), "inputs hold 50 examples but the targets 30"),
        (ScalarFirst(model), ce, (x, y), r"shape \(\).*tuple.*output=.*one row per example"),
    ]
    for model_, loss, data, pattern in cases:
        for name, call in every_function(model_, data, loss, vector=v).items():
            with pytest.raises(FlatnessError, match=pattern):
                call()
            assert name
    with pytest.raises(FlatnessError, match=r"model must be a torch\.nn\.Module"):
        H.weight_norm(None)
    # choosing the logits makes the same model fine
    assert torch.equal(
        H.exact_hessian(ScalarFirst(model), ce, (x, y), output=1),
        H.exact_hessian(model, ce, (x, y)),
    )


# -- layers that compute with a tensor derived from their parameter ---------------------------
class SpectralNormed(nn.Module):
    """tanh MLP whose first layer has the hook-based spectral norm (``weight_orig`` is the
    parameter, ``weight = weight_orig / (u^T weight_orig v)`` is recomputed before each call)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.utils.spectral_norm(nn.Linear(6, 8))
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def hand_ggn_trace(model: SpectralNormed, x, y) -> float:
    """Tr of the Gauss-Newton matrix (1/n) sum_i J_i^T (diag p_i - p_i p_i^T) J_i, with J the
    Jacobian of a hand-written forward pass in the flat parameters (eval mode: u, v fixed)."""
    u, v = model.a.weight_u, model.a.weight_v
    sizes = [(8, 6), (8,), (3, 8), (3,)]
    theta = torch.cat(
        [t.detach().reshape(-1) for t in (model.a.weight_orig, model.a.bias, *model.b.parameters())]
    )

    def logits(flat, xi):
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(flat.split([48, 8, 24, 3]), sizes))
        return w2 @ torch.tanh((w1 / (u @ w1 @ v)) @ xi + b1) + b2

    total = 0.0
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda f, xi=xi: logits(f, xi), theta)
        p = torch.softmax(logits(theta, xi), dim=0)
        total += torch.trace(jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac).item()
    return total / len(x)


def test_the_hook_based_spectral_norm_gets_its_true_gauss_newton_trace():
    # the layer-gradient shortcut once took delta a^T, the gradient of the derived weight, for
    # that of weight_orig: ggn_trace 4.69 against 9.11
    model = SpectralNormed().double().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(37, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (37,), generator=gen)
    reference = hand_ggn_trace(model, x, y)
    assert H.ggn_trace(model, ce, (x, y)) == pytest.approx(reference, rel=1e-10)
    run = H.trace(model, ce, (x, y), rtol=0.02, seed=2)
    truth = torch.trace(H.exact_hessian(model, ce, (x, y))).item()
    assert run.converged and abs(run.estimate - truth) <= 4 * run.stderr


def test_a_loss_class_a_numpy_hessian_and_a_model_that_fails_on_its_data():
    model, (x, y) = make("tanh")
    with pytest.raises(FlatnessError, match=r"class CrossEntropyLoss.*CrossEntropyLoss\(\)"):
        H.trace(model, nn.CrossEntropyLoss, (x, y))
    narrow = x[:, :-1]
    with pytest.raises(
        FlatnessError, match=re.escape(f"first batch (inputs of shape {tuple(narrow.shape)}")
    ):
        H.top_eigenvalues(model, ce, (narrow, y))
    h = torch.diag(torch.tensor([3.0, 1.0, 1e-9, 0.0], dtype=torch.float64))
    assert H.hessian_rank(h.numpy()).ranks == {1e-4: 2, 1e-6: 2, 1e-8: 2, 1e-10: 3}
