"""Every paper-profile network on one device: a few epochs, throughput, one Hessian measurement.

Run by ``scripts/gpu_check.sh`` on a CUDA machine; ``--device cpu --width 0.0625 --epochs 1``
runs the same code on a CPU in a minute (the tests do). CIFAR is written here in its real
on-disk format from random pixels, so the check needs no download; MNIST-shaped networks use
MNIST-format files written the same way. Per network it reports the images per second of
the last epoch (its wall time, evaluation of the splits included; the first epoch includes
warm-up), the step and HVP times at the run's batch size in the format of
``python -m flatness plan --step-times``, and one full measurement as a training run makes it
(:func:`flatness.training.measurement.measure`: ``lambda_max``, trace and Frobenius norm to the
run's ``hessian_rtol``, BatchNorm networks in both modes) on ``--measure-images`` training
images, with its seconds and its cost in training epochs over the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixtures import write_cifar100, write_mnist_files  # noqa: E402

from flatness import data as datasets  # noqa: E402
from flatness.results import plan  # noqa: E402
from flatness.training import recipes  # noqa: E402
from flatness.training.loop import load_model, train  # noqa: E402
from flatness.training.measurement import measure  # noqa: E402

MODELS = recipes.paper_models()


def check(
    model: str,
    root: Path,
    device: torch.device,
    epochs: int,
    width: float | None,
    images: int = 1024,
) -> dict:
    cfg = recipes.run_config(
        model, "sgd", "paper", epochs=epochs, hessian_every=0, **({"width": width} if width else {})
    )
    start = time.perf_counter()
    result = train(cfg, data_root=root, device=device, data_verify=False)
    wall = time.perf_counter() - start
    seconds = result.arrays["epoch_seconds"]
    n = result.metrics["train_examples"]
    d = datasets.load(cfg.dataset, data_root=root, download=False, verify=False)
    net = load_model(cfg, result.arrays, d.input_shape, d.num_classes).to(device)
    x, y = d.x_train[:images].to(device), d.y_train[:images].to(device)
    t0 = time.perf_counter()
    values, _ = measure(net, x, y, batch_size=cfg.batch_size, rtol=cfg.hessian_rtol, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    measured = time.perf_counter() - t0
    epoch_on_these = float(seconds[-1]) * len(y) / n  # one epoch's time over these images
    step_seconds, hvp_seconds = plan.time_step(
        cfg.model, cfg.dataset, cfg.width, cfg.batch_size, device
    )
    return {
        "model": model,
        "width": cfg.width,
        "parameters": result.metrics["parameters"],
        "train_examples": n,
        "images_per_s": n / float(seconds[-1]),
        "step_seconds": step_seconds,
        "hvp_seconds": hvp_seconds,
        "plan_key": f"{cfg.model}|{cfg.width:g}|{cfg.dataset}|{cfg.batch_size}",
        "wall_seconds": wall,
        "measure_images": len(y),
        "measure_seconds": measured,
        "measure_epochs": measured / epoch_on_these,
        **{k: v for k, v in values.items() if k != "hessian_seconds"},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="_build/gpu_check")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=5000, help="CIFAR training images written")
    parser.add_argument("--width", type=float, help="override every network's width")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--measure-images", type=int, default=1024, help="images measured on")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar100(root, n_train=args.images, n_test=100)
        write_mnist_files(root / "MNIST" / "raw", n_train=args.images, n_test=100)
        for model in args.models:
            try:
                rows.append(
                    check(model, root, device, args.epochs, args.width, args.measure_images)
                )
            except Exception as err:  # one failing network must not hide the others' results
                rows.append({"model": model, "error": f"{type(err).__name__}: {err}"})
            print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    times = {r["plan_key"]: r["step_seconds"] for r in rows if "plan_key" in r}
    times |= {f"{r['plan_key']}|hvp": r["hvp_seconds"] for r in rows if "plan_key" in r}
    (out / "step_times.json").write_text(json.dumps(times, indent=2))
    lines = [f"# GPU check on {name} (torch {torch.__version__})", ""]
    lines.append(
        "| model | params | images/s | step s | lambda_max | trace +- se | Frobenius +- se "
        "| measurement s | in epochs |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['images_per_s']:.0f} | "
            f"{r['step_seconds']:.4f} | {r['lambda_max']:.4g} | {r['trace']:.4g} +- "
            f"{r['trace_se']:.2g} | {r['frobenius']:.4g} +- {r['frobenius_se']:.2g} | "
            f"{r['measure_seconds']:.1f} | {r['measure_epochs']:.1f} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
