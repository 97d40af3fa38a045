"""What every Hessian function checks before it trusts a model, a loss and the data.

A Hessian is only a number if the function it differentiates is fixed: the same examples on
every pass, a loss that is a mean over them, and one tensor of model outputs. Each check
refuses the rest with one message that says why and what to pass instead, so that no
estimator can converge on a quantity that belongs to no fixed Hessian.

The rule for model outputs (``output=`` of every function): ``None`` takes the output itself
when it is a tensor, the first element of a tuple or list, or the ``"logits"`` entry of a
mapping; an ``int`` or ``str`` indexes the output; a callable maps the output to the tensor.
The tensor chosen must have one row per example, as many as the targets.

>>> select_output((torch.ones(2), "extra"), None).shape
torch.Size([2])
>>> select_output({"logits": torch.zeros(3), "aux": 1}, None).tolist()
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.data import DataLoader

from flatness.errors import FlatnessError, unknown
from flatness.hessian.loaders import (
    all_random_states_kept,
    check_loader,
    reseed,
    uses_batch_statistics,
)

BN_MODES = ("eval", "train")
_DTYPES = (torch.float32, torch.float64)

Output = None | int | str | Callable


class ConvergenceWarning(UserWarning):
    """An adaptive estimate stopped at ``max_probes``, or a Lanczos run at ``max_steps``, short
    of the accuracy asked for; its result says ``converged=False``."""


class ModeWarning(UserWarning):
    """A model whose BatchNorm layers are in training mode, measured without ``bn_mode``: the
    default, running statistics, may not be what the caller meant."""


def warn_if_batchnorm_trains(model, stacklevel: int) -> None:
    """A :class:`ModeWarning` when a BatchNorm layer with running statistics is in training
    mode: the caller left ``bn_mode`` unset, and eval mode will be measured."""
    if not isinstance(model, nn.Module):
        return
    training = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    if training:
        warnings.warn(
            f"BatchNorm layers are in training mode ({training[0] or 'the model'}"
            + (f" and {len(training) - 1} more" if len(training) > 1 else "")
            + ") but bn_mode was not given: measuring with their running statistics "
            "(bn_mode='eval', PyHessian's convention). Pass bn_mode='train' for each batch's own "
            "statistics (the authors' convention), or bn_mode='eval' (or call model.eval()) to "
            "measure running statistics without this warning",
            ModeWarning,
            stacklevel=stacklevel + 1,
        )


def _is_inputs(x) -> bool:
    return torch.is_tensor(x) or (
        isinstance(x, (Mapping, tuple, list)) and any(map(torch.is_tensor, tree_leaves(x)))
    )


def is_batch(data) -> bool:
    """An ``(inputs, targets)`` pair: inputs a tensor (or a mapping or tuple of tensors, passed
    to the model as one argument), targets a tensor with one row per example."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and torch.is_tensor(data[1])
        and _is_inputs(data[0])
    )


def tensors(fn: Callable, inputs):
    """``fn`` applied to every tensor in (possibly nested) inputs."""
    return tree_map(lambda t: fn(t) if torch.is_tensor(t) else t, inputs)


#: the device types whose autocast a measurement switches off
AUTOCAST_DEVICES = ("cpu", "cuda")


def at_model_precision() -> contextlib.ExitStack:
    """A context in which the caller's autocast is off, so that the model computes in its own
    dtype: under ``torch.autocast(..., dtype=torch.bfloat16)`` a Hessian-vector product would
    silently run in bf16 (about 3 significant digits) and an estimate would converge on it."""
    stack = contextlib.ExitStack()
    for device in AUTOCAST_DEVICES:
        if torch.is_autocast_enabled(device):
            stack.enter_context(torch.autocast(device, enabled=False))
    return stack


def in_model_precision(fn: Callable) -> Callable:
    """``fn`` run with the caller's autocast off (:func:`at_model_precision`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with at_model_precision():
            return fn(*args, **kwargs)

    return wrapper


def _hook_dicts(model: nn.Module) -> list:
    """Every dict of gradient hooks on the model: its parameters' (``register_hook``), its
    modules' backward hooks and pre-hooks, and the global module backward hooks."""
    from torch.nn.modules import module as module_globals

    found = [getattr(p, "_backward_hooks", None) for p in model.parameters()]
    for m in model.modules():
        found += [getattr(m, "_backward_hooks", None), getattr(m, "_backward_pre_hooks", None)]
    found += [
        getattr(module_globals, "_global_backward_hooks", None),
        getattr(module_globals, "_global_backward_pre_hooks", None),
    ]
    return [d for d in found if d]


#: ids of the models a :func:`left_alone` block holds now (nested calls leave them to it)
_LEFT_ALONE: set[int] = set()


@contextlib.contextmanager
def left_alone(model):
    """Inside: none of the user's gradient hooks runs. On exit: the hooks and every buffer's
    values as they were.

    A hook that scales or masks a gradient (pruning, gradient surgery) changes what autograd
    returns, not the loss, so every product would be of another matrix; one that logs with
    ``.item()`` cannot run under ``torch.func.vmap``. A forward pass that updates a buffer (a
    counter, a running average of its own) would leave the model changed by a measurement.
    """
    if not isinstance(model, nn.Module) or id(model) in _LEFT_ALONE:
        yield  # not a model, or an outer call already holds it (a product inside an estimator)
        return
    _LEFT_ALONE.add(id(model))
    hooks = [(d, dict(d)) for d in _hook_dicts(model)]
    buffers = [(b, b.detach().clone()) for b in model.buffers() if not b.is_meta]
    for d, _ in hooks:
        d.clear()  # cleared in place: autograd holds these very dicts
    try:
        yield
    finally:
        _LEFT_ALONE.discard(id(model))
        for d, saved in hooks:
            d.clear()
            d.update(saved)
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape and not torch.equal(b, saved):
                    b.copy_(saved)


def _model_of(args: tuple, kwargs: dict):
    """The model a public function or an operator's method works on: the first module among
    the first two arguments (a method's comes after ``self``), else the operator's model."""
    for value in (*args[:2], kwargs.get("model")):
        if isinstance(value, nn.Module):
            return value
    first = args[0] if args else kwargs.get("op")
    return getattr(first, "model", None)


def with_autograd(fn: Callable) -> Callable:
    """``fn`` run with gradients recorded and at the model's own precision, whatever the
    caller's mode.

    A Hessian is a second derivative, so under ``torch.no_grad()`` or ``torch.inference_mode()``
    (a common way to call evaluation code) every estimator would fail with autograd's "does
    not require grad"; this leaves inference mode and enables gradients for the call only. The
    caller's autocast is switched off for the call (:func:`at_model_precision`), and so are the
    user's gradient hooks, while the model's buffers come back as they were (:func:`left_alone`).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            at_model_precision(),
            left_alone(_model_of(args, kwargs)),
        ):
            return fn(*args, **kwargs)

    return wrapper


def functional_forward(model: nn.Module, tensors, args: tuple):
    """``torch.func.functional_call(model, tensors, args)``, with every module's parameters and
    buffers left as they were.

    torch swaps the tensors back by name, so a submodule registered under two names (a Siamese
    network's ``self.a = self.b = shared``) was left holding the swapped-in tensors, float64
    or transformed ones in place of its Parameters (pytorch#164759): a float32 model's next
    forward failed, and the shared layer stopped training.
    """
    saved = [(d, dict(d)) for m in model.modules() for d in (m._parameters, m._buffers)]
    try:
        return torch.func.functional_call(model, tensors, args)
    finally:
        for store, was in saved:
            for name, tensor in was.items():
                if store.get(name) is not tensor:
                    store[name] = tensor


#: the checks of a model's structure run on at most this many examples of the first batch
PROBE_EXAMPLES = 32


def probe_batch(x, y: torch.Tensor, size: int = PROBE_EXAMPLES):
    """The first ``size`` examples of a batch, for checks of the model's structure (cheap on a
    large batch); the whole batch where inputs and targets do not share one row per example
    (a language model's flattened targets)."""
    n = len(y)
    leaves = [t for t in tree_leaves(x) if torch.is_tensor(t)]
    if n <= size or any(t.dim() == 0 or len(t) != n for t in leaves):
        return x, y
    return tensors(lambda t: t[:size], x), y[:size]


def check_functional(
    model: nn.Module, loss_fn: Callable, x, y, named, output: Output, what: str, error=None
) -> None:
    """Refuse, for a path built on ``torch.func.functional_call`` (``what`` it computes), a
    model it cannot run or some of whose uses of a variable it cannot see, on the batch
    ``(x, y)``: a parameter read again through a Python list, a closure or a copy kept outside
    its module's attributes (pytorch/functorch#904) would be held constant. Its gradient is
    compared with the plain autograd gradient, which sees every use.

    Raises:
        FlatnessError: (or ``error``, a subclass) naming the parameters or torch's reason, and
            the functions that differentiate the model as it runs.
    """
    error = error or FlatnessError
    others = (
        "top_eigenvalues, trace(method='hutch++'), frobenius_norm(method='hutch++') or "
        "spectral_density, which differentiate the model as it runs"
    )
    params = {n: p.detach() for n, p in named}
    buffers = dict(model.named_buffers())

    def loss_of(ps):
        return loss_fn(select_output(functional_forward(model, (ps, buffers), (x,)), output), y)

    try:
        functional = torch.func.grad(loss_of)(params)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(
            f"torch.func cannot differentiate this model ({reason}), so {what} cannot be "
            f"formed; use {others}"
        ) from None
    loss = loss_fn(select_output(model(x), output), y)
    plain = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    unseen = []
    for (name, p), g in zip(named, plain):
        g = torch.zeros_like(p) if g is None else g.detach()
        f = functional[name]
        scale = max(g.abs().max().item(), f.abs().max().item())
        if (g - f).abs().max().item() > 1e-3 * scale + 1e-30:
            unseen.append(name)
    if unseen:
        raise error(
            f"parameter(s) {', '.join(unseen)} are also read outside their module's attributes "
            "(through a Python list, a closure or a copy), where torch.func.functional_call "
            f"cannot replace them, so {what} would hold those uses constant; read each "
            f"parameter through its module (self.layer.weight), or use {others}"
        )


def examples_interact(model: nn.Module, x, output: Output) -> bool:
    """Does one example's output depend on another example's input, in this batch?

    True for BatchNorm with batch statistics, feature centring over the batch (``h -
    h.mean(0)``), a contrastive head (``e @ e.T``) and anything else that mixes examples,
    whatever module does it. With floating inputs, the Jacobian of the first example's output
    with respect to the others' inputs, and of the others' outputs with respect to the first's,
    must be exactly zero; otherwise the first example is replaced by the second and every
    other example's output must stay as it was."""
    leaves = [t for t in tree_leaves(x) if torch.is_tensor(t)]
    n = len(leaves[0]) if leaves else 0
    if n < 2:
        return False
    floating = [t for t in leaves if t.is_floating_point() and t.dim() > 0 and len(t) == n]
    if floating:
        copies = {id(t): t.detach().clone().requires_grad_(True) for t in floating}
        inputs = tree_map(lambda t: copies.get(id(t), t) if torch.is_tensor(t) else t, x)
        z = select_output(model(inputs), output)
        if z.dim() == 0 or len(z) != n:
            return True
        r = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(z)
        leaves_in = list(copies.values())
        first = torch.autograd.grad(
            (r[0] * z[0]).sum(), leaves_in, retain_graph=True, allow_unused=True
        )
        rest = torch.autograd.grad((r[1:] * z[1:]).sum(), leaves_in, allow_unused=True)
        return any(g is not None and g[1:].abs().max() > 0 for g in first) or any(
            g is not None and g[0].abs().max() > 0 for g in rest
        )
    if n < 3:
        return False
    with torch.no_grad():
        z = select_output(model(x), output)
        swapped = tensors(lambda t: torch.cat([t[1:2], t[1:]]) if t.dim() and len(t) == n else t, x)
        z2 = select_output(model(swapped), output)
    if z.dim() == 0 or len(z) != n or z2.shape != z.shape:
        return True
    return not torch.allclose(z2[2:], z[2:], rtol=1e-5, atol=1e-7)


def usable(t: torch.Tensor) -> torch.Tensor:
    """A copy of a tensor made under ``torch.inference_mode()``, which autograd may not save
    for backward (the data are constants, so a copy is the same function); others as they are."""
    return t.clone() if t.is_inference() else t


def _on(device) -> Callable:
    return lambda t: usable(t.to(device))


def select_output(outputs, output: Output) -> torch.Tensor:
    """The tensor the loss is taken of, from whatever the model returned (rule in the module doc)."""
    if callable(output):
        chosen = output(outputs)
    elif output is not None:
        if torch.is_tensor(outputs):
            raise FlatnessError(
                f"output={output!r} selects from a tuple or a mapping, but the model returns a "
                "tensor: leave output=None"
            )
        try:
            chosen = outputs[output]
        except (KeyError, IndexError, TypeError) as err:
            raise FlatnessError(
                f"output={output!r} does not select anything from the model's "
                f"{type(outputs).__name__} output ({err})"
            ) from None
    elif torch.is_tensor(outputs):
        chosen = outputs
    elif isinstance(outputs, (tuple, list)) and outputs:
        chosen = outputs[0]
    elif isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise FlatnessError(
                f"the model returns a mapping with keys {sorted(map(str, outputs))} and no "
                "'logits': pass output=<key> (or a function of the output) to choose the tensor"
            )
        chosen = outputs["logits"]
    else:
        raise FlatnessError(
            f"the model returns a {type(outputs).__name__}; pass output= (a key, an index or "
            "a function of the output, e.g. lambda out: out.logits) to choose the tensor"
        )
    if not torch.is_tensor(chosen):
        raise FlatnessError(
            f"the selected model output is a {type(chosen).__name__}, not a tensor: "
            "pass output= (an index, a key or a function) to choose the tensor"
        )
    return chosen


def require_finite(inputs, targets: torch.Tensor, where: str) -> None:
    """Refuse inf or NaN in a batch: a saturating model (tanh, sigmoid) can keep the loss
    finite on an infinite input while every second derivative through it is NaN."""
    for name, t in (("inputs", inputs), ("targets", targets)):
        for leaf in tree_leaves(t):
            # one reduction per batch on the way through; counted only to say so
            if (
                torch.is_tensor(leaf)
                and leaf.is_floating_point()
                and not bool(torch.isfinite(leaf).all())
            ):
                bad = int((~torch.isfinite(leaf)).sum())
                raise FlatnessError(
                    f"the {name} of {where} have {bad} inf or NaN entr"
                    f"{'y' if bad == 1 else 'ies'} (shape {tuple(leaf.shape)}): the "
                    "Hessian is defined on finite data only; clean or drop those examples"
                )


def batches(data, device) -> Iterator[tuple[object, torch.Tensor, int]]:
    """(inputs, targets, batch size) on ``device`` for a batch or every batch of a loader.

    A loader's passes leave the global random state as it was (DataLoader draws a seed).

    Raises:
        FlatnessError: a batch with inf or NaN in its inputs or floating targets.
    """
    if is_batch(data):
        x, y = tensors(_on(device), data[0]), usable(data[1].to(device))
        require_finite(x, y, "the batch")
        yield x, y, len(data[1])
        return
    with all_random_states_kept():
        for index, item in enumerate(data):
            if not is_batch(item):
                raise FlatnessError(
                    "each batch must be an (inputs, targets) pair of tensors; the loader "
                    f"yields a {type(item).__name__}"
                    + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                    + ": wrap its data set so that it returns (inputs, targets)"
                )
            inputs, targets = item
            if targets.dim() == 0:
                raise FlatnessError(
                    "the loader yields single examples (DataLoader(batch_size=None) over a data "
                    "set of examples): give it a batch_size"
                )
            x, y = tensors(_on(device), inputs), usable(targets.to(device))
            require_finite(x, y, f"the loader's batch {index}")
            yield x, y, len(targets)


def check_data(data, bn_mode: str = "eval", model: nn.Module | None = None) -> None:
    """Refuse data that are not one fixed operator (see :mod:`flatness.hessian.loaders`)."""
    if is_batch(data):
        if len(data[1]) == 0:
            raise FlatnessError(
                "data is empty: the Hessian of a loss over no examples is undefined"
            )
        if len(data[1]) == 1 and uses_batch_statistics(model, bn_mode):
            raise FlatnessError(
                "a batch of one example has no batch statistics for BatchNorm to normalise "
                "with; pass more examples, or bn_mode='eval' with running statistics"
            )
        return
    check_loader(data, bn_mode, model)


# -- the model and the loss --------------------------------------------------------------------
def require_module(model) -> None:
    """Refuse a model that is not a ``torch.nn.Module`` (its parameters are the variables)."""
    if not isinstance(model, nn.Module):
        raise FlatnessError(
            f"model must be a torch.nn.Module, got {_describe(model)}: the Hessian is taken "
            "with respect to a module's parameters (wrap a function in an nn.Module that "
            "holds them as nn.Parameter)"
        )


def require_loss(loss_fn) -> None:
    """Refuse a loss that cannot be called as ``loss_fn(outputs, targets)``."""
    if isinstance(loss_fn, type):  # nn.CrossEntropyLoss rather than nn.CrossEntropyLoss()
        raise FlatnessError(
            f"loss_fn is the class {loss_fn.__name__}, not a loss: pass an instance, "
            f"{loss_fn.__name__}()"
        )
    if not callable(loss_fn):
        raise FlatnessError(
            f"loss_fn must be a callable loss_fn(outputs, targets) returning the mean loss, "
            f"got {_describe(loss_fn)}: e.g. torch.nn.functional.cross_entropy or "
            "torch.nn.CrossEntropyLoss()"
        )


def _shapes(inputs) -> str:
    shapes = [tuple(t.shape) for t in tree_leaves(inputs) if torch.is_tensor(t)]
    return "of shape " + ", ".join(str(s) for s in shapes) if shapes else "with no tensors"


def _describe(value) -> str:
    if value is None or isinstance(value, (str, int, float)):
        return f"{type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"


def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of the model's parameters and buffers (None if mixed or none)."""
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def check_dtypes(model: nn.Module, inputs, targets: torch.Tensor) -> None:
    """One float32 or float64 dtype for the variables and the floating inputs; int64 labels."""
    variables = {p.dtype for p in model.parameters() if p.requires_grad}
    if len(variables) > 1 or not variables <= set(_DTYPES):
        raise FlatnessError(
            f"the model's trainable parameters are {sorted(map(str, variables))}: Hessians are "
            "computed in one dtype, torch.float32 or torch.float64 (model.float() or "
            "model.double())"
        )
    dtype = floating_dtype(model) or next(iter(variables))
    for leaf in tree_leaves(inputs):
        if torch.is_tensor(leaf) and leaf.is_floating_point() and leaf.dtype != dtype:
            raise FlatnessError(
                f"the inputs are {leaf.dtype} but the model's parameters are {dtype}: convert "
                f"one to the other (inputs.to({dtype}) or model.to({leaf.dtype}))"
            )
    if not targets.is_floating_point() and targets.dtype != torch.int64:
        raise FlatnessError(
            f"the targets are {targets.dtype}; class labels must be torch.int64 "
            "(pass targets.long())"
        )


def _scalar(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise FlatnessError(f"loss_fn must return a tensor, got a {type(value).__name__}{what}")
    if value.dim() != 0:
        raise FlatnessError(f"loss_fn must return a scalar, got shape {tuple(value.shape)}")
    return value


def check_mean_loss(
    loss_fn: Callable,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    batched: bool = False,
    per_example: str | None = None,
) -> None:
    """Refuse a loss that is not a mean over examples: the batch repeated twice must give the
    same value (a sum doubles). With ``batched`` (a loader of several batches, weighted by
    their sizes) it must also be the plain mean of per-example losses, which a loss with
    class weights or ignored labels is not; so must it for a measure that needs each example's
    own loss (``per_example`` names the measure, for the message)."""
    outputs = outputs.detach()
    try:
        value = loss_fn(outputs, targets)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        # where the model's outputs first meet the targets: a label out of range, a shape
        labels = (
            f", labels {int(targets.min())} to {int(targets.max())}"
            if not targets.is_floating_point() and targets.numel()
            else ""
        )
        raise FlatnessError(
            f"loss_fn fails on the first batch (model output of shape {tuple(outputs.shape)}, "
            f"targets of shape {tuple(targets.shape)} {targets.dtype}{labels}): {err}"
        ) from err
    single = _scalar(value, "")
    if not torch.isfinite(single):
        raise FlatnessError(f"the loss is {single.item()} (not finite) at these parameters")
    double = _scalar(loss_fn(torch.cat([outputs, outputs]), torch.cat([targets, targets])), "")
    a, b = single.item(), double.item()
    scale = max(abs(a), abs(b))
    if not (scale == 0 or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12 * scale)):
        kind = "a sum" if math.isclose(b, 2 * a, rel_tol=1e-4) else "neither a mean nor a sum"
        raise FlatnessError(
            f"loss_fn is {kind} over examples (one batch gives {a:.6g}, the same batch twice "
            f"{b:.6g}); flatness measures the Hessian of the mean loss: pass a mean-reduced "
            "loss (reduction='mean'), or divide a sum by the batch size"
        )
    if batched or per_example:
        few = min(len(targets), 16)
        each = torch.stack([loss_fn(outputs[i : i + 1], targets[i : i + 1]) for i in range(few)])
        whole = loss_fn(outputs[:few], targets[:few])
        plain = bool(torch.isfinite(each).all()) and torch.allclose(
            each.mean(), whole, rtol=1e-4, atol=1e-7 * abs(whole.item())
        )
        if not plain and per_example:
            raise FlatnessError(
                "loss_fn is not the plain mean of per-example losses (class weights, or "
                f"ignored labels?), so {per_example}, which needs each example's own loss, is "
                "not defined for it; pass a loss without class weights or ignored labels"
            )
        if not plain:
            raise FlatnessError(
                "loss_fn is not the plain mean of per-example losses (class weights, or "
                "ignored labels?), so the batches of a loader cannot be weighted by their "
                "sizes; pass the whole data set as one (inputs, targets) batch, or a loss "
                "without class weights or ignored labels"
            )


def check_loader_loss(loss_fn: Callable, data, device) -> None:
    """Refuse, for a loader of several batches, torch's cross-entropy or NLL loss with class
    weights, or with labels it ignores in any batch: such a loss is no plain mean of
    per-example losses, so batches cannot be weighted by their sizes. (The first batch is
    checked by value in :func:`check_mean_loss`; these may differ only in later batches.)"""
    if not isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return
    fix = (
        "so the batches of a loader cannot be weighted by their sizes; pass the whole data set "
        "as one (inputs, targets) batch, or a loss without"
    )
    if loss_fn.weight is not None:
        raise FlatnessError(
            f"loss_fn has class weights (weight=...): the loss of a batch is a weighted mean, "
            f"{fix} class weights"
        )
    ignored = loss_fn.ignore_index
    for _, y, _ in batches(data, device):
        if not y.is_floating_point() and bool((y == ignored).any()):
            raise FlatnessError(
                f"some targets are {ignored}, which loss_fn ignores (ignore_index): the loss of "
                f"a batch is a mean over the rest, {fix} ignored labels"
            )


def check_module(model: nn.Module) -> None:
    """Refuse non-modules, layers whose second derivatives torch gets wrong, unmaterialised
    ones, and parameters autograd cannot differentiate (made under inference mode)."""
    require_module(model)
    for name, module in model.named_modules():
        where = f"module {name!r}" if name else "the model"
        holders = getattr(module, "parametrizations", {})
        parametrized = [
            tensor
            for tensor, plist in holders.items()
            if any(type(f).__name__ == "_WeightNorm" for f in plist)
        ]
        # the old hook-based torch.nn.utils.weight_norm: undone by remove_weight_norm, which
        # the parametrize API's remove_parametrizations does not apply to
        hooked = [
            hook.name for hook in module._forward_pre_hooks.values() if isinstance(hook, WeightNorm)
        ]
        if not (parametrized or hooked) and hasattr(module, "weight_g"):
            hooked = ["weight"] if hasattr(module, "weight_v") else []
        if parametrized or hooked:
            remove = (
                f"torch.nn.utils.parametrize.remove_parametrizations(module, {parametrized[0]!r})"
                if parametrized
                else f"torch.nn.utils.remove_weight_norm(module, name={hooked[0]!r})"
            )
            raise FlatnessError(
                f"{where} uses weight normalisation, whose second derivative in torch "
                "(torch._weight_norm) is wrong: its Hessian comes out asymmetric. Remove it "
                f"({remove}) or write w = g v/|v| in the forward pass"
            )
    lazy = [n for n, p in model.named_parameters() if isinstance(p, nn.UninitializedParameter)]
    if lazy:
        raise FlatnessError(
            f"parameter(s) {', '.join(lazy)} are not initialised yet (lazy modules): run one "
            "forward pass first"
        )
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise FlatnessError(
            f"the model's tensors {', '.join(meta[:3])}{' and more' if len(meta) > 3 else ''} "
            "are on the meta device, which holds shapes but no values: materialise the model "
            "first (model.to_empty(device='cpu'), then load_state_dict with its weights)"
        )
    frozen = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_inference()]
    if frozen:
        raise FlatnessError(
            f"the model's tensors {', '.join(frozen[:3])}{' and more' if len(frozen) > 3 else ''} "
            "were made under torch.inference_mode(), and autograd cannot differentiate through "
            "such tensors: build or load the model outside inference_mode (torch.no_grad() is "
            "fine)"
        )


@contextlib.contextmanager
def dense_embeddings(model: nn.Module):
    """Embeddings made with ``sparse=True`` give dense gradients inside the block.

    A sparse gradient is the same derivative in another layout, which second derivatives and
    ``torch.func`` cannot take; the Hessian does not change. The flags are restored on exit.
    """
    sparse = [m for m in model.modules() if getattr(m, "sparse", False) is True]
    try:
        for m in sparse:
            m.sparse = False
        yield
    finally:
        for m in sparse:
            m.sparse = True


@contextlib.contextmanager
def curvature_modes(model: nn.Module, bn_mode: str):
    """Eval mode everywhere (no dropout noise), BatchNorm in eval or batch-statistics mode.

    In ``"train"`` mode BatchNorm normalises with each batch's statistics and does not touch its
    running averages. Embeddings give dense gradients (:func:`dense_embeddings`). Every
    module's mode and flag is restored on exit.
    """
    if bn_mode not in BN_MODES:
        raise unknown("bn_mode", bn_mode, BN_MODES)
    stack = contextlib.ExitStack()
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    try:
        stack.enter_context(dense_embeddings(model))
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False
        yield
    finally:
        # through train(), parents first, so that overrides of train() see the change back
        for m, training, track in saved:
            m.train(training)
            if track is not None:
                m.track_running_stats = track
        stack.close()


#: torch.utils.checkpoint's warning when, with use_reentrant=True, no input requires grad
_REENTRANT = "None of the inputs have requires_grad=True"


def _reentrant_checkpoint(seen: list) -> bool:
    """Whether the warnings a forward pass gave (``seen``) include reentrant checkpointing's
    'gradients will be None'; every other warning is given again, as the model gave it."""
    found = False
    for w in seen:
        if _REENTRANT in str(w.message):
            found = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return found


def check_model(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    bn_mode: str,
    output: Output,
    create_graph: bool = False,
):
    """Run every check on the first batch; returns the trainable ``(name, parameter)`` pairs
    and the first batch's gradients (with their graph when ``create_graph``).

    Frozen parameters (``requires_grad=False``) are constants, not variables of the Hessian.
    """
    if bn_mode not in BN_MODES:
        raise unknown("bn_mode", bn_mode, BN_MODES)
    check_module(model)
    require_loss(loss_fn)
    check_data(data, bn_mode, model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise FlatnessError("the model has no parameters that require gradients")
    device = named[0][1].device
    first = next(batches(data, device), None)
    if first is None or first[2] == 0:
        raise FlatnessError("data is empty: the loader yields no examples")
    x, y, n = first
    check_dtypes(model, x, y)
    several = isinstance(data, DataLoader) and len(data) > 1
    with curvature_modes(model, bn_mode):
        with all_random_states_kept(device):
            reseed(0, device)
            try:
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    raw = model(x)
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                # the first forward pass is where a model and its data first meet: name both
                raise FlatnessError(
                    f"the model fails on the first batch (inputs {_shapes(x)}): {err}"
                ) from err
            reentrant = _reentrant_checkpoint(seen)
            out = select_output(raw, output)
            before = [(n, b.detach().clone()) for n, b in model.named_buffers()]
            reseed(1, device)
            again = select_output(model(x), output).detach()
            changed = [n for (n, b0), b in zip(before, model.buffers()) if not torch.equal(b, b0)]
        check_rows(out, raw, x, n, output)
        first = out.detach()
        if first.shape != again.shape or not bool(
            ((first == again) | (first.isnan() & again.isnan())).all()
        ):
            if changed:
                raise FlatnessError(
                    f"the model's forward pass changes its buffer(s) {', '.join(changed[:3])} "
                    "and its output with them (a running average or a state of its own), so "
                    "every pass computes another function and there is no fixed Hessian; leave "
                    "the buffers alone in eval mode (when not self.training)"
                )
            raise FlatnessError(
                "the model's forward pass draws random numbers even in eval mode (dropout "
                "with training=True, injected noise), so it has no fixed Hessian; make the "
                "forward pass deterministic in eval mode"
            )
        check_mean_loss(loss_fn, out, y, batched=several)
        if several:
            check_loader_loss(loss_fn, data, device)
        loss = loss_fn(out, y)
        if not loss.requires_grad:
            raise FlatnessError(
                "the loss does not depend on any trainable parameter of the model: the output "
                "it is taken of was computed without them (output= selects a part of the "
                "model's output that no parameter reaches?); choose the output the parameters "
                "produce"
            )
        grads = torch.autograd.grad(
            loss, [p for _, p in named], allow_unused=True, create_graph=create_graph
        )
    unused = [n for (n, _), g in zip(named, grads) if g is None]
    if unused and reentrant:
        raise FlatnessError(
            f"parameter(s) {', '.join(unused)} get no gradient: the model runs them inside "
            "torch.utils.checkpoint with use_reentrant=True, whose inputs here do not require "
            "gradients (torch warns that gradients will be None); checkpoint with "
            "use_reentrant=False, which the estimators differentiate, or measure without "
            "checkpointing"
        )
    if unused:
        raise FlatnessError(
            f"parameter(s) {', '.join(unused)} do not affect the loss, so their Hessian "
            "rows are undefined here; freeze them (requires_grad=False) or remove them"
        )
    return named, grads


def check_rows(out: torch.Tensor, raw, inputs, n: int, output: Output) -> None:
    """Refuse model outputs without one row per example: the loss is a mean over rows, and
    batches are weighted by their number of targets."""
    if out.dim() > 0 and len(out) == n:
        return
    if torch.is_tensor(inputs) and inputs.dim() > 0 and len(inputs) != n:
        raise FlatnessError(
            f"the inputs hold {len(inputs)} examples but the targets {n}: pass one target per "
            "example (inputs and targets of the same length)"
        )
    chosen = (
        ""
        if torch.is_tensor(raw) or output is not None
        else " (taken by default from the model's "
        f"{type(raw).__name__}: a tuple's first element, a mapping's 'logits'; pass output= "
        "(an index, a key or a function of the output) to choose another)"
    )
    raise FlatnessError(
        f"the model output the loss is taken of has shape {tuple(out.shape)}{chosen}, but "
        f"the batch has {n} targets: it must have one row per example"
    )


def check_options(*, seed=0, l2=0.0) -> None:
    """The options every function shares: an integer seed and a finite l2 >= 0 (a
    regulariser's coefficient; training refuses a negative weight decay alike)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise FlatnessError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    if not isinstance(l2, (int, float)) or isinstance(l2, bool) or not math.isfinite(l2):
        raise FlatnessError(f"l2 must be a finite number, got {l2!r}")
    if l2 < 0:
        raise FlatnessError(
            f"l2 must be >= 0 (the coefficient of the penalty (l2 / 2) ||w||^2), got {l2!r}"
        )
