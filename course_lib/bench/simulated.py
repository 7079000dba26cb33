"""A simulated asynchronous device: why a GPU timer must synchronise, without a GPU.

A CUDA call returns as soon as its kernel is *queued*; the GPU runs it
later. :class:`SimulatedDevice` models exactly that with a simulated clock
(no real time passes, so results are exact and repeatable):

* ``launch(seconds)`` costs the host ``launch_overhead_s`` of its own time
  and queues ``seconds`` of device work behind whatever is queued;
* ``synchronize()`` makes the host wait until the queue is empty
  (``torch.cuda.synchronize``);
* ``clock()`` reads the host's time (``time.perf_counter``).

``t0 = clock(); launch(1e-3); clock() - t0`` therefore reads the launch
overhead, not the millisecond of work -- the classic error that made a
benchmark's CUDA numbers tens of times too fast (TristanBilot/mlx-benchmark#21);
``synchronize()`` before each clock reading gives the work.
:meth:`SimulatedDevice.kernel` makes a zero-argument "kernel" whose
successive calls launch given durations (e.g. a slow first call, or an
interrupted one), to test a timer's protocol. The grader of exercise
09.time_call uses it, and chapter 09 uses it to show the error on a CPU.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

from typing import Sequence

from .. import validate

__all__ = ["SimulatedDevice", "SimulatedKernel"]


class SimulatedDevice:
    """A host clock plus a queue of device work (see the module docstring).

    Args:
        launch_overhead_s (float, default 5e-6): host time one launch costs.
        start_s (float, default 1000.0): the clock's first reading.

    Attributes: ``launches`` and ``synchronizations`` count the calls.

    >>> dev = SimulatedDevice(launch_overhead_s=1e-6, start_s=0.0)
    >>> t0 = dev.clock(); dev.launch(1e-3); unsynced = dev.clock() - t0
    >>> dev.synchronize(); synced = dev.clock() - t0
    >>> unsynced, synced
    (1e-06, 0.001001)
    """

    def __init__(self, launch_overhead_s: float = 5e-6, start_s: float = 1000.0):
        self.launch_overhead_s = validate.non_negative_float("launch_overhead_s", launch_overhead_s)
        self.now_s = validate.non_negative_float("start_s", start_s)
        self.busy_until_s = self.now_s
        self.launches = 0
        self.synchronizations = 0

    def clock(self) -> float:
        """The host's current (simulated) time in seconds."""
        return self.now_s

    def launch(self, seconds: float) -> None:
        """Queue ``seconds`` of device work; the host only pays the launch overhead."""
        seconds = validate.non_negative_float("seconds", seconds)
        self.now_s += self.launch_overhead_s
        self.busy_until_s = max(self.busy_until_s, self.now_s) + seconds
        self.launches += 1

    def synchronize(self) -> None:
        """Wait (advance the host clock) until all queued work is done."""
        self.now_s = max(self.now_s, self.busy_until_s)
        self.synchronizations += 1

    @property
    def pending_s(self) -> float:
        """Device work still queued, in seconds."""
        return max(0.0, self.busy_until_s - self.now_s)

    def kernel(self, durations: Sequence[float], name: str = "kernel") -> "SimulatedKernel":
        """A zero-argument callable whose i-th call launches ``durations[i]`` seconds of work."""
        return SimulatedKernel(self, durations, name)

    def __repr__(self) -> str:
        return (f"SimulatedDevice(now={self.now_s:.9g} s, pending={self.pending_s:.3g} s, "
                f"launches={self.launches}, synchronizations={self.synchronizations})")


class SimulatedKernel:
    """Calls ``device.launch(durations[i])`` on its i-th call; too many calls is an error.

    >>> dev = SimulatedDevice(launch_overhead_s=0.0, start_s=0.0)
    >>> k = dev.kernel([0.5, 0.25]); k(); k(); dev.synchronize(); dev.clock()
    0.75
    """

    def __init__(self, device: SimulatedDevice, durations: Sequence[float], name: str = "kernel"):
        self.device = validate.instance_of("device", device, SimulatedDevice)
        self.durations = tuple(validate.non_negative_float("duration", d) for d in durations)
        if not self.durations:
            raise ValueError("durations must hold at least one duration")
        self.name = validate.instance_of("name", name, str)
        self.calls = 0

    def __call__(self) -> None:
        if self.calls >= len(self.durations):
            raise RuntimeError(f"{self.name} was called {self.calls + 1} times but plans only "
                               f"{len(self.durations)} calls (warm-up + timed): call it exactly "
                               "warmup + repeats times")
        self.device.launch(self.durations[self.calls])
        self.calls += 1

    def __repr__(self) -> str:
        return f"<{self.name}: {len(self.durations)} planned calls, {self.calls} made>"
