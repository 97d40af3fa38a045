"""Models whose examples interact without a BatchNorm module, and weights read outside their
module: the per-example and torch.func shortcuts must see them, and fall back or refuse.

The right values come from hand-written float64 forwards differentiated by
``torch.autograd.functional.hessian``, which share no code with the package.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatness import hessian as H
from flatness.errors import FlatnessError
from flatness.hessian.gauss_newton import NotSeparable

ce = nn.functional.cross_entropy
N = 30


def data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (N,), generator=gen)


def mean_ce(logits, y):
    return (torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean()


def split(theta, shapes):
    return [t.reshape(s) for t, s in zip(torch.split(theta, [s.numel() for s in shapes]), shapes)]


def reference_hessian(model, forward, x, y) -> torch.Tensor:
    """The dense Hessian of mean cross-entropy of ``forward(params, x)``, params in model order."""
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    return torch.autograd.functional.hessian(
        lambda theta: mean_ce(forward(split(theta, shapes), x), y), flat
    )


def assert_estimates_match(model, data, truth: torch.Tensor):
    """``trace()`` within 4 of its standard errors of ``truth``'s trace, and the top
    eigenvalue (float64, tol 1e-10) to 1e-8 of ``truth``'s; returns the trace estimate."""
    run = H.trace(model, ce, data, rtol=0.01, seed=0)
    exact = torch.trace(truth).item()
    assert abs(run.estimate - exact) <= 4 * run.stderr + 1e-9 * abs(exact)
    top = H.top_eigenvalues(model, ce, data, k=1, tol=1e-10, seed=0)
    largest = torch.linalg.eigvalsh(truth)[-1].item()
    assert top.eigenvalues[0].item() == pytest.approx(largest, rel=1e-8)
    return run


class Centred(nn.Module):
    """Features centred over the batch: ``h - h.mean(0)``."""

    def __init__(self):
        super().__init__()
        self.l, self.o = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.l(x))
        return self.o(h - h.mean(0))

    @staticmethod
    def reference(p, x):
        w, b, v, c = p
        h = torch.tanh(x @ w.T + b)
        return (h - h.mean(0)) @ v.T + c


class FunctionalBatchNorm(nn.Module):
    """``F.batch_norm`` with batch statistics and no BatchNorm module."""

    def __init__(self):
        super().__init__()
        self.l, self.o = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.o(torch.tanh(F.batch_norm(self.l(x), None, None, training=True)))

    @staticmethod
    def reference(p, x):
        w, b, v, c = p
        a = x @ w.T + b
        normed = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + 1e-5)
        return torch.tanh(normed) @ v.T + c


class Contrastive(nn.Module):
    """A SimCLR-style head: every example's logits are its similarities to the batch."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 5)

    def forward(self, x):
        e = torch.tanh(self.l(x))
        return e @ e.T

    @staticmethod
    def reference(p, x):
        w, b = p
        e = torch.tanh(x @ w.T + b)
        return e @ e.T


COUPLED = [Centred, FunctionalBatchNorm, Contrastive]


def coupled(kind):
    torch.manual_seed(0)
    model = kind().double()
    x, y = data()
    return model, x, (torch.arange(N) if kind is Contrastive else y)


@pytest.mark.parametrize("kind", COUPLED, ids=lambda k: k.__name__)
def test_coupled_examples_get_the_whole_batch_trace_not_a_per_example_one(kind):
    model, x, y = coupled(kind)
    truth = torch.trace(reference_hessian(model, kind.reference, x, y)).item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", H.ConvergenceWarning)
        run = H.trace(model, ce, (x, y), rtol=0.01, seed=0)
    assert not run.method.startswith("ggn+")
    assert abs(run.estimate - truth) <= 4 * run.stderr + 1e-9 * abs(truth)
    assert torch.trace(H.exact_hessian(model, ce, (x, y))).item() == pytest.approx(truth, rel=1e-9)


@pytest.mark.parametrize("kind", COUPLED, ids=lambda k: k.__name__)
def test_the_per_example_ggn_trace_refuses_coupled_examples(kind):
    model, x, y = coupled(kind)
    with pytest.raises(NotSeparable, match="depends on other examples' inputs"):
        H.ggn_trace(model, ce, (x, y))


class Tokens(nn.Module):
    """Integer inputs (no input gradient to probe); ``centre`` mixes the batch."""

    def __init__(self, centre: bool):
        super().__init__()
        self.centre = centre
        self.e, self.o = nn.Embedding(7, 4), nn.Linear(4, 3)

    def forward(self, t):
        h = torch.tanh(self.e(t).mean(1))
        return self.o(h - h.mean(0) if self.centre else h)


@pytest.mark.parametrize("centre", [False, True])
def test_integer_inputs_are_probed_by_replacing_an_example(centre):
    torch.manual_seed(0)
    model = Tokens(centre).double()
    gen = torch.Generator().manual_seed(1)
    t, y = torch.randint(0, 7, (N, 3), generator=gen), torch.randint(0, 3, (N,), generator=gen)
    if centre:
        with pytest.raises(NotSeparable, match="depends on other examples' inputs"):
            H.ggn_trace(model, ce, (t, y))
    else:
        exact = torch.trace(H.exact_hessian(model, ce, (t, y), curvature="ggn")).item()
        assert H.ggn_trace(model, ce, (t, y)) == pytest.approx(exact, rel=1e-10)


def test_independent_examples_keep_the_exact_ggn_split():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = data()
    run = H.trace(model, ce, (x, y), rtol=0.01, seed=0)
    assert run.method.startswith("ggn+")


# -- a weight read outside its module -----------------------------------------------------------


class ListedWeight(nn.Module):
    """``l.weight`` read again through a plain Python list (pytorch/functorch#904)."""

    def __init__(self):
        super().__init__()
        self.l, self.o = nn.Linear(4, 4), nn.Linear(4, 3)
        self.kept = [self.l.weight]

    def forward(self, x):
        return self.o(torch.tanh(torch.tanh(self.l(x)) @ self.kept[0].T))

    @staticmethod
    def reference(p, x):
        w, b, v, c = p
        return torch.tanh(torch.tanh(x @ w.T + b) @ w.T) @ v.T + c


class ClosedOverWeight(nn.Module):
    """``l.weight`` read again through a closure made at construction."""

    def __init__(self):
        super().__init__()
        self.l, self.o = nn.Linear(4, 4), nn.Linear(4, 3)
        weight = self.l.weight
        self.mix = lambda h: h @ weight.T

    def forward(self, x):
        return self.o(torch.tanh(self.mix(torch.tanh(self.l(x)))))

    reference = ListedWeight.reference


HIDDEN = [ListedWeight, ClosedOverWeight]


def hidden(kind):
    torch.manual_seed(0)
    model = kind().double()
    return model, *data(1)


@pytest.mark.parametrize("kind", HIDDEN, ids=lambda k: k.__name__)
def test_a_weight_read_outside_its_module_gets_the_right_trace_and_top_eigenvalue(kind):
    model, x, y = hidden(kind)
    truth = reference_hessian(model, kind.reference, x, y)
    assert_estimates_match(model, (x, y), truth)


@pytest.mark.parametrize("kind", HIDDEN, ids=lambda k: k.__name__)
def test_paths_built_on_functional_call_refuse_a_weight_they_cannot_see(kind):
    model, x, y = hidden(kind)
    with pytest.raises(FlatnessError, match=r"l\.weight are also read outside"):
        H.exact_hessian(model, ce, (x, y))
    with pytest.raises(NotSeparable, match=r"l\.weight are also read outside"):
        H.ggn_trace(model, ce, (x, y))
    with pytest.raises(FlatnessError, match=r"l\.weight are also read outside"):
        H.HessianOperator(model, ce, (x, y), curvature="ggn")


# -- a custom autograd.Function torch.func cannot run --------------------------------------------


class _Square(torch.autograd.Function):
    """x^2 as an old-style Function (no ``setup_context``): autograd runs it, torch.func not."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class OldFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.l, self.o = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.o(_Square.apply(torch.tanh(self.l(x))))

    @staticmethod
    def reference(p, x):
        w, b, v, c = p
        return torch.tanh(x @ w.T + b).square() @ v.T + c


def test_a_function_torch_func_cannot_run_is_estimated_and_refused_only_where_needed():
    torch.manual_seed(0)
    model, (x, y) = OldFunction().double(), data(2)
    truth = reference_hessian(model, OldFunction.reference, x, y)
    assert_estimates_match(model, (x, y), truth)
    for refused in (
        lambda: H.exact_hessian(model, ce, (x, y)),
        lambda: H.HessianOperator(model, ce, (x, y), curvature="ggn"),
    ):
        with pytest.raises(
            FlatnessError,
            match="^torch.func cannot differentiate this model .* use top_eigenvalues",
        ):
            refused()


# -- sparse embeddings, a forward that fixes its dtype, a language model's flattened logits -------


class Bag(nn.Module):
    """Token embeddings averaged per example; ``sparse`` as the user made them."""

    def __init__(self, sparse: bool):
        super().__init__()
        self.e, self.o = nn.Embedding(7, 4, sparse=sparse), nn.Linear(4, 3)

    def forward(self, t):
        return self.o(torch.tanh(self.e(t).mean(1)))

    @staticmethod
    def reference(p, t):
        e, v, c = p
        return torch.tanh(e[t].mean(1)) @ v.T + c


def tokens(seed=1, n=N, length=3, vocab=7, classes=3):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, vocab, (n, length), generator=gen),
        torch.randint(0, classes, (n,), generator=gen),
    )


def test_sparse_embeddings_are_measured_and_stay_sparse():
    torch.manual_seed(0)
    model, (t, y) = Bag(sparse=True).double(), tokens()
    truth = reference_hessian(model, Bag.reference, t, y)
    torch.testing.assert_close(H.exact_hessian(model, ce, (t, y)), truth, rtol=1e-10, atol=1e-12)
    assert_estimates_match(model, (t, y), truth)
    ggn = torch.trace(H.exact_hessian(model, ce, (t, y), curvature="ggn")).item()
    assert H.ggn_trace(model, ce, (t, y)) == pytest.approx(ggn, rel=1e-10)
    H.pyhessian_estimate(model, ce, (t, y), max_iter=3, seed=0)
    assert model.e.sparse is True
    ce(model(t), y).backward()
    assert model.e.weight.grad.is_sparse  # the user's training still gets sparse gradients


class FixesDtype(nn.Module):
    """A forward that casts its input to float32 whatever the model's dtype."""

    def __init__(self):
        super().__init__()
        self.l, self.o = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.o(torch.tanh(self.l(x.float())))

    @staticmethod
    def reference(p, x):
        w, b, v, c = p
        return torch.tanh(x @ w.T + b) @ v.T + c


def test_a_forward_that_fixes_its_dtype_is_estimated_and_its_exact_hessian_refused_clearly():
    torch.manual_seed(0)
    model, (x, y) = FixesDtype(), data(3)
    x = x.float()
    truth = reference_hessian(model, FixesDtype.reference, x.double(), y)
    top = H.top_eigenvalues(model, ce, (x, y), k=1, tol=1e-6, seed=0)
    assert top.eigenvalues[0].item() == pytest.approx(
        torch.linalg.eigvalsh(truth)[-1].item(), rel=1e-4
    )
    with pytest.raises(
        FlatnessError, match=r"^the model's forward pass fixes its own dtype .*x\.to\("
    ):
        H.exact_hessian(model, ce, (x, y))


class TinyLanguageModel(nn.Module):
    """Next-token logits flattened to (N*T, V), as ``logits.view(-1, V)`` does."""

    def __init__(self, vocab=6, width=4):
        super().__init__()
        self.e, self.o = nn.Embedding(vocab, width), nn.Linear(width, vocab)

    def forward(self, t):
        logits = self.o(torch.tanh(self.e(t)))
        return logits.reshape(-1, logits.shape[-1])

    @staticmethod
    def reference(p, t):
        e, v, c = p
        return (torch.tanh(e[t]) @ v.T + c).reshape(-1, c.shape[0])


def test_a_language_models_flattened_logits_get_the_trace_and_a_clear_ggn_refusal():
    torch.manual_seed(0)
    model = TinyLanguageModel().double()
    gen = torch.Generator().manual_seed(4)
    t = torch.randint(0, 6, (8, 5), generator=gen)
    y = torch.randint(0, 6, (40,), generator=gen)
    truth = reference_hessian(model, TinyLanguageModel.reference, t, y)
    run = H.trace(model, ce, (t, y), rtol=0.01, seed=0)
    exact = torch.trace(truth).item()
    assert abs(run.estimate - exact) <= 4 * run.stderr + 1e-9 * abs(exact)
    torch.testing.assert_close(H.exact_hessian(model, ce, (t, y)), truth, rtol=1e-10, atol=1e-12)
    with pytest.raises(NotSeparable, match="not one row per input example"):
        H.ggn_trace(model, ce, (t, y))


# -- DataParallel and activation checkpointing ----------------------------------------------------


class Checkpointed(nn.Module):
    """The hidden layer under ``torch.utils.checkpoint``."""

    def __init__(self, reentrant: bool):
        super().__init__()
        self.l, self.o = nn.Linear(4, 5), nn.Linear(5, 3)
        self.reentrant = reentrant

    def forward(self, x):
        hidden = torch.utils.checkpoint.checkpoint(
            lambda t: torch.tanh(self.l(t)), x, use_reentrant=self.reentrant
        )
        return self.o(hidden)

    @staticmethod
    def reference(p, x):
        w, b, v, c = p
        return torch.tanh(x @ w.T + b) @ v.T + c


def tanh_mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


@pytest.mark.parametrize("wrapped", ["DataParallel", "checkpoint"])
def test_wrappers_torch_func_cannot_run_are_estimated_and_refused_only_where_needed(wrapped):
    torch.manual_seed(0)
    inner = tanh_mlp().double() if wrapped == "DataParallel" else Checkpointed(False).double()
    model = nn.DataParallel(inner) if wrapped == "DataParallel" else inner
    x, y = data(5)
    truth = reference_hessian(inner, Checkpointed.reference, x, y)
    assert_estimates_match(model, (x, y), truth)
    for refused in (
        lambda: H.exact_hessian(model, ce, (x, y)),
        lambda: H.exact_hessian(model, ce, (x, y), curvature="ggn"),
        lambda: H.top_eigenvalues(model, ce, (x, y), curvature="ggn"),
    ):
        with pytest.raises(FlatnessError, match="^torch.func cannot differentiate this model"):
            refused()


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_reentrant_checkpointing_is_refused_for_what_it_is():
    torch.manual_seed(0)
    model, (x, y) = Checkpointed(True).double(), data(5)
    for call in (
        lambda: H.trace(model, ce, (x, y)),
        lambda: H.top_eigenvalues(model, ce, (x, y)),
        lambda: H.exact_hessian(model, ce, (x, y)),
    ):
        with pytest.raises(
            FlatnessError, match=r"l\.weight, l\.bias get no gradient: .*use_reentrant=False"
        ):
            call()


# -- losses that are no plain mean, over a loader whose first batch hides it --------------------


def _loader_with(later_targets):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = data(6)
    y[:10] = 0  # the first batch: one class, nothing ignored
    y[-5:] = later_targets
    return model, x, y, DataLoader(TensorDataset(x, y), batch_size=10)


def test_labels_ignored_only_in_later_batches_are_refused_on_a_loader_and_right_in_one_batch():
    model, x, y, loader = _loader_with(-100)
    with pytest.raises(FlatnessError, match="some targets are -100, which loss_fn ignores"):
        H.exact_hessian(model, nn.CrossEntropyLoss(), loader)
    with pytest.raises(FlatnessError, match="ignore_index"):
        H.trace(model, nn.CrossEntropyLoss(), loader)
    # in one batch the loss is what it is: the mean over the examples it keeps
    kept = y != -100

    def forward(p, x):
        w, b, v, c = p
        return torch.tanh(x @ w.T + b) @ v.T + c

    truth = reference_hessian(model, lambda p, x: forward(p, x)[kept], x, y[kept])
    found = H.exact_hessian(model, nn.CrossEntropyLoss(), (x, y))
    torch.testing.assert_close(found, truth, rtol=1e-10, atol=1e-12)


def test_class_weights_are_refused_on_a_loader_whose_first_batch_is_one_class():
    model, _, _, loader = _loader_with(2)
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    with pytest.raises(FlatnessError, match=r"loss_fn has class weights \(weight=\.\.\.\)"):
        H.top_eigenvalues(model, loss, loader)
