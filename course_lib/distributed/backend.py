"""Which communication backend a device needs, and where the ranks meet.

Algorithm:

* ``backend_for(device)``: a CPU tensor can only travel through **gloo**
  (TCP between processes); CUDA tensors go through **NCCL** (GPU-to-GPU over
  NVLink/PCIe/InfiniBand). NCCL has no CPU path, and gloo on CUDA copies
  through the host, so the device decides: ``cpu -> "gloo"``,
  ``cuda -> "nccl"``. A build without NCCL (e.g. the CPU wheels, or
  Windows) gets a clear error instead of a late failure inside
  ``init_process_group``.
* ``free_port()``: ask the operating system for an unused TCP port by
  binding to port 0 on the loopback address, read the port it assigned and
  close the socket. Rank 0's ``TCPStore`` binds it a moment later; another
  program could take the port in between, which is rare and shows up as
  "address already in use" at start-up (just launch again).

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> backend_for("cpu")
    'gloo'
    >>> 1024 <= free_port() <= 65535
    True
"""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist

from course_lib import validate

__all__ = ["backend_for", "free_port", "LOOPBACK"]

#: Address every rank of a single-machine job uses to reach rank 0.
LOOPBACK = "127.0.0.1"


def backend_for(device) -> str:
    """Return the ``torch.distributed`` backend for ``device``: ``"gloo"`` or ``"nccl"``.

    Args:
        device (str or torch.device): ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: another device type.
        RuntimeError: torch was built without ``torch.distributed``, or
            ``device`` is CUDA and this build has no NCCL.

    Example:
        >>> backend_for(torch.device("cpu"))
        'gloo'
    """
    validate.instance_of("device", device, (str, torch.device))
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a device string; allowed: 'cpu', 'cuda', "
                         "'cuda:N'") from err
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"no backend for device {device!r}; allowed: 'cpu' (gloo), 'cuda' (nccl)")
    if not dist.is_available():
        raise RuntimeError(f"this torch build ({torch.__version__}) has no torch.distributed")
    if kind == "cpu":
        return "gloo"
    if not dist.is_nccl_available():
        raise RuntimeError(f"device {device!r} needs the NCCL backend, which this torch build "
                           f"({torch.__version__}) does not have; run on device='cpu' (gloo)")
    return "nccl"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    Args:
        host (str, default ``"127.0.0.1"``): the address rank 0 will listen on.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
