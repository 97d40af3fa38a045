"""Operators derived from a Hessian operator, on which the engine's estimators run unchanged:
``D H D`` for adaptive sharpness and ``S H_WW S`` on one layer for relative flatness."""

from __future__ import annotations

import torch

from flatness.hessian.operator import HessianOperator, gaussian, rademacher


class Derived:
    """What the estimators ask of an operator besides its products: its size, device and
    dtype, random probes of its size, and the work of the Hessian operator behind it."""

    def __init__(self, op: HessianOperator, size: int):
        self.op, self.size, self.device, self.dtype = op, size, op.device, op.dtype

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        return self.matmat(vector.reshape(1, -1))[0]

    def rademacher(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return rademacher(count, self.size, generator, self.device, self.dtype)

    def gaussian(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return gaussian(count, self.size, generator, self.device, self.dtype)

    @property
    def hvps(self) -> int:
        return self.op.hvps

    @property
    def passes(self) -> int:
        return self.op.passes


class Scaled(Derived):
    """``D H D`` for ``D = diag(scale)``: a product is ``scale * H (scale * V)``, one product of
    ``H`` each."""

    def __init__(self, op: HessianOperator, scale: torch.Tensor):
        super().__init__(op, op.size)
        self.scale = scale.to(op.device, op.dtype)

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.matmat(vectors.to(self.device, self.dtype) * self.scale)


class Layer(Derived):
    """``S H_WW S`` on the weight ``W`` of one layer (``start`` its offset among the
    variables), ``S = G^{1/2}`` with ``G = W W^T`` acting on each column of ``W``: its trace is
    relative flatness. Each product is one with the whole Hessian, the direction zero outside
    the layer."""

    def __init__(self, op: HessianOperator, start: int, w: torch.Tensor):
        super().__init__(op, w.numel())
        self.start, self.shape = start, w.shape
        values, vectors = torch.linalg.eigh((w @ w.T).double())
        root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
        self.root = root.to(op.device, op.dtype)

    def _mix(self, vectors: torch.Tensor) -> torch.Tensor:
        k = vectors.shape[0]
        return (self.root @ vectors.reshape(k, *self.shape)).reshape(k, -1)

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.to(self.device, self.dtype)
        full = torch.zeros(len(vectors), self.op.size, device=self.device, dtype=self.dtype)
        full[:, self.start : self.start + self.size] = self._mix(vectors)
        return self._mix(self.op.matmat(full)[:, self.start : self.start + self.size])
