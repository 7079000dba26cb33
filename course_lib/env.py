"""What this machine can do with 16-bit floats: the environment report of chapter 00.

:func:`environment_report` collects, live:

* Python, torch and course_lib versions; the device the course will use
  (:func:`course_lib.device.default_device`);
* on CUDA: GPU name, compute capability, memory, and what the capability
  implies (tensor cores from 7.0, native BF16 from 8.0, FP8 tensor cores from 8.9);
* the CPU model and the instruction-set flags that matter for 16-bit math
  (x86: ``f16c``, ``avx512_bf16``, ``avx512_fp16``, ``amx_bf16``, ``amx_fp16``;
  ARM: ``fphp``/``asimdhp`` for FP16, ``bf16``);
* whether autocast to float16 and to bfloat16 works on this device, found by
  running a small matmul under ``torch.amp.autocast`` and reading the result's
  dtype (not by looking the answer up).

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
                     ("tensor cores (cc >= 7.0)", _yes(g["tensor_cores"])),
                     ("native bf16 (cc >= 8.0)", _yes(g["bf16"])),
                     ("fp8 tensor cores (cc >= 8.9)", _yes(g["fp8"]))]
        else:
            rows.append(("GPU", "none (CUDA not available to torch)"))
        for dtype, verdict in self.autocast.items():
            rows.append((f"autocast {dtype} on {self.device}", verdict))
        return rows

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                       for k, v in self.rows())
        return f"<table>{body}</table>"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


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
    """Name, compute capability and capability-derived features of GPU 0, or None."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    cc = (props.major, props.minor)
    return {"name": props.name, "capability": f"{cc[0]}.{cc[1]}",
            "memory_gib": props.total_memory / 2**30, "tensor_cores": cc >= (7, 0),
            "bf16": cc >= (8, 0), "fp8": cc >= (8, 9)}


def environment_report() -> EnvironmentReport:
    """Collect the report (see the module docstring). Prints nothing; display the result."""
    from . import __version__

    device = default_device()
    return EnvironmentReport(
        python=sys.version.split()[0], torch=torch.__version__, course_lib=__version__,
        device=device, cpu=cpu_model(), cpu_count=os.cpu_count() or 1, cpu_flags=cpu_flags(),
        gpu=gpu_info(),
        autocast={name: autocast_support(device, dt)
                  for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16))})
