"""Keras 3 next to PyTorch: import it safely, read its dtype policies, move weights across.

Keras is optional in this course (the ``keras`` extra: ``pip install -e ".[keras]"``).
Keras 3 runs on several backends; the course uses **PyTorch** (``KERAS_BACKEND=torch``),
so no TensorFlow is needed and a Keras layer *is* a ``torch.nn.Module``.

**Importing** (:func:`import_keras`). Keras reads ``KERAS_BACKEND`` once, when
``keras`` is first imported (without it: the ``"backend"`` of
``~/.keras/keras.json``, by default ``"tensorflow"``); setting the variable
later changes nothing. ``import_keras(backend)`` never raises: it returns a
:class:`KerasStatus` that holds the module or the reason it is unusable --
not installed, ``COURSE_NO_KERAS`` set, Keras 2, ``KERAS_BACKEND`` naming
another backend, or Keras already imported with another backend (the fix:
restart the kernel). ``status.skip(what)`` prints what a cell would have shown
and how to install Keras, so a chapter runs end to end without it.

**Dtype policies** (:func:`policy_dtypes`, :func:`layer_dtype_rows`). A Keras
layer gets a ``DTypePolicy`` when it is constructed (its ``dtype=`` argument,
else the global policy at that moment); the policy fixes the *compute dtype*
(inputs and weights are cast to it when the layer is called) and the
*variable dtype* (the weights as stored). ``"mixed_float16"`` computes in
float16 and stores float32 variables; ``"float16"`` does both in float16.

**Weights** (:func:`torch_to_keras_weights`). A ``torch.nn.Linear`` stores
``weight`` as ``(out_features, in_features)`` and computes ``x @ W.T + b``; a
Keras ``Dense`` stores ``kernel`` as ``(in_features, out_features)`` and
computes ``x @ kernel + bias``. So the kernel is the transposed weight, and
``model.set_weights`` takes ``[kernel, bias, kernel, bias, ...]``.

**Loss scale** (:func:`loss_scale_of`). ``keras.optimizers.LossScaleOptimizer``
follows the rule of ``torch.amp.GradScaler`` (halve and skip the step on
inf/NaN, double after ``dynamic_growth_steps`` clean steps) with another
start: :data:`KERAS_INITIAL_SCALE` = 2**15 (GradScaler: 2**16);
:func:`keras_like_scaler` is course_lib's ``DynamicLossScaler`` with Keras's
defaults.

Introduced in chapter 10 (notebooks/10_keras_appendix.ipynb).

Example:
    >>> policy_dtypes("mixed_float16")
    ('float16', 'float32')
    >>> policy_dtypes("float16")
    ('float16', 'float16')
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {DISABLE_ENV: "1"}):
    ...     print(import_keras())  # doctest: +ELLIPSIS
    Keras not available: COURSE_NO_KERAS='1' is set. Unset COURSE_NO_KERAS and restart the kernel to use Keras.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from torch import nn

from course_lib.scaling import DynamicLossScaler
from course_lib.validate import instance_of, one_of

__all__ = ["KERAS_REQUIREMENT", "INSTALL_HINT", "DISABLE_ENV", "BACKEND_ENV", "POLICY_NAMES",
           "KERAS_INITIAL_SCALE", "KERAS_GROWTH_STEPS", "KerasStatus", "import_keras",
           "policy_dtypes", "layer_dtype_rows", "format_dtype_rows", "torch_to_keras_weights",
           "loss_scale_of", "keras_like_scaler"]

#: The requirement of the ``keras`` extra (pyproject.toml).
KERAS_REQUIREMENT = "keras>=3.6,<4"
#: How to install it, from the course's root folder.
INSTALL_HINT = ('Install it with  pip install -e ".[keras]"  from the course folder '
                f'(or  pip install "{KERAS_REQUIREMENT}"), then restart the kernel.')
#: Set this environment variable (to anything but "" or "0") to make :func:`import_keras`
#: report Keras as unavailable: runs a chapter as a learner without Keras sees it.
DISABLE_ENV = "COURSE_NO_KERAS"
#: The environment variable Keras reads, once, at its first import.
BACKEND_ENV = "KERAS_BACKEND"
#: Keras's floating-point dtype policies (``keras.DTypePolicy(name)``).
POLICY_NAMES = ("float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")
#: ``LossScaleOptimizer``'s defaults (``initial_scale``, ``dynamic_growth_steps``).
KERAS_INITIAL_SCALE = 2.0 ** 15
KERAS_GROWTH_STEPS = 2000


# --------------------------------------------------------------------------- import
@dataclass(frozen=True)
class KerasStatus:
    """The result of :func:`import_keras`: the module, or why there is none.

    Attributes:
        keras (module | None): the imported ``keras`` package, ``None`` when unusable.
        reason (str): why Keras is unusable ("" when it is usable).
        fix (str): what to do about it (:data:`INSTALL_HINT` when it is not installed).
        backend (str | None): the backend Keras runs on (``None`` if not imported).

    Example:
        >>> s = KerasStatus(None, "keras is not installed"); s.available
        False
        >>> s.skip("a table")  # doctest: +ELLIPSIS
        [Keras not available: keras is not installed] This cell would show a table. Install it with ...
    """

    keras: ModuleType | None
    reason: str = ""
    fix: str = INSTALL_HINT
    backend: str | None = None

    @property
    def available(self) -> bool:
        """True when ``keras`` can be used."""
        return self.keras is not None

    @property
    def version(self) -> str | None:
        """Keras's version string, ``None`` when unavailable."""
        return getattr(self.keras, "__version__", None) if self.keras is not None else None

    def __str__(self) -> str:
        if self.available:
            return f"Keras {self.version} on the {self.backend} backend"
        return f"Keras not available: {self.reason}. {self.fix}"

    def skip(self, what: str) -> None:
        """Print that a cell needs Keras: what it would show, why Keras is missing, what to do."""
        instance_of("what", what, str)
        print(f"[Keras not available: {self.reason}] This cell would show {what}. {self.fix}")


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def import_keras(backend: str = "torch") -> KerasStatus:
    """Import Keras 3 on ``backend`` if possible; never raises (see the module docstring).

    Algorithm:

    1. ``COURSE_NO_KERAS`` set: unavailable.
    2. ``keras`` already imported: usable only if it runs on ``backend``
       (``keras.backend.backend()``); otherwise the reason says to restart the
       kernel, because Keras picks its backend once per process.
    3. Otherwise ``KERAS_BACKEND`` is set to ``backend`` if unset (an explicit
       other value is respected and reported); ``import keras`` with its
       start-up messages on stderr captured (they are added to the reason if
       the import fails); an ``ImportError`` is reported with the install hint.
    4. The version must be 3.x.

    Args:
        backend (str, default "torch"): the Keras backend the caller needs.

    Returns:
        KerasStatus

    Example (``status.keras`` is the module; ``if status.available: ... else: status.skip(...)``):
        >>> import_keras(backend=3)
        Traceback (most recent call last):
        ...
        TypeError: backend must be str, got int
    """
    instance_of("backend", backend, str)
    if _disabled():
        return KerasStatus(None, f"{DISABLE_ENV}={os.environ[DISABLE_ENV]!r} is set",
                           f"Unset {DISABLE_ENV} and restart the kernel to use Keras.")
    already = sys.modules.get("keras")
    if already is None:
        chosen = os.environ.setdefault(BACKEND_ENV, backend)
        if chosen != backend:
            return KerasStatus(None, f"{BACKEND_ENV}={chosen!r} is set, but this code needs "
                                     f"{BACKEND_ENV}={backend!r}",
                               f"Unset {BACKEND_ENV} or set it to {backend!r}, and restart the kernel.")
        noise = io.StringIO()
        try:
            with contextlib.redirect_stderr(noise):
                keras = importlib.import_module("keras")
        except ImportError as exc:
            extra = noise.getvalue().strip().splitlines()
            tail = f" ({extra[-1]})" if extra else ""
            if getattr(exc, "name", None) == "keras":
                return KerasStatus(None, "keras is not installed")
            return KerasStatus(None, f"import keras failed: {type(exc).__name__}: {exc}{tail}",
                               f"Check the Keras installation ({KERAS_REQUIREMENT}) and that "
                               f"{BACKEND_ENV}={backend!r} was set before the import.")
    else:
        keras = already
    version = str(getattr(keras, "__version__", "0"))
    if not version.startswith("3."):
        return KerasStatus(None, f"found Keras {version}, but this code needs Keras 3 ({KERAS_REQUIREMENT})",
                           f"Install Keras 3: pip install \"{KERAS_REQUIREMENT}\", then restart the kernel.")
    running = keras.backend.backend()
    if running != backend:
        return KerasStatus(None, f"keras was already imported on the {running!r} backend, and Keras picks its "
                                 "backend once per process",
                           f"Restart the kernel and set {BACKEND_ENV}={backend!r} before anything imports keras.",
                           running)
    return KerasStatus(keras, "", "", running)


# --------------------------------------------------------------------------- policies
def policy_dtypes(policy: str) -> tuple[str, str]:
    """``(compute_dtype, variable_dtype)`` of a Keras floating-point dtype policy, by its name.

    Algorithm: ``"mixed_X"`` computes in ``X`` and keeps float32 variables;
    any other name ``X`` computes and stores in ``X``. This is what
    ``keras.DTypePolicy(name).compute_dtype`` / ``.variable_dtype`` report
    (checked against Keras in tests/test_keras_compat.py).

    Args:
        policy (str): one of :data:`POLICY_NAMES`.

    Example:
        >>> [policy_dtypes(p) for p in ("float32", "mixed_bfloat16", "bfloat16")]
        [('float32', 'float32'), ('bfloat16', 'float32'), ('bfloat16', 'bfloat16')]
    """
    one_of("policy", policy, POLICY_NAMES)
    if policy.startswith("mixed_"):
        return policy[len("mixed_"):], "float32"
    return policy, policy


def _dtype_name(dtype) -> str:
    """``"float16"`` for ``torch.float16``, ``"float16"``, ``np.float16`` ..."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return str(getattr(dtype, "name", dtype))


def layer_dtype_rows(model, x=None) -> list[dict]:
    """One row per layer of a Keras model: its policy, compute and variable dtypes, weights' dtypes.

    Algorithm: for each layer in ``model.layers`` read ``dtype_policy.name``,
    ``compute_dtype``, ``variable_dtype`` and the dtypes of ``layer.weights``
    (what is really stored). With an input batch ``x``, the layers are also
    called one after another (as a ``Sequential`` model runs them) and each
    row gets the dtype of the layer's output. Works on any object with that
    interface (no Keras import here).

    Args:
        model: a Keras model with ``.layers`` (a ``Sequential`` when ``x`` is given).
        x (tensor | None, default None): an input batch.

    Returns:
        list[dict]: keys ``layer``, ``class``, ``policy``, ``compute``,
        ``variables``, ``weights`` and, with ``x``, ``output``.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> layer = NS(name="dense", dtype_policy=NS(name="mixed_float16"), compute_dtype="float16",
        ...            variable_dtype="float32", weights=[NS(dtype="float32")])
        >>> layer_dtype_rows(NS(layers=[layer]))[0]["weights"]
        'float32'
    """
    layers = getattr(model, "layers", None)
    if layers is None:
        raise TypeError(f"model must be a Keras model with .layers, got {type(model).__name__}")
    rows = []
    for layer in layers:
        weight_dtypes = sorted({_dtype_name(w.dtype) for w in getattr(layer, "weights", [])})
        row = {"layer": layer.name, "class": type(layer).__name__, "policy": layer.dtype_policy.name,
               "compute": _dtype_name(layer.compute_dtype), "variables": _dtype_name(layer.variable_dtype),
               "weights": ", ".join(weight_dtypes) or "-"}
        if x is not None:
            x = layer(x)
            row["output"] = _dtype_name(x.dtype)
        rows.append(row)
    return rows


def format_dtype_rows(rows: list[dict]) -> str:
    """The rows of :func:`layer_dtype_rows` as an aligned plain-text table.

    Example:
        >>> print(format_dtype_rows([{"layer": "dense", "policy": "float32"}]))
        layer  policy
        -----  -------
        dense  float32
    """
    if not rows:
        return "(no layers)"
    headers = list(rows[0])
    cells = [[str(r.get(h, "")) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


# --------------------------------------------------------------------------- weights
def torch_to_keras_weights(model: nn.Module) -> list[np.ndarray]:
    """The weights of a torch model's ``nn.Linear`` layers in the order ``keras_model.set_weights`` takes.

    Algorithm: for each ``nn.Linear`` in ``model.modules()`` order (for an
    ``nn.Sequential`` or course_lib's ``MLP``: the order they run), append
    the kernel ``weight.T`` -- shape ``(in_features, out_features)`` -- and
    then the ``bias`` if the layer has one, each as a new float32 NumPy array
    (the variables of a ``mixed_float16`` Keras model are float32 too: never
    round weights to float16 on the way). A Keras ``Sequential`` of ``Dense``
    layers with the same widths (``use_bias`` matching) then computes the
    same function.

    Args:
        model (nn.Module): holds ``nn.Linear`` layers and parameter-free layers only.

    Returns:
        list[np.ndarray]

    Example:
        >>> w = torch_to_keras_weights(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4, bias=False)))
        >>> [(a.shape, str(a.dtype)) for a in w]
        [((3, 2), 'float32'), ((2,), 'float32'), ((2, 4), 'float32')]
    """
    instance_of("model", model, nn.Module)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linears for p in m.parameters(recurse=False)}
    other = [name for name, p in model.named_parameters() if id(p) not in owned]
    if other:
        raise ValueError(f"torch_to_keras_weights copies nn.Linear layers only; the model also has the "
                         f"parameters {other[:3]}{' ...' if len(other) > 3 else ''}")
    out = []
    for layer in linears:
        out.append(layer.weight.detach().to("cpu", torch.float32).T.contiguous().numpy())
        if layer.bias is not None:
            out.append(layer.bias.detach().to("cpu", torch.float32).clone().numpy())
    return out


# --------------------------------------------------------------------------- loss scale
def loss_scale_of(optimizer) -> float:
    """The loss scale a Keras optimizer's ``scale_loss(loss)`` multiplies by now.

    ``LossScaleOptimizer``: its current ``dynamic_scale`` (``initial_scale``
    before its first step); another optimizer: its ``loss_scale_factor``
    (1.0 when ``None``).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> loss_scale_of(NS(built=False, initial_scale=32768.0, dynamic_scale=None))
        32768.0
        >>> loss_scale_of(NS(loss_scale_factor=None))
        1.0
    """
    if hasattr(optimizer, "initial_scale"):
        if getattr(optimizer, "built", False):
            scale = optimizer.dynamic_scale
            return float(getattr(scale, "value", scale))
        return float(optimizer.initial_scale)
    factor = getattr(optimizer, "loss_scale_factor", None)
    return 1.0 if factor is None else float(factor)


def keras_like_scaler(initial_scale: float = KERAS_INITIAL_SCALE,
                      dynamic_growth_steps: int = KERAS_GROWTH_STEPS) -> DynamicLossScaler:
    """course_lib's ``DynamicLossScaler`` with ``LossScaleOptimizer``'s defaults and argument names.

    Same rule as ``torch.amp.GradScaler`` (backoff 0.5, growth 2.0); the
    scale trajectories are equal step for step (tests/test_keras_compat.py
    compares them with Keras). One difference at the very top: Keras doubles
    even when the result overflows float32, GradScaler keeps the old scale.

    Example:
        >>> keras_like_scaler().get_scale(), keras_like_scaler().growth_interval
        (32768.0, 2000)
    """
    return DynamicLossScaler(init_scale=initial_scale, growth_interval=dynamic_growth_steps)
