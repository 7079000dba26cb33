"""Scaling recipes: per-tensor dynamic, row-wise, delayed (amax history).

See the package docstring (:mod:`course_lib.fp8`) for the conventions and references.
Introduced in chapter 11 (notebooks/11_fp8.ipynb).
"""
from __future__ import annotations

import copy

import torch

from course_lib.validate import positive_int
from .casts import _check_float_tensor, amax_to_scale, tensor_to_scale

# --------------------------------------------------------------------------- recipes
class ScalingRecipe:
    """Base class: a rule that picks the scale for a cast, ``scale_for(x, fmt="e4m3")``.

    ``axiswise`` is False when ``scale_for`` returns one scale for the whole
    tensor (then the FP8 copy can be reused for every matmul it enters) and
    True when it returns one per row (then each matmul needs its own cast).
    """

    name = "base"
    axiswise = False

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._params().items())})"

    def _params(self) -> dict:
        return {}


class TensorwiseScaling(ScalingRecipe):
    """Dynamic per-tensor scaling: ``scale = fmt.max / amax(x)``, amax of the tensor being cast.

    Where: torchao.float8's default ``"tensorwise"`` recipe
    (``Float8LinearConfig()``; E4M3 forward, E5M2 gradients), Transformer
    Engine's ``Float8CurrentScaling``. ``power_of_2`` (default False, as
    torchao's tensorwise recipe) rounds the scale down to a power of two.

    >>> TensorwiseScaling().scale_for(torch.tensor([[1.0, -2.0], [0.5, 0.0]])).item()
    224.0
    """

    name = "tensorwise"
    axiswise = False

    def __init__(self, power_of_2: bool = False):
        self.power_of_2 = _check_bool("power_of_2", power_of_2)

    def _params(self) -> dict:
        return {"power_of_2": self.power_of_2}

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        return tensor_to_scale(x, fmt, None, self.power_of_2)


class RowwiseScaling(ScalingRecipe):
    """Row-wise (axis-wise) dynamic scaling: one scale per row, amax over the last dimension.

    Returns a ``(..., 1)`` tensor. The last dimension is the one a matmul
    contracts, so the scale can be taken out of each dot product. Why it
    handles outliers better: an outlier raises the amax -- and coarsens the
    FP8 grid -- of its own row only, where per-tensor scaling would push
    every other row down towards FP8's subnormals and zero.

    Where: torchao.float8's ``"rowwise"`` recipe (``Float8LinearConfig.
    from_recipe_name("rowwise")``: axis-wise scales for input, weight and
    grad_output, all in E4M3, ``round_scales_to_power_of_2=True`` -- hence
    ``power_of_2`` defaults to True here). Finer still: 1x128 / 128x128
    blocks (Transformer Engine ``Float8BlockScaling``) and 32-element MXFP8
    blocks (``MXFP8BlockScaling``).

    >>> RowwiseScaling().scale_for(torch.tensor([[1.0, -3.0], [0.5, 0.25]])).tolist()
    [[128.0], [512.0]]
    """

    name = "rowwise"
    axiswise = True

    def __init__(self, power_of_2: bool = True):
        self.power_of_2 = _check_bool("power_of_2", power_of_2)

    def _params(self) -> dict:
        return {"power_of_2": self.power_of_2}

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        return tensor_to_scale(x, fmt, -1, self.power_of_2)


class DelayedScaling(ScalingRecipe):
    """Delayed per-tensor scaling: the scale comes from the amax *history*, updated after use.

    Algorithm (one object per tensor role; each ``scale_for(x, fmt)`` call
    is one use):

    1. ``amax_used = max(history)``, over its finite, nonzero entries; when
       there is none -- the first call, or only all-zero tensors so far (a
       zero-initialised weight) -- ``amax(x)`` itself, as torchao initialised
       its history (Transformer Engine keeps its previous scale instead);
    2. ``scale = amax_to_scale(amax_used) / 2**margin``;
    3. record ``amax(x)`` in the history (the newest of the last
       ``history_len``) -- *after* the scale was chosen, so a tensor whose
       magnitude jumps above everything in the history saturates this step.

    Arguments: ``history_len`` (int, default 16: torchao's
    ``DelayedScalingConfig``; Transformer Engine's ``DelayedScaling`` defaults
    to 1024), ``margin`` (int >= 0, default 0: Transformer Engine's headroom
    of ``2**margin``), ``power_of_2`` (default False). ``history`` is the list
    of recorded amaxes, newest first; ``reset()`` forgets them.

    Where: the pre-2025 Transformer Engine default and torchao's
    ``ScalingType.DELAYED``, deprecated in pytorch/ao#1680 and deleted in
    PR #1753 (torchao 0.10): users preferred the accuracy of dynamic scaling,
    and with ``torch.compile`` it was not faster in practice.

    >>> d = DelayedScaling(history_len=2)
    >>> [d.scale_for(torch.tensor([a])).item() for a in (2.0, 4.0, 1.0, 1.0)]
    [224.0, 224.0, 112.0, 112.0]
    >>> d.history
    [1.0, 1.0]
    """

    name = "delayed"
    axiswise = False

    def __init__(self, history_len: int = 16, margin: int = 0, power_of_2: bool = False):
        self.history_len = positive_int("history_len", history_len)
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ValueError(f"margin must be a non-negative int, got {margin!r}")
        self.margin = margin
        self.power_of_2 = _check_bool("power_of_2", power_of_2)
        self._history: torch.Tensor | None = None   # newest first
        self._count = 0

    def _params(self) -> dict:
        return {"history_len": self.history_len, "margin": self.margin, "power_of_2": self.power_of_2}

    @property
    def history(self) -> list[float]:
        """The recorded amaxes, newest first (at most ``history_len``)."""
        if self._history is None:
            return []
        return self._history[:min(self._count, self.history_len)].tolist()

    def reset(self) -> None:
        """Forget the history (the next call initialises from its own amax again)."""
        self._history, self._count = None, 0

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        _check_float_tensor("x", x)
        amax_now = x.detach().float().abs().amax()
        if self._history is None:
            self._history = torch.zeros(self.history_len, dtype=torch.float32, device=amax_now.device)
        past = self._history[:min(self._count, self.history_len)]
        past = past[torch.isfinite(past) & (past > 0)]
        used = past.max() if past.numel() else amax_now
        scale = amax_to_scale(used, fmt, False) / 2.0 ** self.margin
        if self.power_of_2:
            scale = torch.exp2(torch.floor(torch.log2(scale)))
        self._history = torch.roll(self._history, 1)
        self._history[0] = amax_now
        self._count += 1
        return scale


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


#: The recipes by name (the names torchao uses where it has them).
SCALING_RECIPES: dict[str, type[ScalingRecipe]] = {
    "tensorwise": TensorwiseScaling,
    "rowwise": RowwiseScaling,
    "delayed": DelayedScaling,
}


def make_recipe(recipe) -> ScalingRecipe:
    """A fresh recipe from a name in ``SCALING_RECIPES`` (default arguments), or a copy of an instance.

    A copy, because a recipe may hold state (the amax history of
    :class:`DelayedScaling`) that must belong to one tensor only.

    >>> make_recipe("rowwise")
    RowwiseScaling(power_of_2=True)
    """
    if isinstance(recipe, ScalingRecipe):
        return copy.deepcopy(recipe)
    if isinstance(recipe, str) and recipe in SCALING_RECIPES:
        return SCALING_RECIPES[recipe]()
    raise ValueError(f"unknown recipe {recipe!r}; allowed: a ScalingRecipe instance or one of "
                     + ", ".join(repr(r) for r in SCALING_RECIPES))
