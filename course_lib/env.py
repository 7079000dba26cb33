"""What this machine can do with 16-bit floats: the environment report of chapter 00.

:func:`environment_report` collects, live:

* Python, torch and course_lib versions; the device the course will use
  (:func:`course_lib.device.default_device`);
* on CUDA: GPU name, compute capability, memory, and what they imply
  (:func:`course_lib.hardware.gpu_features`: a sourced table and rules --
  compute capability 7.5 is *not* enough to tell tensor cores, the GTX 16
  series has none);
* the CPU model, the instruction-set flags that matter for 16-bit math
  (x86: ``f16c``, ``avx512_bf16``, ``avx512_fp16``, ``amx_bf16``, ``amx_fp16``;
  ARM: ``fphp``/``asimdhp`` for FP16, ``bf16``) and what they mean
  (:func:`course_lib.hardware.cpu_16bit_support`) -- about the CPU only, never
  folded into a verdict about a GPU;
* whether autocast to float16 and to bfloat16 works on this device, found by
  running a small matmul under ``torch.amp.autocast`` and reading the result's
  dtype (not by looking the answer up);
* how fast a matmul runs in each dtype on the course's device, *measured*
  (:func:`matmul_speed`): "autocast works" is not "fast".

Introduced in chapter 00 (notebooks/00_orientation.ipynb).
"""
from __future__ import annotations

import os
import platform
import sys
import warnings
from dataclasses import dataclass, field

import torch

from .device import default_device

X86_FLAGS = ("avx2", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
ARM_FLAGS = ("fphp", "asimdhp", "bf16", "i8mm", "sve")


@dataclass
class EnvironmentReport:
    python: str
    torch: str
    course_lib: str
    device: str
    cpu: str
    cpu_count: int
    cpu_flags: dict[str, bool]
    gpu: dict | None
    autocast: dict[str, str] = field(default_factory=dict)
    matmul_ms: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_16bit(self) -> dict:
        """:func:`course_lib.hardware.cpu_16bit_support` of this CPU's flags."""
        from .hardware import cpu_16bit_support

        return cpu_16bit_support(self.cpu_flags)

    def verdicts(self) -> dict[str, str]:
        """One sentence per 16-bit dtype about the course's device: hardware, autocast, speed."""
        out = {}
        for name in ("bfloat16", "float16"):
            key = "bf16" if name == "bfloat16" else "fp16"
            if self.device == "cuda" and self.gpu:
                native = self.gpu["tensor_cores"] if key == "fp16" else self.gpu["bf16"]
                hw = {True: "tensor-core math", False: "no tensor-core math",
                      None: "unknown (see the GPU's name)"}[native]
                hw = f"GPU {self.gpu['name']} (cc {self.gpu['capability']}): {hw}"
            else:
                info = self.cpu_16bit[key]
                hw = f"CPU: {info['why']}"
            speed = ""
            if name in self.matmul_ms and "float32" in self.matmul_ms:
                ratio = self.matmul_ms["float32"] / self.matmul_ms[name]
                speed = (f"; measured matmul {self.matmul_ms[name]:.3f} ms vs {self.matmul_ms['float32']:.3f} ms "
                         f"in float32 ({ratio:.2f}x float32's speed)")
            out[name] = f"{hw}; autocast {self.autocast.get(name, 'not tested')}{speed}"
        return out

    def rows(self) -> list[tuple[str, str]]:
        rows = [("Python", self.python), ("torch", self.torch), ("course_lib", self.course_lib),
                ("device used by the course", self.device), ("CPU", self.cpu),
                ("CPU cores", str(self.cpu_count))]
        if self.cpu_flags:
            have = [f for f, ok in self.cpu_flags.items() if ok]
            lack = [f for f, ok in self.cpu_flags.items() if not ok]
            rows.append(("CPU 16-bit flags present", ", ".join(have) or "none"))
            rows.append(("CPU 16-bit flags absent", ", ".join(lack) or "none"))
        if self.gpu:
            g = self.gpu
            rows += [("GPU", g["name"]), ("compute capability", g["capability"]),
                     ("GPU memory", f"{g['memory_gib']:.1f} GiB"),
                     ("tensor cores", _yes(g["tensor_cores"])),
                     ("native bf16 tensor math", _yes(g["bf16"])),
                     ("fp8 tensor cores", _yes(g["fp8"]))]
        else:
            rows.append(("GPU", "none (CUDA not available to torch)"))
        for dtype, verdict in self.autocast.items():
            rows.append((f"autocast {dtype} on {self.device}", verdict))
        for dtype, ms in self.matmul_ms.items():
            rows.append((f"matmul in {dtype} on {self.device}", f"{ms:.3f} ms (fastest of 7, measured)"))
        return rows

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                       for k, v in self.rows())
        return f"<table>{body}</table>"


def _yes(flag: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[flag]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool]:
    """The 16-bit-relevant CPU flags (empty when the OS does not expose them)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return {}
    present: set[str] = set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features") and ":" in line:
            present.update(line.split(":", 1)[1].split())
    if not present:
        return {}
    names = ARM_FLAGS if platform.machine().lower() in ("aarch64", "arm64") else X86_FLAGS
    return {name: name in present for name in names}


def autocast_support(device: str, dtype: torch.dtype) -> str:
    """Run a matmul under autocast(device, dtype); say which dtype came out, or why it failed."""
    try:
        a = torch.randn(8, 8, device=device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.amp.autocast(device_type=device, dtype=dtype):
                out = a @ a
        if out.dtype == dtype:
            return f"works (matmul ran in {str(dtype).replace('torch.', '')})"
        why = f": {str(caught[0].message).splitlines()[0]}" if caught else ""
        return f"no effect (matmul output stayed {str(out.dtype).replace('torch.', '')}){why}"
    except Exception as exc:  # report, do not crash the orientation chapter
        return f"not supported ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"


def gpu_info() -> dict | None:
    """Name, compute capability and the features they imply for GPU 0, or None.

    The features come from :func:`course_lib.hardware.gpu_features` (a sourced
    table and rules), not from "compute capability >= 7.0 means tensor cores".
    """
    if not torch.cuda.is_available():
        return None
    from .hardware import gpu_features

    props = torch.cuda.get_device_properties(0)
    features = gpu_features((props.major, props.minor), props.name)
    return {"name": props.name, "capability": features["capability"],
            "memory_gib": props.total_memory / 2**30, "tensor_cores": features["tensor_cores"],
            "bf16": features["bf16"], "fp8": features["fp8"]}


def matmul_speed(device: str, size: int = 256, repeats: int = 7) -> dict[str, float]:
    """Fastest milliseconds of a ``size x size`` matmul in float32, bfloat16 and float16 on ``device``.

    Measured with :func:`course_lib.bench.measure` (warm-up excluded, CUDA
    synchronised) with the thread count torch uses now. The *fastest* of the
    repeats is reported, not the median: it is what the hardware can do, and it
    is the figure least disturbed by other programs running at the same time
    (chapter 09 reports medians and spreads properly). A dtype that fails is left out.

    >>> sorted(matmul_speed("cpu", size=16, repeats=1))
    ['bfloat16', 'float16', 'float32']
    """
    from .bench import measure

    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        try:
            a = torch.randn(size, size, device=device).to(dtype)
            out[str(dtype).replace("torch.", "")] = measure(lambda: a @ a, warmup=2, repeats=repeats,
                                                            device=device).min_s * 1e3
        except RuntimeError:
            continue
    return out


def environment_report(measure_speed: bool = True) -> EnvironmentReport:
    """Collect the report (see the module docstring). Prints nothing; display the result.

    ``measure_speed=False`` skips the matmul timing (about a second on a CPU,
    mostly emulated float16).
    """
    from . import __version__

    device = default_device()
    return EnvironmentReport(
        python=sys.version.split()[0], torch=torch.__version__, course_lib=__version__,
        device=device, cpu=cpu_model(), cpu_count=os.cpu_count() or 1, cpu_flags=cpu_flags(),
        gpu=gpu_info(),
        autocast={name: autocast_support(device, dt)
                  for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16))},
        matmul_ms=matmul_speed(device) if measure_speed else {})
