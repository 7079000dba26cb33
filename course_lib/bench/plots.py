"""Plots of the benchmark results: matmul throughput, training-step speed-up, thread scaling.

Each function draws on a matplotlib ``Axes`` you pass (or a new figure's)
and returns the axes, so a chapter can ``plt.show()`` it and the command
line can save a figure without a display (:func:`report_figure` builds a
``matplotlib.figure.Figure`` directly: no pyplot, no GUI backend).

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

__all__ = ["plot_matmul", "plot_steps", "plot_threads", "report_figure"]

_COLORS = {"fp32": "tab:blue", "tf32": "tab:purple", "bf16": "tab:green", "fp16": "tab:red",
           "amp_bf16": "tab:green", "amp_fp16": "tab:red", "bf16_pure": "tab:olive",
           "mixed_manual": "tab:orange", "fp16_naive": "tab:pink"}
_LAYOUT_STYLE = {"nn": "-o", "nt": "--s", "tn": ":^"}


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3.5))
    return ax


def plot_matmul(results, ax=None, log=True):
    """Matmul TFLOP/s by size (one tick per size): one line per (setting, layout); odd sizes circled.

    ``results``: :class:`course_lib.bench.matmul.MatmulResult` objects or their ``as_dict()``.
    """
    ax = _axes(ax)
    rows = [r if isinstance(r, dict) else r.as_dict() for r in results]
    sizes = sorted({r["size"] for r in rows})
    pos = {s: i for i, s in enumerate(sizes)}
    for key in dict.fromkeys((r["setting"], r["layout"]) for r in rows):
        pts = sorted((r["size"], r["tflops"]) for r in rows if (r["setting"], r["layout"]) == key)
        ax.plot([pos[p[0]] for p in pts], [p[1] for p in pts], _LAYOUT_STYLE.get(key[1], "-o"),
                color=_COLORS.get(key[0]), label=f"{key[0]} ({key[1]})", markersize=5)
        odd = [p for p in pts if p[0] % 8]
        ax.plot([pos[p[0]] for p in odd], [p[1] for p in odd], "o", markersize=10, markerfacecolor="none",
                markeredgecolor="black", linestyle="none")
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels([str(s) for s in sizes])
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("n (n x n by n x n); circled: n not a multiple of 8")
    ax.set_ylabel("TFLOP/s (median)")
    ax.set_title("Matmul throughput by precision and layout")
    ax.legend(fontsize=7)
    return ax


def plot_steps(results_by_model: dict, ax=None):
    """Training-step speed-up over fp32, grouped by model (``{model name: [StepResult or dict]}``)."""
    ax = _axes(ax)
    models = list(results_by_model)
    settings = list(dict.fromkeys(
        (r if isinstance(r, dict) else r.as_dict())["setting"] for rows in results_by_model.values() for r in rows))
    width = 0.8 / max(1, len(settings))
    for j, setting in enumerate(settings):
        xs, ys = [], []
        for i, model in enumerate(models):
            rows = [r if isinstance(r, dict) else r.as_dict() for r in results_by_model[model]]
            base = next((r["median_s"] for r in rows if r["setting"] == "fp32"), None)
            row = next((r for r in rows if r["setting"] == setting), None)
            if base is not None and row is not None:
                xs.append(i + (j - (len(settings) - 1) / 2) * width)
                ys.append(base / row["median_s"])
        ax.bar(xs, ys, width=width, label=setting, color=_COLORS.get(setting))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, fontsize=8)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("speed-up over fp32 (median step)")
    ax.set_title("Training step by precision recipe")
    ax.legend(fontsize=7)
    return ax


def plot_threads(answers, ax=None):
    """Speed-up over one thread against the thread count, one line per workload."""
    ax = _axes(ax)
    for a in answers:
        d = a if isinstance(a, dict) else a.as_dict()
        one = next((t["median_s"] for t in d["timings"] if t["threads"] == 1), None)
        if one is None:
            continue
        pts = [(t["threads"], one / t["median_s"]) for t in d["timings"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=d["workload"])
        ax.set_xticks([p[0] for p in pts])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("torch threads")
    ax.set_ylabel("speed-up over 1 thread")
    ax.set_title("More threads: faster or slower?")
    ax.legend(fontsize=7)
    return ax


def report_figure(report: dict):
    """A ``matplotlib.figure.Figure`` with the three plots of a sweep report (no pyplot needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.5))
    axes = fig.subplots(1, 3)
    plot_matmul(report["matmul"], axes[0])
    plot_steps({name: m["rows"] for name, m in report["training_steps"].items()}, axes[1])
    plot_threads(report["threads_question"], axes[2])
    fig.suptitle(f"{report['machine']['device_name']} -- torch {report['torch']} -- {report['date']}", fontsize=9)
    fig.tight_layout()
    return fig
