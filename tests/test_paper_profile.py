"""Each chapter's ``paper`` configuration, as the chapter declares it: its models build on its
data, take one training step with the chapter's optimiser, and give one symmetric HVP.

MNIST chapters use the real files at ``../shared/data`` (CI has them); CIFAR chapters use small
files written in CIFAR-100's real format.
"""

import math

import pytest
import torch
from fixtures import write_cifar100
from test_recipes import HAVE_MNIST, SHARED_DATA
from torch import nn

from flatness import data, models
from flatness.chapters import adaptive, cnn, logreg, mlp, resnets
from flatness.hessian import HessianOperator
from flatness.training.loop import make_optimiser

CHAPTERS = {"mlp": mlp, "cnn": cnn, "resnets": resnets, "adaptive": adaptive}


def _distinct(configs):
    seen = {}
    for c in configs:
        seen.setdefault((c.model, c.optimiser, c.averaging, c.weight_decay), c)
    return list(seen.values())


CASES = [
    pytest.param(
        c, id=f"{name}-{c.model}-{c.optimiser}{'-avg' if c.averaging else ''}-wd{c.weight_decay:g}"
    )
    for name, module in CHAPTERS.items()
    for c in _distinct(module.settings("paper").runs())
] + [
    pytest.param(c, id=f"logreg-wd{c.weight_decay:g}")
    for c in _distinct(logreg.settings("paper").run_configs())
]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, n_train=40, n_test=10)
    return root


def test_the_paper_profile_uses_the_papers_data_sizes_and_seeds():
    for name, module in CHAPTERS.items():
        s = module.settings("paper")
        assert len(s.seeds) >= 3, name
        for c in s.runs():
            assert c.epochs == 300 and c.width == 1 and c.train_size is None, (name, c.label())
            assert c.dataset == ("mnist" if name == "mlp" else "cifar100"), (name, c.label())


@pytest.mark.parametrize("cfg", CASES)
def test_paper_run_takes_a_step_and_a_hessian_vector_product(cfg, cifar_root):
    if cfg.dataset == "mnist":
        if not HAVE_MNIST:
            pytest.skip(f"the real MNIST files are not at {SHARED_DATA} (CI has them)")
        d = data.load("mnist", data_root=SHARED_DATA, download=False)
    else:
        d = data.load(cfg.dataset, data_root=cifar_root, download=False, verify=False)
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, d.input_shape, d.num_classes, width=cfg.width)
    x, y = d.x_train[:4], d.y_train[:4]
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimiser(cfg, model.parameters())
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) == len(before)
    model.eval()
    op = HessianOperator(model, nn.functional.cross_entropy, (x, y))
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(op.size, generator=gen), torch.randn(op.size, generator=gen)
    hu, hv = op.matvec(u), op.matvec(v)
    assert torch.isfinite(hv).all()
    scale = hu.norm().item() * v.norm().item()
    assert abs(torch.dot(u, hv).item() - torch.dot(v, hu).item()) <= 1e-4 * scale
