"""Gradient bookkeeping shared by every optimisation style: unscale-and-check, norm, clipping.

One home for the three operations every mixed-precision step performs on
its gradients (chapters 03-05):

* :func:`unscale_and_check_` -- multiply gradients in place by ``1/S`` and
  report whether any held inf/NaN *before* the multiplication (the check
  ``torch.amp.GradScaler.unscale_`` performs). It uses torch's fused kernel
  ``torch._amp_foreach_non_finite_check_and_unscale_`` (one launch per
  device and dtype, one host synchronisation per call); the readable loop it
  replaces is :func:`unscale_and_check_reference_`, which chapter 04 explains.
* :func:`global_grad_norm` -- the L2 norm over all gradients, as
  ``torch.nn.utils.clip_grad_norm_`` computes it.
* :func:`clip_grads_` -- scale gradients so their global norm is at most a bound.

Introduced in chapter 03 (notebooks/03_manual_mixed_precision.ipynb); the
fused unscale is explained in chapter 04 (notebooks/04_loss_scaling.ipynb).
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["unscale_and_check_", "unscale_and_check_reference_", "global_grad_norm", "clip_grads_"]


def _inverse_scale(scale: float | None, device=None) -> torch.Tensor | None:
    """``float32(1 / float64(S))``: the inverse scale exactly as GradScaler computes it.

    Python's ``1.0 / scale`` is the IEEE float64 division that GradScaler's
    ``_scale.double().reciprocal()`` performs, and ``torch.full`` rounds it to
    float32 to nearest, as ``.float()`` does: one tensor instead of three. An
    inverse beyond float32's range (a scale of 0 or below ~2**-128, the end of
    a collapsing run) goes through the float64 tensor, which rounds it to inf.
    """
    if scale is None:
        return None
    try:
        return torch.full((1,), 1.0 / scale, dtype=torch.float32, device=device)
    except (ZeroDivisionError, RuntimeError):
        return torch.full((1,), scale, dtype=torch.float64, device=device).reciprocal().to(torch.float32)


@torch.no_grad()
def unscale_and_check_(grads: Iterable[torch.Tensor], scale: float | None) -> bool:
    """Multiply ``grads`` in place by ``1/scale``; return ``True`` if any held inf or NaN.

    Algorithm (``torch.amp.GradScaler.unscale_``): ``inv = float32(1 / scale)``;
    group the gradients by (device, dtype); for each group one call of
    ``torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv)``
    checks every element for inf/NaN (setting ``found_inf`` to 1.0) and
    multiplies by ``inv``; finally one ``.item()`` reads the flag -- the only
    host synchronisation. ``scale=None`` only checks (nothing is multiplied).
    Gradients must be floating point; ``None`` entries are skipped.

    Example:
        >>> g = [torch.tensor([8.0, 4.0]), torch.tensor([float("inf")])]
        >>> unscale_and_check_(g, 4.0), g[0]
        (True, tensor([2., 1.]))
    """
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        if g is not None:
            group = groups.get((g.device, g.dtype))
            if group is None:
                groups[(g.device, g.dtype)] = [g]
            else:
                group.append(g)
    if not groups:
        return False
    found_per_device: dict[torch.device, torch.Tensor] = {}
    inv_per_device: dict[torch.device, torch.Tensor] = {}
    for (device, _), tensors in groups.items():
        found = found_per_device.get(device)
        if found is None:
            found = found_per_device[device] = torch.zeros(1, dtype=torch.float32, device=device)
        if scale is None:
            found.add_(torch.stack([(~torch.isfinite(t)).any() for t in tensors]).any())
            continue
        inv = inv_per_device.get(device)
        if inv is None:
            inv = inv_per_device[device] = _inverse_scale(scale, device)
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, inv)
    flags = list(found_per_device.values())
    if len(flags) == 1:
        return bool(flags[0].item())
    first = flags[0].device
    return bool(torch.cat([f.to(first) for f in flags]).any().item())


@torch.no_grad()
def unscale_and_check_reference_(grads: Iterable[torch.Tensor], scale: float | None) -> bool:
    """The same result as :func:`unscale_and_check_`, as a plain Python loop (for reading).

    For every gradient: ``found_inf |= not isfinite(g).all()`` (a host
    synchronisation per tensor), then ``g *= inv``. Same inverse, same
    element-wise product, so the same bits as the fused version; slower by the
    per-tensor synchronisation and launches (``python -m course_lib bench scaler``).

    Example:
        >>> g = [torch.tensor([8.0, 4.0])]
        >>> unscale_and_check_reference_(g, 4.0), g[0]
        (False, tensor([2., 1.]))
    """
    found_inf = False
    for g in grads:
        if g is None:
            continue
        if not bool(torch.isfinite(g).all()):
            found_inf = True
        if scale is not None:
            g.mul_(_inverse_scale(scale, g.device))
    return found_inf


def global_grad_norm(grads: Iterable[torch.Tensor]) -> float:
    """Return the global L2 norm of gradients, computed in float32.

    Algorithm: ``sqrt(sum_i ||g_i||^2)`` as ``norm(stack(norm(g_i)))``, the
    same formula as ``torch.nn.utils.clip_grad_norm_``. Inf/NaN propagate.

    Args:
        grads (iterable of Tensor): gradients (any floating dtype; ``None`` skipped).

    Example:
        >>> global_grad_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        5.0
    """
    norms = [torch.linalg.vector_norm(g.detach().to(torch.float32)) for g in grads if g is not None]
    if not norms:
        return 0.0
    dev = norms[0].device
    return float(torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms])))


@torch.no_grad()
def clip_grads_(grads: Iterable[torch.Tensor], max_norm: float, total_norm: float) -> None:
    """Scale gradients in place so their global norm is at most ``max_norm``.

    Algorithm (as ``torch.nn.utils.clip_grad_norm_``): ``c = max_norm /
    (total_norm + 1e-6)``; if ``c < 1`` multiply every gradient by ``c``.
    Pass the norm of the *unscaled* gradients (after unscaling), or the
    clipping threshold is multiplied by the loss scale (pytorch/examples#1196).

    Example:
        >>> g = [torch.tensor([3.0, 4.0])]; clip_grads_(g, 1.0, 5.0); g[0]
        tensor([0.6000, 0.8000])
    """
    coef = max_norm / (total_norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            if g is not None:
                g.mul_(coef)
