"""Softmax regression's exact Hessian spectrum at the paper's MNIST size, old way against new.

``python benchmarks/softmax_bench.py [--subset 3000] [--epochs 3] [--n N]``. The model is
``nn.Linear(784, 10)`` (7,850 parameters) trained ``--epochs`` epochs of SGD (batch 128,
lr 0.01, momentum 0.9, seed 0) on the 60,000 MNIST training images with the authors' transform
``(x - 0.5) / 0.5`` (paper notes, section 4), read with torchvision from ``--data``; if the
files are absent, 60,000 random rows uniform in [-1, 1] with MNIST's 67 always-background
pixels held at -1 stand in, and the output says so.

- old: the dense closed form as it stood before ``flatness.hessian.softmax`` (one float64
  product of (K^2, n) curvatures by (n, (d+1)^2) outer products per chunk of examples), then
  ``torch.linalg.eigvalsh`` of the (7850, 7850) matrix. Its construction is timed on the first
  ``--subset`` examples and scaled by N / subset (the work is linear in N); its eigensolver is
  timed at full size (the matrix is P x P whatever N is).
- new: :func:`flatness.hessian.softmax_regression_spectrum` on all N examples, and
  :func:`flatness.hessian.softmax_regression_hessian` (the dense matrix) for comparison.

Both ways run on the subset too: their eigenvalues must agree to 1e-8 of lambda_max, and the
two dense matrices are compared entry by entry.
Results also go to ``_build/bench/softmax.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flatness import hessian

OUT = Path("_build/bench/softmax.json")


def old_closed_form(model: nn.Linear, inputs: torch.Tensor, max_chunk_elements: int = 2**24):
    """The closed form as it was (commit 7c04b84), kept here as the baseline."""
    weight, bias = model.weight.detach().double(), model.bias.detach().double()
    k, d = weight.shape
    total = torch.zeros(k * k, (d + 1) ** 2, dtype=torch.float64)
    n = len(inputs)
    chunk = max(1, max_chunk_elements // (d + 1) ** 2)
    for start in range(0, n, chunk):
        x = inputs[start : start + chunk].double()
        p = torch.softmax(x @ weight.T + bias, dim=1)
        curvature = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        outer = (xt[:, :, None] * xt[:, None, :]).reshape(len(x), -1)
        total += curvature.reshape(len(x), k * k).T @ outer
    h = (total / n).reshape(k, k, d + 1, d + 1).permute(0, 2, 1, 3).reshape(k * (d + 1), -1)
    index = torch.arange(k * (d + 1)).reshape(k, d + 1)
    order = torch.cat([index[:, :d].reshape(-1), index[:, d]])
    return h[order][:, order]


def mnist(root: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The training images as (60000, 784) float32 in [-1, 1], labels, and where they came from."""
    from torchvision.datasets import MNIST

    try:
        data = MNIST(root, train=True, download=False)
    except RuntimeError:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(60_000, 28, 28, generator=gen) * 2 - 1
        x[:, :, :2] = x[:, :2, :] = x[:, -2:, :] = x[:, :, -1] = -1.0  # a border of background
        y = torch.randint(0, 10, (60_000,), generator=gen)
        return x.reshape(60_000, -1), y, "random rows in [-1, 1] (MNIST files absent)"
    x = (data.data.reshape(len(data.data), -1).float() / 255.0 - 0.5) / 0.5
    return x, data.targets, f"MNIST training images from {root}"


def trained(x, y, epochs: int) -> tuple[nn.Linear, float, float]:
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=1) == y).float().mean().item()
    return model, loss, acc


def timed(f):
    """``f()``, its wall-clock seconds and the process's CPU seconds (all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--subset", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="first n examples only (a quick check)")
    args = parser.parse_args()
    threads = (
        f"torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    x, y, source = mnist(args.data)
    x, y = x[: args.n], y[: args.n]
    n, sub = len(x), min(args.subset, len(x))
    constant = int((x.amax(dim=0) == x.amin(dim=0)).sum())
    (model, loss, acc), train_s, _ = timed(lambda: trained(x, y, args.epochs))
    print(f"{source}; {constant} constant input columns; {threads}; at start {load()}")
    print(
        f"softmax regression after {args.epochs} epochs of SGD ({train_s:.0f} s): "
        f"loss {loss:.4f}, train accuracy {acc:.4f}"
    )

    rss_before = peak_rss_mib()
    spectrum, new_s, new_cpu = timed(lambda: hessian.softmax_regression_spectrum(model, x))
    rss_new = peak_rss_mib()
    _, dense_s, dense_cpu = timed(lambda: hessian.softmax_regression_hessian(model, x))

    old_sub, build_sub_s, build_sub_cpu = timed(lambda: old_closed_form(model, x[:sub]))
    old_evals, eig_s, eig_cpu = timed(partial(torch.linalg.eigvalsh, old_sub))
    old_evals = old_evals.numpy()
    new_dense = hessian.softmax_regression_hessian(model, x[:sub])
    dense_error = ((new_dense - old_sub).abs().max() / old_sub.abs().max()).item()
    old_sub = new_dense = None  # free 1 GB before the next run
    new_sub = hessian.softmax_regression_spectrum(model, x[:sub])
    error = np.abs(new_sub.eigenvalues - old_evals).max() / old_evals[-1]

    scale = n / sub
    old = {
        "construction": (build_sub_s * scale, build_sub_cpu * scale),
        "eigenvalues": (eig_s, eig_cpu),
        "total": ((build_sub_s * scale + eig_s), (build_sub_cpu * scale + eig_cpu)),
    }
    rows = [
        ("Hessian construction", old["construction"], None, (dense_s, dense_cpu)),
        ("eigenvalues", old["eigenvalues"], None, None),
        ("Hessian + eigenvalues", old["total"], (new_s, new_cpu), None),
    ]
    print(
        f"\nN = {n:,}, P = {spectrum.eigenvalues.size:,}; the new way solves order "
        f"{spectrum.solved_size:,}. Wall-clock seconds (CPU seconds, all threads):"
    )
    print(f"{'':24}{'old':>16}{'new spectrum':>16}{'new dense H':>16}")
    for name, *cells in rows:
        text = [f"{c[0]:.1f} ({c[1]:.0f})" if c else "-" for c in cells]
        print(f"{name:24}{text[0]:>16}{text[1]:>16}{text[2]:>16}")
    print(
        f"(old construction: {build_sub_s:.1f} s on {sub:,} examples, times {scale:g}; "
        "old eigvalsh at the full size P)"
    )
    print(f"speed-up of Hessian + eigenvalues: {old['total'][0] / new_s:.0f}x wall-clock")
    print(
        f"peak RSS by the end of the new spectrum: {rss_new:.0f} MiB (before it: "
        f"{rss_before:.0f} MiB, data loading and training included)"
    )
    print(
        f"on {sub:,} examples: max |lambda_new - lambda_old| / lambda_max = {error:.2e} "
        f"({'OK' if error < 1e-8 else 'FAILS'} at 1e-8); dense matrices: max |H_new - H_old| / "
        f"max |H_old| = {dense_error:.2e}"
    )
    print(
        f"full data: lambda_max {spectrum.lambda_max:.6g}, trace {spectrum.trace:.6g}, "
        f"Frobenius {spectrum.frobenius:.6g}, rank {spectrum.rank} (rtol 1e-4), "
        f"{spectrum.rank_at(1e-10)} (rtol 1e-10); at the end {load()}"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "source": source,
        "threads": threads,
        "n": n,
        "subset": sub,
        "constant_columns": constant,
        "train_loss": loss,
        "train_accuracy": acc,
        "old_construction_subset_s": build_sub_s,
        "old_wall_cpu_s": old,
        "new_spectrum_wall_cpu_s": [new_s, new_cpu],
        "new_dense_hessian_wall_cpu_s": [dense_s, dense_cpu],
        "solved_size": spectrum.solved_size,
        "peak_rss_mib_after_new": rss_new,
        "subset_relative_error": float(error),
        "subset_dense_relative_error": dense_error,
        "lambda_max": spectrum.lambda_max,
        "trace": spectrum.trace,
        "frobenius": spectrum.frobenius,
        "rank_1e-4": spectrum.rank,
        "rank_1e-10": spectrum.rank_at(1e-10),
    }
    OUT.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
