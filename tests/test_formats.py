"""Tests of course_lib.formats, with torch's own dtypes and casts as the oracle.

Bit-exact throughout: values are compared as float32 bit patterns (so -0.0
differs from +0.0) except that any NaN equals any NaN (payloads are not part
of the contract). Property-based tests live in test_formats_props.py.
"""
from __future__ import annotations

import dataclasses
import doctest
import importlib
import math

import pytest
import torch

import course_lib.bench_formats as bench_formats
from course_lib.formats import (FORMATS, decode, encode, explain, fields, get_format,
                                make_format, next_down, next_up, overflow_rule, round_to_format,
                                table, torch_overflow, ulp)

# (format name, torch dtype, signed integer dtype of the same width)
TORCH_FORMATS = [
    ("fp16", torch.float16, torch.int16),
    ("bf16", torch.bfloat16, torch.int16),
    ("fp8_e4m3fn", torch.float8_e4m3fn, torch.int8),
    ("fp8_e5m2", torch.float8_e5m2, torch.int8),
    ("fp8_e4m3fnuz", torch.float8_e4m3fnuz, torch.int8),
    ("fp8_e5m2fnuz", torch.float8_e5m2fnuz, torch.int8),
]
TORCH_FORMAT_IDS = [name for name, _, _ in TORCH_FORMATS]
INF = float("inf")
NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# helpers
def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: identical float32 bit patterns, or both NaN."""
    a, b = a.float(), b.float()
    return (a.view(torch.int32) == b.view(torch.int32)) | (torch.isnan(a) & torch.isnan(b))


def assert_same(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor | None = None, what: str = ""):
    ok = same_bits(ours, ref)
    if not bool(ok.all()):
        idx = (~ok).reshape(-1).nonzero()[:8, 0].tolist()
        flat_o, flat_r = ours.reshape(-1), ref.reshape(-1)
        lines = []
        for i in idx:
            src = "" if x is None else f"x={x.reshape(-1)[i].item()!r} " \
                f"(0x{x.reshape(-1).float()[i:i + 1].view(torch.int32).item() & 0xFFFFFFFF:08X}) "
            lines.append(f"  {src}ours={flat_o[i].item()!r} torch={flat_r[i].item()!r}")
        pytest.fail(f"{what}: {int((~ok).sum())} of {ok.numel()} differ, e.g.\n" + "\n".join(lines))


def all_patterns(width: int) -> torch.Tensor:
    return torch.arange(1 << width, dtype=torch.int64)


def torch_decode(patterns: torch.Tensor, dtype: torch.dtype, int_dtype: torch.dtype) -> torch.Tensor:
    width = torch.iinfo(int_dtype).bits
    signed = patterns - (patterns >= (1 << (width - 1))).to(torch.int64) * (1 << width)
    return signed.to(int_dtype).view(dtype).float()


def f32(bits: int) -> float:
    return torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32).item()


def f32_next(x: torch.Tensor, toward: float) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, toward))


def values_of(fmt) -> torch.Tensor:
    """Every non-NaN value of a format (from all its patterns), sorted, -0.0 and +0.0 both kept."""
    fmt = get_format(fmt)
    v = decode(all_patterns(fmt.bits), fmt)
    v = v[~torch.isnan(v)]
    return v[torch.argsort(v, stable=True)]


def midpoints_and_neighbours(fmt) -> torch.Tensor:
    """Every tie between adjacent values of fmt (also 0..min_subnormal and max..the value above
    max), and the float32 numbers just below and above each tie, both signs."""
    fmt = get_format(fmt)
    v = values_of(fmt)
    pos = torch.unique(v[(v >= 0) & torch.isfinite(v)])          # 0, min_sub, ..., max
    above = torch.tensor([fmt.max + float(ulp(torch.tensor(fmt.max), fmt))])
    grid = torch.cat([pos, above]).double()
    mids = ((grid[1:] + grid[:-1]) / 2).float()                  # exact: one more bit than fmt
    assert torch.equal(mids.double(), (grid[1:] + grid[:-1]) / 2)
    pts = torch.cat([mids, f32_next(mids, INF), f32_next(mids, 0.0)])
    return torch.cat([pts, -pts])


# ---------------------------------------------------------------------------------------------
# the registry
@pytest.mark.parametrize("name,dtype,_", TORCH_FORMATS + [("fp32", torch.float32, torch.int32)],
                         ids=TORCH_FORMAT_IDS + ["fp32"])
def test_properties_equal_torch_finfo(name, dtype, _):
    fmt = get_format(name)
    fi = torch.finfo(dtype)
    assert fmt.torch_dtype == dtype
    assert fmt.bits == fi.bits
    assert fmt.max == fi.max
    assert fmt.min_normal == fi.tiny == fi.smallest_normal
    # torch.finfo has no smallest_subnormal here: ask torch for the value of pattern 0x..01
    int_dtype = {8: torch.int8, 16: torch.int16, 32: torch.int32}[fi.bits]
    assert fmt.min_subnormal == torch.tensor([1], dtype=int_dtype).view(dtype).item()
    # eps: the gap between 1.0 and the next value, from torch's decoding of the patterns
    one = int(encode(torch.tensor(1.0), fmt))
    nxt = torch.tensor([one + 1], dtype=torch.int64).to(int_dtype).view(dtype).item()
    assert fmt.eps == nxt - 1.0
    if name == "fp8_e5m2fnuz":
        # torch.finfo(float8_e5m2fnuz).eps is 0.125 (c10 declares epsilon() as 2**-3), but with
        # 2 mantissa bits the value after 1.0 is 1.25 -- checked just above through torch itself.
        assert fi.eps == 0.125 and fmt.eps == 0.25
    else:
        assert fmt.eps == fi.eps
    assert fmt.decimal_digits == pytest.approx((fmt.mantissa_bits + 1) * math.log10(2))


def test_builtin_layouts_and_conventions():
    expect = {  # name: (exponent bits, mantissa bits, bias, has_inf, has -0, max)
        "fp32": (8, 23, 127, True, True, (2 - 2 ** -23) * 2.0 ** 127),
        "tf32": (8, 10, 127, True, True, (2 - 2 ** -10) * 2.0 ** 127),
        "fp16": (5, 10, 15, True, True, 65504.0),
        "bf16": (8, 7, 127, True, True, (2 - 2 ** -7) * 2.0 ** 127),
        "fp8_e4m3fn": (4, 3, 7, False, True, 448.0),
        "fp8_e5m2": (5, 2, 15, True, True, 57344.0),
        "fp8_e4m3fnuz": (4, 3, 8, False, False, 240.0),
        "fp8_e5m2fnuz": (5, 2, 16, False, False, 57344.0),
    }
    assert set(FORMATS) == set(expect)
    for name, (e, m, bias, has_inf, neg0, mx) in expect.items():
        f = FORMATS[name]
        assert (f.exponent_bits, f.mantissa_bits, f.bias, f.has_inf, f.has_negative_zero, f.max) == \
            (e, m, bias, has_inf, neg0, mx), name
        assert f.min_normal == 2.0 ** f.emin and f.min_subnormal == 2.0 ** (f.emin - m)
        assert 2.0 ** f.emax <= f.max < 2.0 ** (f.emax + 1)
    patterns = {name: (f.max_pattern, f.nan_pattern, f.inf_pattern) for name, f in FORMATS.items()}
    assert patterns == {
        "fp32": (0x7F7FFFFF, 0x7FC00000, 0x7F800000), "tf32": (0x3FBFF, 0x3FE00, 0x3FC00),
        "fp16": (0x7BFF, 0x7E00, 0x7C00), "bf16": (0x7F7F, 0x7FC0, 0x7F80),
        "fp8_e4m3fn": (0x7E, 0x7F, None), "fp8_e5m2": (0x7B, 0x7E, 0x7C),
        "fp8_e4m3fnuz": (0x7F, 0x80, None), "fp8_e5m2fnuz": (0x7F, 0x80, None)}
    assert FORMATS["tf32"].torch_dtype is None
    assert FORMATS["tf32"].min_subnormal == 2.0 ** -136
    assert FORMATS["fp16"].min_subnormal == 2.0 ** -24  # the tutorial's table left this out


@pytest.mark.parametrize("spec,name", [
    ("float16", "fp16"), ("half", "fp16"), ("FP16", "fp16"), (torch.float16, "fp16"),
    ("bfloat16", "bf16"), (torch.bfloat16, "bf16"), ("float32", "fp32"), (torch.float32, "fp32"),
    ("tf32", "tf32"), ("e4m3", "fp8_e4m3fn"), ("fp8_e4m3", "fp8_e4m3fn"),
    (torch.float8_e4m3fn, "fp8_e4m3fn"), ("e5m2", "fp8_e5m2"), (torch.float8_e5m2, "fp8_e5m2"),
    ("e4m3fnuz", "fp8_e4m3fnuz"), (torch.float8_e4m3fnuz, "fp8_e4m3fnuz"),
    ("e5m2fnuz", "fp8_e5m2fnuz"), (torch.float8_e5m2fnuz, "fp8_e5m2fnuz"),
])
def test_get_format_aliases(spec, name):
    assert get_format(spec) is FORMATS[name]


def test_get_format_passes_formats_through_and_rejects_unknowns():
    user = make_format(3, 2)
    assert get_format(user) is user
    with pytest.raises(ValueError, match="unknown format 'fp12'") as err:
        get_format("fp12")
    for known in FORMATS:
        assert known in str(err.value)
    with pytest.raises(ValueError, match="torch.float64 is not one of"):
        get_format(torch.float64)
    with pytest.raises(TypeError, match="name \\(str\\), a torch.dtype or a FloatFormat"):
        get_format(16)


@pytest.mark.parametrize("user,builtin", [((5, 10), "fp16"), ((8, 7), "bf16"), ((8, 10), "tf32"),
                                          ((8, 23), "fp32"), ((4, 3, "fn"), "fp8_e4m3fn"),
                                          ((5, 2, "fnuz"), "fp8_e5m2fnuz")])
def test_make_format_reproduces_builtins(user, builtin):
    mine, ref = make_format(*user), FORMATS[builtin]
    props = ["bits", "bias", "emin", "emax", "max", "min_normal", "min_subnormal", "eps",
             "decimal_digits", "has_inf", "has_negative_zero", "torch_dtype", "max_pattern",
             "nan_pattern", "inf_pattern"]
    assert {p: getattr(mine, p) for p in props} == {p: getattr(ref, p) for p in props}
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3)) * 300
    assert_same(round_to_format(x, mine), round_to_format(x, ref), x, f"{user} vs {builtin}")


def test_make_format_names_and_frozen():
    assert make_format(3, 2).name == "e3m2"
    assert make_format(4, 3, "fn").name == "e4m3fn"
    assert make_format(4, 3, name="mine").name == "mine"
    with pytest.raises(dataclasses.FrozenInstanceError):
        FORMATS["fp16"].mantissa_bits = 3


@pytest.mark.parametrize("args,error,message", [
    ((1, 3), ValueError, r"exponent_bits=1 is out of range; allowed: 2\.\.8"),
    ((9, 3), ValueError, r"exponent_bits=9 is out of range; allowed: 2\.\.8"),
    ((5, 24), ValueError, r"mantissa_bits=24 is out of range; allowed: 0\.\.23"),
    ((5, -1), ValueError, r"mantissa_bits=-1 is out of range; allowed: 0\.\.23"),
    ((5.0, 2), TypeError, r"exponent_bits must be an int in 2\.\.8; got 5\.0"),
    ((5, True), TypeError, r"mantissa_bits must be an int"),
    ((5, 2, "ocp"), ValueError, r"convention='ocp' is not known; allowed: 'ieee', 'fn', 'fnuz'"),
    ((5, 0), ValueError, r"'ieee' format needs mantissa_bits >= 1"),
    ((8, 3, "fn"), ValueError, r"exponent_bits=8 with convention='fn' is not supported"),
])
def test_make_format_validates(args, error, message):
    with pytest.raises(error, match=message):
        make_format(*args)


# ---------------------------------------------------------------------------------------------
# decode / encode / fields / explain
@pytest.mark.parametrize("name,dtype,int_dtype", TORCH_FORMATS, ids=TORCH_FORMAT_IDS)
def test_decode_every_pattern_like_torch(name, dtype, int_dtype):
    p = all_patterns(torch.iinfo(int_dtype).bits)
    assert_same(decode(p, name), torch_decode(p, dtype, int_dtype), None, f"decode {name}")


def test_decode_fp32_patterns_exactly():
    g = torch.Generator().manual_seed(1)
    p = torch.cat([torch.randint(0, 1 << 32, (200_000,), dtype=torch.int64, generator=g),
                   torch.tensor([0, 1, 0x7FFFFF, 0x800000, 0x7F7FFFFF, 0x7F800000, 0x7FC00000,
                                 0x80000000, 0x80000001, 0xFF800000, 0xFFFFFFFF])])
    assert_same(decode(p, "fp32"), torch_decode(p, torch.float32, torch.int32), None, "fp32")


def test_decode_accepts_ints_lists_and_integer_dtypes():
    assert decode(0x3C00, "fp16").item() == 1.0 and decode(0x3C00, "fp16").dim() == 0
    assert decode([[0x3C00, 0x4000]], "fp16").tolist() == [[1.0, 2.0]]
    assert decode(torch.tensor([0x38], dtype=torch.uint8), "e4m3").tolist() == [1.0]
    assert decode(torch.tensor([0x3F80], dtype=torch.int32), "bf16").dtype == torch.float32
    assert decode([], "fp16").shape == (0,)


@pytest.mark.parametrize("bits,fmt,error,message", [
    (0x10000, "fp16", ValueError,
     r"bit pattern 65536 is out of range for fp16 \(16 bits\); allowed: 0\.\.65535"),
    (-1, "fp16", ValueError, r"allowed: 0\.\.65535 .*bits & 0xFFFF"),
    (torch.tensor([-2], dtype=torch.int8), "e4m3", ValueError, r"allowed: 0\.\.255"),
    (256, "fp8_e5m2", ValueError, r"out of range for fp8_e5m2 \(8 bits\); allowed: 0\.\.255"),
    (torch.tensor([1.0]), "fp16", TypeError, r"integer bit patterns .* got a tensor of dtype torch.float32"),
    (1.0, "fp16", TypeError, r"integer bit patterns"),
    ([1, 2.5], "fp16", TypeError, r"integer bit patterns"),
    ("0x3c00", "fp16", TypeError, r"integer bit patterns"),
])
def test_decode_rejects_bad_patterns(bits, fmt, error, message):
    with pytest.raises(error, match=message):
        decode(bits, fmt)


@pytest.mark.parametrize("fmt", list(FORMATS)[1:] + [make_format(3, 2), make_format(6, 9),
                                                   make_format(2, 1), make_format(3, 0, "fn"),
                                                   make_format(5, 4, "fnuz")],
                         ids=lambda f: getattr(f, "name", f))
def test_encode_decode_round_trip_every_pattern(fmt):
    fmt = get_format(fmt)
    p = all_patterns(fmt.bits)          # up to 2**19 (tf32); fp32 has its own test
    v = decode(p, fmt)
    back = encode(v, fmt)
    nan = torch.isnan(v)
    assert torch.equal(back[~nan], p[~nan])
    # NaN patterns come back as the canonical NaN (with their sign, where NaNs have one)
    canonical = back[nan] if fmt.convention == "fnuz" else back[nan] & ~fmt.sign_mask
    assert bool((canonical == fmt.nan_pattern).all())
    assert_same(round_to_format(v, fmt), v, None, f"values of {fmt.name} are fixed points")


def test_encode_fp32_round_trip_and_types():
    g = torch.Generator().manual_seed(2)
    p = torch.randint(0, 1 << 32, (100_000,), dtype=torch.int64, generator=g)
    v = decode(p, "fp32")
    ok = ~torch.isnan(v)
    assert torch.equal(encode(v, "fp32")[ok], p[ok])
    assert encode(torch.tensor([1.0]), "fp16").dtype == torch.int64
    assert encode(1.0, "bf16").item() == 0x3F80


@pytest.mark.parametrize("name,dtype,int_dtype", TORCH_FORMATS, ids=TORCH_FORMAT_IDS)
def test_encode_matches_torch_bits(name, dtype, int_dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-2 ** 31, 2 ** 31 - 1, (300_000,), dtype=torch.int32, generator=g).view(torch.float32)
    width = torch.iinfo(int_dtype).bits
    ref = x.to(dtype).view(int_dtype).to(torch.int64) & ((1 << width) - 1)
    ours = encode(x, name)
    ok = ~torch.isnan(x.to(dtype).float())
    assert torch.equal(ours[ok], ref[ok])


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "tf32", "fp8_e4m3fn", "fp8_e5m2fnuz",
                                 make_format(3, 2), make_format(6, 9), make_format(7, 5, "fnuz")],
                         ids=lambda f: getattr(f, "name", f))
def test_decode_of_encode_is_round_to_format(fmt, random_values):
    x = random_values[:500_000]
    for rounding in ("nearest", "toward_zero"):
        assert_same(decode(encode(x, fmt, rounding), fmt), round_to_format(x, fmt, rounding), x,
                    f"decode(encode()) {rounding}")


def test_fields_and_explain():
    assert fields(0x3C00, "fp16") == (0, 15, 0, "normal", 1.0)
    assert fields(0x8001, "fp16").kind == "subnormal" and fields(0x8001, "fp16").value == -2.0 ** -24
    negative_zero = fields(0x8000, "fp16")
    assert negative_zero[3:] == ("zero", 0.0) and math.copysign(1, negative_zero.value) == -1
    assert fields(0x7C00, "fp16").kind == "inf" and fields(0x7E00, "fp16").kind == "nan"
    assert fields(0x7F, "e4m3").kind == "nan" and fields(0x7E, "e4m3").value == 448.0
    assert fields(0x80, "fp8_e4m3fnuz").kind == "nan" and fields(0x7F, "fp8_e4m3fnuz").value == 240.0
    assert fields(torch.tensor([0x3F80]), "bf16").value == 1.0
    assert explain(0x3C00, "fp16") == ("0 01111 0000000000  fp16  sign=+  exponent=15-15=0  "
                                       "mantissa=1+0/1024  → 1.0 (normal)")
    assert "5.960464477539063e-08 (subnormal)" in explain(1, "fp16")
    assert "-inf (inf)" in explain(0xFC00, "fp16")
    assert "two NaNs" in explain(0xFF, "e4m3") and "two NaNs" in explain(0x7F, "e4m3")
    assert "only NaN" in explain(0x80, "fp8_e5m2fnuz")
    assert explain(0x3F800000, "fp32").startswith("0 01111111 00000000000000000000000  fp32")
    with pytest.raises(ValueError, match="takes ONE bit pattern; got 2"):
        explain([1, 2], "fp16")
    with pytest.raises(ValueError, match=r"allowed: 0\.\.255"):
        fields(300, "e5m2")


# ---------------------------------------------------------------------------------------------
# round_to_format against torch's casts
@pytest.fixture(scope="module")
def random_values() -> torch.Tensor:
    """10 million float32 values over all binades: 6M random bit patterns (every class: NaN,
    inf, subnormal, normal, both signs) and 4M uniform-in-log values in [2**-30, 2**30)."""
    g = torch.Generator().manual_seed(12345)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (6_000_000,), dtype=torch.int32, generator=g)
    log = torch.rand(4_000_000, generator=g, dtype=torch.float64) * 60 - 30
    sign = torch.randint(0, 2, (4_000_000,), generator=g) * 2 - 1
    return torch.cat([bits.view(torch.float32), (sign * torch.exp2(log)).float()])


@pytest.mark.parametrize("name,dtype,_", TORCH_FORMATS, ids=TORCH_FORMAT_IDS)
def test_round_random_values_like_torch(name, dtype, _, random_values):
    for chunk in random_values.split(2_500_000):
        assert_same(round_to_format(chunk, name), chunk.to(dtype).float(), chunk, name)


@pytest.mark.parametrize("name,dtype,_", TORCH_FORMATS, ids=TORCH_FORMAT_IDS)
def test_round_every_tie_like_torch(name, dtype, _):
    x = midpoints_and_neighbours(name)
    assert_same(round_to_format(x, name), x.to(dtype).float(), x, f"ties of {name}")


@pytest.mark.parametrize("name,dtype,_", TORCH_FORMATS, ids=TORCH_FORMAT_IDS)
def test_round_edges_like_torch(name, dtype, _):
    f = get_format(name)
    edges = [0.0, -0.0, INF, -INF, NAN, f.max, f.min_normal, f.min_subnormal, f.min_subnormal / 2,
             f.min_subnormal * 0.75, f.min_subnormal * 1.5, f.min_subnormal / 1024, 2.0 ** -149,
             1e-45, 3.4028234663852886e38, f.max * 1.0625, f.max * 2, 1e30]
    x = torch.tensor(edges, dtype=torch.float32)
    x = torch.cat([x, f32_next(x, INF), f32_next(x, -INF)])
    x = torch.cat([x, -x])
    assert_same(round_to_format(x, name), x.to(dtype).float(), x, f"edges of {name}")


def test_round_fp16_overflow_threshold_and_subnormal_boundary():
    below = f32_next(torch.tensor(65520.0), 0.0).item()
    x = torch.tensor([65504.0, below, 65520.0, 2.0 ** -25, f32_next(torch.tensor(2.0 ** -25), 1.0).item(),
                      -2.0 ** -25, 3 * 2.0 ** -25])
    assert round_to_format(x, "fp16").tolist() == [65504.0, 65504.0, INF, 0.0, 2.0 ** -24, -0.0,
                                                    2.0 ** -23]
    assert math.copysign(1, round_to_format(x, "fp16")[5].item()) == -1


def test_torch_overflow_conventions():
    # measured from torch itself; these are torch 2.13's CPU casts (see the docstring)
    assert torch_overflow("fp16") == ("inf", "inf")
    assert torch_overflow("bf16") == ("inf", "inf")
    assert torch_overflow("fp8_e5m2") == ("inf", "inf")
    e4m3 = torch.tensor([448.0, 464.0, 464.5, 480.0, 1e6, INF]).to(torch.float8_e4m3fn).float()
    expected = ("max", "max") if e4m3[-1].item() == 448.0 else ("nan", "nan")
    assert torch_overflow("fp8_e4m3fn") == expected
    assert torch_overflow("fp8_e4m3fnuz") == ("nan", "nan")
    assert torch_overflow("fp8_e5m2fnuz") == ("nan", "nan")
    with pytest.raises(ValueError, match="tf32 has no torch dtype"):
        torch_overflow("tf32")


def test_saturate_options():
    x = torch.tensor([70000.0, INF, -INF, NAN, -1e30, 65519.0])
    assert_same(round_to_format(x, "fp16", saturate=True),
                torch.tensor([65504.0, 65504.0, -65504.0, NAN, -65504.0, 65504.0]))
    assert_same(round_to_format(x, "fp16", saturate=False),
                torch.tensor([INF, INF, -INF, NAN, -INF, 65504.0]))
    y = torch.tensor([460.0, 464.0, 465.0, 500.0, INF, -1e6])
    assert_same(round_to_format(y, "e4m3", saturate=False),
                torch.tensor([448.0, 448.0, NAN, NAN, NAN, NAN]))
    assert_same(round_to_format(y, "e4m3", saturate=True),
                torch.tensor([448.0, 448.0, 448.0, 448.0, 448.0, -448.0]))
    z = torch.tensor([247.0, 248.0, 1e6, -INF])
    assert_same(round_to_format(z, "fp8_e4m3fnuz", saturate=True),
                torch.tensor([240.0, 240.0, 240.0, -240.0]))
    assert_same(round_to_format(z, "fp8_e4m3fnuz"), torch.tensor([240.0, NAN, NAN, NAN]))
    # formats without a torch dtype: IEEE semantics by default
    assert overflow_rule("tf32") == ("inf", "inf")
    assert overflow_rule(make_format(3, 2, "fn")) == ("nan", "nan")
    assert round_to_format(torch.tensor([3.4028234663852886e38]), "tf32").item() == INF
    assert math.isnan(round_to_format(torch.tensor([100.0]), make_format(3, 2, "fn")).item())
    assert round_to_format(torch.tensor([100.0]), make_format(3, 2, "fn"), saturate=True).item() == 24.0
    with pytest.raises(TypeError, match="saturate must be None .*, True or False; got 'yes'"):
        round_to_format(x, "fp16", saturate="yes")


def test_round_input_kinds():
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(5)) * 100
    ref = x.to(torch.float16).float()
    assert_same(round_to_format(x, "fp16"), ref)
    assert_same(round_to_format(x.t(), "fp16"), ref.t())                    # non-contiguous
    assert_same(round_to_format(x.double(), "fp16"), x.double().float().half().float())
    assert_same(round_to_format(x.half(), "fp16"), ref)
    assert_same(round_to_format(x.bfloat16(), "bf16"), x.bfloat16().float())
    assert round_to_format(torch.tensor(1 / 3), "fp16").shape == ()
    assert round_to_format(torch.empty(0, 3), "fp16").shape == (0, 3)
    assert round_to_format(0.1, "fp16").item() == 0.0999755859375
    assert round_to_format([0.1, 0.2], "bf16").tolist() == [0.10009765625, 0.2001953125]
    g = x.clone().requires_grad_()
    out = round_to_format(g, "fp16")
    assert out.dtype == torch.float32 and not out.requires_grad
    assert round_to_format(5, "fp16").item() == 5.0                           # a Python int is a number


@pytest.mark.parametrize("bad,error,message", [
    (torch.tensor([1, 2]), TypeError, r"expects a floating-point tensor .* got dtype torch.int64"),
    (torch.tensor([True]), TypeError, r"got dtype torch.bool"),
    (torch.tensor([1j]), TypeError, r"got dtype torch.complex64"),
    ("1.0", TypeError, r"floating-point torch.Tensor or Python number"),
    (True, TypeError, r"expects floats; got a bool"),
])
def test_round_rejects_non_floats(bad, error, message):
    with pytest.raises(error, match=message):
        round_to_format(bad, "fp16")
    with pytest.raises(error, match=message):
        encode(bad, "fp16")


def test_round_rejects_bad_modes_and_generators():
    x = torch.ones(3)
    for bad in ("up", "nearest_even", None):
        with pytest.raises(ValueError, match=r"is not a rounding mode; allowed: 'nearest', 'stochastic', "
                                             r"'toward_zero'"):
            round_to_format(x, "fp16", rounding=bad)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None; got int"):
        round_to_format(x, "fp16", rounding="stochastic", generator=5)
    with pytest.raises(ValueError, match="unknown format 'fp9'"):
        round_to_format(x, "fp9")


# ---------------------------------------------------------------------------------------------
# toward zero and stochastic rounding
@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz", "tf32"])
def test_toward_zero_truncates_to_a_neighbour(name):
    f = get_format(name)
    g = torch.Generator().manual_seed(6)
    x = (torch.rand(200_000, generator=g) * 2 - 1) * f.max
    x = torch.cat([x, x * 2.0 ** -20, torch.randn(1000, generator=g) * f.min_normal])
    t = round_to_format(x, f, rounding="toward_zero")
    assert bool((t.abs() <= x.abs()).all())
    assert_same(round_to_format(t, f), t, x, "truncated values are representable")
    # no value of the format lies strictly between |t| and |x|
    assert bool(((x.abs() < next_up(t.abs(), f)) | (t.abs() == f.max)).all())
    nearest = round_to_format(x, f)
    assert bool(((nearest == t) | (nearest.abs() == next_up(t.abs(), f))).all())
    big = torch.tensor([3.4028234663852886e38, -1e38])
    out = round_to_format(big, f, rounding="toward_zero")
    assert out[0].item() == f.max       # overflow toward zero gives max, never inf (IEEE 754 7.4)
    assert out[1].item() == -f.max or f.max > 1e38


@pytest.mark.parametrize("name,x", [
    ("fp16", 1.0 + 0.3 * 2 ** -10), ("fp16", 1000.1), ("fp16", -3.3e-6),     # normal, subnormal
    ("fp16", 1e-8), ("fp16", 65500.0),                                       # below min_subnormal
    ("bf16", 1 / 3), ("bf16", -7.1e-39), ("fp8_e4m3fn", 0.3), ("fp8_e4m3fn", -0.0007),
    ("fp8_e5m2", 300.0), ("fp8_e5m2fnuz", 1.1e-5), (make_format(3, 2), 0.07),
])
def test_stochastic_rounding_is_unbiased(name, x):
    f = get_format(name)
    n = 400_000
    xs = torch.full((n,), x)
    x32 = xs[0].item()
    r = round_to_format(xs, f, rounding="stochastic", generator=torch.Generator().manual_seed(7))
    lo = round_to_format(torch.tensor([abs(x32)]), f, rounding="toward_zero").item()
    hi = next_up(torch.tensor([lo]), f).item()
    lo, hi = math.copysign(lo, x32), math.copysign(hi, x32)
    assert set(r.unique().tolist()) <= {lo, hi}
    # r = lo + B * (hi - lo), B ~ Bernoulli(p), p = (x - lo) / (hi - lo): the mean of n draws has
    # standard deviation |hi - lo| * sqrt(p (1 - p) / n); with a fixed seed the test is
    # deterministic, and a 5-sigma band would fail for a correct implementation with
    # probability < 1e-6 over seeds. A bias of even 1% of p would be ~15 sigma at these n.
    p = (x32 - lo) / (hi - lo)
    sigma = abs(hi - lo) * math.sqrt(p * (1 - p) / n)
    assert abs(r.double().mean().item() - x32) <= 5 * sigma + 1e-12 * abs(x32)
    assert 0 < p < 1


def test_stochastic_rounding_overflow():
    g = torch.Generator().manual_seed(12)
    huge = torch.full((10_000,), 1e6)
    assert bool((round_to_format(huge, "fp16", "stochastic", generator=g) == INF).all())
    assert bool((round_to_format(-huge, "fp16", "stochastic", generator=g) == -INF).all())
    assert bool((round_to_format(huge, "fp16", "stochastic", saturate=True, generator=g) == 65504).all())
    assert bool(torch.isnan(round_to_format(huge, "fp8_e4m3fnuz", "stochastic", generator=g)).all())
    # between max and the next binade value 65536: up (to inf) with probability (x - max) / 32
    r = round_to_format(torch.full((100_000,), 65512.0), "fp16", "stochastic", generator=g)
    assert set(r.unique().tolist()) == {65504.0, INF}
    assert abs((r == INF).double().mean().item() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 100_000)
    specials = torch.tensor([INF, -INF, NAN, 0.0, -0.0])
    assert_same(round_to_format(specials, "fp16", "stochastic", generator=g),
                torch.tensor([INF, -INF, NAN, 0.0, -0.0]))


def test_stochastic_rounding_generator_and_neighbours():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(8)) * 10
    a = round_to_format(x, "fp16", "stochastic", generator=torch.Generator().manual_seed(1))
    b = round_to_format(x, "fp16", "stochastic", generator=torch.Generator().manual_seed(1))
    c = round_to_format(x, "fp16", "stochastic", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    down = round_to_format(x, "fp16", "toward_zero")
    up = torch.where(down == x, down, torch.where(x > 0, next_up(down, "fp16"), next_down(down, "fp16")))
    assert bool(((a == down) | (a == up)).all())
    exact = round_to_format(x, "fp16")    # representable inputs never move
    assert torch.equal(round_to_format(exact, "fp16", "stochastic"), exact)
    torch.manual_seed(0)
    assert round_to_format(x, "fp16", "stochastic").shape == x.shape  # global generator


# ---------------------------------------------------------------------------------------------
# ulp, next_up, next_down
@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_next_up_down_match_torch_nextafter(name, dtype):
    v = values_of(name)                       # every value incl. +-0 and +-inf
    h = v.to(dtype)
    up_ref = torch.nextafter(h, torch.full_like(h, INF)).float()
    down_ref = torch.nextafter(h, torch.full_like(h, -INF)).float()
    assert_same(next_up(v, name), up_ref, v, f"next_up {name}")
    assert_same(next_down(v, name), down_ref, v, f"next_down {name}")
    # non-representable inputs: the first value strictly above / below
    g = torch.Generator().manual_seed(9)
    f = get_format(name)
    x = (torch.rand(300_000, generator=g) * 2 - 1) * f.max * 0.99
    x = torch.cat([x, x * 2.0 ** -30])
    x = x[x.to(dtype).float() != x]
    y = x.to(dtype)
    above = torch.where(y.float() > x, y, torch.nextafter(y, torch.full_like(y, INF))).float()
    below = torch.where(y.float() < x, y, torch.nextafter(y, torch.full_like(y, -INF))).float()
    assert_same(next_up(x, name), above, x, f"next_up of non-representable ({name})")
    assert_same(next_down(x, name), below, x, f"next_down of non-representable ({name})")


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz"])
def test_next_up_down_walk_the_sorted_values(name):
    f = get_format(name)
    v = torch.unique(values_of(f)[torch.isfinite(values_of(f))]) + 0.0   # -max .. max, one +0
    # IEEE 754: nextUp(-min_subnormal) is -0, nextDown(min_subnormal) is +0 (no -0 in fnuz)
    up_expect = torch.where(v[1:] == 0, -0.0 if f.has_negative_zero else 0.0, v[1:])
    assert_same(next_up(v[:-1], f), up_expect, v[:-1], f"next_up {name}")
    assert_same(next_down(v[1:], f), v[:-1], v[1:], f"next_down {name}")
    expect = INF if f.has_inf else NAN        # nothing above max: inf, or the NaN pattern
    assert_same(next_up(torch.tensor([f.max]), f), torch.tensor([expect]))
    assert_same(next_down(torch.tensor([-f.max]), f), torch.tensor([-expect]))
    assert next_down(torch.tensor([INF]), f).item() == f.max
    assert next_up(torch.tensor([-INF]), f).item() == -f.max


def test_next_up_down_tf32_step_the_patterns():
    f = get_format("tf32")
    p = torch.randint(1, f.max_pattern, (100_000,), generator=torch.Generator().manual_seed(10))
    v = decode(p, f)
    assert_same(next_up(v, f), decode(p + 1, f), v, "next_up tf32")
    assert_same(next_down(v, f), decode(p - 1, f), v, "next_down tf32")
    assert_same(next_up(-v, f), -decode(p - 1, f), v, "next_up of negative tf32")


def test_next_up_down_specials():
    t = torch.tensor
    assert_same(next_up(t([-0.0, 0.0, -(2.0 ** -24), NAN]), "fp16"), t([2.0 ** -24, 2.0 ** -24, -0.0, NAN]))
    assert_same(next_down(t([2.0 ** -24, 0.0]), "fp16"), t([0.0, -(2.0 ** -24)]))
    assert_same(next_up(t([-(2.0 ** -10)]), "fp8_e4m3fnuz"), t([0.0]))       # no -0 in fnuz
    assert_same(next_up(t([448.0, 500.0, INF]), "e4m3"), t([NAN, NAN, NAN]))
    assert_same(next_down(t([500.0, INF]), "e4m3"), t([448.0, 448.0]))
    assert_same(next_up(t([1e9]), "fp16"), t([INF]))
    assert_same(next_down(t([1e9]), "fp16"), t([65504.0]))


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz",
                                  "fp8_e5m2fnuz", "tf32", "fp32"])
def test_ulp(name):
    f = get_format(name)
    assert ulp(torch.tensor([1.0]), f).item() == f.eps
    assert ulp(torch.tensor([0.0, -0.0, f.min_normal / 3]), f).tolist() == [f.min_subnormal] * 3
    assert ulp(torch.tensor([f.max]), f).item() == 2.0 ** (f.emax - f.mantissa_bits)
    assert ulp(torch.tensor([INF, -INF]), f).tolist() == [INF, INF]
    assert math.isnan(ulp(torch.tensor([NAN]), f).item())
    if f.bits <= 16:
        v = torch.unique(values_of(f).abs())
        v = v[torch.isfinite(v) & (v < f.max)]
        assert_same(ulp(v, f), next_up(v, f) - v, v, f"ulp {name}")       # the gap above
        assert_same(ulp(-v, f), next_up(v, f) - v, v, f"ulp of negatives {name}")
    if f.emax < 127:
        assert ulp(torch.tensor([2.0 ** (f.emax + 1)]), f).item() == INF


# ---------------------------------------------------------------------------------------------
# table, benchmark, docstrings
def test_table():
    t = table()
    assert [r["name"] for r in t] == ["fp32", "tf32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]
    fp16 = t[2]
    assert (fp16["bits"], fp16["exponent_bits"], fp16["mantissa_bits"], fp16["bias"]) == (16, 5, 10, 15)
    assert (fp16["max"], fp16["min_normal"], fp16["min_subnormal"], fp16["eps"]) == \
        (65504.0, 2.0 ** -14, 2.0 ** -24, 2.0 ** -10)
    assert fp16["decimal_digits"] == pytest.approx(3.311, abs=1e-3)
    text = str(t)
    lines = text.splitlines()
    assert len({len(line) for line in lines[:8]}) == 1      # aligned columns
    assert "2^-24 ≈ 5.96e-08" in text and "65504" in text and "448" in text
    assert "<table>" in t._repr_html_() and "5.96e-08" in t._repr_html_()
    md = t._repr_markdown_()
    assert md.startswith("| format |") and md.count("\n| ") == 6      # 6 rows after the rule
    assert table("fp8_e4m3fnuz")[0]["max"] == 240.0
    with pytest.raises(ValueError, match="unknown format"):
        table(["fp16", "fp7"])


def test_bench_run_produces_rows():
    rows = bench_formats.run(n=100_000, repeats=1)
    assert [r["format"] for r in rows] == ["fp16", "bf16"]
    assert all(r["identical"] and r["ratio"] > 0 for r in rows)
    assert "round_to_format ms" in bench_formats.format_rows(rows)
    with pytest.raises(ValueError, match="n must be >= 1"):
        bench_formats.run(n=0)


@pytest.mark.parametrize("module", ["course_lib.formats", "course_lib.formats.registry",
                                    "course_lib.formats.codec", "course_lib.formats.rounding",
                                    "course_lib.formats.spacing", "course_lib.formats.datasheet",
                                    "course_lib.bench_formats"])
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_every_public_function_is_documented():
    import course_lib.formats as formats
    for name in formats.__all__:
        obj = getattr(formats, name)
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ and ">>>" in obj.__doc__, f"{name} needs a docstring with an example"
    assert "Introduced in chapter 01 (notebooks/01_float_formats.ipynb)" in formats.__doc__
