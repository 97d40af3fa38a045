"""The Hessian (or its Gauss-Newton part) of a model's mean data loss, as a linear operator.

Vectors are flat: one row of length P per vector, parameters in ``model.parameters()`` order.
Several vectors go through the data together (``matmat``): for a DataLoader that is one pass
over the data for all of them, so the forward and backward work is shared.

Hessian-vector products are a double backward through the gradient graph, all vectors at once
(``is_grads_batched``); for a single batch the graph is built once and kept, as PyHessian does.
Gauss-Newton products ``J^T H_z J v`` use ``torch.func``: a ``jvp`` of the logits, the loss's
Hessian in the logits, and a ``vjp``, with ``vmap`` over the vectors. The operator is a snapshot:
change the model's parameters and build a new one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from flatness.errors import FlatnessError, unknown

CURVATURES = ("hessian", "ggn", "residual")
BN_MODES = ("eval", "train")
#: torchvision transforms that draw random numbers: a loader using them is a different
#: operator at every pass
_RANDOM_TRANSFORMS = (
    "ColorJitter",
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "AugMix",
    "ElasticTransform",
    "GaussianBlur",
)
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


def _is_batch(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0])


def _random_transforms(transform) -> list[str]:
    if transform is None:
        return []
    found = []
    name = type(transform).__name__
    if name.startswith("Random") or name in _RANDOM_TRANSFORMS:
        found.append(name)
    for child in getattr(transform, "transforms", []) or []:
        found += _random_transforms(child)
    return found


def check_data(data, bn_mode: str = "eval") -> None:
    """Refuse data that do not define one fixed operator."""
    if _is_batch(data):
        if len(data[0]) == 0:
            raise FlatnessError(
                "data is empty: the Hessian of a loss over no examples is undefined"
            )
        return
    if not isinstance(data, torch.utils.data.DataLoader):
        raise FlatnessError(
            "data must be an (inputs, targets) pair of tensors or a torch DataLoader, "
            f"got {type(data).__name__}"
        )
    dataset = data.dataset
    random = _random_transforms(getattr(dataset, "transform", None))
    if random:
        raise FlatnessError(
            f"the loader's transform draws random numbers ({', '.join(random)}), so every pass "
            "over it is a different Hessian; use the test-time transform (no augmentation)"
        )
    if bn_mode == "train" and isinstance(data.sampler, torch.utils.data.RandomSampler):
        raise FlatnessError(
            "with bn_mode='train' the batch composition is part of the operator; "
            "use a loader with shuffle=False"
        )


def batches(data, device) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(inputs, targets, batch size) on ``device`` for a batch or every batch of a loader."""
    items = [data] if _is_batch(data) else data
    for inputs, targets in items:
        yield inputs.to(device), targets.to(device), len(inputs)


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


class HessianOperator:
    """``H v`` for the mean data loss over ``data``, optionally plus ``l2 * v``.

    Args:
        model: any module; its parameters with ``requires_grad`` are the variables.
        loss_fn: a mean-reduced loss ``loss_fn(outputs, targets)`` returning a scalar.
        data: an ``(inputs, targets)`` batch or a DataLoader (one pass is the whole data set).
        curvature: ``"hessian"``, ``"ggn"`` (generalised Gauss-Newton ``J^T H_z J``) or
            ``"residual"`` (their difference).
        bn_mode: ``"eval"`` (running statistics, PyHessian's convention) or ``"train"``
            (batch statistics, the authors' convention).
        l2: add ``l2 * I`` (the Hessian of ``l2/2 ||w||^2``); default 0, the data loss only.

    Attributes:
        hvps: how many vectors have been multiplied so far.
        passes: how many passes over the data have been made.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data,
        *,
        curvature: str = "hessian",
        bn_mode: str = "eval",
        l2: float = 0.0,
    ):
        if curvature not in CURVATURES:
            raise unknown("curvature", curvature, CURVATURES)
        check_data(data, bn_mode)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.curvature, self.bn_mode, self.l2 = curvature, bn_mode, float(l2)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise FlatnessError("the model has no parameters that require gradients")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.params = {n: p.detach() for n, p in named}
        first = named[0][1]
        self.device, self.dtype = first.device, first.dtype
        self.size = sum(p.numel() for _, p in named)
        self._graph = None  # the cached gradient graph of a single batch
        self.hvps = 0
        self.passes = 0
        self.seconds = 0.0
        self._check_loss_and_gradients()

    # -- validation -------------------------------------------------------------------------
    def _check_loss_and_gradients(self) -> None:
        first = next(batches(self.data, self.device), None)
        if first is None or first[2] == 0:
            raise FlatnessError("data is empty: the loader yields no examples")
        x, y, _ = first
        params = [p for p in self.model.parameters() if p.requires_grad]
        with curvature_modes(self.model, self.bn_mode):
            loss = self.loss_fn(self.model(x), y)
        if loss.dim() != 0:
            raise FlatnessError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        if not torch.isfinite(loss):
            raise FlatnessError(f"the loss is {loss.item()} (not finite) at these parameters")
        # for one batch this gradient graph is the one every Hessian product reuses: build it once
        keep = self.curvature == "hessian" and _is_batch(self.data)
        grads = torch.autograd.grad(loss, params, allow_unused=True, create_graph=keep)
        unused = [n for n, g in zip(self.names, grads) if g is None]
        if unused:
            raise FlatnessError(
                f"parameter(s) {', '.join(unused)} do not affect the loss, so their Hessian "
                "rows are undefined here; freeze them (requires_grad=False) or remove them"
            )
        if keep:
            self._graph = (params, grads)

    # -- flat vectors -----------------------------------------------------------------------
    def flatten(self, tensors) -> torch.Tensor:
        return torch.cat(
            [t.reshape(*t.shape[: t.dim() - len(s)], -1) for t, s in zip(tensors, self.shapes)], -1
        )

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(flat, [s.numel() for s in self.shapes], dim=-1)
        lead = flat.shape[:-1]
        return {n: t.reshape(*lead, *s) for n, t, s in zip(self.names, pieces, self.shapes)}

    # -- products ---------------------------------------------------------------------------
    def _products(self, x: torch.Tensor, y: torch.Tensor, tangents: dict) -> torch.Tensor:
        """GGN or residual products of one batch through ``torch.func``, as flat (k, P) rows."""
        buffers = dict(self.model.named_buffers())

        def logits(params):
            return functional_call(self.model, (params, buffers), (x,))

        def loss(params):
            return self.loss_fn(logits(params), y)

        def hvp(v):
            return jvp(grad(loss), (self.params,), (v,))[1]

        def ggn(v):
            out, jv = jvp(logits, (self.params,), (v,))
            hjv = jvp(grad(lambda z: self.loss_fn(z, y)), (out,), (jv,))[1]
            return vjp(logits, self.params)[1](hjv)[0]

        def residual(v):
            h, g = hvp(v), ggn(v)
            return {n: h[n] - g[n] for n in h}

        product = {"hessian": hvp, "ggn": ggn, "residual": residual}[self.curvature]
        out = vmap(product)(tangents)
        return self.flatten([out[k] for k in self.names])

    def _gradient_graph(self, x: torch.Tensor, y: torch.Tensor):
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(self.loss_fn(self.model(x), y), params, create_graph=True)
        return params, grads

    def _hessian_products(self, graph, vectors: torch.Tensor, *, keep: bool) -> torch.Tensor:
        """Double backward through a gradient graph, all vectors at once (``is_grads_batched``)."""
        params, grads = graph
        tangents = self.unflatten(vectors)
        outputs = [tangents[n] for n in self.names]
        single = len(vectors) == 1
        hv = torch.autograd.grad(
            grads,
            params,
            grad_outputs=[t[0] for t in outputs] if single else outputs,
            retain_graph=keep,
            is_grads_batched=not single,
            allow_unused=True,
            materialize_grads=True,
        )
        return self.flatten([h[None] if single else h for h in hv])

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V`` for a (k, P) stack of vectors; one pass over the data for all k."""
        if vectors.dim() != 2 or vectors.shape[1] != self.size:
            raise FlatnessError(
                f"expected a (k, {self.size}) stack of vectors, got {tuple(vectors.shape)}"
            )
        start = time.perf_counter()
        vectors = vectors.to(self.device, self.dtype)
        if self.curvature == "hessian" and _is_batch(self.data):
            # one batch: its gradient graph (built by the check) only needs a double backward
            total = self._hessian_products(self._graph, vectors, keep=True)
        else:
            total = torch.zeros(vectors.shape, device=self.device, dtype=self.dtype)
            examples = 0
            tangents = self.unflatten(vectors)
            with curvature_modes(self.model, self.bn_mode):
                for x, y, n in batches(self.data, self.device):
                    if self.curvature == "hessian":
                        part = self._hessian_products(
                            self._gradient_graph(x, y), vectors, keep=False
                        )
                    else:
                        part = self._products(x, y, tangents)
                    total += n * part
                    examples += n
            total /= examples  # batches weighted by their size: the mean over the whole data set
        if self.l2:
            total += self.l2 * vectors.to(total)
        self.hvps += vectors.shape[0]
        self.passes += 1
        self.seconds += time.perf_counter() - start
        return total

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        return self.matmat(vector.reshape(1, -1))[0]

    def rademacher(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` random sign vectors (drawn on the CPU, so a seed gives the same on any device)."""
        signs = torch.randint(0, 2, (count, self.size), generator=generator, dtype=torch.int8)
        return (2 * signs - 1).to(self.device, self.dtype)

    def gaussian(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(count, self.size, generator=generator, dtype=torch.float64).to(
            self.device, self.dtype
        )
