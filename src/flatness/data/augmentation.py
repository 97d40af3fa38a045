"""The CIFAR training augmentation, random crop with zero padding and horizontal flip, for a batch."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from flatness.errors import FlatnessError


def augment(x: torch.Tensor, *, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Randomly crop and flip every image of a batch, independently.

    Each image is padded with ``padding`` zeros on all four sides, cropped back to H x W at an
    offset drawn uniformly from the (2 padding + 1)^2 possible ones, and then mirrored left to
    right with probability 1/2: output pixel (i, j) is input pixel (i + dy, j + dx), or
    (i + dy, W - 1 - j + dx) when flipped, with (dy, dx) uniform on [-padding, padding]^2 and zero
    where that falls outside the image. This is the authors' ``RandomCrop(32, padding=4)`` and
    ``RandomHorizontalFlip()`` (diegogranziol/GadamX, curvature/models/preresnet.py), done on
    tensors in one gather instead of image by image.

    Args:
        x: images, shape (N, C, H, W), any dtype, on any device.
        generator: the source of randomness: a generator on ``x``'s device, or a CPU generator
            (its draws are then moved). The same generator state gives the same output.
        padding: the largest shift in pixels (4 in the authors' recipe).

    Returns:
        A new tensor of ``x``'s shape, dtype and device.

    Raises:
        FlatnessError: when ``x`` is not four-dimensional, ``generator`` is not a
            ``torch.Generator`` or ``padding`` is not a whole number >= 0.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise FlatnessError(f"augment needs images of shape (N, C, H, W), got {shape}")
    if not isinstance(generator, torch.Generator):
        raise FlatnessError(
            f"augment needs generator=torch.Generator(...), got {type(generator).__name__}"
        )
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
        raise FlatnessError(f"padding must be a whole number of pixels >= 0, got {padding!r}")
    n, _, h, w = x.shape
    span = 2 * padding + 1
    offsets = torch.randint(0, span, (2, n), generator=generator, device=generator.device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=generator.device)
    offsets, flips = offsets.to(x.device), flips.to(x.device).bool()
    padded = F.pad(x, (padding, padding, padding, padding))
    # offset o in the padded image is a shift of o - padding in the original
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around a slice put their (N, H, W) dimensions first: (N, H, W, C)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
