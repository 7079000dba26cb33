"""Rounding float32 values to a format, with integer operations on the float32 bits.

Introduced in chapter 01 (notebooks/01_float_formats.ipynb).

The algorithm (``round_to_format``), on ``a = bits(x) & 0x7FFFFFFF``, the
magnitude of the float32 bit pattern viewed as an int32:

1. **How many bits to drop.** A target with ``m`` mantissa bits keeps the top
   ``m`` of float32's 23, so in its normal range the last ``d = 23 - m`` bits
   of ``a`` go. Below the target's ``min_normal`` its spacing stays at
   ``min_subnormal``, so one more bit goes per binade:
   ``d = (23 - m) + max(0, emin + 127 - E)`` with ``E = a >> 23`` the float32
   biased exponent, capped at 23. (For 8-exponent-bit targets -- bf16, tf32 --
   the target's subnormals coincide with float32's and ``d`` is constant.)
2. **Round the integer ``a`` at bit ``d``.** Within one binade the value is
   linear in ``a``, and a carry out of the mantissa lands in the exponent
   field, which is exactly the next power of two -- so integer rounding of
   ``a`` is float rounding of ``x``:

   - nearest-even: ``a + (2**(d-1) - 1) + lsb`` then clear the low ``d`` bits,
     where ``lsb`` is bit ``d`` of ``a`` (the kept last bit: a tie rounds up
     only when it is odd; at ``d = 23`` it is the implicit leading 1);
   - toward zero: clear the low ``d`` bits (truncate);
   - stochastic: add a uniform random integer in ``[0, 2**d)``, then clear
     the low ``d`` bits: it rounds up with probability (dropped part)/2**d.
3. **Below the smallest subnormal** (``|x| < min_subnormal``, where ``d``
   would reach into the exponent field) the answer is 0 or ``min_subnormal``:
   nearest gives ``min_subnormal`` iff ``|x| > min_subnormal / 2`` (the tie
   goes to even, i.e. 0), toward zero gives 0, stochastic gives
   ``min_subnormal`` with probability ``|x| / min_subnormal``.
4. **Overflow and specials**: a rounded magnitude above ``max`` becomes inf,
   NaN or ``max`` (``overflow_rule``: by default what torch's own cast does),
   NaN stays NaN (the canonical quiet NaN ``0x7FC00000`` with the input's
   sign), then the sign bit is put back (for "fnuz" formats a -0 becomes +0:
   they have no negative zero).

All of it is elementwise tensor arithmetic (no Python loop per element), on
the input's device, with branch-free integer selects (``clamp(v - k, 0, 1)``
as a 0/1 indicator) rather than boolean masks. On the CPU the work goes in
blocks of 2**18 elements with reused scratch tensors, so the temporaries
stay in cache and nothing is allocated per block; a min/max pass per block
skips steps 3 and 4 where no element needs them (the common case).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

from ._common import (ABS_MASK, IMPLICIT_BIT, INF_BITS, QNAN_BITS, SIGN_BIT, Consts, as_float32,
                      consts, f32_from_bits)
from .registry import FORMATS, FloatFormat, get_format

#: The allowed values of ``rounding``.
ROUNDING_MODES = ("nearest", "stochastic", "toward_zero")
#: Allowed values of an overflow rule's fields.
OVERFLOW_RESULTS = ("inf", "nan", "max")

_CPU_BLOCK = 1 << 18      # elements per block on the CPU (1 MiB of int32 per temporary)
_RANDOM_BITS = 24         # stochastic rounding draws uniform integers in [0, 2**24)
_F32_MAX = f32_from_bits(0x7F7FFFFF)  # largest finite float32, 3.4028234663852886e38


class OverflowRule(NamedTuple):
    """What a conversion does beyond the range: ``overflow`` for a finite value whose rounded
    magnitude exceeds ``max``, ``inf`` for an infinite input. Each is ``"inf"`` (to +-inf),
    ``"nan"`` (to NaN) or ``"max"`` (saturate to +-max)."""

    overflow: str
    inf: str


@lru_cache(maxsize=None)
def _probe_torch(dtype: torch.dtype, device_type: str, fmt_max: float) -> OverflowRule:
    probe = torch.tensor([_F32_MAX, -_F32_MAX, float("inf"), float("-inf")], device=device_type)
    out = probe.to(dtype).float().cpu().tolist()

    def kind(pos: float, neg: float) -> str:
        for name, test in (("nan", lambda v: v != v), ("inf", lambda v: abs(v) == float("inf")),
                           ("max", lambda v: abs(v) == fmt_max)):
            if test(pos) and test(neg):
                return name
        raise RuntimeError(f"torch {torch.__version__} casts float32 {probe.tolist()} to {dtype} as "
                           f"{out}: not one of {OVERFLOW_RESULTS}; course_lib.formats cannot mirror it")

    return OverflowRule(kind(out[0], out[1]), kind(out[2], out[3]))


def torch_overflow(fmt, device="cpu") -> OverflowRule:
    """What torch's own cast ``x.to(fmt.torch_dtype)`` does beyond the range, measured.

    Casts ``[+-3.4e38 (float32 max), +-inf]`` to the dtype once per (dtype,
    device type) and classifies the results as ``"inf"``, ``"nan"`` or
    ``"max"``. Arguments: ``fmt`` (name, dtype or FloatFormat; must have a
    torch dtype, else ValueError), ``device`` (default ``"cpu"``). Measured
    with torch 2.13 on the CPU: fp16, bf16, fp8_e5m2 -> ``("inf", "inf")``;
    fp8_e4m3fn -> ``("max", "max")`` (it saturates, even +-inf, to +-448);
    fp8_e4m3fnuz, fp8_e5m2fnuz -> ``("nan", "nan")``. Older torch versions
    gave NaN for e4m3fn, hence measuring instead of assuming.

    >>> torch_overflow("fp16")
    OverflowRule(overflow='inf', inf='inf')
    """
    fmt = get_format(fmt)
    if fmt.torch_dtype is None:
        raise ValueError(f"{fmt.name} has no torch dtype, so torch has no cast to measure; formats "
                         f"with one: {', '.join(f.name for f in FORMATS.values() if f.torch_dtype)}")
    if fmt.torch_dtype == torch.float32:
        return OverflowRule("inf", "inf")  # float32 input never overflows float32
    return _probe_torch(fmt.torch_dtype, torch.device(device).type, fmt.max)


def overflow_rule(fmt, saturate: bool | None = None, rounding: str = "nearest",
                  device="cpu") -> OverflowRule:
    """The overflow rule ``round_to_format`` applies for these arguments.

    ``saturate=None`` (default): torch's behaviour (:func:`torch_overflow`)
    where the format has a torch dtype; otherwise IEEE semantics -- "ieee"
    formats go to +-inf, the finite "fn"/"fnuz" ones to NaN (the OCP FP8
    non-saturating mode). ``saturate=False``: those IEEE semantics even where
    torch differs. ``saturate=True``: "satfinite" as in NVIDIA's
    ``cvt.rn.satfinite`` -- finite overflow *and* +-inf become +-max, NaN
    stays NaN; this is what FP8 training recipes use. With
    ``rounding="toward_zero"`` a finite overflow always gives +-max (IEEE 754
    section 7.4: rounding toward zero never rounds up to infinity).

    >>> overflow_rule("fp16", saturate=True)
    OverflowRule(overflow='max', inf='max')
    >>> overflow_rule("tf32")
    OverflowRule(overflow='inf', inf='inf')
    """
    fmt = get_format(fmt)
    _check_rounding(rounding)
    if saturate is True:
        rule = OverflowRule("max", "max")
    elif saturate is None and fmt.torch_dtype is not None:
        rule = torch_overflow(fmt, device)
    elif saturate is None or saturate is False:
        rule = OverflowRule("inf", "inf") if fmt.has_inf else OverflowRule("nan", "nan")
    else:
        raise TypeError(f"saturate must be None (torch's behaviour), True or False; got {saturate!r}")
    if rounding == "toward_zero":
        rule = OverflowRule("max", rule.inf)
    return rule


def _check_rounding(rounding) -> str:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding={rounding!r} is not a rounding mode; allowed: "
                         + ", ".join(repr(r) for r in ROUNDING_MODES))
    return rounding


def _result_bits(kind: str, c: Consts) -> int:
    return {"inf": INF_BITS, "nan": QNAN_BITS, "max": c.max_bits}[kind]


def _gt(v: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
    """0/1 int32 indicator of ``v > k`` (for ``v - k`` within int32), written into ``out``.
    Branch-free selects with such indicators and clamps are several times faster on the CPU
    than boolean masks."""
    return torch.sub(v, k, out=out).clamp_(0, 1)


_SCRATCH = ("a", "f", "d", "m", "i", "k", "s")   # the temporaries of _round_block


def _round_block(u: torch.Tensor, out: torch.Tensor, c: Consts, mode: str, ovf: int, inf: int,
                 fnuz: bool, rnd: torch.Tensor | None, w: dict) -> None:
    """Write into ``out`` the float32 bits of ``u`` (float32 bits, int32) rounded per ``c``/``mode``.

    ``ovf`` / ``inf``: the float32 bits for a finite overflow / an infinite input.
    ``rnd``: uniform int32 in [0, 2**24) (stochastic mode only). ``w``: int32 scratch tensors
    of ``u``'s length (``_SCRATCH``), reused from block to block so nothing is allocated here.
    """
    a = torch.bitwise_and(u, ABS_MASK, out=w["a"])          # |x| as bits
    drop = c.drop                                           # D = 23 - m
    # One cheap pass tells whether this block needs the rare cases at all (most don't).
    lo, hi = (int(v) for v in torch.aminmax(a))
    special = hi >= c.special_from[mode]     # something may round past max, or is inf/NaN
    nan_done = False
    if c.variable:
        # Step 3 first: |x| < min_subnormal rounds to 0 or min_subnormal. Remember which
        # (keep = 1 for min_subnormal and for every larger |x|), lift a to min_subnormal
        # (which rounds to itself) and multiply by keep at the end. Clamp the top too, to the
        # input that first rounds past max (which then rounds to c.above_max_bits exactly):
        # from here on every value, inf and NaN included, is a finite number in a known range.
        keep = None
        if lo < c.min_sub_bits:
            if mode == "nearest":
                keep = _gt(a, c.half_min_sub_bits, w["k"])   # the tie min_sub/2 goes to even: 0
            elif mode == "toward_zero":
                keep = _gt(a, c.min_sub_bits - 1, w["k"])
            else:                                           # up with probability |x| / min_sub
                y = a.view(torch.float32) * 2.0 ** (_RANDOM_BITS - c.min_sub_exp)  # exact
                keep = w["k"].copy_((y > rnd.to(torch.float32)).logical_or_(a >= c.min_sub_bits))
        top = None
        if special:   # nearest: the first |x| rounding past max; stochastic: the value after max
            top = c.max_bits if ovf == c.max_bits else \
                c.overflow_nearest_bits if mode == "nearest" else c.above_max_bits
        finite = a
        if keep is not None or top is not None:
            finite = torch.clamp(a, c.min_sub_bits if keep is not None else None, top, out=w["f"])
        # Step 1: d = D + max(0, emn - E), E = float32 biased exponent (here d <= 23), as
        # ((emn + D) * 2**23 + 0x7FFFFF - finite) >> 23 == emn + D - E.
        d = torch.sub(w["emn_d"], finite, out=w["d"]).bitwise_right_shift_(23).clamp_(min=drop)
        mask = torch.bitwise_left_shift(w["one"], d, out=w["m"]).sub_(1)  # 2**d - 1: bits to drop
        # Step 2: out = (finite + inc) & ~mask
        if mode == "nearest":
            # inc = 2**(d-1) - 1 + lsb, lsb = bit d of a (the last kept bit). At d == 23 that is the
            # implicit leading 1, so set bit 23; at d == 0 (only if m == 23) nothing is dropped
            # and inc must be 0, so clear bit 0 (mask >> 1 is already 0 there).
            inc = torch.bitwise_or(finite, IMPLICIT_BIT, out=w["i"])
            if drop == 0:
                inc.bitwise_and_(~1)
            inc.bitwise_right_shift_(d).bitwise_and_(1)
            inc.add_(torch.bitwise_right_shift(mask, 1, out=d))   # d is not needed any more
            torch.add(finite, inc, out=out)
        elif mode == "stochastic":                           # + uniform [0, 2**d)
            torch.add(finite, torch.bitwise_right_shift(rnd, d.neg_().add_(_RANDOM_BITS), out=w["i"]),
                      out=out)
        else:
            out.copy_(finite)
        out.bitwise_and_(mask.bitwise_not_())
        if keep is not None:
            out.mul_(keep)
        # Now out <= max, or out == c.above_max_bits for an overflow / inf / NaN input.
        if special:
            if ovf == QNAN_BITS and inf == ovf:             # "nan" rule: all three become NaN
                torch.maximum(out, _gt(out, c.max_bits, w["s"]).mul_(QNAN_BITS), out=out)
                nan_done = True
            elif ovf == INF_BITS:
                out.add_(_gt(out, c.max_bits, w["s"]).mul_(INF_BITS - c.above_max_bits))
            elif ovf == QNAN_BITS:
                torch.maximum(out, _gt(out, c.max_bits, w["s"]).mul_(QNAN_BITS), out=out)
    else:
        # 8 exponent bits (bf16, tf32, fp32): constant d = D, also through float32's subnormals
        # (the target's subnormals are float32's), and overflow carries into inf by itself.
        if drop == 0:
            out.copy_(a)                                     # float32 itself: nothing to drop
        elif mode == "nearest":
            torch.bitwise_right_shift(a, drop, out=out)
            out.bitwise_and_(1).add_((1 << (drop - 1)) - 1).add_(a)
        elif mode == "stochastic":
            torch.bitwise_right_shift(rnd, _RANDOM_BITS - drop, out=out)
            out.add_(a)
        else:
            out.copy_(a)
        if drop:
            out.bitwise_and_(-(1 << drop))
        if special:  # out > max: overflow, inf, or NaN (possibly wrapped negative, fixed below)
            if ovf == QNAN_BITS:
                out.clamp_(max=QNAN_BITS)
                torch.maximum(out, _gt(out, c.max_bits, w["s"]).mul_(QNAN_BITS), out=out)
            else:
                out.clamp_(max=ovf)                          # INF_BITS or max_bits
    # Step 4: specials.
    if special:
        if inf != ovf:
            out.masked_fill_(a == INF_BITS, inf)
        if not nan_done:
            # NaN: here out <= 0x7FC00000 everywhere (or negative): max(out, is_nan * 0x7FC00000)
            torch.maximum(out, _gt(a, INF_BITS, w["s"]).mul_(QNAN_BITS), out=out)
    sign = torch.bitwise_and(u, SIGN_BIT, out=w["s"])
    if fnuz:
        sign.mul_(torch.clamp(out, 0, 1, out=w["k"]))        # no -0 in fnuz formats: 0 stays +0
    out.bitwise_or_(sign)                                    # the sign back


def _round_bits(x: torch.Tensor, fmt: FloatFormat, rounding: str, saturate, generator) -> torch.Tensor:
    """float32 tensor -> int32 tensor of the float32 bits of the rounded values (same shape)."""
    rule = overflow_rule(fmt, saturate, rounding, x.device)
    c = consts(fmt)
    u = x.reshape(-1).view(torch.int32)
    out = torch.empty_like(u)
    n = u.numel()
    rnd = None
    if rounding == "stochastic":
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator or None; "
                                f"got {type(generator).__name__}")
            if torch.device(generator.device).type != x.device.type:
                raise ValueError(f"generator is on {generator.device} but the input is on {x.device}; "
                                 f"make it with torch.Generator(device={str(x.device.type)!r})")
        rnd = torch.randint(0, 1 << _RANDOM_BITS, u.shape, dtype=torch.int32, device=x.device,
                            generator=generator)
    block = min(_CPU_BLOCK if x.device.type == "cpu" else n, n)
    if block == 0:
        return out.view(x.shape)
    scratch = torch.empty((len(_SCRATCH), block), dtype=torch.int32, device=x.device)
    const = {"one": torch.ones((), dtype=torch.int32, device=x.device),
             "emn_d": torch.tensor(((c.emn + c.drop) << 23) | 0x7FFFFF, dtype=torch.int32,
                                   device=x.device)}
    ovf, inf = _result_bits(rule.overflow, c), _result_bits(rule.inf, c)
    for start in range(0, n, block):
        stop = min(start + block, n)
        w = {name: scratch[i, :stop - start] for i, name in enumerate(_SCRATCH)} | const
        _round_block(u[start:stop], out[start:stop], c, rounding, ovf, inf, fmt.convention == "fnuz",
                     None if rnd is None else rnd[start:stop], w)
    return out.view(x.shape)


def round_to_format(x, fmt, rounding: str = "nearest", *, saturate: bool | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Round float values to the nearest (or a stochastic / truncated) value of ``fmt``.

    Returns a float32 tensor (same shape and device as ``x``) whose every
    element is representable in ``fmt`` -- the "fake-quantised" values
    ``x.to(dtype).float()`` would give, but for any format, with the rounding
    done by integer operations on the float32 bits (algorithm in the module
    docstring), not by calling torch's cast.

    Arguments:

    - ``x``: floating tensor (float32; float64 is first rounded to float32,
      which can double-round in rare ties -- round to float32 yourself if that
      matters; float16/bfloat16/float8 widen exactly) or Python float(s).
      Integer/bool tensors raise TypeError. The result is detached (not
      differentiable; use ``x + (round_to_format(x, f) - x).detach()`` as a
      straight-through estimator).
    - ``fmt``: a format name, alias, torch dtype or FloatFormat.
    - ``rounding``: ``"nearest"`` (default: round to nearest, ties to even --
      IEEE 754's default and what torch's casts do), ``"toward_zero"``
      (truncate the mantissa: ``|result| <= |x|``), or ``"stochastic"``
      (round up with probability equal to the fraction of the gap covered,
      so ``E[result] == x`` for ``|x| <= max``; probabilities are exact when
      ``|x| >= min_subnormal`` and resolved to 2**-24 of the gap below it).
    - ``saturate``: what happens beyond ``max`` (see :func:`overflow_rule`).
      ``None`` (default) mirrors torch's cast where the format has a torch
      dtype -- with torch 2.13 on the CPU that is +-inf for fp16/bf16/e5m2,
      saturation to +-448 for e4m3fn (+-inf included) and NaN for the fnuz
      formats -- and IEEE semantics otherwise (+-inf for "ieee", NaN for
      "fn"/"fnuz"). ``True``: saturate finite overflow and +-inf to +-max.
      ``False``: IEEE semantics for every format.
    - ``generator``: a ``torch.Generator`` on ``x``'s device for stochastic
      rounding (default: torch's global generator); ignored otherwise.

    NaN gives NaN (quiet NaN with the input's sign); -0.0 stays -0.0 except
    in "fnuz" formats (no negative zero: -0.0 and tiny negatives give +0.0).

    >>> x = torch.tensor([1/3, 65519.0, 65520.0, 1e-8, -0.0])
    >>> round_to_format(x, "fp16").tolist()
    [0.333251953125, 65504.0, inf, 0.0, -0.0]
    >>> round_to_format(torch.tensor([1/3]), "bf16", rounding="toward_zero").item()
    0.33203125
    >>> round_to_format(torch.tensor([500.0, 1e6]), "e4m3", saturate=True).tolist()
    [448.0, 448.0]
    """
    fmt = get_format(fmt)
    _check_rounding(rounding)
    x = as_float32(x, "round_to_format")
    return _round_bits(x, fmt, rounding, saturate, generator).view(torch.float32)
