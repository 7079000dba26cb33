"""Every exercise: the reference passes, the learner stub is 'not implemented', and the
mistakes learners really make (and hard-coded or forbidden shortcuts) fail."""
import math

import pytest
import torch

from course_lib.grading import all_exercises, check
from course_lib.master import unscale_to_fp32


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


@pytest.mark.parametrize("exercise_id", [i for i in all_exercises() if not i.startswith("99.")])
def test_reference_passes_and_stub_is_not_implemented(exercise_id):
    ex = all_exercises()[exercise_id]
    assert check(exercise_id, ex.reference, quiet=True).status == "passed"
    result = check(exercise_id, _stub, quiet=True)
    assert result.status == "not implemented" and result.points == 0


def _decode_positive_zero(bits):
    from course_lib.exercises.ch01_float_formats import decode_fp16
    value = decode_fp16(bits)
    return 0.0 if value == 0 else value


def _decode_no_subnormals(bits):
    s, e, m = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    if e == 0x1F:
        return math.nan if m else (-1) ** s * math.inf
    return (-1) ** s * 2.0 ** (e - 15) * (1 + m / 1024)        # treats E=0 as normal


def _bf16_truncate(x):
    return (x.view(torch.int32) & -0x10000).view(torch.float32)


def _bf16_round_half_up(x):
    r = ((x.view(torch.int32) + 0x8000) & -0x10000).view(torch.float32)
    return torch.where(torch.isnan(x), x, r)


def _bf16_cast(x):
    return x.to(torch.bfloat16).float()


def _ulp_forgets_zero(x):
    _, e = torch.frexp(x.abs())
    return torch.exp2(((e - 1).clamp(min=-14) - 10).float())


def _ulp_no_subnormal_floor(x):
    _, e = torch.frexp(x.abs())
    return torch.exp2((e - 11).float())


def _underflow_counts_zeros(x, dtype):
    return (x.to(dtype).float() == 0).float().mean().item()


def _naive_log_softmax(x):
    return torch.log(torch.exp(x) / torch.exp(x).sum(-1, keepdim=True))


def _unscale_in_fp16(grads16, scale):
    grads = [(g / scale).float() for g in grads16]
    return grads, not all(bool(torch.isfinite(g).all()) for g in grads)


def _unscale_forgets_nan(grads16, scale):
    grads = [g.float() / scale for g in grads16]
    return grads, any(bool(torch.isinf(g).any()) for g in grads)


def _step_without_master(params16, grads16, masters, lr, scale):
    grads32, found_inf = unscale_to_fp32(grads16, scale)
    if found_inf:
        return [p.clone() for p in params16], [m.clone() for m in masters], False
    new16 = [(p.float() - lr * g).half() for p, g in zip(params16, grads32)]
    return new16, [p.float() for p in new16], True


def _step_never_skips(params16, grads16, masters, lr, scale):
    grads32, _ = unscale_to_fp32(grads16, scale)
    new_masters = [m - lr * g for m, g in zip(masters, grads32)]
    return [m.half() for m in new_masters], new_masters, True


def _step_mutates_inputs(params16, grads16, masters, lr, scale):
    grads32, found_inf = unscale_to_fp32(grads16, scale)
    if found_inf:
        return params16, masters, False
    for m, g, p in zip(masters, grads32, params16):
        m.sub_(lr * g)
        p.copy_(m)
    return params16, masters, True


WRONG = [
    ("01.decode_fp16", _decode_positive_zero, "failed"),
    ("01.decode_fp16", _decode_no_subnormals, "failed"),
    ("01.decode_fp16", lambda bits: 1.0, "failed"),
    ("01.round_to_bf16", _bf16_truncate, "failed"),
    ("01.round_to_bf16", _bf16_round_half_up, "failed"),
    ("01.round_to_bf16", _bf16_cast, "failed"),              # refused: creates bfloat16 tensors
    ("01.fp16_ulp", _ulp_forgets_zero, "failed"),
    ("01.fp16_ulp", _ulp_no_subnormal_floor, "failed"),
    ("02.underflow_fraction", _underflow_counts_zeros, "failed"),
    ("02.underflow_fraction", lambda x, dtype: 0.0, "failed"),
    ("02.stable_log_softmax", _naive_log_softmax, "failed"),
    ("02.stable_log_softmax", lambda x: torch.log_softmax(x.float(), -1), "failed"),   # wrong dtype
    ("03.unscale_to_fp32", _unscale_in_fp16, "failed"),
    ("03.unscale_to_fp32", _unscale_forgets_nan, "failed"),
    ("03.master_sgd_step", _step_without_master, "failed"),
    ("03.master_sgd_step", _step_never_skips, "failed"),
]


@pytest.mark.parametrize("exercise_id, fn, status", WRONG,
                         ids=[f"{e}-{getattr(f, '__name__', 'lambda')}" for e, f, _ in WRONG])
def test_common_mistakes_fail(exercise_id, fn, status):
    result = check(exercise_id, fn, quiet=True)
    assert result.status == status, result.report()
    assert result.points == 0 and result.messages


def test_forbidden_cast_is_named_in_the_report():
    report = check("01.round_to_bf16", _bf16_cast, quiet=True).report()
    assert "torch.bfloat16" in report and "`to`" in report


def test_learner_mutation_cannot_affect_the_reference():
    # The reference and the learner get independent deep copies of each case's inputs, so a
    # learner that mutates its inputs cannot change what it is compared against; its returned
    # values are judged as they are (here they are right).
    assert check("03.master_sgd_step", _step_mutates_inputs, quiet=True).status == "passed"
