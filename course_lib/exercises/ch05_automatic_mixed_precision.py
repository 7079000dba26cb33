"""Chapter 05 exercises: unscale, clip and step with a GradScaler; find the first non-finite module
(notebooks/05_automatic_mixed_precision.ipynb).

``05.amp_clip_step`` changes its arguments (the model's parameters and the
scaler's scale): the grader judges those, not only the returned StepInfo.
A deep copy would not reproduce the arguments (``Parameter.__deepcopy__``
drops ``.grad``; a copied GradScaler forgets its live scale), so each case
*builds* fresh ``(model, optimizer, scaler, max_norm)`` for every call
(``Case.build``, deterministic from a seed drawn from the check's rng), and
the exercise's ``observe`` hands the comparator the returned StepInfo with
the parameters and the scale the call left behind.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.debug import NonFiniteDetector, first_nonfinite_module
from course_lib.grading.compare import same
from course_lib.grading.inputs import torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.steppers import GradScalerStepper, StepInfo


# --------------------------------------------------------------------------- 05.amp_clip_step
def amp_clip_step_reference(model, optimizer, scaler, max_norm) -> StepInfo:
    """The reference: :class:`course_lib.steppers.GradScalerStepper`'s step.

    (unscale_, norm of the unscaled gradients, clip, step, update).
    """
    return GradScalerStepper(list(model.parameters()), optimizer, scaler, grad_clip=max_norm).step()


def _observe_step(args, kwargs, returned):
    """(the returned StepInfo, the parameters after the step, the scale after update())."""
    model, _, scaler, _ = args
    return returned, [p.detach().clone() for p in model.parameters()], scaler.get_scale()


def _make_model(g, sizes):
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2]))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _step_case(rng, label, *, optimizer, growth_interval=2000, clip="active", poison=None):
    """A case whose build() makes (model, optimizer, scaler, max_norm) right after a scaled backward."""
    sizes = [rng.randint(2, 6) for _ in range(3)]
    lr = rng.choice([0.01, 0.05, 0.1])
    init_scale = 2.0 ** rng.randint(6, 16)
    fraction = rng.uniform(0.1, 0.8) if clip == "active" else rng.uniform(1.5, 4.0)
    batches = [rng.randint(3, 8) for _ in range(2)]
    seed = rng.getrandbits(62)
    victim_pick = (rng.random(), rng.random())

    def build():
        g = torch.Generator().manual_seed(seed)
        model = _make_model(g, sizes)
        if optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=lr * 0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)

        def scaled_backward(n):
            x = torch.randn(n, sizes[0], generator=g) * 2
            y = torch.randn(n, sizes[2], generator=g) * 3
            scaler.scale(F.mse_loss(model(x), y) * 4).backward()

        scaled_backward(batches[0])  # a warm-up step, so the optimizer has state as in real training
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        scaled_backward(batches[1])
        grads = [p.grad for p in model.parameters()]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr) for gr in grads])))
        norm /= scaler.get_scale()
        max_norm = round(norm * fraction + (0.01 if clip != "active" else 0.0), 6)
        if poison is not None:
            victim = grads[int(victim_pick[0] * len(grads))]
            victim.view(-1)[int(victim_pick[1] * victim.numel())] = poison
        return model, opt, scaler, max_norm

    return Case(label, build=build)


def _step_cases(rng):
    yield _step_case(rng, "gradients above max_norm (clipping changes them), SGD with momentum",
                     optimizer="sgd", clip="active")
    yield _step_case(rng, "gradients below max_norm (nothing to clip), Adam", optimizer="adam",
                     clip="inactive")
    yield _step_case(rng, "growth_interval=1: the scale grows after this step", optimizer="sgd",
                     growth_interval=1, clip=rng.choice(["active", "inactive"]))
    yield _step_case(rng, "edge: a gradient overflowed to inf: the step must be skipped",
                     optimizer=rng.choice(["sgd", "adam"]), poison=float("inf"))
    yield _step_case(rng, "edge: a gradient is NaN: the step must be skipped", optimizer="sgd",
                     clip="active", poison=float("nan"))


def _compare_step(expected, got) -> str | None:
    (info, ref_params, ref_scale), (got, params, scale) = expected, got
    if not all(hasattr(got, a) for a in ("scale", "skipped", "grad_norm")):
        return (f"expected a StepInfo(scale=..., skipped=..., grad_norm=...), got "
                f"{type(got).__name__}")
    reason = same()(info.scale, got.scale)
    if reason:
        return f"StepInfo.scale (the scale the backward pass used): {reason}"
    reason = same()(info.skipped, got.skipped)
    if reason:
        return f"StepInfo.skipped: {reason}"
    try:
        norm = float(got.grad_norm)
    except (TypeError, ValueError):
        return f"StepInfo.grad_norm must be a number, got {type(got.grad_norm).__name__}"
    if info.skipped:
        if math.isfinite(norm):
            return (f"StepInfo.grad_norm: a gradient is inf/NaN, so their norm is not finite; "
                    f"got {norm!r}")
    else:
        reason = same(rtol=1e-5)(info.grad_norm, norm)
        if reason:
            return f"StepInfo.grad_norm (the norm of the unscaled gradients, before clipping): {reason}"
    reason = same(rtol=1e-5, atol=1e-6)(ref_params, params)
    if reason:
        return f"the model's parameters after your step differ from the correct step: {reason}"
    if scale != ref_scale:
        return f"scaler.get_scale() after your step: expected {ref_scale!r}, got {scale!r}"
    return None


# known-correct alternatives ------------------------------------------------------------------
def _step_with_clip_grad_norm(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # returns the norm before clipping
    scaler.step(optimizer)
    scaler.update()
    return StepInfo(scale, scaler.get_scale() < scale, float(norm))  # the scale only drops after a skip


def _step_by_hand_with_hook(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.cat([gr.flatten() for gr in grads])).item()
    if norm > max_norm:
        for gr in grads:
            gr.mul_(max_norm / norm)
    stepped = []
    handle = optimizer.register_step_post_hook(lambda *args: stepped.append(True))
    scaler.step(optimizer)
    handle.remove()
    scaler.update()
    return StepInfo(scale=scale, skipped=not stepped, grad_norm=norm)


def _step_with_total_norm(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    params = list(model.parameters())
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    scaler.step(optimizer)
    scaler.update()
    return StepInfo(scale, not math.isfinite(total.item()), total.item())


# known mistakes ----------------------------------------------------------------------------------
def _clips_scaled_gradients(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # pytorch/examples#1196
    scaler.step(optimizer)
    scaler.update()
    return StepInfo(scale, scaler.get_scale() < scale, float(norm))


def _unscales_twice(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.unscale_(optimizer)  # "to be safe": transformers#23905
    scaler.step(optimizer)
    scaler.update()
    return StepInfo(scale, scaler.get_scale() < scale, float(norm))


def _forgets_update(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    return StepInfo(scale, not math.isfinite(float(norm)), float(norm))


def _steps_optimizer_directly(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()  # bypasses the scaler's inf/NaN check
    scaler.update()
    return StepInfo(scale, scaler.get_scale() < scale, float(norm))


def _reports_clipped_norm(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])  # after clipping
    scaler.step(optimizer)
    scaler.update()
    return StepInfo(scale, scaler.get_scale() < scale, float(norm))


def _clips_after_step(model, optimizer, scaler, max_norm):
    scale = scaler.get_scale()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # too late: already stepped
    scaler.update()
    return StepInfo(scale, scaler.get_scale() < scale, float(norm))


# --------------------------------------------------------------------------- 05.first_nonfinite_module
class _Gain(nn.Module):
    """A block whose own code (not a child) multiplies its child's output by ``gain``."""

    def __init__(self, inner: nn.Module, gain: float):
        super().__init__()
        self.inner = inner
        self.gain = gain

    def forward(self, x):
        return self.inner(x) * self.gain


class _Log(nn.Module):
    """``log(x)``: NaN for negative inputs."""

    def forward(self, x):
        return torch.log(x)


class _Net(nn.Module):
    """stem -> blocks (a ModuleList of Sequentials) -> head: names like 'blocks.1.0'."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _linear(g, d_in, d_out, scale=1.0):
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d_out, d_in, generator=g) * scale / math.sqrt(d_in))
        lin.bias.copy_(torch.randn(d_out, generator=g) * 0.1 * scale)
    return lin


def _block(g, d):
    return nn.Sequential(_linear(g, d, d), nn.ReLU())


def _finite_net(rng, g, d):
    n_blocks = rng.randint(2, 4)
    return _Net(_linear(g, 4, d), [_block(g, d) for _ in range(n_blocks)], _linear(g, d, 3))


def _rebalanced_net(rng, g, x, d):
    """An FP32-equivalent net whose first block's output overflows float16 (but not bfloat16).

    ReLU is positively homogeneous: multiplying a Linear (weight and bias) by
    K and the next Linear's weight by 1/K leaves the FP32 function unchanged
    (exactly, K a power of two). K is chosen so the block's largest output is
    above 4 x 65504, far beyond FP16's largest finite value.
    """
    net = _finite_net(rng, g, d)
    i = rng.randrange(len(net.blocks) - 1)
    with torch.no_grad():
        h = net.blocks[i](net.stem(x) if i == 0 else _prefix(net, x, i))
        k = 2.0 ** math.ceil(math.log2(4 * 65504.0 / float(h.abs().max())))
        net.blocks[i][0].weight.mul_(k)
        net.blocks[i][0].bias.mul_(k)
        net.blocks[i + 1][0].weight.div_(k)
    return net


def _prefix(net, x, i):
    h = net.stem(x)
    for block in net.blocks[:i]:
        h = block(h)
    return h


def _promised(build, promise, tries=20):
    """``build()`` until ``promise(case_args)`` holds (a case must keep what its label says)."""
    for _ in range(tries):
        args = build()
        if promise(args):
            return args
    raise RuntimeError("could not build a case that keeps its promise")  # pragma: no cover


def _first(args):
    return first_nonfinite_module(*args)


def _nonfinite_cases(rng):
    g = torch_generator(rng)
    d = rng.randint(6, 12)

    def inputs():
        return torch.randn(rng.randint(2, 6), 4, generator=g)

    yield Case("all outputs finite", _promised(lambda: (_finite_net(rng, g, d), inputs()),
                                               lambda a: _first(a) is None))

    def nan_net():
        net = _finite_net(rng, g, d)
        j = rng.randrange(len(net.blocks))
        net.blocks[j] = nn.Sequential(_linear(g, d, d), _Log())  # log of negative values: NaN
        return net, inputs()

    def nan_only(args):
        with torch.no_grad():
            out = args[0](args[1])
        return bool(torch.isnan(out).any()) and not bool(torch.isinf(out).any())

    yield Case("edge: NaN (and no inf) made inside a block", _promised(nan_net, nan_only))

    def rebalanced(dtype):
        x = inputs()
        return _rebalanced_net(rng, g, x, d), x, dtype

    yield Case("edge: an overflow that happens only in float16",
               _promised(lambda: rebalanced(torch.float16),
                         lambda a: _first(a) is not None and _first(a[:2]) is None))
    yield Case("the same kind of model under bfloat16 autocast",
               _promised(lambda: rebalanced(torch.bfloat16), lambda a: _first(a) is None))

    def gain_net():
        net = _finite_net(rng, g, d)
        j = rng.randrange(len(net.blocks))
        net.blocks[j] = _Gain(net.blocks[j], float("inf"))  # the block's own code makes the inf
        return net, inputs()

    yield Case("edge: a block's own code (not a child) makes the inf",
               _promised(gain_net, lambda a: _first(a) is not None))
    yield Case("edge: the model's own forward makes the inf",
               _promised(lambda: (_Gain(_finite_net(rng, g, d), float("inf")), inputs()),
                         lambda a: _first(a) == ""))

    def huge_weights():
        net = _finite_net(rng, g, d)
        j = rng.randrange(len(net.blocks) - 1)
        with torch.no_grad():  # finite weights; two layers of ~1e20 overflow float32 (max ~3.4e38)
            net.blocks[j][0].weight.mul_(1e20)
            net.blocks[j + 1][0].weight.mul_(1e20)
        return net, inputs()

    yield Case("float32 overflow from huge (finite) weights",
               _promised(huge_weights, lambda a: _first(a) is not None
                         and all(bool(torch.isfinite(p).all()) for p in a[0].parameters())))


def _compare_name(expected, got) -> str | None:
    if expected is None:
        return None if got is None else f"every output is finite: expected None, got {got!r}"
    if not isinstance(got, str):
        return (f"expected a module name (a str from model.named_modules(), '' for the model "
                f"itself), got {type(got).__name__}: {got!r}")
    return None if got == expected else f"expected {expected!r}, got {got!r}"


# known-correct alternatives ------------------------------------------------------------------
def _first_with_detector(model, x, autocast_dtype=None):
    context = (torch.amp.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else torch.amp.autocast(x.device.type, enabled=False))
    with NonFiniteDetector(model, backward=False) as det, context:
        model(x)
    return det.first_forward.module if det.found else None


def _first_with_global_hook(model, x, autocast_dtype=None):
    names = {id(m): n for n, m in model.named_modules()}
    found = []

    def hook(module, args, output):
        if not found and id(module) in names and not torch.isfinite(output).all():
            found.append(names[id(module)])

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                                             enabled=autocast_dtype is not None):
            model(x)
    finally:
        handle.remove()
    return found[0] if found else None


class _Found(Exception):
    pass


def _first_by_stopping_early(model, x, autocast_dtype=None):
    def make_hook(name):
        def hook(module, args, output):
            if torch.isnan(output).any() or torch.isinf(output).any():
                raise _Found(name)
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules()]
    try:
        if autocast_dtype is None:
            model(x)
        else:
            with torch.amp.autocast(x.device.type, dtype=autocast_dtype):
                model(x)
    except _Found as found:
        return found.args[0]
    finally:
        for h in handles:
            h.remove()
    return None


# known mistakes ----------------------------------------------------------------------------------
def _hook_all(model, check, want="first", use_children=False):
    modules = model.named_children() if use_children else model.named_modules()
    hits = []
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: hits.append(n) if check(out) else None)
               for n, m in modules]
    return hits, handles


def _run(model, x, autocast_dtype):
    with torch.no_grad():
        if autocast_dtype is None:
            model(x)
        else:
            with torch.amp.autocast(x.device.type, dtype=autocast_dtype):
                model(x)


def _first_inf_only(model, x, autocast_dtype=None):
    hits, handles = _hook_all(model, lambda out: bool(torch.isinf(out).any()))
    _run(model, x, autocast_dtype)
    for h in handles:
        h.remove()
    return hits[0] if hits else None


def _first_bad_input(model, x, autocast_dtype=None):
    hits = []
    handles = [m.register_forward_pre_hook(
        lambda mod, args, n=n: hits.append(n) if not torch.isfinite(args[0]).all() else None)
        for n, m in model.named_modules()]
    _run(model, x, autocast_dtype)
    for h in handles:
        h.remove()
    return hits[0] if hits else None


def _ignores_autocast(model, x, autocast_dtype=None):
    hits, handles = _hook_all(model, lambda out: not bool(torch.isfinite(out).all()))
    _run(model, x, None)
    for h in handles:
        h.remove()
    return hits[0] if hits else None


def _last_nonfinite(model, x, autocast_dtype=None):
    hits, handles = _hook_all(model, lambda out: not bool(torch.isfinite(out).all()))
    _run(model, x, autocast_dtype)
    for h in handles:
        h.remove()
    return hits[-1] if hits else None


def _checks_parameters(model, x, autocast_dtype=None):
    for name, module in model.named_modules():
        if any(not bool(torch.isfinite(p).all()) for p in module.parameters(recurse=False)):
            return name
    return None


def _top_level_only(model, x, autocast_dtype=None):
    hits, handles = _hook_all(model, lambda out: not bool(torch.isfinite(out).all()), use_children=True)
    _run(model, x, autocast_dtype)
    for h in handles:
        h.remove()
    return hits[0] if hits else None


EXERCISES = [
    Exercise(
        id="05.amp_clip_step",
        title="Unscale, clip and step with a GradScaler, in the right order",
        points=3,
        reference=amp_clip_step_reference,
        cases=_step_cases,
        compare=_compare_step,
        observe=_observe_step,
        hint="scaler.unscale_(optimizer) exactly once, then measure the norm and clip, then "
             "scaler.step(optimizer) (it skips on inf/NaN) and scaler.update(); the scale drops "
             "only when the step was skipped",
        alternatives=(
            Alternative(_step_with_clip_grad_norm, "clip_grad_norm_ (returns the norm before clipping); "
                                                   "skipped read from the scale dropping"),
            Alternative(_step_by_hand_with_hook, "norm of all gradients concatenated, clipped by hand "
                                                 "(max_norm / norm); skipped read from an optimizer hook"),
            Alternative(_step_with_total_norm, "torch.nn.utils.get_total_norm + clip_grads_with_norm_; "
                                               "skipped when the norm is not finite"),
        ),
        mistakes=(
            Mistake(_clips_scaled_gradients, "clips the scaled gradients (pytorch/examples#1196)"),
            Mistake(_unscales_twice, "calls scaler.unscale_ a second time (transformers#23905)"),
            Mistake(_forgets_update, "never calls scaler.update()"),
            Mistake(_steps_optimizer_directly, "calls optimizer.step(), bypassing the inf/NaN check"),
            Mistake(_reports_clipped_norm, "reports the norm after clipping"),
            Mistake(_clips_after_step, "clips after the optimizer step"),
        ),
    ),
    Exercise(
        id="05.first_nonfinite_module",
        title="Find the first module whose output is inf or NaN",
        points=3,
        reference=first_nonfinite_module,
        cases=_nonfinite_cases,
        compare=_compare_name,
        hint="a forward hook on every module of model.named_modules() sees each output in execution "
             "order (a module's hook fires after its children's); keep the first name whose output "
             "is not finite (torch.isfinite catches inf and NaN); run under autocast when a dtype is given",
        alternatives=(
            Alternative(_first_with_detector, "course_lib.debug.NonFiniteDetector"),
            Alternative(_first_with_global_hook, "one global module forward hook and an id -> name map"),
            Alternative(_first_by_stopping_early, "hooks that raise at the first non-finite output"),
        ),
        mistakes=(
            Mistake(_first_inf_only, "checks for inf but not NaN"),
            Mistake(_first_bad_input, "checks each module's input (pre-hooks): names the module after"),
            Mistake(_ignores_autocast, "runs without autocast, where the float16 overflow does not happen"),
            Mistake(_last_nonfinite, "returns the last non-finite module instead of the first"),
            Mistake(_checks_parameters, "looks for inf/NaN in the parameters, not the outputs"),
            Mistake(_top_level_only, "hooks only the top-level children"),
        ),
    ),
]
