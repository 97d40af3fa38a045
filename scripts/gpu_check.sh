#!/usr/bin/env bash
# A short check of every paper-profile network on a CUDA GPU: a few epochs of training through
# flatness.training.loop (bf16 autocast, channels-last, data and augmentation on the device) on CIFAR-format
# images written here, images per second, one Hessian measurement each, and the training-throughput
# benchmark against a plain DataLoader loop. Writes report.md, report.json and step_times.json (for
# `python -m flatness plan --step-times`) into the folder given (default _build/gpu_check).
# About 10 minutes on one recent GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-_build/gpu_check}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT_DIR"
"$PY" benchmarks/gpu_check.py --out "$OUT_DIR" "${@:2}"
"$PY" benchmarks/train_bench.py --model preresnet-56 --width 1 --images 10000 --out "$OUT_DIR/train_bench.json"
