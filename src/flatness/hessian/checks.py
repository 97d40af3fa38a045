"""What every Hessian function checks before it trusts a model, a loss and the data.

A Hessian is only a number if the function it differentiates is fixed: the same examples on
every pass, a loss that is a mean over them, and one tensor of model outputs. Each check
refuses the rest with one message that says why and what to pass instead, so that no
estimator can converge on a quantity that belongs to no fixed Hessian.

The rule for model outputs (``output=`` of every function): ``None`` takes the output itself
when it is a tensor, the first element of a tuple or list, or the ``"logits"`` entry of a
mapping; an ``int`` or ``str`` indexes the output; a callable maps the output to the tensor.

>>> select_output((torch.ones(2), "extra"), None).shape
torch.Size([2])
>>> select_output({"logits": torch.zeros(3), "aux": 1}, None).tolist()
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, WeightedRandomSampler

from flatness.errors import FlatnessError, unknown

BN_MODES = ("eval", "train")
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)

#: torchvision transforms that draw random numbers without "Random" in their name
_RANDOM_TRANSFORMS = (
    "ColorJitter",
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "AugMix",
    "ElasticTransform",
    "GaussianBlur",
    "GaussianNoise",
    "MixUp",
    "CutMix",
)
#: how many examples are read twice to catch randomness no name reveals
_PROBED_ITEMS = 8

Output = None | int | str | Callable


def is_batch(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0])


def select_output(outputs, output: Output) -> torch.Tensor:
    """The tensor the loss is taken of, from whatever the model returned (rule in the module doc)."""
    if callable(output):
        chosen = output(outputs)
    elif output is not None:
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
            f"the model returns a {type(outputs).__name__}; pass output= to choose the tensor"
        )
    if not torch.is_tensor(chosen):
        raise FlatnessError(
            f"the selected model output is a {type(chosen).__name__}, not a tensor: "
            "pass output= (an index, a key or a function) to choose the tensor"
        )
    return chosen


def batches(data, device) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(inputs, targets, batch size) on ``device`` for a batch or every batch of a loader."""
    items = [data] if is_batch(data) else data
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise FlatnessError(
                "each batch must be an (inputs, targets) pair; got "
                f"{type(item).__name__}"
                + (f" of length {len(item)}" if hasattr(item, "__len__") else "")
            )
        inputs, targets = item
        yield inputs.to(device), targets.to(device), len(inputs)


# -- the data: one fixed multiset of examples --------------------------------------------------
def _random_transform_names(obj, depth: int = 0, seen=None) -> list[str]:
    """Names of random transforms anywhere in a dataset and the objects it holds."""
    seen = set() if seen is None else seen
    if depth > 6 or id(obj) in seen or torch.is_tensor(obj) or isinstance(obj, (str, bytes)):
        return []
    seen.add(id(obj))
    found = []
    name = type(obj).__name__
    if callable(obj) and (name.startswith("Random") or name in _RANDOM_TRANSFORMS):
        found.append(name)
    if isinstance(obj, Mapping):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        children = list(getattr(obj, "__dict__", {}).values())
        # transforms are often class attributes, or properties of a wrapper
        children += [getattr(obj, a, None) for a in ("transform", "target_transform", "transforms")]
    for child in children[:1000]:
        if isinstance(child, (int, float, bool)) or child is None:
            continue
        found += _random_transform_names(child, depth + 1, seen)
    return sorted(set(found))


def _items_repeat(dataset) -> bool:
    """Do the first examples read the same twice? (the random state is left untouched)"""
    try:
        count = min(len(dataset), _PROBED_ITEMS)
    except TypeError:
        return True
    with torch.random.fork_rng(devices=[]):
        for i in range(count):
            torch.manual_seed(2 * i)
            first = dataset[i]
            torch.manual_seed(2 * i + 1)
            second = dataset[i]
            if not _same(first, second):
                return False
    return True


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(_same, a, b))
    if hasattr(a, "__array__"):
        import numpy as np

        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return a == b


def _two_passes(loader: DataLoader) -> list[list[tuple[int, ...]]]:
    """The index batches of two successive passes; random states are restored after."""
    sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    generators = {
        id(g): (g, g.get_state())
        for s in (loader, sampler, getattr(sampler, "sampler", None))
        for g in [getattr(s, "generator", None)]
        if isinstance(g, torch.Generator)
    }
    try:
        with torch.random.fork_rng(devices=[]):
            return [
                [tuple(b) if isinstance(b, (list, tuple)) else (b,) for b in sampler]
                for _ in range(2)
            ]
    finally:
        for g, state in generators.values():
            g.set_state(state)


def check_data(data, bn_mode: str = "eval") -> None:
    """Refuse data that are not one fixed operator: an empty batch, or a loader whose passes
    differ (random sampling, dropping a random remainder, random transforms); with
    ``bn_mode="train"`` also a loader whose batches change between passes."""
    if is_batch(data):
        if len(data[0]) == 0:
            raise FlatnessError(
                "data is empty: the Hessian of a loss over no examples is undefined"
            )
        return
    if not isinstance(data, DataLoader):
        raise FlatnessError(
            "data must be an (inputs, targets) pair of tensors or a torch DataLoader, "
            f"got {type(data).__name__}"
        )
    fix = (
        "pass a DataLoader with shuffle=False and no random sampler (or the whole data set as "
        "one (inputs, targets) batch)"
    )
    dataset = data.dataset
    if isinstance(dataset, IterableDataset):
        raise FlatnessError(
            "the loader reads an IterableDataset, whose passes cannot be checked to cover the "
            f"same examples; {fix}"
        )
    random = _random_transform_names(dataset)
    if random:
        raise FlatnessError(
            f"the loader's data set draws random numbers ({', '.join(random)}), so every pass "
            "over it is a different Hessian; use the test-time transform (no augmentation)"
        )
    if not _items_repeat(dataset):
        raise FlatnessError(
            "the loader's data set returns a different example when the same index is read "
            "twice (a random transform or noise in __getitem__), so every pass is a different "
            "Hessian; use the test-time transform (no augmentation)"
        )
    sampler = data.sampler
    inner = getattr(data.batch_sampler, "sampler", sampler)
    if isinstance(inner, WeightedRandomSampler) or (
        isinstance(inner, RandomSampler)
        and (inner.replacement or inner.num_samples != len(inner.data_source))
    ):
        raise FlatnessError(
            f"the loader's {type(inner).__name__} draws examples with replacement or a random "
            f"subset, so every pass is a different Hessian; {fix}"
        )
    first, second = _two_passes(data)
    if sorted(i for b in first for i in b) != sorted(i for b in second for i in b):
        raise FlatnessError(
            "two passes over the loader cover different examples (a random sampler, or "
            f"drop_last=True with shuffling), so every pass is a different Hessian; {fix}"
        )
    same_batches = sorted(map(sorted, first)) == sorted(map(sorted, second))
    if bn_mode == "train" and not same_batches:
        raise FlatnessError(
            "with bn_mode='train' each batch's statistics are part of the operator, and this "
            "loader forms different batches on every pass; use a loader with shuffle=False"
        )


# -- the model and the loss --------------------------------------------------------------------
def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of the model's parameters and buffers (None if mixed or none)."""
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def check_dtypes(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Inputs of the model's dtype, and class labels as int64."""
    dtype = floating_dtype(model)
    if dtype is not None and inputs.is_floating_point() and inputs.dtype != dtype:
        raise FlatnessError(
            f"the inputs are {inputs.dtype} but the model's parameters are {dtype}: convert one "
            f"to the other (inputs.to({dtype}) or model.to({inputs.dtype}))"
        )
    if not targets.is_floating_point() and targets.dtype not in (torch.int64, torch.bool):
        raise FlatnessError(
            f"the targets are {targets.dtype}; class labels must be torch.int64 "
            "(pass targets.long())"
        )


def check_mean_loss(loss_fn: Callable, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse a loss that is not a mean over examples: the batch repeated twice must give the
    same value (a sum doubles). Batches of a loader are weighted by their sizes, which is only
    right for a mean."""
    outputs = outputs.detach()
    single = loss_fn(outputs, targets)
    if single.dim() != 0:
        raise FlatnessError(f"loss_fn must return a scalar, got shape {tuple(single.shape)}")
    if not torch.isfinite(single):
        raise FlatnessError(f"the loss is {single.item()} (not finite) at these parameters")
    double = loss_fn(torch.cat([outputs, outputs]), torch.cat([targets, targets]))
    a, b = single.item(), double.item()
    scale = max(abs(a), abs(b))
    if scale == 0 or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12 * scale):
        return
    kind = "a sum" if math.isclose(b, 2 * a, rel_tol=1e-4) else "neither a mean nor a sum"
    raise FlatnessError(
        f"loss_fn is {kind} over examples (one batch gives {a:.6g}, the same batch twice "
        f"{b:.6g}); flatness measures the Hessian of the mean loss: pass a mean-reduced loss "
        "(reduction='mean'), or divide a sum by the batch size"
    )


@contextlib.contextmanager
def curvature_modes(model: nn.Module, bn_mode: str):
    """Eval mode everywhere (no dropout noise), BatchNorm in eval or batch-statistics mode.

    In ``"train"`` mode BatchNorm normalises with each batch's statistics and does not touch its
    running averages. Every module's mode and flag is restored on exit.
    """
    if bn_mode not in BN_MODES:
        raise unknown("bn_mode", bn_mode, BN_MODES)
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    try:
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, _BATCH_NORMS):
                    m.train()
                    m.track_running_stats = False
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


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
    check_data(data, bn_mode)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise FlatnessError("the model has no parameters that require gradients")
    device = named[0][1].device
    first = next(batches(data, device), None)
    if first is None or first[2] == 0:
        raise FlatnessError("data is empty: the loader yields no examples")
    x, y, _ = first
    check_dtypes(model, x, y)
    with curvature_modes(model, bn_mode):
        out = select_output(model(x), output)
        check_mean_loss(loss_fn, out, y)
        loss = loss_fn(out, y)
        grads = torch.autograd.grad(
            loss, [p for _, p in named], allow_unused=True, create_graph=create_graph
        )
    unused = [n for (n, _), g in zip(named, grads) if g is None]
    if unused:
        raise FlatnessError(
            f"parameter(s) {', '.join(unused)} do not affect the loss, so their Hessian "
            "rows are undefined here; freeze them (requires_grad=False) or remove them"
        )
    return named, grads
