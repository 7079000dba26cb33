"""Which device the course runs on: one helper, used everywhere.

``default_device()`` is ``"cuda"`` when a CUDA GPU is available and ``"cpu"``
otherwise. Every chapter and every course_lib function that needs a device
asks here, so the whole course moves to the GPU without edits. Introduced in
chapter 00 (notebooks/00_orientation.ipynb).
"""
from __future__ import annotations

import os

import torch

#: Environment variable that forces a device (e.g. ``COURSE_DEVICE=cpu`` on a
#: GPU machine to reproduce the CPU results).
DEVICE_ENV = "COURSE_DEVICE"


def default_device() -> str:
    """Return ``"cuda"`` if a CUDA GPU is usable, else ``"cpu"``.

    ``COURSE_DEVICE`` overrides the choice (allowed: ``cpu``, ``cuda``).

    >>> default_device() in ("cpu", "cuda")
    True
    """
    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if forced:
        if forced not in ("cpu", "cuda"):
            raise ValueError(f"{DEVICE_ENV}={forced!r} is not a device the course supports; "
                             "allowed: 'cpu', 'cuda'")
        if forced == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{DEVICE_ENV}=cuda but torch.cuda.is_available() is False "
                             f"(torch {torch.__version__}); unset {DEVICE_ENV} or use 'cpu'")
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


def tune_cpu_threads(threads: int = 1) -> int:
    """On a CPU run, set torch's intra-op thread count; return the previous count.

    The course's models are tiny (thousands of parameters, batches of 64): a
    second thread buys them little, since forking and joining threads costs
    about as much as the work, and when other programs compete for the cores
    a thread that waits for one slows every step (chapter 09 measures both on
    your machine). One thread also keeps timings steady. Call this once at the
    top of a chapter that trains. On CUDA it changes nothing and returns the
    current count.

    >>> previous = tune_cpu_threads(1); torch.get_num_threads()
    1
    """
    from course_lib.validate import positive_int

    positive_int("threads", threads)
    previous = torch.get_num_threads()
    if default_device() == "cpu":
        torch.set_num_threads(threads)
    return previous


def resolve_device(device=None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means :func:`default_device`.

    Raises a clear error for a device of the wrong type, and for CUDA when it
    is not available.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device(default_device())
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str or a torch.device, got {type(device).__name__}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or device=None")
    return dev
