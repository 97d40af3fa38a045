"""The exact trace of the generalised Gauss-Newton matrix from per-example Jacobian products.

For a mean loss ``L = (1/N) sum_i l(z_i, y_i)`` with logits ``z_i = f(w, x_i)``, the GGN is
``G = (1/N) sum_i J_i^T H_i J_i`` with ``H_i = d2 l / dz_i^2`` (K x K). Writing
``H_i = sum_c lambda_ic u_ic u_ic^T``::

    Tr G = (1/N) sum_i sum_c lambda_ic ||J_i^T u_ic||^2,

which takes K vector-Jacobian products per example and no random probes: the same per-example
quantities BackPACK computes for its exact GGN diagonal (Dangel, Kunstner and Hennig, 2020).
Only the residual ``H - G`` is then left to a randomised estimator; near a minimum of the
cross-entropy it is small, because it is weighted by ``dL/dz = p - y``.

Applicable when each example's logits depend on that example alone (BatchNorm in eval mode,
not with batch statistics) and the loss is a mean of per-example terms; otherwise
:func:`~flatness.hessian.ggn_trace` raises :class:`NotSeparable` and the caller falls back to probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import vjp, vmap

from flatness.errors import FlatnessError
from flatness.hessian.checks import (
    Output,
    batches,
    check_functional,
    check_model,
    curvature_modes,
    examples_interact,
    functional_forward,
    probe_batch,
    select_output,
    tensors,
    with_autograd,
)
from flatness.hessian.loaders import uses_batch_statistics

#: beyond this many logits per example the K products per example cost more than probes
MAX_LOGITS = 64


class NotSeparable(FlatnessError):
    """The GGN trace cannot be taken example by example for this model, loss or mode."""


@with_autograd
def ggn_trace(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    bn_mode: str = "eval",
    output: Output = None,
    chunk_bytes: int = 2**27,
) -> float:
    """``Tr G`` of the mean data loss, exactly (float64 accumulation), over the trainable
    parameters.

    Args:
        model, loss_fn, data, bn_mode, output: as for :class:`~flatness.hessian.HessianOperator`.
        chunk_bytes: examples are processed in chunks whose K x P per-example products fit in
            about this many bytes.

    Raises:
        NotSeparable: examples that interact (BatchNorm with batch statistics, centring over
            the batch, a contrastive head: any output that depends on another example's
            input), a parameter read outside its module's attributes (which
            ``torch.func.functional_call`` cannot see), more than ``MAX_LOGITS`` logits per
            example, a loss that is not a mean of per-example terms, or a model or a loss
            that ``torch.func.vmap`` cannot run one example at a time (a loss calling
            ``F.one_hot`` or ``.item()``).
        FlatnessError: any input the checks refuse.

    Runs with gradients on under ``torch.no_grad()`` or ``torch.inference_mode()`` too.
    """
    check_model(model, loss_fn, data, bn_mode=bn_mode, output=output)
    return checked_ggn_trace(model, loss_fn, data, bn_mode, output, chunk_bytes)


def checked_ggn_trace(model, loss_fn, data, bn_mode, output, chunk_bytes: int = 2**27) -> float:
    """:func:`ggn_trace` on input :func:`~flatness.hessian.checks.check_model` has already
    passed (a :class:`~flatness.hessian.HessianOperator` built on it), which is not checked
    again; the separability checks still run."""
    if uses_batch_statistics(model, bn_mode):
        raise NotSeparable(
            "BatchNorm uses batch statistics here (bn_mode='train', or no running statistics): "
            "an example's logits depend on its whole batch"
        )
    variables = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    named = [(n, p.detach()) for n, p in variables]
    params = dict(named)
    device = named[0][1].device
    with curvature_modes(model, bn_mode):
        _check_separable(model, loss_fn, data, device, variables, output)
    total, examples = 0.0, 0
    with curvature_modes(model, bn_mode), torch.no_grad():
        for x, y, n in batches(data, device):
            total += _batch_sum(model, loss_fn, x, y, params, output, chunk_bytes)
            examples += n
    return total / examples


def _check_separable(model, loss_fn, data, device, variables, output) -> None:
    """On the first batch: the examples must not interact, and torch.func must see every use
    of every variable; otherwise the per-example sum is not the GGN's trace."""
    x, y = probe_batch(*next(batches(data, device))[:2])
    if examples_interact(model, x, output):
        raise NotSeparable(
            "an example's output depends on other examples' inputs in this model (batch "
            "statistics, centring over the batch, a contrastive head), or its output has not one "
            "row per input example, so the GGN is no sum over examples"
        )
    check_functional(model, loss_fn, x, y, variables, output, "the per-example GGN", NotSeparable)


def _batch_sum(model, loss_fn, x, y, params, output, chunk_bytes) -> float:
    """``sum_i sum_c lambda_ic ||J_i^T u_ic||^2`` over one batch's examples."""
    buffers = dict(model.named_buffers())
    size = sum(p.numel() for p in params.values())
    z = select_output(model(x), output).detach()
    n, shape = len(z), z.shape[1:]
    k = math.prod(shape)
    if k > MAX_LOGITS:
        raise NotSeparable(f"{k} logits per example (more than {MAX_LOGITS})")

    def example_loss(zi, yi):
        return loss_fn(zi.reshape(1, *shape), yi[None])

    try:
        with torch.enable_grad():
            per_example = vmap(example_loss)(z.reshape(n, k), y)
            if not torch.allclose(per_example.mean(), loss_fn(z, y), rtol=1e-4, atol=1e-7):
                raise NotSeparable("the loss is not a mean of per-example terms")
            hessian = vmap(torch.func.jacrev(torch.func.jacrev(example_loss)))
            try:  # in float64 where the loss allows it, for the closed form's strict comparison
                curvature = hessian(z.reshape(n, k).double(), y)
            except (RuntimeError, NotImplementedError, ValueError, TypeError):
                curvature = hessian(z.reshape(n, k), y)
    except FlatnessError:
        raise
    except (RuntimeError, NotImplementedError, ValueError, TypeError, IndexError) as err:
        # the loss ran on the whole batch (check_model), so a failure here is vmap's: a loss
        # with data-dependent steps (F.one_hot, .item()) cannot be taken one example at a time
        raise NotSeparable(
            f"the loss cannot be evaluated one example at a time under torch.func.vmap ({err})"
        ) from err
    factor, signs = _curvature_factor(z.reshape(n, k), curvature)
    fast = _hooked_sum(model, x, output, factor, signs, chunk_bytes)
    if fast is not None:
        return fast

    def logits(p, xi):
        one = tensors(lambda t: t[None], xi)
        return select_output(functional_forward(model, (p, buffers), (one,)), output).reshape(-1)

    def norms(xi, fi):
        with torch.enable_grad():
            _, pull = vjp(lambda p: logits(p, xi), params)
            rows = vmap(pull)(fi.T)[0]  # each (k, *shape): J^T f_c for every column c
        return sum(r.reshape(k, -1).square().sum(dim=1) for r in rows.values())

    chunk = max(1, chunk_bytes // (k * size * z.element_size()))
    total = 0.0
    for s in range(0, n, chunk):
        try:
            sq = vmap(norms)(tensors(lambda t, s=s: t[s : s + chunk], x), factor[s : s + chunk])
        except (RuntimeError, NotImplementedError) as err:
            raise NotSeparable(f"the model cannot run one example at a time ({err})") from err
        total += (signs[s : s + chunk] * sq.double()).sum().item()
    return total


#: the absolute rounding of a float64 loss curvature's entries (64 machine epsilons)
CLOSED_FORM_ATOL = 64 * torch.finfo(torch.float64).eps


def _agrees(curvature: torch.Tensor, closed: torch.Tensor) -> bool:
    """Every example's curvature equal to the closed form to float64 rounding."""
    gap = (curvature - closed).abs().amax(dim=(1, 2))
    return bool((gap <= 1e-9 * closed.abs().amax(dim=(1, 2)) + CLOSED_FORM_ATOL).all())


def _curvature_factor(z: torch.Tensor, curvature: torch.Tensor):
    """Columns ``f_ic`` and signs ``s_ic`` with ``H_i = sum_c s_ic f_ic f_ic^T`` for each
    example's (k, k) loss curvature ``H_i``, as (n, k, k) and (n, k) float64 signs.

    Softmax cross-entropy (with any soft or smoothed targets) has ``H_i = diag(p) - p p^T``,
    ``p = softmax(z_i)``, which factors in closed form as ``f_ic = sqrt(p_c) (e_c - p)``; it is
    used where the curvature, computed in float64, is that to float64 rounding (every entry
    within ``1e-9`` of its example's largest plus ``CLOSED_FORM_ATOL``), because a batched
    ``eigh`` of n small matrices can cost more than the Jacobian products it factors for. Any
    other curvature is diagonalised: a temperature, a z-loss term or a one-vs-rest loss of a
    confident model differ from softmax's by less than looser tolerances would see."""
    p = torch.softmax(z.double(), dim=-1)
    softmax = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    if curvature.dtype == torch.float64 and _agrees(curvature, softmax):
        eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
        factor = (eye - p[:, :, None]) * p.sqrt()[:, None, :]  # column c: sqrt(p_c)(e_c - p)
        return factor.to(z.dtype), torch.ones_like(p)
    lam, u = torch.linalg.eigh(curvature.double())  # (n, k), (n, k, k)
    return (u * lam.abs().sqrt()[:, None, :]).to(z.dtype), lam.sign()


#: layers whose per-example gradients are formed from their inputs and output gradients
_HOOKED = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


def hooked_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers holding the variables, if each is a Linear, a Conv2d (one group, zero
    padding) or a BatchNorm with running statistics that computes with its own ``weight`` and
    ``bias`` parameters, and none shares a parameter; else None."""
    owners: dict[int, nn.Module] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if id(p) in owners or not isinstance(module, _HOOKED):
                return None
            if name not in ("weight", "bias") or getattr(module, name) is not p:
                # the layer computes with a tensor derived from its variable (the hook-based
                # spectral_norm's weight from weight_orig): delta a^T is the gradient of the
                # derived tensor, not of the variable
                return None
            if isinstance(module, nn.Conv2d) and (
                module.groups != 1
                or module.padding_mode != "zeros"
                or isinstance(module.padding, str)
            ):
                return None
            if isinstance(module, _HOOKED[2]) and module.running_mean is None:
                return None
            owners[id(p)] = module
    return list({id(m): m for m in owners.values()}.values()) or None


def cheap(model: nn.Module) -> bool:
    """Is the exact GGN trace about as cheap as a few products? Every variable in a layer whose
    per-example gradients :func:`hooked_layers` forms from its inputs and output gradients.
    Those cost about k forward passes for k logits (a convolution's are unfolded products of
    the same size as its forward pass), which is less than the 16 or more products that
    probing the whole Hessian takes; ``make bench`` times it against products on an MLP and a
    BatchNorm CNN."""
    return hooked_layers(model) is not None


def _example_norms(module, a, delta, chunk_bytes) -> torch.Tensor:
    """(k, n) squared norms of each example's gradient of the module's variables, for each of
    the k output cotangents in ``delta`` (k, n, *output shape)."""
    k, n = delta.shape[:2]
    w, b = module.weight, getattr(module, "bias", None)
    total = torch.zeros(k, n, dtype=torch.float64, device=delta.device)
    if isinstance(module, _HOOKED[2]):  # y = gamma x^ + beta, x^ from running statistics
        shape = (1, -1) + (1,) * (a.dim() - 2)
        xhat = (a - module.running_mean.reshape(shape)) / torch.sqrt(
            module.running_var.reshape(shape) + module.eps
        )
        spatial = tuple(range(3, delta.dim()))

        def pool(t):  # sum over positions; dim=() would sum over everything
            return t.sum(dim=spatial) if spatial else t

        if w is not None and w.requires_grad:
            total += pool(delta * xhat).square().sum(dim=-1).double()
        if b is not None and b.requires_grad:
            total += pool(delta).square().sum(dim=-1).double()
        return total
    if isinstance(module, nn.Linear) and a.dim() == 2:  # delta a^T: ||delta||^2 ||a||^2
        d2 = delta.square().sum(dim=-1).double()
        if w.requires_grad:
            total += d2 * a.square().sum(dim=-1).double()
        if b is not None and b.requires_grad:
            total += d2
        return total
    if isinstance(module, nn.Conv2d):
        cols = nn.functional.unfold(
            a, module.kernel_size, module.dilation, module.padding, module.stride
        )  # (n, C_in k^2, L)
        delta = delta.reshape(k, n, delta.shape[2], -1)  # (k, n, C_out, L)
    else:  # Linear on extra dimensions: sum over them of outer products
        cols = a.reshape(n, -1, a.shape[-1]).transpose(1, 2)  # (n, in, T)
        delta = delta.reshape(k, n, -1, delta.shape[-1]).transpose(2, 3)  # (k, n, out, T)
    per = max(1, chunk_bytes // (8 * k * w.numel()))
    for s in range(0, n, per):
        if w.requires_grad:
            g = torch.einsum("kncl,ndl->kncd", delta[:, s : s + per], cols[s : s + per])
            total[:, s : s + per] += g.square().sum(dim=(-1, -2)).double()
        if b is not None and b.requires_grad:
            total[:, s : s + per] += delta[:, s : s + per].sum(dim=-1).square().sum(-1).double()
    return total


def _layer_gradient(module, a, delta) -> list[torch.Tensor]:
    """The batch gradient of the module's variables from its input and output gradient."""
    w, b = module.weight, getattr(module, "bias", None)
    if isinstance(module, _HOOKED[2]):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        xhat = (a - module.running_mean.reshape(shape)) / torch.sqrt(
            module.running_var.reshape(shape) + module.eps
        )
        dims = [d for d in range(delta.dim()) if d != 1]
        parts = [(w, (delta * xhat).sum(dim=dims)), (b, delta.sum(dim=dims))]
    elif isinstance(module, nn.Conv2d):
        weight = torch.nn.grad.conv2d_weight(
            a, w.shape, delta, module.stride, module.padding, module.dilation, module.groups
        )
        parts = [(w, weight), (b, delta.sum(dim=(0, 2, 3)))]
    else:
        flat_d, flat_a = delta.reshape(-1, delta.shape[-1]), a.reshape(-1, a.shape[-1])
        parts = [(w, flat_d.T @ flat_a), (b, flat_d.sum(dim=0))]
    return [g for p, g in parts if p is not None and p.requires_grad]


def _layers_explain_gradient(layers, calls, deltas, z, cotangent) -> bool:
    """Does the layers' own account of one gradient match autograd's? Not when a parameter
    is also used outside its layer (``layer.weight`` read directly in a forward pass)."""
    variables = [
        p
        for m in layers
        for p in (m.weight, getattr(m, "bias", None))
        if p is not None and p.requires_grad
    ]
    truth = torch.autograd.grad(z, variables, grad_outputs=cotangent, retain_graph=True)
    mine = []
    with torch.no_grad():
        for module, [(inputs, _)], delta in zip(layers, calls, deltas):
            if delta is None:
                return False
            try:
                mine += _layer_gradient(module, inputs, delta.sum(dim=0))
            except RuntimeError:  # shapes the layer formulas do not describe
                return False
    scale = max(t.abs().max().item() for t in truth)
    tol = 1e-4 if z.dtype == torch.float32 else 1e-9
    return all(
        t.shape == m.shape and (t - m).abs().max().item() <= tol * max(scale, 1e-30)
        for t, m in zip(truth, mine)
    )


def _hooked_sum(model, x, output, factor, signs, chunk_bytes) -> float | None:
    """The same sum from each layer's inputs and output gradients: one batched backward of
    the k cotangents ``f_c`` (the factor's columns) gives every layer's output gradient ``delta``, and
    the example's gradient is ``delta a^T`` (a Linear: squared norm ``||delta||^2 ||a||^2``,
    Goodfellow, 2015), an unfolded convolution, or BatchNorm's ``delta x^``. None where this
    does not apply (the caller then takes per-example products)."""
    layers = hooked_layers(model)
    if layers is None:
        return None
    seen: dict[int, list] = {id(m): [] for m in layers}

    def keep(module, args, out):
        a = args[0]
        if (
            isinstance(module, nn.Linear)
            and a.shape[-1] != module.in_features
            and a[0].numel() == module.in_features
        ):
            # a Linear subclass that flattens its input inside forward (softmax regression on
            # images): the layer saw the flattened input; the check against autograd's
            # gradient below still rejects any other change a subclass makes
            a = a.reshape(len(a), -1)
        seen[id(module)].append((a, out))

    hooks = [m.register_forward_hook(keep) for m in layers]
    try:
        with torch.enable_grad():
            z = select_output(model(x), output)
    finally:
        for h in hooks:
            h.remove()
    calls = [seen[id(m)] for m in layers]
    if any(len(c) != 1 for c in calls):
        return None  # a layer used twice: its gradients from the two uses would mix
    n, k = signs.shape
    # (k, n, *shape): cotangent c holds every example's column c
    cotangents = factor.permute(2, 0, 1).to(z.dtype).reshape(k, *z.shape)
    outs = [c[0][1] for c in calls]
    deltas = torch.autograd.grad(
        z,
        outs,
        grad_outputs=cotangents,
        is_grads_batched=True,
        allow_unused=True,
        retain_graph=True,
    )
    if not _layers_explain_gradient(layers, calls, deltas, z, cotangents.sum(dim=0)):
        return None  # a parameter also used outside its layer: per-example products instead
    total = torch.zeros(k, n, dtype=torch.float64, device=z.device)
    with torch.no_grad():
        for module, [(inputs, _)], delta in zip(layers, calls, deltas):
            total += _example_norms(module, inputs.detach(), delta, chunk_bytes)
    return (signs.T.to(total) * total).sum().item()
