"""Shared fixtures: a throw-away results store, tiny models, and one smoke-profile book build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store_root(tmp_path, monkeypatch) -> Path:
    """An empty results store that the code under test uses by default."""
    root = tmp_path / "results"
    monkeypatch.setenv("FLATNESS_RESULTS", str(root))
    return root


@pytest.fixture
def generic_batch():
    """Float64 inputs and labels in general position: 40 examples, 5 features, 4 classes."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=gen)
    return x, y


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Build the whole book once on the smoke profile, into a temporary folder."""
    from flatness.book import build as book

    out = tmp_path_factory.mktemp("book")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLATNESS_RESULTS", str(out / "results"))
        mp.chdir(ROOT)
        index = book.build_book(profile="smoke", out=out, progress=False)
    return index
