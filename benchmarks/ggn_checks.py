"""What the probes behind trace()'s exact Gauss-Newton part cost: ggn_trace and trace(rtol=0.05)
on a 784-100-10 ReLU MLP over 5,000 random examples, best of several calls.

Run it on two checkouts, one after the other on a quiet machine, to compare them::

    OMP_NUM_THREADS=2 python benchmarks/ggn_checks.py [SRC]   # SRC: another checkout's src/
"""

import sys
import time

import torch
from torch import nn

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

import flatness.hessian as H  # noqa: E402


def best(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    data = (torch.randn(5000, 784), torch.randint(0, 10, (5000,)))
    ce = nn.functional.cross_entropy
    print(H.__file__)
    ggn = H.ggn_trace(model, ce, data)
    print(f"ggn_trace {ggn:.10g}: {best(lambda: H.ggn_trace(model, ce, data), 5):.3f} s")
    run = H.trace(model, ce, data, rtol=0.05, seed=0)
    seconds = best(lambda: H.trace(model, ce, data, rtol=0.05, seed=0), 3)
    print(f"trace {run.estimate:.10g} ({run.method}): {seconds:.3f} s")


if __name__ == "__main__":
    main()
