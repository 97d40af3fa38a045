"""Data that define one fixed Hessian: the same examples on every pass, read the same way.

A DataLoader is accepted when two passes cover the same multiset of examples (and, where
BatchNorm uses batch statistics, form the same batches), its data set and ``collate_fn`` give
the same example twice for the same index, and nothing in it is named like a random
transform. Everything else is refused with one message that says what to pass instead, so that
no estimator converges on a number that belongs to no fixed Hessian. Checking leaves every
random state as it was (torch's, numpy's, Python's and the loader's own generators).
"""

from __future__ import annotations

import contextlib
import itertools
import random as pyrandom
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, WeightedRandomSampler

from flatness.errors import FlatnessError

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
_BATCH_NORMS = nn.modules.batchnorm._BatchNorm
FIX = (
    "pass a DataLoader with shuffle=False and no random sampler (or the whole data set as "
    "one (inputs, targets) batch)"
)


def uses_batch_statistics(model: nn.Module | None, bn_mode: str) -> bool:
    """Does some BatchNorm normalise with the batch's own statistics? (``bn_mode="train"``,
    or a BatchNorm without running statistics, which uses the batch's even in eval mode)"""
    if model is None:
        return bn_mode == "train"
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    return bool(norms) and (bn_mode == "train" or any(m.running_mean is None for m in norms))


@contextlib.contextmanager
def all_random_states_kept(device: torch.device | None = None):
    """Torch's (CPU, and ``device``'s where it is a GPU), numpy's and Python's global random
    states are restored on exit."""
    py, npy = pyrandom.getstate(), np.random.get_state()
    gpu = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=gpu, device_type="cuda"):
            yield
    finally:
        pyrandom.setstate(py)
        np.random.set_state(npy)


def reseed(seed: int, device: torch.device | None = None) -> None:
    """Seed torch's CPU generator (and ``device``'s, where it is a GPU), as
    ``torch.manual_seed`` would, without touching other devices' generators: those
    ``torch.manual_seed`` seeds through lazy calls that each record a stack trace: 0.6 ms a call
    under cProfile on 2 CPU cores, several per estimator call, 10 % of a top eigenvalue of the
    bench's digits MLP."""
    torch.default_generator.manual_seed(seed)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def random_transform_names(obj, depth: int = 0, seen=None) -> list[str]:
    """Names of random transforms anywhere in a data set and the objects it holds."""
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
        if isinstance(child, (int, float, bool, np.ndarray)) or child is None:
            continue
        found += random_transform_names(child, depth + 1, seen)
    return sorted(set(found))


def same(a, b) -> bool:
    """Equal nested examples (tensors, arrays, mappings, sequences, numbers)."""
    if torch.is_tensor(a):
        # NaN read twice is the same example: the finiteness check says what is wrong with it
        return (
            torch.is_tensor(b)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(
                ((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all()
            )
        )
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(same, a, b))
    if hasattr(a, "__array__"):
        a, b = np.asarray(a), np.asarray(b)
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc"))
    try:
        return bool(a == b)
    except Exception:  # objects whose comparison is not a truth value
        return a is b


def _probe_indices(n: int) -> list[int]:
    """A few indices from the start, the middle and the end (wrapped data sets mix kinds)."""
    return sorted({i for i in (0, 1, 2, n // 3, n // 2, (2 * n) // 3, n - 2, n - 1) if 0 <= i < n})


def _reads_repeat(loader: DataLoader, first_batch) -> bool:
    """Do the probed examples, and the first batch through ``collate_fn``, read the same
    twice under different seeds?"""
    dataset = loader.dataset
    with all_random_states_kept():
        for i in _probe_indices(len(dataset)):
            reseed(2 * i)
            a = dataset[i]
            reseed(2 * i + 1)
            if not same(a, dataset[i]):
                return False
        if first_batch and loader.collate_fn is not None and loader.batch_size is not None:
            reseed(0)
            a = loader.collate_fn([dataset[i] for i in first_batch])
            reseed(1)
            if not same(a, loader.collate_fn([dataset[i] for i in first_batch])):
                return False
    return True


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
        cap = len(sampler)
    except TypeError:
        cap = 4 * len(loader.dataset)
    passes = []
    try:
        with all_random_states_kept():
            for _ in range(2):
                drawn = list(itertools.islice(iter(sampler), cap + 1))
                if len(drawn) > cap:
                    raise FlatnessError(
                        f"the loader's sampler yields more than {cap:,} batches in one pass "
                        f"(an endless or iteration-based sampler): a pass must end; {FIX}"
                    )
                passes.append([tuple(b) if isinstance(b, (list, tuple)) else (b,) for b in drawn])
    finally:
        for g, state in generators.values():
            g.set_state(state)
    return passes


def check_loader(data, bn_mode: str = "eval", model: nn.Module | None = None) -> None:
    """Refuse a loader whose passes differ: random sampling, dropping a random remainder,
    random transforms or ``collate_fn``; where BatchNorm uses batch statistics also one whose
    batches change between passes, or that has a batch of one example."""
    if not isinstance(data, DataLoader):
        raise FlatnessError(
            "data must be an (inputs, targets) pair or a torch DataLoader, "
            f"got {type(data).__name__}"
        )
    dataset = data.dataset
    if isinstance(dataset, IterableDataset):
        raise FlatnessError(
            "the loader reads an IterableDataset, whose passes cannot be checked to cover the "
            f"same examples; {FIX}"
        )
    found = random_transform_names(dataset)
    if found:
        raise FlatnessError(
            f"the loader's data set draws random numbers ({', '.join(found)}), so every pass "
            "over it is a different Hessian; use the test-time transform (no augmentation)"
        )
    inner = getattr(data.batch_sampler, "sampler", data.sampler)
    if isinstance(inner, (RandomSampler, WeightedRandomSampler)) and inner.replacement:
        raise FlatnessError(
            f"the loader's {type(inner).__name__} draws examples with replacement, so every "
            f"pass is a different Hessian; {FIX}"
        )
    first, second = _two_passes(data)
    if not _reads_repeat(data, first[0] if first and data.batch_sampler else None):
        raise FlatnessError(
            "the loader returns a different example when the same index is read twice (a "
            "random transform or noise in __getitem__ or collate_fn), so every pass is a "
            "different Hessian; use the test-time transform (no augmentation)"
        )
    if sorted(i for b in first for i in b) != sorted(i for b in second for i in b):
        raise FlatnessError(
            "two passes over the loader cover different examples (a random sampler, or "
            f"drop_last=True with shuffling), so every pass is a different Hessian; {FIX}"
        )
    if uses_batch_statistics(model, bn_mode):
        if sorted(map(sorted, first)) != sorted(map(sorted, second)):
            raise FlatnessError(
                "BatchNorm normalises with each batch's statistics here (bn_mode='train', or "
                "a BatchNorm without running statistics), so the batches are part of the "
                "operator, and this loader forms different batches on every pass; use a "
                "loader with shuffle=False"
            )
        if data.batch_sampler is not None and any(len(b) == 1 for b in first):
            raise FlatnessError(
                "a batch of one example has no batch statistics for BatchNorm to normalise "
                "with; choose a batch size that leaves no batch of one, or drop_last=True"
            )
