"""course_lib.hardware: the sourced GPU/CPU tables, name matching, feature rules."""
from __future__ import annotations

import math
import re

import pytest
import torch

from course_lib import hardware as hw
from course_lib.env import ARM_FLAGS, X86_FLAGS, cpu_flags

REQUIRED = {"V100 SXM2", "T4", "A100 SXM4 40GB", "A100 SXM4 80GB", "A10", "L4", "L40S", "H100 SXM",
            "H100 PCIe", "H200 SXM", "RTX 3090", "RTX 4090", "GTX 1660"}

# torch.cuda.get_device_name() strings -> expected table key (None: not in the table, must not
# fall back to a neighbour whose peaks differ)
NAMES = [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("nvidia h100 80gb hbm3", "H100 SXM"),
    ("NVIDIA H100 SXM5 80GB", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H100", None),  # SXM or PCIe? cannot tell
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", None),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
    ("NVIDIA A100-PCIE-40GB", None),
    ("NVIDIA A100 80GB PCIe", None),
    ("NVIDIA A10", "A10"),
    ("NVIDIA A10G", None),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", None),
    ("Tesla T4", "T4"),
    ("Tesla V100-SXM2-16GB", "V100 SXM2"),
    ("Tesla V100-SXM2-32GB", "V100 SXM2"),
    ("Tesla V100-PCIE-16GB", None),
    ("Tesla V100S-PCIE-32GB", None),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"),
    ("NVIDIA GeForce RTX 3090 Ti", None),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
    ("NVIDIA GeForce RTX 4090 D", None),
    ("NVIDIA GeForce GTX 1660", "GTX 1660"),
    ("NVIDIA GeForce GTX 1660 Ti", None),
    ("NVIDIA GeForce GTX 1660 SUPER", None),
    ("NVIDIA GeForce RTX 2080", None),
    ("", None),
]


#: relative rounding of a figure printed with 3 significant digits
ROUNDING = 5e-3


def spec(key: str) -> hw.GpuSpec:
    return next(s for s in hw.GPUS if s.key == key)


@pytest.mark.parametrize("name,key", NAMES)
def test_lookup_gpu_names(name, key):
    found = hw.lookup_gpu(name)
    assert (found.key if found else None) == key


def test_table_covers_required_gpus_once():
    keys = [s.key for s in hw.GPUS]
    assert REQUIRED <= set(keys)
    assert len(keys) == len(set(keys))


def test_every_row_matched_by_exactly_one_pattern_set():
    # each row's patterns must not also match another row's canonical name
    canonical = {"H100 SXM": "NVIDIA H100 80GB HBM3", "H100 PCIe": "NVIDIA H100 PCIe",
                 "H200 SXM": "NVIDIA H200", "A100 SXM4 40GB": "NVIDIA A100-SXM4-40GB",
                 "A100 SXM4 80GB": "NVIDIA A100-SXM4-80GB", "A10": "NVIDIA A10", "L4": "NVIDIA L4",
                 "L40S": "NVIDIA L40S", "T4": "Tesla T4", "V100 SXM2": "Tesla V100-SXM2-32GB",
                 "RTX 3090": "NVIDIA GeForce RTX 3090", "RTX 4090": "NVIDIA GeForce RTX 4090",
                 "GTX 1660": "NVIDIA GeForce GTX 1660"}
    assert set(canonical) == {s.key for s in hw.GPUS}
    for key, name in canonical.items():
        norm = hw._normalise(name)
        matching = [s.key for s in hw.GPUS if any(re.search(p, norm) for p in s.patterns)]
        assert matching == [key], (name, matching)


def test_lookup_gpu_rejects_non_str():
    with pytest.raises(TypeError, match="name must be a str"):
        hw.lookup_gpu(None)


def test_gtx_1660_is_cc75_without_tensor_cores():
    g = hw.lookup_gpu("NVIDIA GeForce GTX 1660")
    assert g.capability == (7, 5) and g.tensor_cores is False
    assert set(g.unsupported) == {"tf32", "fp16", "bf16", "fp8"}
    # fp32 derived from the sourced core count and clock: 1408 * 2 * 1.785 GHz
    assert g.dense_tflops["fp32"] == pytest.approx(1408 * 2 * 1.785e9 / 1e12, abs=0.005)


@pytest.mark.parametrize("cc,name,tensor_cores", [
    ((7, 5), "NVIDIA GeForce GTX 1660", False),
    ((7, 5), "NVIDIA GeForce GTX 1660 Ti", False),   # not in the table: the GTX 16 rule decides
    ((7, 5), "NVIDIA GeForce GTX 1650", False),
    ((7, 5), "Tesla T4", True),
    ((7, 5), "NVIDIA GeForce RTX 2080", True),
    ((7, 5), None, None),                            # ambiguous without the name
    ((7, 0), None, True),
    ((6, 1), "NVIDIA GeForce GTX 1080", False),
    ((9, 0), "NVIDIA H100 80GB HBM3", True),
])
def test_gpu_features_tensor_cores(cc, name, tensor_cores):
    assert hw.gpu_features(cc, name)["tensor_cores"] is tensor_cores


@pytest.mark.parametrize("cc,bf16,tf32,fp8", [
    ((7, 0), False, False, False), ((7, 5), False, False, False), ((8, 0), True, True, False),
    ((8, 6), True, True, False), ((8, 9), True, True, True), ((9, 0), True, True, True),
    ((10, 0), True, True, True)])
def test_gpu_features_capability_thresholds(cc, bf16, tf32, fp8):
    f = hw.gpu_features(cc)
    assert (f["bf16"], f["tf32"], f["fp8"]) == (bf16, tf32, fp8)
    assert f["capability"] == f"{cc[0]}.{cc[1]}"
    assert set(f["reasons"]) == {"tensor_cores", "bf16", "tf32", "fp8"}


@pytest.mark.parametrize("bad", [(8,), [8, 0], (8, "0"), (True, 0), "8.0", (8, -1)])
def test_gpu_features_rejects_bad_capability(bad):
    with pytest.raises(TypeError, match="capability"):
        hw.gpu_features(bad)


def test_table_agrees_with_capability_rules():
    """The rows and gpu_features tell the same story (an independent cross-check of both)."""
    for s in hw.GPUS:
        f = hw.gpu_features(s.capability, None if s.capability == (7, 5) else s.key)
        if s.tensor_cores:
            assert ("bf16" in s.unsupported) == (not f["bf16"]), s.key
            assert ("tf32" in s.unsupported) == (not f["tf32"]), s.key
            assert ("fp8" in s.unsupported) == (not f["fp8"]), s.key
        else:
            assert set(s.unsupported) == {"tf32", "fp16", "bf16", "fp8"}


def test_sparse_is_twice_dense_wherever_both_are_stored():
    checked = 0
    for s in hw.GPUS:
        for key, sparse in s.sparse_tflops.items():
            dense = s.dense_tflops[key]
            assert dense is not None, (s.key, key)
            # datasheets round to 3 significant digits (35.6 -> 71, not 71.2): half a unit in the
            # third digit is at most 0.5 % of the value
            assert sparse == pytest.approx(2 * dense, rel=ROUNDING), (s.key, key)
            checked += 1
    assert checked >= 30
    h100 = spec("H100 SXM")
    assert h100.dense_tflops["bf16"] == h100.sparse_tflops["bf16"] / 2 == 989.5
    assert h100.sparse_tflops["fp8"] == 3958.0 and h100.dense_tflops["fp8"] == 1979.0


def test_no_pre_ampere_sparsity_and_tensor_paths_beat_fp32():
    for s in hw.GPUS:
        if s.capability < (8, 0):
            assert not s.sparse_tflops, s.key
        for key in ("fp16", "bf16"):
            if s.dense_tflops[key] is not None:
                assert s.dense_tflops[key] >= 2 * s.dense_tflops["fp32"] * (1 - ROUNDING), (s.key, key)
        if s.dense_tflops["fp8"] is not None and s.dense_tflops["bf16"] is not None:
            assert s.dense_tflops["fp8"] == pytest.approx(2 * s.dense_tflops["bf16"], rel=0.01)


def test_geforce_rows_store_fp32_accumulate_rate():
    for key in ("RTX 3090", "RTX 4090"):
        s = spec(key)
        assert s.fp16_acc16_dense == pytest.approx(2 * s.dense_tflops["fp16"], rel=ROUNDING)
        assert "accumulat" in s.notes
    assert all(s.fp16_acc16_dense is None for s in hw.GPUS if not s.key.startswith("RTX"))


def test_rows_are_sourced_and_none_means_unsupported_or_flagged():
    for s in hw.GPUS:
        assert s.source and s.url.startswith("https://") and s.verified_via, s.key
        assert len(s.memory_gb) >= 1 and s.bandwidth_gbs > 0
        for key in hw.DTYPE_KEYS:
            v = s.dense_tflops[key]
            if key in s.unsupported:
                assert v is None and key not in s.sparse_tflops, (s.key, key)
            elif v is None:
                assert "UNVERIFIED" in s.notes, (s.key, key)
            else:
                assert math.isfinite(v) and v > 0
        assert s.dense_tflops["fp32"] is not None, s.key
    with pytest.raises(TypeError):  # frozen mapping
        spec("T4").dense_tflops["fp32"] = 1.0


def test_peak_tflops_keys_dtypes_and_errors():
    h100 = spec("H100 SXM")
    assert hw.peak_tflops(h100, "bf16") == hw.peak_tflops(h100, torch.bfloat16) == 989.5
    assert hw.peak_tflops(h100, torch.float8_e4m3fn) == hw.peak_tflops(h100, torch.float8_e5m2) == 1979.0
    assert hw.peak_tflops(h100, torch.float32) == 67.0
    assert hw.peak_tflops(h100, "tf32", sparse=True) == 989.0
    with pytest.raises(LookupError, match="no bf16 tensor-core path"):
        hw.peak_tflops(spec("V100 SXM2"), torch.bfloat16)
    with pytest.raises(LookupError, match="not verified"):
        hw.peak_tflops(spec("A10"), "tf32")
    with pytest.raises(LookupError, match="sparse"):
        hw.peak_tflops(spec("T4"), "fp16", sparse=True)
    with pytest.raises(ValueError, match="unknown dtype_key 'fp64'"):
        hw.peak_tflops(h100, "fp64")
    with pytest.raises(ValueError, match="no peak for dtype"):
        hw.peak_tflops(h100, torch.float64)
    with pytest.raises(TypeError, match="spec must be GpuSpec"):
        hw.peak_tflops("H100", "bf16")


def _x86(*present):
    return {name: name in present for name in X86_FLAGS}


def _arm(*present):
    return {name: name in present for name in ARM_FLAGS}


@pytest.mark.parametrize("flags,arch,bf16,fp16", [
    (_x86("avx2", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"), "x86", True, True),
    (_x86("avx2", "f16c", "avx512f", "avx512_bf16"), "x86", True, False),        # Zen 4/5, Cooper Lake
    (_x86("avx2", "f16c", "avx512f"), "x86", False, False),                      # Skylake-SP / Ice Lake
    (_x86("avx2", "f16c", "amx_bf16", "amx_fp16"), "x86", True, True),           # AMX alone
    (_x86(), "x86", False, False),
    (_arm("fphp", "asimdhp"), "arm", False, True),                              # Graviton2-like
    (_arm("fphp", "asimdhp", "bf16", "i8mm", "sve"), "arm", True, True),         # Graviton3-like
    (_arm("fphp"), "arm", False, False),                                         # scalar only
])
def test_cpu_16bit_support_synthetic_flags(flags, arch, bf16, fp16):
    r = hw.cpu_16bit_support(flags)
    assert r["arch"] == arch
    assert r["bf16"]["native"] is bf16 and r["fp16"]["native"] is fp16
    assert all(f in flags and flags[f] for f in r["bf16"]["flags"] + r["fp16"]["flags"])
    assert r["bf16"]["why"] and r["fp16"]["why"]


def test_cpu_16bit_support_explains_f16c_and_unknown():
    r = hw.cpu_16bit_support(_x86("f16c"))
    assert r["fp16"]["why"].startswith("conversion only") and r["fp16"]["flags"] == ["f16c"]
    assert hw.cpu_16bit_support(_x86())["fp16"]["why"].startswith("emulated")
    u = hw.cpu_16bit_support({})
    assert u["arch"] == "unknown" and u["bf16"]["native"] is None and u["fp16"]["native"] is None
    with pytest.raises(TypeError, match="flags must be a dict"):
        hw.cpu_16bit_support(["avx512_bf16"])


def test_cpu_16bit_support_on_this_machine_runs():
    r = hw.cpu_16bit_support(cpu_flags())
    assert r["arch"] in ("x86", "arm", "unknown")
    assert r["bf16"]["native"] in (True, False, None)


def test_cpu_table_families_and_flags_are_consistent():
    """A family whose listed flags say native must be classified native by cpu_16bit_support."""
    for fam in hw.CPU_16BIT:
        names = X86_FLAGS if not set(fam.flags) & set(ARM_FLAGS) else ARM_FLAGS
        r = hw.cpu_16bit_support({n: n in fam.flags for n in names})
        assert r["bf16"]["native"] == fam.bf16.startswith("native"), fam.family
        assert r["fp16"]["native"] == fam.fp16.startswith("native"), fam.family
        assert fam.source


def test_tables_render_with_sources():
    t = hw.gpu_table()
    text, md, page = str(t), t.to("markdown"), t.to("html")
    for s in hw.GPUS:
        assert s.key in text and s.url in text and s.url in md and s.url in page
    assert "989.5 (1979*)" in text and "NO" in text  # dense with sparse beside; GTX 1660 row
    assert len(t) == len(hw.GPUS) and len(t.headers) == len(t[0])
    c = hw.cpu_table()
    assert "AVX512_FP16" in c.to("html") and "Graviton3" in c.to("markdown")
    with pytest.raises(ValueError, match="unknown fmt"):
        t.to("pdf")
