"""An emulated FP8 linear layer (FP8 storage and rounding, float32 accumulation) and model conversion.

See the package docstring (:mod:`course_lib.fp8`) for the conventions and references.
Introduced in chapter 11 (notebooks/11_fp8.ipynb).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from course_lib.formats import FloatFormat, get_format
from course_lib.validate import callable_or_none, instance_of
from .casts import FP8Tensor, FP8_FORMATS, _cast
from .scaling import ScalingRecipe, _check_bool, make_recipe

# --------------------------------------------------------------------------- FP8 linear
def _cast_for_matmul(x: torch.Tensor, recipe: ScalingRecipe, f: FloatFormat, left: bool) -> FP8Tensor:
    """Cast a matmul operand: ``left`` = A of ``A @ B`` (scales along rows), else B (along columns)."""
    if left or not recipe.axiswise:
        return _cast(x, f, recipe.scale_for(x, f), True)
    return _cast(x, f, recipe.scale_for(x.t(), f).t(), True)


class _FP8Matmul(torch.autograd.Function):
    """``x2d @ weight^T`` with FP8 operands (see FP8Linear): forward, and backward from FP8 grads."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, layer: "FP8Linear") -> torch.Tensor:
        e4m3 = get_format("fp8_e4m3fn")
        x8 = _cast_for_matmul(x2d, layer.recipe_input, e4m3, left=True)
        w8 = _cast_for_matmul(weight, layer.recipe_weight, e4m3, left=True)   # W: rows = outputs
        out = x8.dequantize() @ w8.dequantize().t()
        ctx.layer = layer
        ctx.dtypes = (x2d.dtype, weight.dtype)
        ctx.axiswise = layer.recipe_input.axiswise or layer.recipe_weight.axiswise
        if ctx.axiswise:      # backward re-casts along other axes: keep the originals
            ctx.save_for_backward(x2d, weight)
        else:                 # per-tensor: keep the FP8 copies (1 byte per element) and scales
            ctx.save_for_backward(x8.data, x8.scale, w8.data, w8.scale)
        return out.to(x2d.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        layer = ctx.layer
        e4m3 = get_format("fp8_e4m3fn")
        gfmt = get_format(FP8_FORMATS[layer.backward_format])
        g = grad_out.to(torch.float32)
        if ctx.axiswise:
            x2d, weight = ctx.saved_tensors
            x_gw = _cast_for_matmul(x2d, layer.recipe_input, e4m3, left=False)        # columns of x
            w_gi = _cast_for_matmul(weight, layer.recipe_weight, e4m3, left=False)    # columns of W
        else:
            xd, xs, wd, ws = ctx.saved_tensors
            x_gw, w_gi = FP8Tensor(xd, xs, e4m3), FP8Tensor(wd, ws, e4m3)
        g_gi = _cast_for_matmul(g, layer.recipe_grad_output, gfmt, left=True)          # rows of g
        if layer.recipe_grad_output.axiswise:
            g_gw = _cast_for_matmul(g.t(), layer.recipe_grad_output, gfmt, left=True)  # g^T rows
        else:
            g_gw = FP8Tensor(g_gi.data.t(), g_gi.scale, gfmt)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (g_gi.dequantize() @ w_gi.dequantize()).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_w = (g_gw.dequantize() @ x_gw.dequantize()).to(ctx.dtypes[1])
        return grad_x, grad_w, None


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose matmuls run on FP8 operands (emulated: FP8 rounding, FP32 accumulation).

    Algorithm (module docstring): forward casts input and weight to E4M3
    with their recipe's scales and multiplies the dequantized operands in
    float32; backward casts grad_output to ``backward_format`` and computes
    grad_input and grad_weight from the FP8-rounded operands; the bias is
    added in high precision. The output has the input's dtype.

    Arguments: ``in_features``, ``out_features``, ``bias`` (as
    ``nn.Linear``), keyword-only ``recipe`` (``"tensorwise"`` (default),
    ``"rowwise"``, ``"delayed"`` or a :class:`ScalingRecipe` instance used as
    a template: the layer keeps its own copy per tensor role --
    ``recipe_input``, ``recipe_weight``, ``recipe_grad_output`` -- so a
    delayed recipe has one amax history per tensor, as in Transformer
    Engine), ``backward_format`` (``"e5m2"``: the "hybrid" recipe, default;
    ``"e4m3"``: "all-E4M3"), ``device``, ``dtype``. Any size works (the
    emulation has no alignment rule). Build one from an existing layer with
    :meth:`from_linear`, or convert a model with :func:`convert_to_fp8`.

    >>> _ = torch.manual_seed(0)
    >>> layer = FP8Linear(4, 3)
    >>> layer(torch.randn(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 recipe="tensorwise", backward_format: str = "e5m2", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._configure(recipe, backward_format)

    def _configure(self, recipe, backward_format) -> None:
        if backward_format not in FP8_FORMATS:
            raise ValueError(f"unknown backward_format {backward_format!r}; allowed: 'e5m2' (hybrid: "
                             f"E4M3 forward, E5M2 gradients), 'e4m3' (all-E4M3)")
        template = make_recipe(recipe)
        self.recipe_input = make_recipe(template)
        self.recipe_weight = make_recipe(template)
        self.recipe_grad_output = make_recipe(template)
        self.backward_format = backward_format

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, recipe="tensorwise",
                    backward_format: str = "e5m2") -> "FP8Linear":
        """An FP8Linear that **shares** ``linear``'s weight and bias Parameters (not copies).

        An optimizer built on the old layer keeps working, and the
        ``state_dict`` keys stay ``weight`` / ``bias``.
        """
        instance_of("linear", linear, nn.Linear)
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        new._configure(recipe, backward_format)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        out = _FP8Matmul.apply(x2d, self.weight, self)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, recipe={self.recipe_input.name}, "
                f"backward_format={self.backward_format}")


def convert_to_fp8(model: nn.Module, *, recipe="tensorwise", backward_format: str = "e5m2",
                   hardware_shapes_only: bool = False,
                   module_filter: Callable[[str, nn.Linear], bool] | None = None) -> nn.Module:
    """Replace the ``nn.Linear`` layers of ``model`` by :class:`FP8Linear` -- **in place**.

    Each layer is swapped for ``FP8Linear.from_linear(layer, recipe=...,
    backward_format=...)``, which shares its Parameters (an existing
    optimizer keeps working). Returns ``model`` itself; only when ``model``
    *is* an ``nn.Linear`` (nothing to swap it in) a new FP8Linear is
    returned. Layers that are FP8Linear already are left alone.

    Arguments: ``recipe``, ``backward_format`` (see :class:`FP8Linear`),
    ``hardware_shapes_only`` (default False: the emulation handles every
    size; True skips layers whose ``in_features`` or ``out_features`` is not
    a multiple of 16, which ``torch._scaled_mm`` needs on FP8 GPUs -- the
    filter torchao's README applies), ``module_filter`` (``f(name, layer) ->
    bool``, False keeps that layer in high precision, e.g. the classifier
    head).

    >>> from course_lib.models import MLP
    >>> m = convert_to_fp8(MLP(hidden=(32,)), hardware_shapes_only=True)
    >>> [type(l).__name__ for l in m.net if isinstance(l, nn.Linear)]   # 32 -> 10 is skipped
    ['FP8Linear', 'Linear']
    """
    instance_of("model", model, nn.Module)
    _check_bool("hardware_shapes_only", hardware_shapes_only)
    callable_or_none("module_filter", module_filter)
    make_recipe(recipe)                      # fail early on a bad recipe / format
    if backward_format not in FP8_FORMATS:
        raise ValueError(f"unknown backward_format {backward_format!r}; allowed: 'e5m2', 'e4m3'")

    def wanted(name: str, layer: nn.Module) -> bool:
        if not isinstance(layer, nn.Linear) or isinstance(layer, FP8Linear):
            return False
        if hardware_shapes_only and (layer.in_features % 16 or layer.out_features % 16):
            return False
        return module_filter is None or bool(module_filter(name, layer))

    def swap(layer: nn.Linear) -> FP8Linear:
        return FP8Linear.from_linear(layer, recipe=recipe, backward_format=backward_format)

    if isinstance(model, nn.Linear):
        return swap(model) if wanted("", model) else model
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if wanted(full, child):
                setattr(parent, child_name, swap(child))
    return model
