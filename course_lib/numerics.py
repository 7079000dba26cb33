"""Where 16 bits break: overflow, underflow, swamping and accumulation error, measured.

Each function measures one failure on real tensors, with the rounding of the
target format done by :func:`course_lib.formats.round_to_format` (so it works
for every format, also those without a torch dtype, and on a CPU where real
FP16 arithmetic would be slow: *emulated* numerics, FP16 storage and rounding
with FP32 arithmetic, which is what tensor cores do inside a matmul).

* :func:`underflow_fraction` -- share of nonzero values that round to zero;
* :func:`subnormal_fraction` -- share that land among the subnormals (and
  keep fewer significant bits);
* :func:`overflow_fraction` -- share that round to infinity (or NaN);
* :func:`lost_update_fraction` -- share of updates ``w + u`` that leave a
  weight stored in the format unchanged ("swamping");
* :func:`sequential_sum` -- a running sum whose accumulator is rounded to the
  format after every addition, as a naive FP16 reduction would be;
* :func:`stable_log_softmax` -- log-softmax that does not overflow in 16 bits
  (subtract the row maximum; the reference for exercise 02.stable_log_softmax);
* :func:`smallest_loss_scale` -- the smallest power-of-two loss scale that
  keeps a gradient tensor from flushing to zero in FP16 without overflowing
  (the reference for exercise 02.smallest_loss_scale).

Introduced in chapter 02 (notebooks/02_where_16_bits_break.ipynb).
"""
from __future__ import annotations

import torch

from .formats import get_format, round_to_format


def _float_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x.detach().float()


def underflow_fraction(x: torch.Tensor, fmt) -> float:
    """Fraction of the nonzero elements of ``x`` that round to zero in ``fmt``.

    ``fmt``: a format name, alias, torch dtype or FloatFormat. 0.0 when ``x``
    has no nonzero element.

    >>> underflow_fraction(torch.tensor([1e-3, 1e-8, 0.0, 2e-8]), torch.float16)
    0.6666666666666666
    """
    x = _float_tensor(x, "x")
    nonzero = x != 0
    if not bool(nonzero.any()):
        return 0.0
    flushed = (round_to_format(x, fmt) == 0) & nonzero
    return flushed.sum().item() / nonzero.sum().item()


def subnormal_fraction(x: torch.Tensor, fmt) -> float:
    """Fraction of the nonzero elements of ``x`` that round to a subnormal of ``fmt``."""
    x = _float_tensor(x, "x")
    nonzero = x != 0
    if not bool(nonzero.any()):
        return 0.0
    r = round_to_format(x, fmt).abs()
    sub = (r > 0) & (r < get_format(fmt).min_normal) & nonzero
    return sub.sum().item() / nonzero.sum().item()


def overflow_fraction(x: torch.Tensor, fmt) -> float:
    """Fraction of the finite elements of ``x`` that become inf or NaN in ``fmt``."""
    x = _float_tensor(x, "x")
    finite = torch.isfinite(x)
    if not bool(finite.any()):
        return 0.0
    bad = ~torch.isfinite(round_to_format(x, fmt, saturate=False)) & finite
    return bad.sum().item() / finite.sum().item()


def lost_update_fraction(weights: torch.Tensor, update: torch.Tensor, fmt) -> float:
    """Fraction of nonzero updates that do not change a weight stored in ``fmt``.

    The weight is first rounded to ``fmt`` (it is stored there), then
    ``round(w + u) == w`` marks an update that was rounded away entirely.
    """
    w = round_to_format(_float_tensor(weights, "weights"), fmt)
    u = _float_tensor(update, "update")
    if w.shape != u.shape:
        raise ValueError(f"weights and update must have the same shape, got {tuple(w.shape)} "
                         f"and {tuple(u.shape)}")
    moving = u != 0
    if not bool(moving.any()):
        return 0.0
    lost = (round_to_format(w + u, fmt) == w) & moving
    return lost.sum().item() / moving.sum().item()


def sequential_sum(values: torch.Tensor, fmt, dim: int = 0, progress: bool = False) -> torch.Tensor:
    """Running sum along ``dim`` with the accumulator rounded to ``fmt`` after every add.

    Returns the partial sums (same shape as ``values``, float32 holding
    ``fmt`` values); the last slice along ``dim`` is the total. Each input is
    first rounded to ``fmt``. One tensor operation per step, vectorised over
    the other dimensions (so many sums run at once); ``progress=True`` shows
    a progress bar (a long sum takes seconds).

    >>> sequential_sum(torch.ones(3000), "fp16")[-1].item()   # stalls at 2048
    2048.0
    """
    v = round_to_format(_float_tensor(values, "values"), fmt).movedim(dim, 0)
    out = torch.empty_like(v)
    acc = torch.zeros_like(v[0])
    steps = range(v.shape[0])
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"summing in {get_format(fmt).name}", leave=False)
    for i in steps:
        acc = round_to_format(acc + v[i], fmt)
        out[i] = acc
    return out.movedim(0, dim)


def stable_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last dimension that stays finite in 16 bits.

    Algorithm: ``log_softmax(x) = (x - max) - log(sum(exp(x - max)))``,
    computed in float32 and returned in ``logits.dtype``. Subtracting the row
    maximum makes every exponent ``<= 0``, so ``exp`` cannot overflow (in
    FP16, ``exp(x)`` is already infinite for ``x > 11.09``).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits!r:.60}")
    x = logits.float()
    m = x.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    shifted = x - m
    out = shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))
    return out.to(logits.dtype)


def smallest_loss_scale(grads: torch.Tensor, max_flushed: int = 0, fmt="fp16",
                        max_log2: int = 24) -> float | None:
    """The smallest loss scale ``2**k`` that lets ``grads`` survive a cast to ``fmt``.

    Algorithm: for ``k = 0, 1, ..., max_log2``, scale the gradients by
    ``S = 2**k`` (exact in float32: a power of two only moves the exponent),
    round to ``fmt``, and count the nonzero values that became 0 and the values
    that became inf; return the first ``S`` with at most ``max_flushed`` zeros
    and no inf. ``None`` if there is none (the gradients span more binades
    than the format: some flush at every scale that does not overflow others).
    A value survives exactly when ``|g| * S`` is *above* half the smallest
    subnormal (exactly half rounds to 0: ties go to even) and overflows from
    ``max + ulp/2`` up (65520 in FP16).

    Args:
        grads (Tensor): finite gradient values (any floating dtype).
        max_flushed (int, default 0): how many nonzero values may round to zero.
        fmt (default "fp16"): the target format. max_log2 (int, default 24).

    >>> smallest_loss_scale(torch.tensor([1e-3, 2.0 ** -30, 0.0]))
    64.0
    >>> smallest_loss_scale(torch.tensor([2.0 ** -30, 60000.0])) is None
    True
    """
    g = _float_tensor(grads, "grads")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("grads must be finite (an inf or NaN gradient overflows at every scale)")
    if isinstance(max_flushed, bool) or not isinstance(max_flushed, int) or max_flushed < 0:
        raise ValueError(f"max_flushed must be a non-negative int, got {max_flushed!r}")
    nonzero = g != 0
    for k in range(max_log2 + 1):
        scaled = round_to_format(g * 2.0 ** k, fmt, saturate=False)
        if bool(torch.isinf(scaled).any()):
            return None  # larger scales overflow too
        if int(((scaled == 0) & nonzero).sum()) <= max_flushed:
            return float(2 ** k)
    return None
