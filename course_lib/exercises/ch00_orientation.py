"""Chapter 00 exercises: the memory bill (notebooks/00_orientation.ipynb)."""
from __future__ import annotations

import torch

from course_lib.grading.compare import exact
from course_lib.grading.registry import Case, Exercise, register
from course_lib.memory import OPTIMIZER_STATES, RECIPES, parameter_bytes, training_state_bytes

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn)


class _Tied(torch.nn.Module):
    """Embedding and output layer share one weight (as in GPT-2): count it once."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight


def _random_mlp(rng) -> torch.nn.Module:
    sizes = [rng.randint(1, 300) for _ in range(rng.randint(2, 5))]
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b, bias=rng.random() < 0.7), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def _parameter_bytes_cases(rng):
    yield Case("edge: a module without parameters", (torch.nn.ReLU(), torch.float16))
    yield Case("edge: BatchNorm (buffers are not parameters)", (torch.nn.BatchNorm1d(7), torch.float32))
    yield Case("edge: tied weights count once", (_Tied(rng.randint(5, 50), rng.randint(2, 16)), torch.bfloat16))
    for dtype in _DTYPES:
        yield Case(f"random MLP in {dtype}", (_random_mlp(rng), dtype))


def _state_bytes_cases(rng):
    yield Case("edge: zero parameters", (0, "mixed", "adam"))
    for recipe in RECIPES:
        for optimizer in OPTIMIZER_STATES:
            n = rng.choice([rng.randint(1, 1000), rng.randint(10**6, 10**10)])
            yield Case(f"{recipe} with {optimizer}", (n, recipe, optimizer))


register(Exercise(
    id="00.parameter_bytes",
    title="Bytes of a model's parameters in a given dtype",
    points=1,
    reference=parameter_bytes,
    cases=_parameter_bytes_cases,
    compare=exact,
    hint="count every parameter once (model.parameters()) and multiply by the bytes of one "
         "element of dtype (torch.empty((), dtype=dtype).element_size()); buffers are not parameters",
))

register(Exercise(
    id="00.training_state_bytes",
    title="The memory bill of training: weights, gradients, master weights, optimizer state",
    points=2,
    reference=training_state_bytes,
    cases=_state_bytes_cases,
    compare=exact,
    hint="the optimizer keeps its states in the dtype of the weights it steps: the FP32 master "
         "weights when there are some; autocast ('amp') keeps FP32 weights and gradients",
))
