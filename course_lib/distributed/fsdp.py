"""FSDP2 (``fully_shard``) with a mixed-precision policy: fp32 shards, bf16 compute.

FSDP splits every parameter across the ranks: each rank stores 1/W of it
(its *shard*, a ``DTensor``), and the optimizer updates only that shard.
``MixedPrecisionPolicy`` (``torch.distributed.fsdp``, torch >= 2.6; under
``torch.distributed._composable.fsdp`` in 2.4-2.5) sets three dtypes:

* the **sharded parameters keep the dtype the model had** when it was
  sharded: they are the master weights the optimizer updates;
* ``param_dtype``: before a module's forward (and again for its backward)
  FSDP all-gathers the shards and casts them to this dtype, so compute runs
  in bf16; the unsharded copy is freed after use;
* ``reduce_dtype``: the dtype in which the gradients are reduce-scattered.
  Its default ``None`` means *param_dtype*, i.e. gradients are averaged in
  bf16 (torchtune issue #2267); ``torch.float32`` averages the ranks' bf16
  gradients in fp32. Either way the sharded gradient has the masters' dtype.

Measured here (torch 2.13, CPU, 2 gloo ranks -- FSDP2 runs on CPU with gloo):
with ``reduce_dtype=float32`` the sharded gradient equals
``(g_0 + g_1) / 2`` computed in fp32 from the ranks' bf16 gradients, bit
for bit; with ``reduce_dtype=None`` it equals the bf16 rounding of that
average (every element is a bf16 value), an error of up to half a bf16
ulp per element.

The pitfall: ``model.to(torch.bfloat16)`` *before* ``fully_shard`` makes the
shards -- the masters -- bf16, and small updates round away (chapter 06):
:func:`shard_mixed_precision` refuses a model whose floating parameters are
not fp32 unless ``allow_low_precision_masters=True`` (for demonstrations).

Algorithm of :func:`shard_mixed_precision`: check the dtypes, call
``fully_shard`` on each unit (by default every submodule that owns
parameters; each unit is all-gathered just before its forward and
reduce-scattered after its backward), then on the root (the rest).

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> policy = mixed_precision_policy()
    >>> (policy.param_dtype, policy.reduce_dtype)
    (torch.bfloat16, torch.float32)
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from course_lib import validate

try:  # torch >= 2.6
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover - torch 2.4 / 2.5
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

__all__ = ["mixed_precision_policy", "shard_mixed_precision", "master_dtypes",
           "compute_dtypes", "MixedPrecisionPolicy", "fully_shard"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def mixed_precision_policy(param_dtype: torch.dtype = torch.bfloat16,
                           reduce_dtype: torch.dtype | None = torch.float32) -> MixedPrecisionPolicy:
    """Return ``MixedPrecisionPolicy(param_dtype, reduce_dtype)``.

    Args:
        param_dtype (torch.dtype, default bfloat16): compute dtype.
        reduce_dtype (torch.dtype or None, default float32): gradient
            reduction dtype; ``None`` means ``param_dtype`` (torch's default).
    """
    validate.one_of("param_dtype", param_dtype, _FLOAT_DTYPES)
    if reduce_dtype is not None:
        validate.one_of("reduce_dtype", reduce_dtype, _FLOAT_DTYPES)
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)


def shard_mixed_precision(model: nn.Module, policy: MixedPrecisionPolicy | None = None, *,
                          units: Iterable[nn.Module] | None = None,
                          allow_low_precision_masters: bool = False) -> nn.Module:
    """Shard ``model`` in place with FSDP2 and ``policy``; return it.

    Needs an initialized process group (the mesh is the whole world).

    Args:
        model (nn.Module): with float32 parameters.
        policy (MixedPrecisionPolicy or None, default None): ``None``:
            :func:`mixed_precision_policy` (bf16 compute, fp32 reduction).
        units (iterable of nn.Module or None, default None): submodules to
            shard as separate units (e.g. a transformer's blocks); ``None``:
            every submodule that owns parameters itself (Linear, LayerNorm, ...).
        allow_low_precision_masters (bool, default False): accept bf16/fp16
            parameters (which become low-precision masters).

    Raises:
        ValueError: a floating parameter is not float32 and low-precision
            masters were not allowed.
    """
    validate.instance_of("model", model, nn.Module)
    policy = mixed_precision_policy() if policy is None else policy
    validate.instance_of("policy", policy, MixedPrecisionPolicy)
    low = sorted({str(p.dtype) for p in model.parameters()
                  if p.is_floating_point() and p.dtype != torch.float32})
    if low and not allow_low_precision_masters:
        raise ValueError(f"model has {', '.join(low)} parameters: FSDP keeps the sharded "
                         "parameters (the optimizer's master weights) in the dtype it finds, so "
                         "they would be low-precision masters and small updates would round "
                         "away. Keep the model float32 and let the policy's param_dtype cast "
                         "for compute (or pass allow_low_precision_masters=True to see it)")
    if units is None:
        units = [m for m in model.modules()
                 if m is not model and any(True for _ in m.parameters(recurse=False))]
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def master_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """Dtype of this rank's shard of every parameter (the masters the optimizer updates).

    Example:
        >>> master_dtypes(nn.Linear(2, 1))
        {'weight': torch.float32, 'bias': torch.float32}
    """
    return {name: _local(p).dtype for name, p in model.named_parameters()}


def compute_dtypes(model: nn.Module, inputs: Iterable) -> dict[str, torch.dtype]:
    """Run ``model(*inputs)`` and return the dtype each module's weight had *during* its forward.

    Algorithm: a forward pre-hook on every module with a ``weight`` reads
    ``module.weight.dtype`` when the module runs. FSDP2 registers its
    unshard hook first, so for a sharded module this is the all-gathered,
    cast parameter (bf16 under the default policy), not the fp32 shard.

    Example:
        >>> compute_dtypes(nn.Sequential(nn.Linear(2, 2)), [torch.ones(1, 2)])
        {'0': torch.float32}
    """
    seen: dict[str, torch.dtype] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            def record(mod, args, name=name):
                seen[name] = mod.weight.dtype
            handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen
