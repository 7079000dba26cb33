"""Checkpoints that resume bit for bit: training state, RNG state, data order.

A resumed run must produce the same weights, bit for bit, as one that never
stopped. Three things make that work:

1. **Everything that changes is saved**: model, stepper (optimizer, FP32
   masters, loss scaler), the position in the data (epoch, micro-batch) and
   the history -- one :class:`TrainState` -- plus every random number
   generator (torch CPU and CUDA, Python's ``random``, NumPy).
2. **The data order is a function of (seed, epoch)**: before every epoch
   :func:`seed_epoch_order` re-seeds the loader's shuffling generator (and
   calls ``sampler.set_epoch`` where a sampler has one, as
   ``DistributedSampler`` needs), so epoch ``e`` has the same batches whether
   or not the run was interrupted; a resumed epoch skips the micro-batches
   already used.
3. **Writes are atomic**: a temporary file, then ``os.replace``; a crash
   while saving leaves the previous checkpoint intact.

:func:`save` writes ``{"format", "version", "config", "model", "stepper",
"rng", "state"}``; :func:`load` reads it back and refuses a checkpoint whose
``config`` (the settings that must not change between the two halves of a
run) differs from the current one, naming every difference.
Introduced in chapter 02 (notebooks/02_where_16_bits_break.ipynb); resume is
exercised in chapters 05 and 12.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import RandomSampler

__all__ = ["TrainState", "FORMAT", "VERSION", "save", "load", "rng_state", "set_rng_state",
           "seed_everything", "seed_epoch_order"]

FORMAT = "course_lib.train"
#: Version 2: a stepper's state dict and a TrainState (version 1 had separate optimizer/scaler keys).
VERSION = 2


@dataclass
class TrainState:
    """Where a run is: optimizer steps done, epoch, micro-batches used in it, and the history."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    history: list[dict] = field(default_factory=list)
    val_history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy with ``seed``."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every RNG state a training run draws from (saved with tensors only, for ``weights_only`` loading)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4]))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore :func:`rng_state` output."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 0x5EED) % (2 ** 63)


def seed_epoch_order(loader, seed: int, epoch: int) -> None:
    """Make the loader's order a function of ``(seed, epoch)``, without touching global RNGs.

    A ``DataLoader`` without a generator gets one (its iterator then draws
    its base seed from it, not from the global RNG); every sampler in the
    chain with a ``generator`` (RandomSampler, SubsetRandomSampler,
    WeightedRandomSampler) is re-seeded; a sampler with ``set_epoch``
    (``DistributedSampler``) is told the epoch.
    """
    s = getattr(loader, "sampler", None)
    samplers = []
    while s is not None and s not in samplers:
        samplers.append(s)
        s = getattr(s, "sampler", None)
    bs = getattr(loader, "batch_sampler", None)
    if bs is not None and getattr(bs, "sampler", None) is not None:
        samplers.append(bs.sampler)
    gen = getattr(loader, "generator", None)
    if isinstance(loader, torch.utils.data.DataLoader) and gen is None:
        gen = torch.Generator()
        loader.generator = gen
    if gen is not None:
        gen.manual_seed(_epoch_seed(seed, epoch))
    for s in samplers:
        if isinstance(s, RandomSampler) or hasattr(s, "generator"):
            if s.generator is None:
                s.generator = torch.Generator()
            if s.generator is not gen:
                s.generator.manual_seed(_epoch_seed(seed, epoch) + 1)
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)


def save(path: str, *, config: dict, model: torch.nn.Module, stepper, state: TrainState,
         device: torch.device) -> None:
    """Write a checkpoint atomically (temporary file + ``os.replace``)."""
    obj = {"format": FORMAT, "version": VERSION, "config": config, "model": model.state_dict(),
           "stepper": stepper.state_dict(), "rng": rng_state(device), "state": asdict(state)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str, *, config: dict) -> dict:
    """Read a checkpoint written by :func:`save`; refuse another format or a different ``config``.

    Returns the dict :func:`save` wrote, with ``"state"`` as a :class:`TrainState`.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a checkpoint written by course_lib.train")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path!r} has checkpoint version {ckpt.get('version')!r}; this course_lib "
                         f"reads version {VERSION}: start the run afresh")
    mismatch = {k: (ckpt["config"].get(k), v) for k, v in config.items() if ckpt["config"].get(k) != v}
    if mismatch:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in mismatch.items())
        raise ValueError(f"the checkpoint {path!r} was written by a different setup ({detail}); "
                         "call train() with the same settings or start fresh")
    ckpt["state"] = TrainState(**ckpt["state"])
    return ckpt
