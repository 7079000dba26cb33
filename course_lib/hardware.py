"""What the hardware promises: a sourced table of GPU peaks and CPU 16-bit support.

Every number here was read from a vendor document (or, where noted, derived
from one by a stated rule) and checked against a stored copy of that
document's table found with the course's search tool; where a figure could
not be checked it is ``None`` and the row says so -- nothing is typed in from
memory. MFU (chapter 09) divides measured FLOP/s by these peaks, so a wrong
peak makes every utilisation figure wrong.

GPU table (:data:`GPUS`, :class:`GpuSpec`). Peaks are *dense* TFLOPS for:

* ``fp32`` -- ordinary FP32 on the CUDA cores (not tensor cores);
* ``tf32`` / ``fp16`` / ``bf16`` / ``fp8`` -- tensor-core matrix math with
  those inputs.

Three traps the table is built to avoid:

1. **Sparse figures.** From Ampere on, datasheets print "with sparsity"
   figures (2:4 structured sparsity) marked ``*``: "Shown with sparsity.
   Specifications 1/2 lower without sparsity" (H100 datasheet footnote). A
   dense training run never gets them. Rows keep both; ``dense_tflops`` is
   what MFU must use. Even PyTorch's own ``torch/_inductor/analysis/
   device_info.py`` (torch 2.13) stores the sparse 1979 as the H100's BF16
   peak and 242 as the L4's, and gives the L4 the H100's 3350 GB/s.
2. **GeForce accumulate rates.** On GeForce cards an FP16 tensor-core matmul
   with FP32 accumulation (what PyTorch uses) runs at *half* the rate of FP16
   accumulation; the whitepapers print both. We store the FP32-accumulate
   figure and keep the other in ``fp16_acc16_dense``.
3. **"Compute capability >= 7.0 means tensor cores" is false**: the GeForce
   GTX 16 series is Turing (cc 7.5) built without tensor cores.
   :func:`gpu_features` handles that.

CPU table (:data:`CPU_16BIT`): which CPU families execute BF16/FP16
arithmetic natively (x86 ``avx512_bf16``/``amx_bf16``/``avx512_fp16``/
``amx_fp16``; Arm ``bf16``, ``fphp``/``asimdhp``), each with a source.
:func:`cpu_16bit_support` reads the flags that
:func:`course_lib.env.cpu_flags` returns. "Native instructions exist" is not
"fast in PyTorch": chapter 09 measures it (:func:`course_lib.bench.peak.peak_flops`).

Lookups: :func:`lookup_gpu` (``torch.cuda.get_device_name()`` strings),
:func:`gpu_features` (capability -> tensor cores, bf16, tf32, fp8),
:func:`peak_tflops`; :func:`gpu_table` and :func:`cpu_table` render the
tables with their sources (text, HTML or Markdown).

Used in chapters 00 (notebooks/00_orientation.ipynb) and 09
(notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch

from . import validate

__all__ = ["DTYPE_KEYS", "GpuSpec", "GPUS", "CpuFamily", "CPU_16BIT", "lookup_gpu", "gpu_features",
           "peak_tflops", "cpu_16bit_support", "gpu_table", "cpu_table", "SpecTable"]

#: The precisions of the GPU table, in display order.
DTYPE_KEYS = ("fp32", "tf32", "fp16", "bf16", "fp8")

_DTYPE_ALIASES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                  torch.float8_e4m3fn: "fp8", torch.float8_e5m2: "fp8"}


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model from its vendor document.

    Attributes:
        key (str): short name used in the table (``"H100 SXM"``).
        architecture (str): ``"Hopper"``, ``"Ampere"``, ...
        capability (tuple[int, int]): CUDA compute capability.
        tensor_cores (bool): has tensor cores.
        memory_gb (tuple[float, ...]): memory size(s) sold, GB.
        bandwidth_gbs (float): peak memory bandwidth, GB/s.
        dense_tflops (Mapping[str, float | None]): dense peak per key of
            :data:`DTYPE_KEYS`; ``None`` where unsupported or unverified.
        sparse_tflops (Mapping[str, float]): the document's "with sparsity"
            figures (empty before Ampere, which has no sparsity).
        unsupported (tuple[str, ...]): keys the hardware does not do on tensor
            cores (the others that are ``None`` are unverified).
        fp16_acc16_dense (float | None): GeForce only: FP16 tensor rate with
            FP16 accumulation (2x the FP32-accumulate ``fp16`` figure).
        source (str): the document the figures come from.
        url (str): where NVIDIA publishes it (the PDF where PyTorch or several
            repositories cite one, else NVIDIA's product page, which links the
            current datasheet).
        verified_via (tuple[str, ...]): stored copies of the figures checked.
        notes (str): derivations, caveats, what could not be verified.
    """

    key: str
    architecture: str
    capability: tuple[int, int]
    tensor_cores: bool
    memory_gb: tuple[float, ...]
    bandwidth_gbs: float
    dense_tflops: Mapping[str, float | None]
    sparse_tflops: Mapping[str, float]
    unsupported: tuple[str, ...]
    source: str
    url: str
    verified_via: tuple[str, ...]
    notes: str = ""
    fp16_acc16_dense: float | None = None
    patterns: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self):
        full = {k: self.dense_tflops.get(k) for k in DTYPE_KEYS}
        if set(self.dense_tflops) - set(DTYPE_KEYS):
            raise ValueError(f"{self.key}: unknown dtype keys {set(self.dense_tflops) - set(DTYPE_KEYS)}")
        object.__setattr__(self, "dense_tflops", MappingProxyType(full))
        object.__setattr__(self, "sparse_tflops", MappingProxyType(dict(self.sparse_tflops)))


# Documents (name, URL). URLs cited by PyTorch or by several repositories in the
# stored index are the document PDFs; the others are NVIDIA's product pages,
# which link the current datasheet.
_A100_DS = ("NVIDIA A100 Tensor Core GPU datasheet",
            "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
_H100_DS = ("NVIDIA H100 Tensor Core GPU datasheet", "https://www.nvidia.com/en-us/data-center/h100/")
_H200_DS = ("NVIDIA H200 Tensor Core GPU datasheet", "https://www.nvidia.com/en-us/data-center/h200/")
_GA102_WP = ("NVIDIA Ampere GA102 GPU Architecture whitepaper v2, Appendix A (GeForce RTX 3090)",
             "https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf")
_ADA_WP = ("NVIDIA Ada GPU Architecture whitepaper, appendix (GeForce RTX 4090)",
           "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf")
_HALF_RULE = ("Dense = sparse / 2, the datasheet's own rule ('* Shown with sparsity. "
              "Specifications 1/2 lower without sparsity').")

GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(
        key="V100 SXM2", architecture="Volta", capability=(7, 0), tensor_cores=True,
        memory_gb=(16.0, 32.0), bandwidth_gbs=900.0,
        dense_tflops={"fp32": 15.7, "fp16": 125.0}, sparse_tflops={},
        unsupported=("tf32", "bf16", "fp8"),
        source="NVIDIA Tesla V100 GPU accelerator datasheet (V100 SXM2 column)",
        url="https://www.nvidia.com/en-us/data-center/v100/",
        verified_via=("https://grokipedia.opelly.me/articles/nvidia-tesla-v100",
                      "https://gist.github.com/syhw/b8067966a498b604b4750e9458f36804"),
        notes=("fp16 is the 'Tensor Performance' (FP16 multiply, FP32 accumulate). The Volta "
               "whitepaper's 15 / 120 TFLOPS are for a pre-production 1455 MHz clock. The V100 PCIe "
               "(lower clock) is not in this table: its datasheet figures were not verified."),
        patterns=(r"\bv100\b.*\bsxm2\b",),
    ),
    GpuSpec(
        key="T4", architecture="Turing", capability=(7, 5), tensor_cores=True,
        memory_gb=(16.0,), bandwidth_gbs=320.0,
        dense_tflops={"fp32": 8.1, "fp16": 65.0}, sparse_tflops={},
        unsupported=("tf32", "bf16", "fp8"),
        source="NVIDIA T4 Tensor Core GPU datasheet",
        url="https://www.nvidia.com/en-us/data-center/tesla-t4/",
        verified_via=("https://geektopia.es/es/technology/2018/09/13/noticias/"
                      "nvidia-presenta-la-nueva-tesla-t4-basada-en-turing-orientada-a-inteligencia-artificial.html",
                      "https://networkoutlet.com/blogs/articles/nvidia-tesla-t4-16gb-gpu-specs-performance-use-cases",
                      "https://sysrqmts.com/en/gpus/nvidia/tesla/t4"),
        notes=("fp16 is the datasheet's 'Mixed Precision (FP16/FP32)' 65 TFLOPS. The datasheet "
               "says '320+ GB/s'. No BF16: some MFU tables (e.g. oumi's) wrongly give the T4 a "
               "65 TFLOPS bf16 peak."),
        patterns=(r"\bt4\b",),
    ),
    GpuSpec(
        key="A100 SXM4 40GB", architecture="Ampere", capability=(8, 0), tensor_cores=True,
        memory_gb=(40.0,), bandwidth_gbs=1555.0,
        dense_tflops={"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
        sparse_tflops={"tf32": 312.0, "fp16": 624.0, "bf16": 624.0},
        unsupported=("fp8",),
        source=_A100_DS[0], url=_A100_DS[1],
        verified_via=("https://glennklockwood.com/garden/processors/A100",
                      "https://unanswered.io/guide/nvidia-a100-gpu-performance",
                      "https://www.thundercompute.com/blog/nvidia-a100-specs-full-guide"),
        notes="The datasheet prints dense and sparse ('*') side by side.",
        patterns=(r"\ba100\b.*\bsxm4?\b.*\b40 ?gb\b",),
    ),
    GpuSpec(
        key="A100 SXM4 80GB", architecture="Ampere", capability=(8, 0), tensor_cores=True,
        memory_gb=(80.0,), bandwidth_gbs=2039.0,
        dense_tflops={"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
        sparse_tflops={"tf32": 312.0, "fp16": 624.0, "bf16": 624.0},
        unsupported=("fp8",),
        source=_A100_DS[0], url=_A100_DS[1],
        verified_via=("https://glennklockwood.com/garden/processors/A100",
                      "https://www.thundercompute.com/blog/nvidia-a100-specs-full-guide"),
        notes="Same compute as the 40GB part; HBM2e at 2039 GB/s.",
        patterns=(r"\ba100\b.*\bsxm4?\b.*\b80 ?gb\b",),
    ),
    GpuSpec(
        key="A10", architecture="Ampere", capability=(8, 6), tensor_cores=True,
        memory_gb=(24.0,), bandwidth_gbs=600.0,
        dense_tflops={"fp32": 31.2, "fp16": 125.0}, sparse_tflops={},
        unsupported=("fp8",),
        source="NVIDIA A10 Tensor Core GPU datasheet",
        url="https://www.nvidia.com/en-us/data-center/products/a10-gpu/",
        verified_via=("https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/",
                      "https://gist.github.com/kimbochen",
                      "https://sysrqmts.com/ru/gpus/compare/nvidia-a10-pcie-vs-nvidia-quadro-rtx-4000"),
        notes=("UNVERIFIED: the TF32 and BF16 tensor figures (and the sparse column) were not "
               "found in the stored sources and are left None. FP32 31.2 agrees with 9216 cores x "
               "2 x 1695 MHz = 31.24. The AWS A10G is a different part (not in this table)."),
        patterns=(r"\ba10\b",),
    ),
    GpuSpec(
        key="L4", architecture="Ada Lovelace", capability=(8, 9), tensor_cores=True,
        memory_gb=(24.0,), bandwidth_gbs=300.0,
        dense_tflops={"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0, "fp8": 242.5},
        sparse_tflops={"tf32": 120.0, "fp16": 242.0, "bf16": 242.0, "fp8": 485.0},
        unsupported=(),
        source="NVIDIA L4 Tensor Core GPU datasheet",
        url="https://resources.nvidia.com/en-us-gpu-resources/l4-tensor-datasheet",
        verified_via=("https://grokipedia.com/page/NVIDIA_L4_vs_L40S",
                      "https://store.sourcecode.com/en-us/bg-bucket-compare/125/9820",
                      "torch 2.13 torch/_inductor/analysis/device_info.py (sparse figures)"),
        notes="The datasheet prints only sparse tensor figures. " + _HALF_RULE,
        patterns=(r"\bl4\b",),
    ),
    GpuSpec(
        key="L40S", architecture="Ada Lovelace", capability=(8, 9), tensor_cores=True,
        memory_gb=(48.0,), bandwidth_gbs=864.0,
        dense_tflops={"fp32": 91.6, "tf32": 183.0, "fp16": 366.5, "bf16": 366.5, "fp8": 733.0},
        sparse_tflops={"tf32": 366.0, "fp16": 733.0, "bf16": 733.0, "fp8": 1466.0},
        unsupported=(),
        source="NVIDIA L40S GPU datasheet",
        url="https://www.nvidia.com/en-us/data-center/l40s/",
        verified_via=("https://www.mullet.se/product.html?product_id=355414",
                      "https://omegaco.ae/shop/gpu-cards-edge-ai/nvidia-l40s",
                      "https://hmc-tech.com/gpu/nvidia-l40s-vs-nvidia-t40"),
        notes=("The datasheet prints dense | sparse ('*') side by side, but its BF16/FP16 pair "
               "'362.05 | 733*' is inconsistent (2 x 362.05 = 724.1; 362.05 is the L40's sparse "
               "figure); we store 733 / 2 = 366.5, which agrees with the clock-derived 366.43 "
               "(2520 MHz boost)."),
        patterns=(r"\bl40s\b",),
    ),
    GpuSpec(
        key="H100 SXM", architecture="Hopper", capability=(9, 0), tensor_cores=True,
        memory_gb=(80.0,), bandwidth_gbs=3350.0,
        dense_tflops={"fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5, "fp8": 1979.0},
        sparse_tflops={"tf32": 989.0, "fp16": 1979.0, "bf16": 1979.0, "fp8": 3958.0},
        unsupported=(),
        source=_H100_DS[0], url=_H100_DS[1],
        verified_via=("https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html",
                      "https://glennklockwood.com/garden/processors/h100"),
        notes=(_HALF_RULE + " The H100 whitepaper gives 494.7 / 989.4 / 1978.9 (the unrounded "
               "values). torch.cuda.get_device_name() says 'NVIDIA H100 80GB HBM3'."),
        patterns=(r"\bh100\b.*\b(sxm5?|hbm3)\b",),
    ),
    GpuSpec(
        key="H100 PCIe", architecture="Hopper", capability=(9, 0), tensor_cores=True,
        memory_gb=(80.0,), bandwidth_gbs=2000.0,
        dense_tflops={"fp32": 51.0, "tf32": 378.0, "fp16": 756.5, "bf16": 756.5, "fp8": 1513.0},
        sparse_tflops={"tf32": 756.0, "fp16": 1513.0, "bf16": 1513.0, "fp8": 3026.0},
        unsupported=(),
        source=_H100_DS[0], url=_H100_DS[1],
        verified_via=("https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html",),
        notes=_HALF_RULE + " HBM2e. The later 94 GB 'H100 NVL' is a different part (not in this table).",
        patterns=(r"\bh100\b.*\bpcie\b",),
    ),
    GpuSpec(
        key="H200 SXM", architecture="Hopper", capability=(9, 0), tensor_cores=True,
        memory_gb=(141.0,), bandwidth_gbs=4800.0,
        dense_tflops={"fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5, "fp8": 1979.0},
        sparse_tflops={"tf32": 989.0, "fp16": 1979.0, "bf16": 1979.0, "fp8": 3958.0},
        unsupported=(),
        source=_H200_DS[0], url=_H200_DS[1],
        verified_via=("https://lzwjava.github.io/nvidia-h200-gpu-specs-en",
                      "https://itkb.uw.cz/2026/06/nvidia-h200-vs-b300-precisions-cores.html",
                      "https://hmc-tech.com/gpu/nvidia-h100-vs-nvidia-h200-sxm-vs-nvidia-gb200"),
        notes=(_HALF_RULE + " Same GH100 compute as the H100 SXM; 141 GB HBM3e at 4.8 TB/s. "
               "Some pages label the sparse 3958 FP8 figure 'dense': it is not. The H200 NVL "
               "(PCIe card) is a different part (not in this table)."),
        patterns=(r"\bh200\b(?!.*\bnvl\b)",),
    ),
    GpuSpec(
        key="RTX 3090", architecture="Ampere", capability=(8, 6), tensor_cores=True,
        memory_gb=(24.0,), bandwidth_gbs=936.0,
        dense_tflops={"fp32": 35.6, "tf32": 35.6, "fp16": 71.0, "bf16": 71.0},
        sparse_tflops={"tf32": 71.0, "fp16": 142.0, "bf16": 142.0},
        unsupported=("fp8",), fp16_acc16_dense=142.0,
        source=_GA102_WP[0], url=_GA102_WP[1],
        verified_via=("https://holynerdvana.blogspot.com/2022/10/nvidia-geforce-rtx-3090-specifications.html",
                      "https://ctc.archdevil.net/blog/23/674d47808ec559d480fae6d8",
                      "oumi src/oumi/performance/mfu.py (RTX 3090: fp16 71, bf16 71)",
                      "https://github.com/NVIDIA/cutlass/discussions/390 (GeForce TF32 = FP32 rate)"),
        notes=("fp16/bf16 are the FP32-accumulate rates (what PyTorch uses); FP16 accumulate runs "
               "at 142 dense / 284 sparse on this GeForce card."),
        patterns=(r"\brtx 3090\b(?!\s*ti\b)",),
    ),
    GpuSpec(
        key="RTX 4090", architecture="Ada Lovelace", capability=(8, 9), tensor_cores=True,
        memory_gb=(24.0,), bandwidth_gbs=1008.0,
        dense_tflops={"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2, "fp8": 330.3},
        sparse_tflops={"tf32": 165.2, "fp16": 330.4, "bf16": 330.4, "fp8": 660.6},
        unsupported=(), fp16_acc16_dense=330.3,
        source=_ADA_WP[0], url=_ADA_WP[1],
        verified_via=("https://waredb.com/processor/nvidia-geforce-rtx-4090",
                      "https://ctc.archdevil.net/blog/23/674d47808ec559d480fae6d8",
                      "https://gist.github.com/mikasenghaas/d63ded03f1f0417b1677627119bacc0d"),
        notes=("fp16/bf16/fp8 are the FP32-accumulate rates; with FP16 accumulation FP16 runs at "
               "330.3 and FP8 at 660.6 dense on this GeForce card."),
        patterns=(r"\brtx 4090\b(?!\s*(d|laptop)\b)",),
    ),
    GpuSpec(
        key="GTX 1660", architecture="Turing (TU116)", capability=(7, 5), tensor_cores=False,
        memory_gb=(6.0,), bandwidth_gbs=192.0,
        dense_tflops={"fp32": 5.03}, sparse_tflops={},
        unsupported=("tf32", "fp16", "bf16", "fp8"),
        source=("NVIDIA GeForce GTX 1660 Ti / 1660 product page (GTX 1660: 1408 CUDA cores, 1785 MHz "
                "boost, 6 GB GDDR5)"),
        url="https://www.nvidia.com/en-us/geforce/graphics-cards/gtx-1660-ti/",
        verified_via=("https://techpowerup.com/review/evga-gtx-1660-xc-ultra/2.html",
                      "https://www.tomshardware.com/reviews/nvidia-geforce-gtx-1660-turing-tu116,6027.html"),
        notes=("cc 7.5 WITHOUT tensor cores (TU116 was built without them; it has FP16 units at 2x "
               "the FP32 rate instead, ~10 TFLOPS, not tensor cores). fp32 is derived: "
               "1408 cores x 2 FLOP x 1.785 GHz = 5.03 TFLOPS."),
        patterns=(r"\bgtx 1660\b(?!\s*(ti|super)\b)",),
    ),
)


def _normalise(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[-_/]", " ", name.lower())).strip()


def lookup_gpu(name: str) -> GpuSpec | None:
    """The :class:`GpuSpec` whose model matches ``name``, or ``None``.

    ``name`` is what ``torch.cuda.get_device_name()`` returns. Matching is
    case-insensitive on the model and variant ("NVIDIA H100 80GB HBM3" is the
    SXM part, "NVIDIA H100 PCIe" the PCIe one); variants whose peaks differ
    and are not in the table (H100 NVL, H200 NVL, A10G, V100 PCIe, RTX 3090 Ti,
    GTX 1660 Ti/SUPER, ...) give ``None`` rather than a neighbour's numbers.

    >>> lookup_gpu("NVIDIA A100-SXM4-80GB").key, lookup_gpu("Tesla T4").key
    ('A100 SXM4 80GB', 'T4')
    >>> lookup_gpu("NVIDIA GeForce GTX 1660 Ti") is None
    True
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as torch.cuda.get_device_name(), got {type(name).__name__}")
    norm = _normalise(name)
    for spec in GPUS:
        if any(re.search(p, norm) for p in spec.patterns):
            return spec
    return None


def _dtype_key(dtype_key) -> str:
    if isinstance(dtype_key, torch.dtype):
        if dtype_key not in _DTYPE_ALIASES:
            raise ValueError(f"no peak for dtype {dtype_key}; allowed dtypes: "
                             f"{', '.join(map(str, _DTYPE_ALIASES))}")
        return _DTYPE_ALIASES[dtype_key]
    return validate.one_of("dtype_key", dtype_key, DTYPE_KEYS)


def peak_tflops(spec: GpuSpec, dtype_key, *, sparse: bool = False) -> float:
    """The dense peak of ``spec`` for ``dtype_key``, in TFLOPS (sparse with ``sparse=True``).

    ``dtype_key`` is one of :data:`DTYPE_KEYS` or a torch dtype (``float32``
    means the non-tensor FP32 rate: pass ``"tf32"`` when TF32 matmuls are on).
    Raises ``LookupError`` saying whether the hardware lacks the precision or
    the figure is unverified.

    >>> h100 = lookup_gpu("NVIDIA H100 80GB HBM3")
    >>> peak_tflops(h100, torch.bfloat16), peak_tflops(h100, "bf16", sparse=True)
    (989.5, 1979.0)
    """
    validate.instance_of("spec", spec, GpuSpec)
    key = _dtype_key(dtype_key)
    if key in spec.unsupported:
        raise LookupError(f"{spec.key} ({spec.architecture}, cc {spec.capability[0]}.{spec.capability[1]}) "
                          f"has no {key} tensor-core path")
    table = spec.sparse_tflops if sparse else spec.dense_tflops
    value = table.get(key)
    if value is None:
        kind = "sparse" if sparse else "dense"
        raise LookupError(f"the {kind} {key} peak of {spec.key} is not in the table "
                          f"(not printed or not verified): {spec.notes}")
    return value


def gpu_features(capability: tuple[int, int], name: str | None = None) -> dict:
    """What a CUDA compute capability (and the GPU's name) implies for 16/8-bit math.

    Rules (sources in ``reasons``):

    * tensor cores from cc 7.0 (Volta), *except* the GeForce GTX 16 series
      (Turing, cc 7.5, built without them); with cc 7.5 and no ``name`` the
      answer is ``None`` (RTX 20 / T4 have them, GTX 16 does not);
    * native BF16 and TF32 tensor math from cc 8.0 (Ampere);
    * FP8 tensor cores from cc 8.9 (Ada, Hopper and later).

    Returns ``{"capability": "8.9", "tensor_cores", "bf16", "tf32", "fp8",
    "reasons": {...}}``. A name found by :func:`lookup_gpu` overrides the rule
    with the table's ``tensor_cores``.

    >>> gpu_features((7, 5), "NVIDIA GeForce GTX 1660")["tensor_cores"]
    False
    >>> f = gpu_features((8, 9)); f["tensor_cores"], f["bf16"], f["fp8"]
    (True, True, True)
    """
    if (not isinstance(capability, tuple) or len(capability) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in capability)):
        raise TypeError(f"capability must be a (major, minor) tuple of ints such as (8, 9), got {capability!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    cc = capability
    reasons = {}
    spec = lookup_gpu(name) if name else None
    if spec is not None:
        tensor_cores = spec.tensor_cores
        reasons["tensor_cores"] = f"from the table row {spec.key!r} ({spec.source})"
    elif cc < (7, 0):
        tensor_cores = False
        reasons["tensor_cores"] = "tensor cores arrived with Volta (cc 7.0)"
    elif name and re.search(r"\bgtx\s*16\d\d\b", name.lower()):
        tensor_cores = False
        reasons["tensor_cores"] = ("GeForce GTX 16 series: Turing (cc 7.5) built without tensor cores "
                                   "(verified for TU116, GTX 1660 / 1660 Ti)")
    elif cc == (7, 5) and not name:
        tensor_cores = None
        reasons["tensor_cores"] = ("cc 7.5 covers RTX 20 / T4 (tensor cores) and GTX 16 (none): "
                                   "pass the GPU name to decide")
    else:
        tensor_cores = True
        reasons["tensor_cores"] = "cc >= 7.0 and not a GTX 16 part"
    te = "Transformer Engine support matrix (nvidia.github.io/TransformerEngine/support_matrix.html)"
    reasons["bf16"] = f"BF16 tensor math needs cc >= 8.0 ({te}); below that torch may emulate it"
    reasons["tf32"] = "TF32 tensor math arrived with Ampere (cc 8.0)"
    reasons["fp8"] = f"FP8 tensor cores need cc >= 8.9 ({te})"
    return {"capability": f"{cc[0]}.{cc[1]}", "tensor_cores": tensor_cores,
            "bf16": cc >= (8, 0), "tf32": cc >= (8, 0), "fp8": cc >= (8, 9), "reasons": reasons}


# ----------------------------------------------------------------------------- CPU


@dataclass(frozen=True)
class CpuFamily:
    """One CPU family's native 16-bit arithmetic, with the Linux flags that reveal it."""

    family: str
    bf16: str
    fp16: str
    flags: tuple[str, ...]
    source: str


CPU_16BIT: tuple[CpuFamily, ...] = (
    CpuFamily("Intel Xeon Scalable Cooper Lake (2020)",
              "native: AVX512_BF16 (VCVTNE2PS2BF16, VCVTNEPS2BF16, VDPBF16PS dot products)",
              "conversion only (F16C)", ("avx512_bf16", "f16c"),
              "Intel Architecture Instruction Set Extensions and Future Features Programming Reference, "
              "via AnandTech 'Intel Architecture Manual Updates: bfloat16 for Cooper Lake Xeon Scalable Only?' "
              "and https://en.wikichip.org/wiki/x86/avx512_bf16"),
    CpuFamily("Intel Xeon Scalable Ice Lake-SP (2021)",
              "emulated: no AVX512_BF16", "conversion only (F16C)", ("f16c",),
              "same Intel reference via AnandTech (its table: Ice Lake '(not BF16)')"),
    CpuFamily("Intel Xeon Sapphire Rapids (2023)",
              "native: AVX512_BF16 and AMX-BF16 (tile matrix multiply)",
              "native: AVX512_FP16", ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"),
              "https://en.wikichip.org/wiki/x86/avx512_bf16 ; Wikipedia 'Advanced Matrix Extensions' "
              "(AMX first in Sapphire Rapids; TMUL takes BF16 and INT8)"),
    CpuFamily("Intel Xeon Granite Rapids",
              "native: AVX512_BF16, AMX-BF16", "native: AVX512_FP16 and AMX-FP16",
              ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"),
              "Wikipedia 'Advanced Matrix Extensions': AMX-FP16 documented in ISA extensions rev. 46 "
              "(2022), available in Granite Rapids"),
    CpuFamily("AMD Zen 4 (e.g. EPYC Genoa / Bergamo)",
              "native: AVX512_BF16", "conversion only (F16C): no AVX512_FP16", ("avx512_bf16", "f16c"),
              "https://en.wikichip.org/wiki/x86/avx512_bf16 (support table lists Zen 4); "
              "diit.cz: AVX512_FP16 arrives with Zen 6"),
    CpuFamily("AMD Zen 5 (e.g. Ryzen 9000)",
              "native: AVX512_BF16 (Zen 4's AVX-512 set plus VP2INTERSECT, AVX-VNNI)",
              "conversion only (F16C): no AVX512_FP16", ("avx512_bf16", "f16c"),
              "TechPowerUp 'AMD Zen 5 Details Emerge with GCC znver5 Patch' (2024); diit.cz (AVX512_FP16 "
              "in Zen 6); confirmed live on this course's build machine (AMD EPYC family 26: "
              "avx512_bf16 present, avx512_fp16 absent)"),
    CpuFamily("Arm FP16 extension (FEAT_FP16, Armv8.2-A), e.g. AWS Graviton2",
              "emulated (no FEAT_BF16)", "native: FEAT_FP16 scalar + Advanced SIMD half precision",
              ("fphp", "asimdhp"),
              "Linux Documentation/arch/arm64/elf_hwcaps.rst (HWCAP_FPHP, HWCAP_ASIMDHP); "
              "aws/aws-graviton-getting-started#369 (Graviton2 fphp; BF16 fpmath has no effect there)"),
    CpuFamily("Arm BF16 extension (FEAT_BF16, Armv8.6-A), e.g. AWS Graviton3",
              "native: BFDOT, BFMMLA, BFCVT", "native (FEAT_FP16)", ("bf16", "fphp", "asimdhp"),
              "Arm community blog 'BFloat16 processing for Neural Networks on Armv8-A' (2019); "
              "aws/aws-graviton-getting-started#369 (Graviton3 BFloat16); elf_hwcaps.rst (HWCAP2_BF16). "
              "Neoverse V1/N2 and Apple M2+ are often listed too: not verified here; read the flag"),
)


def _flag_list(flags: dict, names) -> list[str]:
    return [n for n in names if flags.get(n)]


def cpu_16bit_support(flags: dict[str, bool]) -> dict:
    """Native or emulated BF16 and FP16 arithmetic, from :func:`course_lib.env.cpu_flags` output.

    ``flags`` maps flag names to presence (x86 names from
    ``course_lib.env.X86_FLAGS``, Arm names from ``ARM_FLAGS``). Rules:

    * x86 BF16 native with ``avx512_bf16`` or ``amx_bf16``; FP16 native
      with ``avx512_fp16`` or ``amx_fp16``; ``f16c`` alone converts FP16 to
      and from FP32 in hardware but does no FP16 arithmetic.
    * Arm FP16 native with ``asimdhp`` (vector) / ``fphp`` (scalar);
      BF16 native with ``bf16``.
    * Emulated means PyTorch stores 16 bits but computes in FP32
      (convert, compute, round back): correct, not faster.

    Returns ``{"arch": "x86" | "arm" | "unknown", "bf16": {...}, "fp16": {...}}``
    where each entry has ``native`` (bool, ``None`` when unknown), ``flags``
    (those present that provide it) and ``why``.

    >>> cpu_16bit_support({"avx2": True, "f16c": True, "avx512_bf16": True})["bf16"]["native"]
    True
    >>> cpu_16bit_support({"avx2": True, "f16c": True})["fp16"]["why"][:15]
    'conversion only'
    """
    if not isinstance(flags, dict) or not all(isinstance(k, str) for k in flags):
        raise TypeError("flags must be a dict of flag name -> bool, as course_lib.env.cpu_flags() "
                        f"returns; got {type(flags).__name__}")
    from .env import ARM_FLAGS, X86_FLAGS

    if not flags:
        unknown = {"native": None, "flags": [],
                   "why": "the OS exposed no CPU flags (not Linux?): cannot tell"}
        return {"arch": "unknown", "bf16": dict(unknown), "fp16": dict(unknown)}
    arm = set(flags) & set(ARM_FLAGS) and not set(flags) & set(X86_FLAGS)
    if arm:
        bf = _flag_list(flags, ("bf16",))
        fp = _flag_list(flags, ("asimdhp", "fphp"))
        return {"arch": "arm",
                "bf16": {"native": bool(bf), "flags": bf,
                         "why": ("FEAT_BF16: BFDOT/BFMMLA dot products and BFCVT" if bf else
                                 "emulated: no 'bf16' flag (FEAT_BF16, Armv8.6-A), FP32 compute")},
                "fp16": {"native": "asimdhp" in fp, "flags": fp,
                         "why": ("FEAT_FP16 half-precision arithmetic (asimdhp: vector, fphp: scalar)"
                                 if "asimdhp" in fp else
                                 "emulated: no 'asimdhp' flag (FEAT_FP16, Armv8.2-A), FP32 compute")}}
    bf = _flag_list(flags, ("amx_bf16", "avx512_bf16"))
    fp = _flag_list(flags, ("amx_fp16", "avx512_fp16"))
    if fp:
        fp_why = "native FP16 arithmetic: " + ", ".join(fp)
    elif flags.get("f16c"):
        fp_why = ("conversion only: F16C converts FP16 <-> FP32 in hardware; arithmetic runs in FP32 "
                  "(no avx512_fp16 / amx_fp16)")
    else:
        fp_why = "emulated: no F16C, AVX512_FP16 or AMX-FP16; conversion and arithmetic in software"
    return {"arch": "x86",
            "bf16": {"native": bool(bf), "flags": bf,
                     "why": ("native BF16 instructions: " + ", ".join(bf)) if bf else
                            ("emulated: no avx512_bf16 / amx_bf16; BF16 -> FP32 is a 16-bit shift, "
                             "compute in FP32, round back")},
            "fp16": {"native": bool(fp), "flags": fp + (["f16c"] if flags.get("f16c") and not fp else []),
                     "why": fp_why}}


# ----------------------------------------------------------------------------- rendering


class SpecTable(list):
    """Rows (lists of cell strings) with headers, footnotes and text / HTML / Markdown renderings.

    ``str(t)`` is an aligned plain-text table; Jupyter shows ``_repr_html_``.
    """

    def __init__(self, headers, rows, notes=()):
        super().__init__(rows)
        self.headers = list(headers)
        self.notes = list(notes)

    def __str__(self) -> str:
        widths = [max([len(h)] + [len(r[i]) for r in self]) for i, h in enumerate(self.headers)]

        def line(items):
            return "  ".join(s.ljust(w) for s, w in zip(items, widths)).rstrip()

        out = [line(self.headers), "  ".join("-" * w for w in widths)] + [line(r) for r in self]
        return "\n".join(out + [""] + self.notes)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r)
                       + "</tr>" for r in self)
        notes = "".join(f"<li><small>{html.escape(n)}</small></li>" for n in self.notes)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><ul>{notes}</ul>"

    def _repr_markdown_(self) -> str:
        out = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---" for _ in self.headers) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self]
        return "\n".join(out + [""] + [f"- {n}" for n in self.notes])

    def to(self, fmt: str) -> str:
        """Render as ``"text"``, ``"html"`` or ``"markdown"``."""
        validate.one_of("fmt", fmt, ("text", "html", "markdown"))
        return {"text": self.__str__, "html": self._repr_html_, "markdown": self._repr_markdown_}[fmt]()


def _tflops_cell(spec: GpuSpec, key: str) -> str:
    if key in spec.unsupported:
        return "-"
    dense, sparse = spec.dense_tflops[key], spec.sparse_tflops.get(key)
    if dense is None:
        return "?"
    return f"{dense:g}" + (f" ({sparse:g}*)" if sparse is not None else "")


def gpu_table(specs=GPUS) -> SpecTable:
    """The GPU peak table with its sources (dense TFLOPS; sparse in brackets with ``*``).

    ``-`` means the GPU has no tensor-core path for that precision, ``?`` that
    the figure could not be verified. Source numbers in the last column refer
    to the footnotes.

    >>> t = gpu_table(); "989.5 (1979*)" in str(t) and "GTX 1660" in str(t)
    True
    """
    docs: list[str] = []
    rows = []
    for s in specs:
        validate.instance_of("spec", s, GpuSpec)
        doc = f"{s.source} <{s.url}>"
        if doc not in docs:
            docs.append(doc)
        mem = "/".join(f"{m:g}" for m in s.memory_gb)
        rows.append([s.key, f"{s.capability[0]}.{s.capability[1]}", "yes" if s.tensor_cores else "NO",
                     mem, f"{s.bandwidth_gbs:g}"] + [_tflops_cell(s, k) for k in DTYPE_KEYS]
                    + [f"[{docs.index(doc) + 1}]"])
    notes = ["Dense TFLOPS; (x*) = the datasheet's 'with sparsity' figure, which dense training never "
             "reaches. '-' = no tensor-core path, '?' = not verified. fp32 = CUDA cores (non-tensor).",
             "GeForce (RTX 3090/4090): FP16/BF16/FP8 at FP32 accumulation (PyTorch's); FP16 accumulation "
             "is 2x faster there."]
    notes += [f"[{i + 1}] {d}" for i, d in enumerate(docs)]
    headers = ["GPU", "cc", "tensor cores", "memory GB", "GB/s"] + [f"{k} TFLOPS" for k in DTYPE_KEYS] + ["src"]
    return SpecTable(headers, rows, notes)


def cpu_table(families=CPU_16BIT) -> SpecTable:
    """The CPU 16-bit support table with its sources.

    >>> "AVX512_FP16" in str(cpu_table())
    True
    """
    rows = [[f.family, f.bf16, f.fp16, " ".join(f.flags), f"[{i + 1}]"] for i, f in enumerate(families)]
    notes = ["Flags as Linux /proc/cpuinfo spells them (course_lib.env.cpu_flags()). 'Native' = the "
             "instructions exist; whether PyTorch's kernels use them is a measurement (chapter 09)."]
    notes += [f"[{i + 1}] {f.source}" for i, f in enumerate(families)]
    return SpecTable(["CPU family", "BF16", "FP16", "flags", "src"], rows, notes)
