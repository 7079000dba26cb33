"""Property-based tests of course_lib.formats.round_to_format (hypothesis), for built-in and
user-defined formats, plus a pure-Python reference rounding used as a second, torch-free oracle
(it covers tf32 and user formats, which torch has no dtype for)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_lib.formats import (FloatFormat, decode, get_format, make_format, next_up,
                                round_to_format, ulp)

FORMATS_UNDER_TEST = [
    get_format(n) for n in ("fp16", "bf16", "tf32", "fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz",
                            "fp8_e5m2fnuz")
] + [
    make_format(3, 2), make_format(6, 9), make_format(2, 1), make_format(3, 0, "fn"),
    make_format(7, 5, "fnuz"), make_format(5, 23), make_format(4, 20, "fn"), make_format(8, 1),
]
FMT_IDS = [f.name for f in FORMATS_UNDER_TEST]

floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def ref_round(x: float, fmt: FloatFormat, rounding: str = "nearest", saturate: bool = True) -> float:
    """Pure-Python reference: exact arithmetic on Python floats (float32 inputs, so every step
    below is exact in float64). saturate=True: finite overflow and inf -> +-max."""
    if math.isnan(x):
        return math.nan
    sign = -1.0 if math.copysign(1.0, x) < 0 else 1.0
    a = abs(x)
    if math.isinf(a):
        r = fmt.max if saturate else (math.inf if fmt.has_inf else math.nan)
    else:
        e = max(math.frexp(a)[1] - 1, fmt.emin) if a else fmt.emin   # binade of a, >= emin
        q = e - fmt.mantissa_bits                                     # spacing 2**q
        k = a / 2.0 ** q                                              # exact (power-of-2 scale)
        n = math.floor(k)
        frac = k - n
        if rounding == "nearest" and (frac > 0.5 or (frac == 0.5 and n % 2 == 1)):
            n += 1
        r = n * 2.0 ** q
        if r > fmt.max:
            if rounding == "toward_zero" or saturate:
                r = fmt.max
            else:
                r = math.inf if fmt.has_inf else math.nan
    if r == 0 and not fmt.has_negative_zero:
        return 0.0
    return sign * r


def bits_equal(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def as_tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("fmt", FORMATS_UNDER_TEST, ids=FMT_IDS)
@SETTINGS
@given(values=st.lists(floats32, min_size=1, max_size=64))
def test_matches_reference(fmt, values):
    x = as_tensor(values)
    for rounding in ("nearest", "toward_zero"):
        ours = round_to_format(x, fmt, rounding, saturate=True).tolist()
        for xi, oi in zip(x.tolist(), ours):
            assert bits_equal(oi, ref_round(xi, fmt, rounding)), (fmt.name, rounding, xi, oi)


@pytest.mark.parametrize("fmt", FORMATS_UNDER_TEST, ids=FMT_IDS)
@SETTINGS
@given(values=st.lists(finite32, min_size=2, max_size=64))
def test_monotonic(fmt, values):
    x = torch.sort(as_tensor(values)).values
    for saturate in (True, None):
        r = round_to_format(x, fmt, saturate=saturate)
        keep = ~torch.isnan(r)          # NaN overflow (fn/fnuz formats) is not ordered
        rk = r[keep]
        assert bool((rk[1:] >= rk[:-1]).all()), (fmt.name, x[keep].tolist(), rk.tolist())
    t = round_to_format(x, fmt, "toward_zero")
    assert bool((t[1:] >= t[:-1]).all())


@pytest.mark.parametrize("fmt", FORMATS_UNDER_TEST, ids=FMT_IDS)
@SETTINGS
@given(values=st.lists(floats32, min_size=1, max_size=64))
def test_idempotent(fmt, values):
    x = as_tensor(values)
    for rounding in ("nearest", "toward_zero", "stochastic"):
        r = round_to_format(x, fmt, rounding, saturate=True)
        again = round_to_format(r, fmt, rounding, saturate=True)
        same = (r.view(torch.int32) == again.view(torch.int32)) | (torch.isnan(r) & torch.isnan(again))
        assert bool(same.all()), (fmt.name, rounding)


@pytest.mark.parametrize("fmt", FORMATS_UNDER_TEST, ids=FMT_IDS)
@SETTINGS
@given(values=st.lists(finite32, min_size=1, max_size=64))
def test_error_within_half_ulp(fmt, values):
    x = as_tensor(values)
    x = x[x.abs() <= fmt.max]
    if not x.numel():
        return
    r = round_to_format(x, fmt).double()
    u = ulp(x, fmt).double()
    err = (r - x.double()).abs()
    assert bool((err <= u / 2).all()), (fmt.name, x.tolist(), r.tolist())
    t = round_to_format(x, fmt, "toward_zero").double()
    assert bool(((x.double() - t).abs() < u).all() & (t.abs() <= x.double().abs()).all())
    s = round_to_format(x, fmt, "stochastic").double()
    assert bool(((s - x.double()).abs() < u).all())


@pytest.mark.parametrize("fmt", FORMATS_UNDER_TEST, ids=FMT_IDS)
@SETTINGS
@given(values=st.lists(finite32, min_size=1, max_size=64), seed=st.integers(0, 2 ** 32 - 1))
def test_stochastic_lands_on_a_neighbour(fmt, values, seed):
    x = as_tensor(values)
    s = round_to_format(x, fmt, "stochastic", saturate=True,
                        generator=torch.Generator().manual_seed(seed))
    lo = round_to_format(x, fmt, "toward_zero", saturate=True)
    hi = torch.copysign(next_up(lo.abs(), fmt), x)        # the next value away from zero
    assert bool(((s == lo) | (s == hi)).all()), (fmt.name, x.tolist(), s.tolist())
    representable = round_to_format(x, fmt, saturate=True) == x
    assert torch.equal(s[representable], x[representable])


@pytest.mark.parametrize("fmt", FORMATS_UNDER_TEST, ids=FMT_IDS)
def test_reference_on_every_tie(fmt):
    """Deterministic sweep: every value of a format up to 16 bits (20,000 random ones of the
    wider ones), every midpoint to the next value and its float32 neighbours, against the
    reference (both signs, both overflow rules)."""
    if fmt.bits <= 16:
        p = torch.arange(fmt.max_pattern + 1)
    else:
        p = torch.randint(0, fmt.max_pattern + 1, (20_000,), generator=torch.Generator().manual_seed(11))
    v = decode(p, fmt).double()
    nxt = torch.where(p == fmt.max_pattern, v + ulp(v.float(), fmt).double(), decode(p + 1, fmt).double())
    ok = torch.isfinite(v) & (v >= 0)
    v, nxt = v[ok], nxt[ok]
    exact_mid = (v + nxt) / 2
    mids = exact_mid.float()
    representable = mids.double() == exact_mid
    if fmt.mantissa_bits < 23:      # one bit more than fmt: every tie is a float32 number
        assert bool(representable.all())
    mids = mids[representable]      # (m == 23: only the ties among the subnormals are)
    pts = torch.cat([v.float(), mids, torch.nextafter(mids, torch.full_like(mids, math.inf)),
                     torch.nextafter(mids, torch.zeros_like(mids))])
    pts = torch.cat([pts, -pts])
    for saturate in (True, False):
        ours = round_to_format(pts, fmt, saturate=saturate).tolist()
        for xi, oi in zip(pts.tolist(), ours):
            assert bits_equal(oi, ref_round(xi, fmt, "nearest", saturate)), (fmt.name, xi, oi)
