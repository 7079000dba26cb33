"""Chapter 09 exercises: a correct timer around an asynchronous device; MFU of an MLP training step
(notebooks/09_benchmarking.ipynb).

Timing is graded without timing noise: every case runs on a
:class:`course_lib.bench.simulated.SimulatedDevice`, whose clock is simulated
(kernels queue work, ``synchronize`` waits for it), so the right protocol
gives an exact answer and each wrong one a different answer.
"""
from __future__ import annotations

import statistics

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from course_lib.bench import mfu, training_step_flops
from course_lib.bench.simulated import SimulatedDevice
from course_lib.bench.wallclock import measure_wall_clock
from course_lib.grading.compare import same
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.models import MLP
from course_lib.train import cross_entropy


# ----------------------------------------------------------------------------- 09.time_call
def reference_time_call(fn, synchronize, clock, warmup, repeats):
    """The median of ``repeats`` synchronised wall-clock timings after ``warmup`` untimed calls."""
    return measure_wall_clock(fn, synchronize=synchronize, clock=clock, warmup=warmup, repeats=repeats).median_s


def _timer_case(rng, label, warmup, timed, overhead=None):
    dev = SimulatedDevice(launch_overhead_s=overhead if overhead is not None else rng.uniform(2e-6, 2e-5),
                          start_s=rng.uniform(1000.0, 2000.0))
    warm = [rng.uniform(0.02, 0.1) for _ in range(warmup)]  # first calls: kernel selection, allocation
    kernel = dev.kernel(warm + list(timed), name="fn")
    return Case(label, (kernel, dev.synchronize, dev.clock, warmup, len(timed)))


def _timer_cases(rng):
    def ms():
        return rng.uniform(0.5e-3, 2e-3)

    yield _timer_case(rng, "steady kernel: 3 warm-up calls, 5 timed", 3, [ms() for _ in range(5)])
    timed = [ms() for _ in range(7)]
    timed[rng.randrange(7)] *= 50  # another process took the core for one call
    yield _timer_case(rng, "one timed call was interrupted (50x slower)", 2, timed)
    yield _timer_case(rng, "even number of timed calls: the median averages the two middle ones", 1,
                      [ms() for _ in range(rng.choice((4, 6)))])
    yield _timer_case(rng, "edge: the first timed call is the fastest", 3, sorted(ms() for _ in range(5)))
    yield _timer_case(rng, "edge: no warm-up", 0, [ms() for _ in range(5)])
    yield _timer_case(rng, "edge: a single timed call", 2, [ms()])
    yield _timer_case(rng, "random case", rng.randint(1, 4), [ms() for _ in range(rng.randint(3, 9))])


def _compare_time(expected, got):
    if isinstance(got, torch.Tensor):
        return f"return a Python float (seconds), not a tensor: {got!r}"
    return same(rtol=1e-9)(expected, got)


def _time_numpy(fn, synchronize, clock, warmup, repeats):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        synchronize()
        t0 = clock()
        fn()
        synchronize()
        samples.append(clock() - t0)
    return float(np.median(samples))


def _time_readings(fn, synchronize, clock, warmup, repeats):
    for _ in range(warmup):
        fn()
    synchronize()
    readings = []
    for _ in range(repeats):
        start = clock()
        fn()
        synchronize()
        readings.append((start, clock()))
    durations = sorted(end - start for start, end in readings)
    mid = len(durations) // 2
    return durations[mid] if len(durations) % 2 else (durations[mid - 1] + durations[mid]) / 2


def _never_synchronizes(fn, synchronize, clock, warmup, repeats):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return statistics.median(samples)


def _mean_not_median(fn, synchronize, clock, warmup, repeats):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        synchronize()
        t0 = clock()
        fn()
        synchronize()
        samples.append(clock() - t0)
    return statistics.fmean(samples)


def _times_the_warmup(fn, synchronize, clock, warmup, repeats):
    samples = []
    for _ in range(warmup + repeats):
        synchronize()
        t0 = clock()
        fn()
        synchronize()
        samples.append(clock() - t0)
    return statistics.median(samples)


def _no_sync_after_warmup(fn, synchronize, clock, warmup, repeats):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = clock()  # the warm-up calls are still queued at the first reading
        fn()
        synchronize()
        samples.append(clock() - t0)
    return statistics.median(samples)


def _torch_median(fn, synchronize, clock, warmup, repeats):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        synchronize()
        t0 = clock()
        fn()
        synchronize()
        samples.append(clock() - t0)
    return torch.tensor(samples, dtype=torch.float64).median().item()  # lower middle for even counts


def _tutorial_loop(fn, synchronize, clock, warmup, repeats):
    for _ in range(warmup):
        fn()
    synchronize()
    start = clock()
    for _ in range(repeats):
        fn()
        synchronize()
    return (clock() - start) / repeats


def _milliseconds(fn, synchronize, clock, warmup, repeats):
    return 1e3 * _time_numpy(fn, synchronize, clock, warmup, repeats)


# ----------------------------------------------------------------------------- 09.mlp_step_mfu
def reference_mlp_step_mfu(batch, widths, seconds_per_step, peak_flops):
    """MFU of one training step of an MLP with these widths, FLOPs counted by FlopCounterMode."""
    model = MLP(in_features=widths[0], hidden=tuple(widths[1:-1]), num_classes=widths[-1])
    x = torch.zeros(batch, widths[0])
    y = torch.zeros(batch, dtype=torch.long)
    return mfu(training_step_flops(model, x, y, cross_entropy), seconds_per_step, peak_flops)


def _mfu_cases(rng):
    def widths(n_layers, top=300):
        return [rng.randint(1, top) for _ in range(n_layers + 1)]

    def numbers():
        return rng.uniform(1e-4, 1.0), 10 ** rng.uniform(11, 15)

    yield Case("the course's MLP on digits (64-128-64-10, batch 64)", (64, [64, 128, 64, 10], *numbers()))
    yield Case("edge: a single layer (its backward has no input gradient)",
               (rng.randint(1, 64), widths(1), *numbers()))
    yield Case("edge: batch 1, a layer of width 1", (1, [rng.randint(2, 50), 1, rng.randint(2, 20)], *numbers()))
    for _ in range(2):
        yield Case("random MLP", (rng.randint(1, 256), widths(rng.randint(2, 4)), *numbers()))


def _mfu_by_formula(batch, widths, seconds_per_step, peak_flops):
    pairs = list(zip(widths[:-1], widths[1:]))
    forward = sum(2 * batch * a * b for a, b in pairs)
    weight_grads = forward
    input_grads = forward - 2 * batch * widths[0] * widths[1]  # the data needs no gradient
    return (forward + weight_grads + input_grads) / seconds_per_step / peak_flops


def _mfu_with_flop_counter(batch, widths, seconds_per_step, peak_flops):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    counter = FlopCounterMode(display=False)
    with counter:
        net(torch.randn(batch, widths[0])).sum().backward()
    return counter.get_total_flops() / seconds_per_step / peak_flops


def _mfu_six_n_corrected(batch, widths, seconds_per_step, peak_flops):
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return (6 * weights * batch - 2 * batch * widths[0] * widths[1]) / (seconds_per_step * peak_flops)


def _mfu_six_n_all_params(batch, widths, seconds_per_step, peak_flops):
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    return 6 * params * batch / seconds_per_step / peak_flops


def _mfu_six_n_weights(batch, widths, seconds_per_step, peak_flops):
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 6 * weights * batch / seconds_per_step / peak_flops


def _mfu_forward_only(batch, widths, seconds_per_step, peak_flops):
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 2 * weights * batch / seconds_per_step / peak_flops


def _mfu_multiply_adds(batch, widths, seconds_per_step, peak_flops):
    return _mfu_by_formula(batch, widths, seconds_per_step, peak_flops) / 2


def _mfu_peak_in_tflops(batch, widths, seconds_per_step, peak_flops):
    return _mfu_by_formula(batch, widths, seconds_per_step, peak_flops) * 1e12


EXERCISES = [
    Exercise(
        id="09.time_call",
        title="Time a call on an asynchronous device: warm-up, synchronise, median",
        points=3,
        reference=reference_time_call,
        cases=_timer_cases,
        compare=_compare_time,
        hint="call fn warmup times untimed; then for each timed call synchronize() before reading the "
             "clock and again after fn() (the work is queued, not done, when fn returns); return the "
             "median of the durations in seconds as a float (statistics.median averages the two middle "
             "values of an even count)",
        alternatives=(
            Alternative(_time_numpy, "numpy.median of the synchronised durations"),
            Alternative(_time_readings, "one synchronize after the warm-up, clock pairs, hand-computed median"),
        ),
        mistakes=(
            Mistake(_never_synchronizes, "never synchronises: measures the launch, not the work"),
            Mistake(_mean_not_median, "the mean: one interrupted call moves it"),
            Mistake(_times_the_warmup, "times the warm-up calls too"),
            Mistake(_no_sync_after_warmup, "no synchronize before the first reading: queued warm-up work is timed"),
            Mistake(_torch_median, "torch.median: the lower middle value for an even count"),
            Mistake(_tutorial_loop, "the tutorial's loop: total time / repeats (a mean)"),
            Mistake(_milliseconds, "returns milliseconds"),
        ),
    ),
    Exercise(
        id="09.mlp_step_mfu",
        title="MFU of an MLP training step from its FLOPs, its time and the peak",
        points=2,
        reference=reference_mlp_step_mfu,
        cases=_mfu_cases,
        compare=same(rtol=1e-9),
        hint="a Linear(a, b) on B rows is 2*B*a*b FLOPs forward; its backward computes the weight "
             "gradient (same size) and, except for the first layer (its input is data), the input "
             "gradient (same size again); MFU = FLOPs / seconds / peak, all in FLOP and FLOP/s",
        alternatives=(
            Alternative(_mfu_by_formula, "forward + weight gradients + input gradients, summed by hand"),
            Alternative(_mfu_with_flop_counter, "FlopCounterMode around a hand-built nn.Sequential"),
            Alternative(_mfu_six_n_corrected, "6 * weights * B minus the first layer's input gradient"),
        ),
        mistakes=(
            Mistake(_mfu_six_n_all_params, "6 * N * B with biases in N and the first input gradient counted"),
            Mistake(_mfu_six_n_weights, "6 * weights * B: counts an input gradient the data does not need"),
            Mistake(_mfu_forward_only, "forward FLOPs only"),
            Mistake(_mfu_multiply_adds, "one FLOP per multiply-add"),
            Mistake(_mfu_peak_in_tflops, "divides by the peak in TFLOP/s"),
        ),
    ),
]
