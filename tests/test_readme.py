"""The README's first Hessian example runs as printed, and its numbers agree with the dense
Hessian it computes beside them."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    after = text.split("A first measurement", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_readme_hessian_example_runs_and_agrees_with_the_dense_hessian(capsys):
    scope: dict = {}
    exec(compile(readme_example(), str(README), "exec"), scope)
    printed = capsys.readouterr().out
    assert printed.count("\n") == 2 and "dense:" in printed, printed
    dense, top, tr = scope["dense"], scope["top"], scope["tr"]
    assert dense.shape == (67, 67)  # 4*8 + 8 + 8*3 + 3 parameters, as the comment says
    truth = torch.linalg.eigvalsh(dense).flip(0)[:2]
    assert torch.allclose(top.eigenvalues.double(), truth, rtol=1e-6, atol=0)
    exact = dense.trace().item()
    assert tr.converged and tr.stderr <= 0.01 * abs(tr.estimate)
    assert abs(tr.estimate - exact) <= 4 * tr.stderr + 1e-9 * abs(exact)
