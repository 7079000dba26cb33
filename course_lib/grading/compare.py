"""Compare a learner's answer with the reference answer, and say what differs.

Each comparator takes ``(expected, got)`` and returns ``None`` when ``got`` is
acceptable, otherwise a short reason ("dtype: expected torch.float16, got
torch.float32"). :func:`same` handles nested dicts, sequences, numbers, strings
and tensors; tensors are compared on type, shape, dtype and values (NaN equal
to NaN; ``bitwise=True`` also tells -0.0 from +0.0). Used by the exercises in
:mod:`course_lib.exercises`; introduced in chapter 00.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Callable

import torch


def short(value: Any, limit: int = 160) -> str:
    """A one-line description of ``value`` for reports (tensors summarised)."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1)
        head = ", ".join(_fmt(v) for v in flat[:6].tolist())
        more = ", ..." if flat.numel() > 6 else ""
        text = f"tensor(shape={tuple(value.shape)}, dtype={value.dtype}, [{head}{more}])"
    elif isinstance(value, torch.nn.Module):
        text = f"{type(value).__name__} with {sum(p.numel() for p in value.parameters())} parameters"
    elif isinstance(value, (list, tuple)) and _has_tensor(value):
        inner = ", ".join(short(v, limit) for v in value)
        text = f"[{inner}]" if isinstance(value, list) else f"({inner})"
    elif isinstance(value, dict) and _has_tensor(list(value.values())):
        text = "{" + ", ".join(f"{k!r}: {short(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_tensor(values) -> bool:
    return any(isinstance(v, (torch.Tensor, torch.nn.Module))
               or isinstance(v, (list, tuple)) and _has_tensor(v) for v in values)


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


def same(rtol: float = 0.0, atol: float = 0.0, bitwise: bool = False,
         check_dtype: bool = True) -> Callable[[Any, Any], str | None]:
    """A comparator: equal structure and values within ``atol + rtol*|expected|``.

    ``bitwise=True`` demands identical bits for tensors (so -0.0 != +0.0).
    ``check_dtype=False`` accepts any tensor dtype (values compared in float64).
    """

    def compare(expected: Any, got: Any) -> str | None:
        return _diff(expected, got, rtol, atol, bitwise, check_dtype, path="")

    return compare


exact = same()


def _where(path: str) -> str:
    return f"at {path}: " if path else ""


def _diff(exp, got, rtol, atol, bitwise, check_dtype, path) -> str | None:
    at = _where(path)
    if isinstance(exp, torch.Tensor):
        return _diff_tensor(exp, got, rtol, atol, bitwise, check_dtype, at)
    if isinstance(exp, bool):
        if not isinstance(got, (bool, torch.Tensor)) or isinstance(got, torch.Tensor) and got.numel() != 1:
            return f"{at}expected a bool, got {type(got).__name__}"
        got = bool(got)
        return None if got == exp else f"{at}expected {exp}, got {got}"
    if isinstance(exp, Real):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, Real):
            return f"{at}expected a number, got {type(got).__name__}: {short(got)}"
        if isinstance(exp, Integral) and isinstance(got, float) and not got.is_integer():
            return f"{at}expected the whole number {exp}, got {got!r}"
        e, g = float(exp), float(got)
        if math.isnan(e) and math.isnan(g):
            return None
        if e == g or (math.isfinite(e) and abs(g - e) <= atol + rtol * abs(e)):
            return None
        return f"{at}expected {exp!r}, got {got!r}"
    if isinstance(exp, str):
        if not isinstance(got, str):
            return f"{at}expected a str, got {type(got).__name__}"
        return None if got == exp else f"{at}expected {exp!r}, got {short(got)}"
    if isinstance(exp, dict):
        if not isinstance(got, dict):
            return f"{at}expected a dict with keys {sorted(exp)}, got {type(got).__name__}: {short(got)}"
        missing = [k for k in exp if k not in got]
        extra = [k for k in got if k not in exp]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if extra:
                parts.append(f"unexpected keys {extra}")
            return f"{at}dict keys differ: " + ", ".join(parts)
        for k in exp:
            reason = _diff(exp[k], got[k], rtol, atol, bitwise, check_dtype, f"{path}[{k!r}]")
            if reason:
                return reason
        return None
    if isinstance(exp, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"{at}expected a {type(exp).__name__} of length {len(exp)}, got {type(got).__name__}"
        if len(got) != len(exp):
            return f"{at}expected length {len(exp)}, got length {len(got)}"
        for i, (e, g) in enumerate(zip(exp, got)):
            reason = _diff(e, g, rtol, atol, bitwise, check_dtype, f"{path}[{i}]")
            if reason:
                return reason
        return None
    if exp is None:
        return None if got is None else f"{at}expected None, got {short(got)}"
    return None if got == exp else f"{at}expected {short(exp)}, got {short(got)}"


def _diff_tensor(exp, got, rtol, atol, bitwise, check_dtype, at) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"{at}expected a torch.Tensor, got {type(got).__name__}: {short(got)}"
    if tuple(got.shape) != tuple(exp.shape):
        return f"{at}shape: expected {tuple(exp.shape)}, got {tuple(got.shape)}"
    if check_dtype and got.dtype != exp.dtype:
        return f"{at}dtype: expected {exp.dtype}, got {got.dtype}"
    e = exp.detach().cpu()
    g = got.detach().cpu()
    if bitwise and e.dtype == g.dtype and e.is_floating_point():
        width = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[e.element_size()]
        nan_both = torch.isnan(e) & torch.isnan(g)
        bad = (e.view(width) != g.view(width)) & ~nan_both
    elif e.is_floating_point() or g.is_floating_point() or e.is_complex():
        e64, g64 = e.double(), g.double()
        nan_both = torch.isnan(e64) & torch.isnan(g64)
        close = (e64 == g64) | ((g64 - e64).abs() <= atol + rtol * e64.abs())
        bad = ~(close | nan_both)
    else:
        bad = e != g
    if not bool(bad.any()):
        return None
    idx = tuple(int(i) for i in bad.nonzero()[0])
    n_bad = int(bad.sum())
    where = f"index {list(idx)}" if idx else "the value"
    return (f"{at}{n_bad} of {bad.numel()} values differ; first at {where}: "
            f"expected {_fmt(e[idx].item())}, got {_fmt(g[idx].item())}")


def same_float(expected, got) -> str | None:
    """Comparator for one float: equal, with NaN == NaN and -0.0 != +0.0."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, Real):
        return f"expected a float, got {type(got).__name__}: {short(got)}"
    e, g = float(expected), float(got)
    if math.isnan(e) and math.isnan(g):
        return None
    if e == g and math.copysign(1.0, e) == math.copysign(1.0, g):
        return None
    return f"expected {e!r}, got {g!r}"
