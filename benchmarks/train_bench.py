"""Training throughput: flatness's loop against a plain torchvision DataLoader loop.

Both loops train the same network (same width, same initial weights) on the same CIFAR-format
images with the same recipe: SGD with momentum, random crop 32 with padding 4 and horizontal
flip, per-channel normalisation, batch 128. flatness keeps the images on the device as one
tensor, draws batches by index and augments whole batches on the device
(:func:`flatness.training.loop.train`'s inner loop); the plain loop is torchvision's ``CIFAR10`` with
``RandomCrop``, ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize`` behind a
``DataLoader``, with 0 and with 2 worker processes. Images per second are measured side by
side in one run, after one warm-up epoch each, as the median of ``--repeats`` epochs.

CIFAR is not downloadable here, so the images are random pixels written in CIFAR-10's real
on-disk format (the work per image is the same as for real ones).

    python benchmarks/train_bench.py [--model allcnn] [--width 0.125] [--images 2048] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixtures import write_cifar10  # noqa: E402

from flatness import data as datasets  # noqa: E402
from flatness import models  # noqa: E402


class _Unchecked(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 reader for files made here, which carry no official md5 sums."""

    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}  # md5 None: existence only

    def _check_integrity(self) -> bool:
        return True


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _make_model(name, width, device, seed=0):
    torch.manual_seed(seed)
    return models.build(name, (3, 32, 32), 10, width=width).to(device)


def flatness_epoch(model, opt, x, y, gen, device, batch=128, fast=False):
    """One epoch of flatness's loop: resident tensors, index batches, device augmentation."""
    model.train()
    order = torch.randperm(len(y), generator=gen)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if fast
        else torch.autocast("cpu", enabled=False)
    )
    aug = torch.Generator(device=device).manual_seed(1)
    for idx in order.split(batch):
        idx = idx.to(device)
        xb = datasets.augment(x[idx], generator=aug)
        if fast:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = nn.functional.cross_entropy(model(xb).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)


def plain_epoch(model, opt, loader, device):
    """One epoch of the plain loop: a torchvision data set behind a DataLoader."""
    model.train()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)


def timed(fn, repeats):
    fn()  # warm-up epoch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="allcnn")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    fast = device.type == "cuda"
    with tempfile.TemporaryDirectory() as root:
        per_batch = max(args.images // 5, 1)
        write_cifar10(Path(root), n_train_per_batch=per_batch, n_test=10)
        d = datasets.load("cifar10", data_root=root, download=False, verify=False)
        x = torch.cat([d.x_train, d.x_val]).to(device)
        y = torch.cat([d.y_train, d.y_val]).to(device)
        mean, std = datasets.CIFAR_MEAN, datasets.CIFAR_STD
        plain_set = _Unchecked(
            root,
            train=True,
            download=False,
            transform=transforms.Compose(
                [
                    transforms.RandomCrop(32, padding=4),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                    transforms.Normalize(mean, std),
                ]
            ),
        )
        n = len(y)
        results = {"model": args.model, "width": args.width, "images": n, "device": str(device)}
        model = _make_model(args.model, args.width, device)
        if fast:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        ours = timed(lambda: flatness_epoch(model, opt, x, y, gen, device, fast=fast), args.repeats)
        results["flatness_images_per_s"] = n / ours
        for workers in (0, 2):
            model = _make_model(args.model, args.width, device)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            loader = torch.utils.data.DataLoader(
                plain_set,
                batch_size=128,
                shuffle=True,
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
            )
            t = timed(lambda m=model, o=opt, ld=loader: plain_epoch(m, o, ld, device), args.repeats)
            results[f"plain_{workers}_workers_images_per_s"] = n / t
            results[f"ratio_vs_{workers}_workers"] = t / ours
    print(f"training throughput, {args.model} width {args.width:g}, {n} images, {device}")
    print(f"  flatness loop           {results['flatness_images_per_s']:9.1f} images/s")
    for workers in (0, 2):
        print(
            f"  DataLoader, {workers} workers   {results[f'plain_{workers}_workers_images_per_s']:9.1f}"
            f" images/s   ratio flatness/plain {results[f'ratio_vs_{workers}_workers']:.2f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
