"""course_lib.grading.compare: what counts as the same answer, and what the report says."""
import math

import pytest
import torch

from course_lib.grading.compare import exact, same, short


def test_equal_structures_pass():
    value = {"a": [1, 2.5, "x"], "b": torch.tensor([1.0, float("nan")]), "c": None, "d": True}
    assert exact(value, {"a": [1, 2.5, "x"], "b": torch.tensor([1.0, float("nan")]), "c": None,
                         "d": True}) is None


@pytest.mark.parametrize("expected, got, words", [
    (3, 4, "expected 3, got 4"),
    (3, "3", "expected a number, got str"),
    (3, 3.5, "whole number"),
    ({"a": 1}, {"b": 1}, "missing keys ['a']"),
    ({"a": 1}, 1, "expected a dict"),
    ([1, 2], [1], "expected length 2"),
    ({"a": [1, 2]}, {"a": [1, 3]}, "at ['a'][1]"),
    (torch.zeros(3), torch.zeros(4), "shape: expected (3,), got (4,)"),
    (torch.zeros(3), torch.zeros(3, dtype=torch.float16), "dtype: expected torch.float32"),
    (torch.zeros(3), [0, 0, 0], "expected a torch.Tensor, got list"),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), "1 of 2 values differ; first at index [1]"),
    (True, False, "expected True, got False"),
    ("fp16", "bf16", "expected 'fp16'"),
])
def test_differences_are_named(expected, got, words):
    reason = exact(expected, got)
    assert reason is not None and words in reason, reason


def test_tolerance_and_bitwise():
    assert same(rtol=1e-3)(1000.0, 1000.5) is None
    assert same(rtol=1e-4)(1000.0, 1000.5) is not None
    assert same(atol=0.1)(torch.tensor([1.0]), torch.tensor([1.05])) is None
    assert exact(torch.tensor([0.0]), torch.tensor([-0.0])) is None
    reason = same(bitwise=True)(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert reason is not None and "-0" in reason
    assert same(bitwise=True)(torch.tensor([math.nan]), torch.tensor([math.nan])) is None
    assert same(check_dtype=False)(torch.tensor([2.0]), torch.tensor([2.0], dtype=torch.float16)) is None


def test_short_summarises_big_values():
    text = short(torch.arange(1000.0))
    assert "shape=(1000,)" in text and len(text) < 200
    assert short("x" * 1000).endswith("...")
