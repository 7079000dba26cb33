"""Real int8 through torchao: availability (imported quietly), QATConfig prepare/convert, int8 PTQ, size on disk.

See the package docstring (:mod:`course_lib.qat`). Introduced in chapter 08
(notebooks/08_quantization_aware_training.ipynb).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import warnings

from typing import Callable

import torch
from torch import nn

from course_lib.validate import instance_of, one_of
from .layers import _QAT_TYPES

# --------------------------------------------------------------------------- torchao (real int8)
#: The requirement that ``torchao_available`` checks (oldest release whose
#: ``QATConfig(base_config, step=...)`` accepts the int8 base configs used here,
#: newest tested with torch 2.13).
TORCHAO_REQUIREMENT = "torchao>=0.14.1,<0.19"
_TORCHAO_MIN = (0, 14, 1)
_INSTALL_HINT = ("pip install -e .[qat]  (or: pip install --no-deps 'torchao>=0.14.1,<0.19'; "
                 "install torch first)")
_TORCHAO_SCHEMES = ("int8_weight_only", "int8_dynamic_activation")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@contextlib.contextmanager
def _quiet_torchao_imports():
    """Quiet torchao's import-time log lines and warnings, for the duration of the block only.

    A CPU build logs "Failed to load ..._C_cutlass_90a / _C_mxfp8" (GPU-only
    kernels); torch logs an Enum registration notice ("<enum
    'ScaleCalculationMode'> is an Enum subclass ... register_constant() ...
    is deprecated") when torchao imports a module -- at import time, and again
    inside ``quantize_(..., QATConfig(...))``, which imports
    ``torchao.prototype.mx_formats`` lazily; torchao 0.15-0.16 warn about
    their own internal import paths. None of it concerns this CPU path or
    anything a learner can change. Loggers are set to ERROR (not disabled),
    so real errors still show.
    """
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Importing .*deprecated",
                                    category=DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


#: Set this environment variable (to anything) to run as if torchao were not installed:
#: chapter 08's skip path, testable on a machine that has torchao.
DISABLE_TORCHAO_ENV = "COURSE_NO_TORCHAO"


@functools.lru_cache(maxsize=1)
def _import_torchao():
    """Import torchao quietly; return the module, or the reason it cannot be used."""
    if os.environ.get(DISABLE_TORCHAO_ENV):
        return f"torchao is switched off ({DISABLE_TORCHAO_ENV} is set)"
    try:
        with _quiet_torchao_imports():
            torchao = importlib.import_module("torchao")
            importlib.import_module("torchao.quantization.qat")
    except ImportError as exc:
        return f"torchao is not importable ({exc})"
    except Exception as exc:  # an installed torchao built for another torch can fail oddly
        return f"torchao failed to import with torch {torch.__version__} ({type(exc).__name__}: {exc})"
    version = getattr(torchao, "__version__", "0")
    if _version_tuple(version) < _TORCHAO_MIN:
        return f"torchao {version} is too old: QATConfig with int8 base configs needs {TORCHAO_REQUIREMENT}"
    return torchao


def torchao_available() -> bool:
    """Whether a usable torchao (``TORCHAO_REQUIREMENT``) can be imported.

    The first call imports torchao (a few seconds); the answer is cached.

    Example:
        >>> TORCHAO_REQUIREMENT  # what torchao_available() checks for
        'torchao>=0.14.1,<0.19'
    """
    return not isinstance(_import_torchao(), str)


def torchao_status() -> str:
    """One line: the torchao version in use, or why it cannot be used and what to install.

    For a chapter cell that skips the torchao part cleanly (``if not
    torchao_available(): print(torchao_status())``).

    Example:
        >>> torchao_status().startswith("torchao")
        True
    """
    torchao = _import_torchao()
    if isinstance(torchao, str):
        return f"{torchao}; install it with: {_INSTALL_HINT}"
    return f"torchao {torchao.__version__} (course_lib checks for {TORCHAO_REQUIREMENT})"


def _require_torchao(what: str):
    torchao = _import_torchao()
    if isinstance(torchao, str):
        raise ImportError(f"{what} needs torchao: {torchao}. Install it with: {_INSTALL_HINT}")
    return torchao


def _torchao_base_config(scheme: str):
    one_of("scheme", scheme, _TORCHAO_SCHEMES)
    from torchao.quantization import (Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig,
                                      PerAxis)
    if scheme == "int8_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                 weight_granularity=PerAxis(0))


def _torchao_qat(model: nn.Module, scheme: str, step: str, filter_fn) -> nn.Module:
    _require_torchao(f"torchao_qat_{step}")
    instance_of("model", model, nn.Module)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool or None, "
                        f"got {type(filter_fn).__name__}")
    if any(isinstance(m, _QAT_TYPES) for m in model.modules()):
        raise ValueError("model holds course_lib QAT layers: call remove_qat(model) first "
                         "(torchao would fake-quantize them a second time)")
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    qat_config = QATConfig(_torchao_base_config(scheme), step=step)
    with _quiet_torchao_imports():
        if filter_fn is None:
            quantize_(model, qat_config)
        else:
            quantize_(model, qat_config, filter_fn=filter_fn)
    return model


def torchao_qat_prepare(model: nn.Module, scheme: str = "int8_weight_only", *,
                        filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """torchao QAT, step 1: ``quantize_(model, QATConfig(base, step="prepare"))``, in place.

    Swaps ``nn.Linear`` for torchao's ``FakeQuantizedLinear`` (weights stay
    float32 Parameters; only the forward is fake-quantized). Convolutions are
    not supported by torchao and stay float.

    Args:
        model (nn.Module): the float model.
        scheme (str, default "int8_weight_only"): ``"int8_weight_only"``
            (``IntxWeightOnlyConfig(int8, PerAxis(0))``) or
            ``"int8_dynamic_activation"`` (``Int8DynamicActivationIntxWeightConfig``:
            int8 per-token activations too). Use the same scheme to convert.
        filter_fn (callable | None): torchao's ``filter_fn(module, name)``;
            ``None`` = every ``nn.Linear``.

    Raises:
        ImportError: torchao is missing or unusable (the message says what to install).
    """
    return _torchao_qat(model, scheme, "prepare", filter_fn)


def torchao_qat_convert(model: nn.Module, scheme: str = "int8_weight_only", *,
                        filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """torchao QAT, step 2: ``quantize_(model, QATConfig(base, step="convert"))``, in place.

    Each prepared ``Linear`` gets an int8 weight: a torchao tensor subclass
    (``IntxUnpackedToInt8Tensor``) with ``qdata`` (int8) and per-channel
    ``scale``; its ``.dtype`` reports float32, the dtype it computes in (on
    CPU the weight is dequantized for each matmul: smaller on disk, not faster).
    Only layers swapped by ``torchao_qat_prepare`` are converted: on a plain
    ``nn.Linear`` (never prepared) torchao 0.18 does nothing, silently -- the
    weight stays a float32 Parameter.

    Args:
        as ``torchao_qat_prepare`` (same ``scheme``).

    Raises:
        ImportError: torchao is missing or unusable.
    """
    return _torchao_qat(model, scheme, "convert", filter_fn)


def torchao_int8_dynamic_quantize(model: nn.Module, *,
                                  filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Post-training int8 with int8 *compute*: ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``.

    In place. Each ``nn.Linear`` weight becomes torchao's ``Int8Tensor``
    (int8 per output channel, symmetric); at every call the activation is
    quantized to int8 per row (its scale computed from that batch: "dynamic")
    and the product runs as an integer matmul (``aten::_int_mm``, int32
    accumulation), then is rescaled to float32. Whether that is faster than
    float32 depends on the layer size and the CPU (chapter 08 measures it).
    Use it on a float model (after QAT, ``remove_qat`` first); torchao
    quantizes ``nn.Linear`` only.

    Args:
        model (nn.Module): the float model.
        filter_fn (callable | None): torchao's ``filter_fn(module, name)``;
            ``None`` = every ``nn.Linear``.

    Raises:
        ImportError: torchao is missing or unusable (the message says what to install).
        ValueError: ``model`` still holds course_lib QAT layers.
    """
    _require_torchao("torchao_int8_dynamic_quantize")
    instance_of("model", model, nn.Module)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool or None, "
                        f"got {type(filter_fn).__name__}")
    if any(isinstance(m, _QAT_TYPES) for m in model.modules()):
        raise ValueError("model holds course_lib QAT layers: call remove_qat(model) first")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    with _quiet_torchao_imports():
        if filter_fn is None:
            quantize_(model, Int8DynamicActivationInt8WeightConfig())
        else:
            quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=filter_fn)
    return model


def serialized_size_bytes(obj) -> int:
    """Bytes ``torch.save`` writes for a module's ``state_dict`` (or any object).

    Measured by saving into an in-memory ``io.BytesIO``: the size of a
    checkpoint on disk, including pickle and zip overhead (for a file called
    ``archive.pt``: torch.save names the zip's top folder after the file, so
    each stored record's name, and the size, depend a little on the name).

    Args:
        obj (nn.Module | object): a module (its ``state_dict()`` is saved) or
            anything ``torch.save`` accepts.

    Example:
        >>> serialized_size_bytes(nn.Linear(100, 100)) > 4 * 100 * 100
        True
    """
    buffer = io.BytesIO()
    torch.save(obj.state_dict() if isinstance(obj, nn.Module) else obj, buffer)
    return buffer.getbuffer().nbytes
