"""Random inputs for exercise cases, drawn from the check's seeded ``random.Random``.

* :func:`torch_generator` -- a ``torch.Generator`` seeded from it, so tensor
  inputs change with every ``check`` and are reproducible from its seed;
* :func:`log_uniform` -- values whose magnitudes are spread evenly over
  binades ``2**lo .. 2**hi`` with random signs: every exponent gets tested,
  not only values near 1.

Introduced in chapter 00; used by the exercises of every chapter.
"""
from __future__ import annotations

import random

import torch


def torch_generator(rng: random.Random) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``rng``."""
    return torch.Generator().manual_seed(rng.getrandbits(62))


def log_uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """``n`` float32 values with ``log2|x|`` uniform in ``[lo, hi)`` and random signs."""
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return signs * torch.exp2(torch.rand(n, generator=g) * (hi - lo) + lo)
