"""Guards for exercises that must be solved a particular way.

:func:`forbid_dtypes` is a ``torch.overrides.TorchFunctionMode``: while it is
active, every torch function and Tensor method call is checked, and one that
returns a tensor of a forbidden dtype raises :class:`ForbiddenDtype`. An
exercise that asks for bfloat16 rounding with integer bit operations uses it
to refuse ``x.to(torch.bfloat16)``. Introduced in chapter 01.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode


class ForbiddenDtype(Exception):
    """The learner's code produced a tensor of a dtype the exercise forbids."""


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


class _ForbidDtypes(TorchFunctionMode):
    def __init__(self, dtypes):
        super().__init__()
        self.dtypes = tuple(dtypes)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            if t.dtype in self.dtypes:
                name = getattr(func, "__name__", str(func))
                raise ForbiddenDtype(f"`{name}` produced a {t.dtype} tensor; this exercise asks you "
                                     f"to work without {', '.join(map(str, self.dtypes))} tensors")
        return out


@contextlib.contextmanager
def forbid_dtypes(dtypes):
    """Context manager: torch calls that return a tensor of ``dtypes`` raise ForbiddenDtype."""
    if not dtypes:
        yield
        return
    with _ForbidDtypes(dtypes):
        yield
