"""The course's benchmark: ``python -m course_lib bench [--device cpu|cuda] [--json out.json]``.

What :func:`run_sweep` measures, in order (a progress bar counts the runs):

1. **matmul sweep** -- :func:`course_lib.bench.matmul.matmul_sweep` over
   precision settings (fp32, tf32 where the hardware has it, bf16, fp16) x
   layouts (``nn``, ``nt``) x sizes in pairs ``n - 1`` / ``n`` (odd and a
   multiple of 16);
2. **peaks** -- :func:`course_lib.bench.peak.peak_flops` for each precision:
   the GPU table's dense figure, or on a CPU the measured best layout;
3. **training-step sweep** -- :func:`course_lib.bench.step.benchmark_training_step`
   for each model of the configuration and each setting (fp32, tf32 where
   available, amp_fp16, amp_bf16): median step time, throughput, speed-up
   over fp32, memory predicted and measured, FLOPs and MFU;
4. **the thread question** -- :func:`course_lib.bench.thread_advice.best_threads`
   on the CPU: the course's small MLP training step and a 512 x 512 matmul
   at 1, 2, 4, ... threads up to the core count.

Sizes come from :func:`default_config`: small on a CPU (the whole command
stays under two minutes on a 2-core machine), large on a GPU. Timings use
the thread count torch has when the command starts (``OMP_NUM_THREADS`` or
torch's default), recorded in the report with the machine, torch version,
date and the load average before and after (a busy machine gives slower,
noisier numbers: compare runs made under similar load).

The report prints as tables, saves as JSON (:meth:`SweepReport.as_dict`) and
plots (:func:`course_lib.bench.plots.report_figure`).

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import __version__, validate
from .matmul import MatmulResult, matmul_sweep, matmul_table
from .peak import Peak, peak_flops
from .precision import Tf32Support, tf32_support
from .step import (StepResult, TrainingStep, benchmark_training_step, count_step_flops, get_step_setting,
                   step_table)
from .thread_advice import ThreadAnswer, best_threads, thread_counts, thread_table
from .timer import resolve_device

__all__ = ["StepModel", "SweepConfig", "default_config", "SweepReport", "run_sweep", "machine_info",
           "busy_warning", "cli"]


@dataclass(frozen=True)
class StepModel:
    """A model for the training-step sweep: a builder, its batch size and a batch maker.

    ``make_batch(batch, generator) -> (x, y)`` draws random inputs of the
    right shape (timing does not depend on the values).
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    batch: int
    make_batch: Callable[[int, torch.Generator], tuple]


def _mlp(in_features: int, hidden: tuple[int, ...], batch: int, name: str) -> StepModel:
    from ..models import MLP

    def make_batch(b, gen):
        return torch.randn(b, in_features, generator=gen), torch.randint(0, 10, (b,), generator=gen)

    widths = "-".join(map(str, (in_features, *hidden, 10)))
    return StepModel(name, f"MLP {widths}, batch {batch}",
                     lambda: MLP(in_features=in_features, hidden=hidden), batch, make_batch)


def _transformer(vocab: int, block: int, d_model: int, heads: int, layers: int, batch: int, name: str) -> StepModel:
    from ..models import TinyTransformer

    def make_batch(b, gen):
        return (torch.randint(0, vocab, (b, block), generator=gen),
                torch.randint(0, vocab, (b, block), generator=gen))

    return StepModel(name, f"TinyTransformer d={d_model} L={layers} T={block} vocab={vocab}, batch {batch}",
                     lambda: TinyTransformer(vocab, block_size=block, d_model=d_model, n_heads=heads,
                                             n_layers=layers), batch, make_batch)


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep runs (see :func:`default_config`)."""

    device: str
    matmul_sizes: tuple[int, ...]
    matmul_settings: tuple[str, ...]
    layouts: tuple[str, ...]
    matmul_repeats: int
    step_models: tuple[StepModel, ...]
    step_settings: tuple[str, ...]
    step_warmup: int
    step_repeats: int
    thread_counts: tuple[int, ...]

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "step_models"}
        return d | {"step_models": [{"name": m.name, "description": m.description} for m in self.step_models]}


def default_config(device=None) -> SweepConfig:
    """The sizes for ``device``: small on a CPU (< 2 min on 2 cores), large on a GPU.

    TF32 is included where :func:`course_lib.bench.precision.tf32_support`
    says the hardware has it.

    >>> c = default_config("cpu"); c.matmul_sizes, c.step_settings[:2]
    ((255, 256, 511, 512), ('fp32', 'amp_fp16'))
    """
    dev = resolve_device(device)
    tf32 = tf32_support(dev).available
    mm = ("fp32",) + (("tf32",) if tf32 else ()) + ("bf16", "fp16")
    steps = ("fp32",) + (("tf32",) if tf32 else ()) + ("amp_fp16", "amp_bf16")
    threads = tuple(thread_counts())
    if dev.type == "cuda":
        return SweepConfig(str(dev), (1023, 1024, 2047, 2048, 4095, 4096, 8191, 8192), mm, ("nn", "nt"), 20,
                           (_mlp(2048, (8192, 8192), 4096, "wide MLP"),
                            _transformer(256, 256, 512, 8, 4, 32, "transformer")),
                           steps, 5, 20, threads)
    return SweepConfig("cpu", (255, 256, 511, 512), mm, ("nn", "nt"), 3,
                       (_mlp(64, (128, 64), 64, "course MLP"), _mlp(256, (512, 512), 128, "wide MLP")),
                       steps, 3, 10, threads)


def machine_info(device=None) -> dict:
    """CPU model, cores, 16-bit flags, platform, Python; GPU name and capability on CUDA."""
    from ..env import cpu_flags, cpu_model, gpu_info

    dev = resolve_device(device)
    gpu = gpu_info() if dev.type == "cuda" else None
    return {"device": str(dev), "device_name": gpu["name"] if gpu else cpu_model(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "gpu": gpu,
            "platform": platform.platform(), "python": sys.version.split()[0]}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def busy_warning(load_before, load_after, cores) -> str | None:
    """A warning when the 1-minute load average exceeded the core count (other work competed).

    >>> busy_warning([3.0, 1, 1], [2.5, 1, 1], 2)[:8]
    'WARNING:'
    >>> busy_warning([0.5, 1, 1], [1.0, 1, 1], 2) is None
    True
    """
    loads = [x[0] for x in (load_before, load_after) if x]
    if not loads or not cores or max(loads) <= cores:
        return None
    return (f"WARNING: the machine was busy (1-minute load average up to {max(loads):.2f} on {cores} cores): "
            "other processes competed for the cores, so timings are slower and noisier than on an idle "
            "machine, and more threads than free cores can be far slower (threads wait for each other).")


@dataclass
class SweepReport:
    """Everything :func:`run_sweep` measured; ``str()`` is the printed report, ``as_dict()`` the JSON."""

    meta: dict
    config: SweepConfig
    tf32: Tf32Support
    matmul: list[MatmulResult] = field(default_factory=list)
    peaks: dict[str, Peak] = field(default_factory=dict)
    steps: dict[str, tuple[StepModel, int, list[StepResult]]] = field(default_factory=dict)
    threads: list[ThreadAnswer] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**self.meta, "config": self.config.as_dict(), "tf32": asdict(self.tf32),
                "matmul": [r.as_dict() for r in self.matmul],
                "peaks": {k: asdict(p) for k, p in self.peaks.items()},
                "training_steps": {name: {"description": m.description, "parameters": n,
                                          "rows": [r.as_dict() for r in rows]}
                                   for name, (m, n, rows) in self.steps.items()},
                "threads_question": [a.as_dict() for a in self.threads]}

    def __str__(self) -> str:
        m = self.meta
        out = [f"course_lib benchmark -- {m['date']}",
               f"device {m['machine']['device']} ({m['machine']['device_name']}), torch {m['torch']}, "
               f"{m['threads']} torch thread(s), {m['machine']['cpu_count']} CPU core(s)",
               f"load average (1, 5, 15 min) before {m['load_before']}, after {m['load_after']}; "
               f"total {m['seconds']:.1f} s"]
        busy = busy_warning(m["load_before"], m["load_after"], m["machine"]["cpu_count"])
        out += ([busy] if busy else []) + [str(self.tf32), "",
               "== Matmul throughput ==", str(matmul_table(self.matmul)), "== Peaks used for MFU =="]
        out += [str(p) for p in self.peaks.values()] + [""]
        for name, (model, n, rows) in self.steps.items():
            out += [f"== Training step: {name} ({model.description}, {n:,} parameters) ==", str(step_table(rows))]
        if self.threads:
            out += ["== How many CPU threads? ==", str(thread_table(self.threads))]
            out += [f"{a.workload}: fastest with {a.best_threads} thread(s)" for a in self.threads]
        return "\n".join(out)

    def figure(self):
        """The report's plots (:func:`course_lib.bench.plots.report_figure`)."""
        from .plots import report_figure

        return report_figure(self.as_dict())


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="benchmark", disable=not enabled, leave=False)


def run_sweep(device=None, *, config: SweepConfig | None = None, progress: bool = True,
              threads_question: bool = True, seed: int = 0) -> SweepReport:
    """Run the whole benchmark (see the module docstring) and return its report.

    >>> from course_lib.bench.sweep import SweepConfig, _mlp
    >>> tiny = SweepConfig("cpu", (8,), ("fp32", "bf16"), ("nn",), 1, (_mlp(8, (8,), 4, "tiny"),),
    ...                    ("fp32", "amp_bf16"), 1, 2, (1,))
    >>> r = run_sweep("cpu", config=tiny, progress=False)
    >>> [x.setting for x in r.matmul], [x.setting for x in r.steps["tiny"][2]], r.threads[0].best_threads
    (['fp32', 'bf16'], ['fp32', 'amp_bf16'], 1)
    """
    dev = resolve_device(device)
    config = default_config(dev) if config is None else validate.instance_of("config", config, SweepConfig)
    if torch.device(config.device).type != dev.type:
        raise ValueError(f"config is for {config.device!r} but device is {str(dev)!r}")
    start, load_before = time.perf_counter(), _load()
    meta = {"schema": "course_lib.bench.sweep/1",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "course_lib": __version__, "machine": machine_info(dev),
            "threads": torch.get_num_threads()}
    report = SweepReport(meta, config, tf32_support(dev))
    precisions = list(dict.fromkeys(get_step_setting(s).precision_key for s in config.step_settings))
    n_matmul = len(config.matmul_settings) * len(config.layouts) * len(config.matmul_sizes)
    total = (n_matmul + len(precisions) + len(config.step_models) * len(config.step_settings)
             + (2 * len(config.thread_counts) if threads_question else 0))
    gen = torch.Generator().manual_seed(seed)
    with _bar(total, progress) as bar:
        bar.set_description("matmul sweep")
        report.matmul = matmul_sweep(config.matmul_sizes, config.matmul_settings, config.layouts, device=dev,
                                     repeats=config.matmul_repeats, on_result=lambda r: bar.update(1))
        bar.set_description("peaks")
        for key in precisions:
            report.peaks[key] = peak_flops(key, dev)
            bar.update(1)
        for model_spec in config.step_models:
            torch.manual_seed(seed)
            model = model_spec.build()
            x, y = model_spec.make_batch(model_spec.batch, gen)
            n_params = sum(p.numel() for p in model.parameters())
            flops = count_step_flops(model, x, y)
            rows = []
            for setting in config.step_settings:
                bar.set_description(f"{model_spec.name}: {setting}")
                key = get_step_setting(setting).precision_key
                rows.append(benchmark_training_step(model, x, y, setting, device=dev, warmup=config.step_warmup,
                                                    repeats=config.step_repeats, flops_per_step=flops,
                                                    peak=report.peaks.get(key)))
                bar.update(1)
            report.steps[model_spec.name] = (model_spec, n_params, rows)
        if threads_question:
            bar.set_description("threads")
            report.threads = _thread_question(config.thread_counts, gen,
                                              lambda: bar.update(len(config.thread_counts)))
    meta.update(seconds=time.perf_counter() - start, load_before=load_before, load_after=_load())
    return report


def _thread_question(counts, gen, tick) -> list[ThreadAnswer]:
    """The course MLP's fp32 training step and a 512 x 512 fp32 matmul, on the CPU, at each count."""
    from ..models import MLP

    torch.manual_seed(0)
    x, y = torch.randn(64, 64, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    step = TrainingStep(MLP(), x, y, "fp32", device="cpu")
    answers = [best_threads(step, "course MLP training step (batch 64)", counts, warmup=3, repeats=20)]
    tick()
    a, b = torch.randn(512, 512, generator=gen), torch.randn(512, 512, generator=gen)
    answers.append(best_threads(lambda: a @ b, "fp32 matmul 512x512", counts, warmup=1, repeats=10))
    tick()
    return answers


def cli(device=None, json_path: str | None = "bench_report.json", plot_path: str | None = None,
        progress: bool = True) -> int:
    """Run the sweep, print the report, write the JSON and the plot; return an exit status.

    ``json_path=""`` (or None) writes no JSON; ``plot_path`` defaults to the
    JSON path with ``.png`` (``"bench_report.png"`` without JSON); ``""`` writes no plot.
    """
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    report = run_sweep(dev, progress=progress)
    print(report)
    if json_path:
        Path(json_path).write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nJSON report written to {json_path}")
    if plot_path is None:
        plot_path = str(Path(json_path).with_suffix(".png")) if json_path else "bench_report.png"
    if plot_path:
        report.figure().savefig(plot_path, dpi=110)
        print(f"plot written to {plot_path}")
    return 0
