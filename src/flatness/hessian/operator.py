"""The Hessian (or its Gauss-Newton part) of a model's mean data loss, as a linear operator.

Vectors are flat: one row of length P per vector, parameters in ``model.parameters()`` order.
Several vectors go through the data together (``matmat``): for a DataLoader that is one pass
over the data for all of them, so the forward and backward work is shared.

Hessian-vector products are a double backward through the gradient graph, built once per batch
for all vectors (for a single batch built once and kept, as PyHessian does); on the CPU the
vectors then go through it one by one, elsewhere all at once (``is_grads_batched``). A loader's
batches, and their gradient graphs, are kept from the first pass for the later ones while they
take at most :data:`~flatness.hessian.operator.KEEP_BYTES`: later passes then cost a double
backward per batch only.
Gauss-Newton products ``J^T H_z J v`` use ``torch.func``: a ``jvp`` of the logits, the loss's
Hessian in the logits, and a ``vjp``, with ``vmap`` over the vectors. The operator is a snapshot:
change the model's parameters and build a new one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, jvp, vjp, vmap
from torch.utils._pytree import tree_leaves

from flatness.errors import FlatnessError, unknown
from flatness.hessian.checks import (
    BN_MODES,
    Output,
    batches,
    check_data,
    check_functional,
    check_model,
    check_options,
    curvature_modes,
    functional_forward,
    is_batch,
    probe_batch,
    select_output,
    usable,
    with_autograd,
)

__all__ = [
    "BN_MODES",
    "CURVATURES",
    "HessianOperator",
    "batches",
    "check_data",
    "curvature_modes",
    "is_batch",
]

CURVATURES = ("hessian", "ggn", "residual")
#: a block of vectors goes one by one through a CPU batch's graph from this many examples ...
ONE_BY_ONE_EXAMPLES = 64
#: ... and this many variables (:meth:`HessianOperator._one_by_one`)
ONE_BY_ONE_PARAMETERS = 10_000
#: a loader's batches and gradient graphs (the tensors autograd saves for the double backward)
#: are kept in memory, on the model's device, for later passes up to this many bytes in all
KEEP_BYTES = 2**30


class HessianOperator:
    """``H v`` for the mean data loss over ``data``, optionally plus ``l2 * v``.

    Args:
        model: any module; its parameters with ``requires_grad`` are the variables of the
            Hessian (P of them), frozen ones (``requires_grad=False``) are constants.
        loss_fn: a mean-reduced loss ``loss_fn(outputs, targets)`` returning a scalar; a sum
            or any other reduction is refused (batches are weighted by their sizes).
        data: an ``(inputs, targets)`` batch or a DataLoader whose every pass covers the same
            examples (one pass is the whole data set); loaders that sample or augment at
            random are refused.
        curvature: ``"hessian"``, ``"ggn"`` (generalised Gauss-Newton ``J^T H_z J``) or
            ``"residual"`` (their difference, ``sum_k dL/dz_k d2 z_k``).
        bn_mode: ``"eval"`` (running statistics, PyHessian's convention) or ``"train"``
            (batch statistics, the authors' convention).
        l2: add ``l2 * I`` (the Hessian of ``l2/2 ||w||^2``); default 0, the data loss only.
        output: which model output the loss is taken of (rule in
            :mod:`flatness.hessian.checks`): default the tensor, a tuple's first element or a
            mapping's ``"logits"``.

    Raises:
        FlatnessError: for any input that does not define one fixed Hessian (see
            :func:`flatness.hessian.checks.check_model`).

    Building it and its products record gradients even under ``torch.no_grad()`` or
    ``torch.inference_mode()``.

    Attributes:
        hvps: how many vectors have been multiplied so far.
        kept_bytes: the memory a loader's batches and gradient graphs, kept from the first pass
            for later ones, take (0 when they did not fit in :data:`~flatness.hessian.operator.KEEP_BYTES`).
        passes: how many passes over the data have been made.
    """

    @with_autograd
    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data,
        *,
        curvature: str = "hessian",
        bn_mode: str = "eval",
        l2: float = 0.0,
        output: Output = None,
    ):
        if curvature not in CURVATURES:
            raise unknown("curvature", curvature, CURVATURES)
        check_options(l2=l2)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.curvature, self.bn_mode, self.l2 = curvature, bn_mode, float(l2)
        self.output = output
        # for one batch the Hessian's gradient graph is the one every product reuses: keep it
        keep = curvature == "hessian" and is_batch(data)
        named, grads = check_model(
            model, loss_fn, data, bn_mode=bn_mode, output=output, create_graph=keep
        )
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.params = {n: p.detach() for n, p in named}
        self._variables = [p for _, p in named]
        first = named[0][1]
        self.device, self.dtype = first.device, first.dtype
        self.size = sum(p.numel() for _, p in named)
        self._graph = (self._variables, grads, len(data[1])) if keep else None
        if curvature == "ggn":
            # GGN products are built on torch.func, which must see every use of a variable
            with curvature_modes(model, bn_mode):
                x, y = probe_batch(*next(batches(data, self.device))[:2])
                check_functional(model, loss_fn, x, y, named, output, "the GGN's products")
        if curvature == "residual" and is_batch(data):
            with curvature_modes(model, bn_mode):
                self._graph = self._gradient_graph(*next(batches(data, self.device))[:2])
        #: a loader's (inputs, targets, size, graph or None) per batch once kept (:meth:`_pass`)
        self._kept: list | None = None
        self.kept_bytes = 0
        # the parameters as built: a product after they change would mix two models
        self._versions = [p._version for p in self._variables]
        self.hvps = 0
        self.passes = 0
        self.seconds = 0.0

    @with_autograd
    def residual(self) -> HessianOperator:
        """The operator of the Hessian's residual ``H - G`` on the same model and data, built
        without checking them again (this operator's checks passed on them)."""
        if self.curvature != "hessian":
            raise FlatnessError(f"the residual is of the Hessian, not of the {self.curvature}")
        self._require_unchanged()
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.curvature, other._graph, other._kept, other.kept_bytes = "residual", None, None, 0
        other.l2 = 0.0  # the penalty's l2 I is all in the Gauss-Newton part's exact trace
        other.hvps, other.passes, other.seconds = 0, 0, 0.0
        if is_batch(self.data):
            with curvature_modes(self.model, self.bn_mode):
                other._graph = other._gradient_graph(*next(batches(self.data, self.device))[:2])
        return other

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model output the loss is taken of (``output=``)."""
        return select_output(self.model(x), self.output)

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
        """GGN products of one batch through ``torch.func``, as flat (k, P) rows."""
        buffers = dict(self.model.named_buffers())

        def logits(params):
            return select_output(
                functional_forward(self.model, (params, buffers), (x,)), self.output
            )

        def ggn(v):
            out, jv = jvp(logits, (self.params,), (v,))
            # H_z J v as reverse-over-reverse: several losses (MSE, Huber) lack forward AD
            hjv = vjp(grad(lambda z: self.loss_fn(z, y)), out)[1](jv)[0]
            return vjp(logits, self.params)[1](hjv)[0]

        with warnings.catch_warnings():
            # torch's first forward-mode product loads decompositions through its own deprecated
            # torch.jit.script: a warning users can do nothing about
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            out = vmap(ggn)(tangents)
        return self.flatten([out[k] for k in self.names])

    def _gradient_graph(self, x: torch.Tensor, y: torch.Tensor):
        """The gradient (with its graph) whose derivative is the curvature: of the loss for the
        Hessian; for the residual, of the loss linearised in the logits, ``<dL/dz, z(w)>`` with
        ``dL/dz`` held fixed, whose Hessian is ``sum_k dL/dz_k d2 z_k``."""
        z = self.logits(x)
        if self.curvature == "residual":
            dz = torch.autograd.grad(self.loss_fn(z, y), z, retain_graph=True)[0]
            scalar = (dz.detach() * z).sum()
        else:
            scalar = self.loss_fn(z, y)
        grads = torch.autograd.grad(scalar, self._variables, create_graph=True, allow_unused=True)
        grads = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self._variables)
        ]
        return self._variables, grads, len(x)

    def _hessian_products(self, graph, vectors: torch.Tensor, *, keep: bool) -> torch.Tensor:
        """Double backward through a gradient graph, all vectors at once (``is_grads_batched``),
        or one after another through the kept graph where that is cheaper (:meth:`_one_by_one`)."""
        params, grads = graph[:2]
        tangents = self.unflatten(vectors)
        # a gradient that does not depend on the parameters (a loss linear in them) adds nothing
        live = [(g, tangents[n]) for g, n in zip(grads, self.names) if g.requires_grad]
        if not live:
            return torch.zeros_like(vectors)
        if len(vectors) > 1 and self._one_by_one(graph):
            rows = [
                self._double_backward(params, live, i, keep=keep or i < len(vectors) - 1)
                for i in range(len(vectors))
            ]
            return torch.cat(rows)
        single = len(vectors) == 1
        hv = torch.autograd.grad(
            [g for g, _ in live],
            params,
            grad_outputs=[t[0] if single else t for _, t in live],
            retain_graph=keep,
            is_grads_batched=not single,
            allow_unused=True,
            materialize_grads=True,
        )
        lead = (1,) if single else (len(vectors),)
        # parameters no live gradient reaches come back as unbatched zeros
        return self.flatten(
            [h.expand(*lead, *p.shape) if h.dim() == p.dim() else h for h, p in zip(hv, params)]
        )

    def _one_by_one(self, graph) -> bool:
        """Whether a block of vectors is cheaper one by one through the kept graph: on the CPU,
        for batches of at least :data:`ONE_BY_ONE_EXAMPLES` examples and models of at least
        :data:`ONE_BY_ONE_PARAMETERS` variables. There, on 2 cores, the batched backward cost
        more per vector than single ones: the 784-512-256-10 MLP on 4,096 MNIST images 72 ms
        per vector in blocks of 4 against 38 ms one by one, the bench's BatchNorm CNN on 64
        images 42 against 25 ms in blocks of 16. With 8 images per batch the batched backward
        won (43 against 55 ms), and so it did for the 7,510-parameter digits MLP
        (timed per block, best of 3; ``make bench`` prints such block-cost rows for its
        problems). On a GPU the batched backward is kept."""
        examples = graph[2]
        return (
            self.device.type == "cpu"
            and examples >= ONE_BY_ONE_EXAMPLES
            and self.size >= ONE_BY_ONE_PARAMETERS
        )

    def _double_backward(self, params, live, index: int, *, keep: bool) -> torch.Tensor:
        """``H v`` for the ``index``-th vector alone, as a (1, P) row."""
        hv = torch.autograd.grad(
            [g for g, _ in live],
            params,
            grad_outputs=[t[index] for _, t in live],
            retain_graph=keep,
            allow_unused=True,
            materialize_grads=True,
        )
        return self.flatten([h[None] for h in hv])

    @with_autograd
    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V`` for a (k, P) stack of vectors; one pass over the data for all k."""
        if not torch.is_tensor(vectors) or vectors.dim() != 2 or vectors.shape[1] != self.size:
            shape = tuple(vectors.shape) if torch.is_tensor(vectors) else type(vectors).__name__
            raise FlatnessError(f"expected a (k, {self.size}) stack of vectors, got {shape}")
        if len(vectors) == 0:
            return torch.zeros(vectors.shape, device=self.device, dtype=self.dtype)
        start = time.perf_counter()
        self._require_unchanged()
        vectors = usable(vectors.to(self.device, self.dtype))
        if self._graph is not None:
            # one batch: its gradient graph (built once) only needs a double backward
            total = self._hessian_products(self._graph, vectors, keep=True)
        else:
            total = torch.zeros(vectors.shape, device=self.device, dtype=self.dtype)
            examples = 0
            tangents = self.unflatten(vectors)
            with curvature_modes(self.model, self.bn_mode):
                for x, y, n, graph, keep in self._pass():
                    if self.curvature != "ggn":
                        part = self._hessian_products(graph, vectors, keep=keep)
                    else:
                        part = self._products(x, y, tangents)
                    total += n * part
                    examples += n
            total /= examples  # batches weighted by their size: the mean over the whole data set
        if self.l2:
            total += self.l2 * vectors.to(total)
        if not bool(torch.isfinite(total).all()):
            # a finite loss can still have infinite second derivatives (sqrt or log at 0)
            raise FlatnessError(
                "the Hessian-vector products are not finite at these parameters (NaN or inf): "
                "the loss has no finite second derivative here, e.g. an activation like sqrt or "
                "log evaluated at 0; measure at other parameters or use a smooth activation"
            )
        self.hvps += vectors.shape[0]
        self.passes += 1
        self.seconds += time.perf_counter() - start
        return total

    def _require_unchanged(self) -> None:
        """Refuse products once the model's parameters have changed since the operator was built
        (an optimiser step, ``load_state_dict``, an in-place edit, or a parameter replaced): the
        kept gradient graphs hold the old values while the model has the new ones, so a product
        would belong to neither model.

        Raises:
            FlatnessError: naming the fix, a new operator.
        """
        current = [p for p in self.model.parameters() if p.requires_grad]
        same = len(current) == len(self._variables) and all(
            a is b and a._version == v for a, b, v in zip(current, self._variables, self._versions)
        )
        if not same:
            raise FlatnessError(
                "the model's parameters have changed since this operator was built (an optimiser "
                "step, load_state_dict, an in-place edit or a replaced parameter); an operator is "
                "a snapshot of one model: build a new one for the new parameters"
            )

    def _pass(self):
        """(inputs, targets, size, gradient graph or None, whether the graph is kept) for each
        batch of the loader. The first pass reads the loader and keeps what it read while it
        fits in :data:`~flatness.hessian.operator.KEEP_BYTES`; later passes reuse it. The checks
        made sure that every pass covers the same examples (and, where BatchNorm uses batch
        statistics, in the same batches), so a kept pass is the same operator."""
        if self._kept is not None:
            for x, y, n, graph in self._kept:
                yield x, y, n, graph, True
            return
        kept, size = [], 0
        for x, y, n in batches(self.data, self.device):
            graph = None
            size += _bytes(x) + _bytes(y)
            if self.curvature != "ggn":
                saved = _SavedBytes(self._variables)
                with saved:
                    graph = self._gradient_graph(x, y)
                size += saved.bytes
            if kept is not None and size > KEEP_BYTES:
                kept = None
            if kept is not None:
                kept.append((x, y, n, graph))
            yield x, y, n, graph, kept is not None
        self._kept, self.kept_bytes = kept, size if kept is not None else 0

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        return self.matmat(vector.reshape(1, -1))[0]

    def rademacher(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` random sign vectors (drawn on the CPU, so a seed gives the same on any device)."""
        return rademacher(count, self.size, generator, self.device, self.dtype)

    def gaussian(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return gaussian(count, self.size, generator, self.device, self.dtype)


def rademacher(count: int, size: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """``(count, size)`` random signs, drawn on the CPU (a seed gives the same on any device)."""
    signs = torch.randint(0, 2, (count, size), generator=generator, dtype=torch.int8)
    return (2 * signs - 1).to(device, dtype)


def gaussian(count: int, size: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """``(count, size)`` standard normal numbers, drawn on the CPU in float64."""
    return torch.randn(count, size, generator=generator, dtype=torch.float64).to(device, dtype)


def _bytes(tree) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if torch.is_tensor(t))


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of the distinct tensors autograd saves while a graph is built (the
    graph's memory), leaving out the variables themselves, which exist anyway."""

    def __init__(self, variables):
        self.bytes = 0
        seen = {p.untyped_storage().data_ptr() for p in variables}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                self.bytes += storage.nbytes()
            return t

        super().__init__(pack, lambda t: t)
