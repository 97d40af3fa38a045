"""The exact problem of "Can we trust the estimates?": the trained MLP, its data and its dense
float64 Hessian, the truth every estimator of the chapter is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flatness import data as datasets
from flatness import hessian as H
from flatness.chapters.estimators.design import Settings, run_config
from flatness.results.entries import Run
from flatness.results.runs import load_or_run
from flatness.training.loop import default_device, load_model

ce = nn.functional.cross_entropy


@dataclass(frozen=True)
class Problem:
    """A trained model, its data and its exact Hessian."""

    run: Run
    model: nn.Module
    data: tuple[torch.Tensor, torch.Tensor]
    hessian: torch.Tensor
    eigenvalues: torch.Tensor

    @property
    def trace(self) -> float:
        return self.eigenvalues.sum().item()

    @property
    def frobenius(self) -> float:
        return self.eigenvalues.square().sum().sqrt().item()


def problem(
    settings: Settings, *, data_root=None, device=None, progress=False, train_missing=True
) -> Problem:
    """Train (or load) the MLP and compute its exact data-loss Hessian in float64."""
    device = device if device is not None else default_device()
    config = run_config(settings)
    run = load_or_run(
        config,
        data_root=data_root,
        device=device,
        progress=progress,
        train_missing=train_missing,
    )
    data = datasets.load(settings.dataset, data_root=data_root, train_size=settings.train_size)
    model = load_model(config, run.arrays, data.input_shape, data.num_classes).to(device)
    batch = (data.x_train.to(device), data.y_train.to(device))
    exact = H.exact_hessian(model, ce, batch, max_params=20_000)
    return Problem(run, model, batch, exact, torch.linalg.eigvalsh(exact).cpu())


def architecture(model: nn.Module) -> str:
    """``"an MLP 64-16-10 with Tanh"``: the layer sizes and activations of a Linear stack."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    sizes = [linear[0].in_features] + [m.out_features for m in linear]
    acts = sorted(
        {type(m).__name__ for m in model.modules() if not list(m.children())} - {"Linear"}
    )
    return f"an MLP {'-'.join(map(str, sizes))} with {', '.join(acts) or 'no'} activations"
