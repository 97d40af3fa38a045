"""Random crop and flip on the device: every draw is one of the documented moves, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatness import data
from flatness.errors import FlatnessError


def shifted(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """Reference by slicing: out[:, i, j] = image[:, i + dy, j + dx] (0 outside), then mirrored."""
    _, h, w = image.shape
    out = np.zeros_like(image)
    out[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = image[
        :, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)
    ]
    return out[:, :, ::-1] if flip else out


def moves(padding: int = 4) -> list[tuple[int, int, bool]]:
    span = range(-padding, padding + 1)
    return [(dy, dx, flip) for dy in span for dx in span for flip in (False, True)]


def draws(images: torch.Tensor, out: torch.Tensor, padding: int = 4) -> list[tuple[int, int, bool]]:
    """The (dy, dx, flip) that turns each input image into its output; exactly one must."""
    found = []
    for image, result in zip(images.numpy(), out.numpy()):
        candidates = np.stack([shifted(image, *m) for m in moves(padding)])
        hits = np.flatnonzero((candidates == result).all(axis=(1, 2, 3)))
        assert len(hits) == 1, hits
        found.append(moves(padding)[hits[0]])
    return found


def distinct_images(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Every pixel of the batch a different positive number, so zeros mark what entered."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).reshape(n, c, h, w)


def test_augment_shifts_with_zeros_and_flips_each_image_on_its_own():
    x = distinct_images(6, 3, 8, 8)
    out = data.augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    found = draws(x, out)  # one (dy, dx, flip) per image, the same for its three channels
    assert len(set(found)) > 1


def test_augment_over_many_draws_reaches_every_shift_and_both_flips():
    x = distinct_images(1, 1, 8, 8).repeat(3000, 1, 1, 1)
    out = data.augment(x, generator=torch.Generator().manual_seed(1))
    all_moves = moves()
    candidates = torch.from_numpy(np.stack([shifted(x[0].numpy(), *m) for m in all_moves]))
    hits = (out[:, None] == candidates[None]).flatten(2).all(2)  # (3000, 162)
    assert torch.equal(hits.sum(1), torch.ones(3000, dtype=torch.int64))
    seen = [all_moves[i] for i in hits.int().argmax(1).tolist()]
    assert set(seen) == set(all_moves)  # all 81 shifts, each with and without the flip
    flipped = sum(f for _, _, f in seen) / len(seen)
    assert 0.45 < flipped < 0.55  # 1/2, binomial standard error 0.009


def test_augment_is_reproducible_from_the_generator():
    x = distinct_images(16, 1, 8, 8)
    first = data.augment(x, generator=torch.Generator().manual_seed(7))
    again = data.augment(x, generator=torch.Generator().manual_seed(7))
    other = data.augment(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    gen = torch.Generator().manual_seed(7)
    assert not torch.equal(data.augment(x, generator=gen), data.augment(x, generator=gen))


def test_augment_on_mnist_and_cifar_sizes_and_other_dtypes():
    x = distinct_images(40, 1, 28, 28)
    draws(x, data.augment(x, generator=torch.Generator().manual_seed(2)))
    pixels = torch.randint(1, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = data.augment(pixels, generator=torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == (5, 3, 32, 32)
    # padding 0 only flips; padding 1 shifts by at most one pixel
    y = data.augment(x, generator=torch.Generator().manual_seed(4), padding=0)
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(y, x))
    one = data.augment(x, generator=torch.Generator().manual_seed(5), padding=1)
    assert {(abs(dy), abs(dx)) for dy, dx, _ in draws(x, one, padding=1)} <= {
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    }


@pytest.mark.parametrize(
    "x,kwargs,message",
    [
        (torch.zeros(1, 8, 8), {}, r"shape \(N, C, H, W\), got \(1, 8, 8\)"),
        (torch.zeros(2, 1, 8, 8), {"padding": -1}, "padding must be a whole number"),
        (torch.zeros(2, 1, 8, 8), {"generator": 0}, "generator=torch.Generator"),
    ],
)
def test_augment_refuses_bad_input(x, kwargs, message):
    kwargs = {"generator": torch.Generator(), **kwargs}
    with pytest.raises(FlatnessError, match=message):
        data.augment(x, **kwargs)


def test_augment_on_cuda_uses_the_same_draws_as_on_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    x = distinct_images(64, 3, 32, 32)
    on_cpu = data.augment(x, generator=torch.Generator().manual_seed(5))
    on_gpu = data.augment(x.cuda(), generator=torch.Generator().manual_seed(5))
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)
    cuda_gen = torch.Generator(device="cuda").manual_seed(5)
    out = data.augment(x.cuda(), generator=cuda_gen)
    assert out.device.type == "cuda"
    draws(x, out.cpu())
