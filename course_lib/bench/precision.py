"""FP32 matmul precision modes (TF32 and friends): set them for a whole step, check what they do.

``torch.set_float32_matmul_precision(p)`` lets float32 matmuls run with
fewer mantissa bits inside, for speed:

=========  =======================  ==========================================
``p``      CUDA (cuBLAS)            CPU (oneDNN)
=========  =======================  ==========================================
highest    full FP32 (the default)  full FP32 (the default)
high       TF32 tensor cores         TF32 -- only with AMX-FP16 (see below)
medium     TF32 (or BF16-based)      BF16-based ("bf32") where oneDNN has BF16
=========  =======================  ==========================================

(torch 2.13 maps the three strings onto the per-backend settings
``torch.backends.cuda.matmul.fp32_precision`` / ``torch.backends.mkldnn.matmul.fp32_precision``:
highest -> ieee/ieee, high -> tf32/tf32, medium -> tf32/bf16; pytorch/pytorch#189955.)

* **CUDA**: TF32 tensor-core math needs compute capability 8.0 (Ampere) or
  later (:func:`course_lib.hardware.gpu_features`); on older GPUs the
  setting changes nothing.
* **CPU**: torch's oneDNN linear/matmul uses TF32 only when the CPU has
  AMX-FP16 (``use_mkldnn_tf32_linear``: precision TF32 *and*
  ``cpuinfo_has_x86_amx_fp16()``, aten/src/ATen/native/mkldnn/Linear.cpp),
  and the BF16-based mode only when oneDNN's BF16 device check passes
  (``use_mkldnn_bf32_linear``). Elsewhere "high" is a no-op: the result is
  bit-for-bit the FP32 one. :func:`matmul_precision_effect` checks this
  live instead of trusting the rule.

**A whole step, not a forward pass.** The setting is global and read when
each matmul *runs*: backward matmuls run after the forward's ``with`` block
has closed, so a context around the forward only (as
:meth:`course_lib.recipes.Recipe.forward_context` is used) leaves the
backward in full FP32 (chapter 09 shows the gradients change only when the
backward runs under the setting too). :func:`fp32_matmul_precision` is
therefore meant to wrap forward, backward and optimizer step together.

**Legacy and new APIs do not mix.** After a write through the new
per-backend API (``torch.backends.cuda.matmul.fp32_precision = "tf32"``),
reading the legacy ``torch.get_float32_matmul_precision()`` or
``torch.backends.cuda.matmul.allow_tf32`` raises ``RuntimeError`` ("you have
used mix of the legacy and new APIs", pytorch/pytorch#189955;
bghira/SimpleTuner#1943 met it in the wild). This module writes with the
legacy call and restores whatever state it found.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .. import validate
from .timer import resolve_device

__all__ = ["FP32_MATMUL_PRECISIONS", "fp32_matmul_precision", "Tf32Support", "tf32_support",
           "matmul_precision_effect"]

#: The values ``torch.set_float32_matmul_precision`` accepts.
FP32_MATMUL_PRECISIONS = ("highest", "high", "medium")


def _backend_state() -> tuple[str, str]:
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision


@contextlib.contextmanager
def fp32_matmul_precision(precision: str):
    """Run the block with ``torch.set_float32_matmul_precision(precision)``; restore afterwards.

    The previous state is restored also when the block raises: through the
    legacy call when the legacy getter can read it, else (a state written
    through the new per-backend API) by writing the per-backend values back.
    Wrap the *whole* training step (forward, backward, optimizer step): the
    backward's matmuls read the setting when they run.

    Args:
        precision (str): ``"highest"``, ``"high"`` or ``"medium"``.

    >>> before = torch.get_float32_matmul_precision()
    >>> with fp32_matmul_precision("high"):
    ...     torch.get_float32_matmul_precision()
    'high'
    >>> torch.get_float32_matmul_precision() == before
    True
    """
    validate.one_of("precision", precision, FP32_MATMUL_PRECISIONS)
    try:
        previous = torch.get_float32_matmul_precision()
        backends = None
    except RuntimeError:  # the state was written with the new per-backend API
        previous, backends = None, _backend_state()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        if previous is not None:
            torch.set_float32_matmul_precision(previous)
        else:
            torch.backends.cuda.matmul.fp32_precision = backends[0]
            torch.backends.mkldnn.matmul.fp32_precision = backends[1]


@dataclass(frozen=True)
class Tf32Support:
    """Whether TF32 matmuls can run on a device, and why (the rule, not a measurement)."""

    device: str
    available: bool
    reason: str

    def __str__(self) -> str:
        return f"TF32 on {self.device}: {'available' if self.available else 'not available'} ({self.reason})"


def tf32_support(device=None, *, cpu_flags: dict | None = None) -> Tf32Support:
    """Can ``set_float32_matmul_precision("high")`` use TF32 on ``device``?

    * CUDA: compute capability >= 8.0 (:func:`course_lib.hardware.gpu_features`).
    * CPU: the ``amx_fp16`` flag (torch's oneDNN TF32 path needs AMX-FP16);
      ``cpu_flags`` defaults to :func:`course_lib.env.cpu_flags` (pass a dict
      to ask about another CPU).

    >>> tf32_support("cpu", cpu_flags={"avx512_bf16": True, "amx_fp16": False}).available
    False
    >>> tf32_support("cpu", cpu_flags={"amx_fp16": True}).available
    True
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        from ..hardware import gpu_features

        props = torch.cuda.get_device_properties(dev)
        feats = gpu_features((props.major, props.minor), props.name)
        return Tf32Support(str(dev), feats["tf32"],
                           f"{props.name}, compute capability {feats['capability']}: "
                           + feats["reasons"]["tf32"])
    if cpu_flags is None:
        from ..env import cpu_flags as read_flags

        cpu_flags = read_flags()
    if not isinstance(cpu_flags, dict):
        raise TypeError(f"cpu_flags must be a dict of flag -> bool, got {type(cpu_flags).__name__}")
    has = bool(cpu_flags.get("amx_fp16"))
    return Tf32Support("cpu", has,
                       "the CPU has AMX-FP16, which torch's oneDNN TF32 matmul path needs" if has else
                       "no amx_fp16 flag: torch's oneDNN TF32 path needs AMX-FP16, so 'high' computes "
                       "in full FP32 here")


def matmul_precision_effect(precision: str, device=None, size: int = 512, seed: int = 0) -> dict:
    """Measure what ``precision`` does to one float32 ``size x size`` matmul on ``device``.

    Algorithm: two random ``size x size`` float32 matrices; multiply them
    under ``"highest"`` and under ``precision``; compare the two results bit
    for bit, and each with a float64 product (max abs error divided by the
    max abs of the float64 result).

    Returns ``{"precision", "device", "size", "changed"`` (bool: any bit
    differs), ``"error_highest"``, ``"error_precision"``}.

    >>> r = matmul_precision_effect("highest", "cpu", size=16)
    >>> r["changed"], r["error_precision"] == r["error_highest"]
    (False, True)
    """
    validate.one_of("precision", precision, FP32_MATMUL_PRECISIONS)
    size = validate.positive_int("size", size)
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(validate.non_negative_int("seed", seed))
    a = torch.randn(size, size, generator=gen).to(dev)
    b = torch.randn(size, size, generator=gen).to(dev)
    with fp32_matmul_precision("highest"):
        full = a @ b
        exact = a.double() @ b.double()
    with fp32_matmul_precision(precision):
        reduced = a @ b
    scale = exact.abs().max().item()

    def rel(c):
        return (c.double() - exact).abs().max().item() / scale

    return {"precision": precision, "device": str(dev), "size": size,
            "changed": not torch.equal(full, reduced),
            "error_highest": rel(full), "error_precision": rel(reduced)}
