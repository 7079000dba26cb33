"""Chapter 00 exercises: the memory bill (notebooks/00_orientation.ipynb)."""
from __future__ import annotations

import torch

from course_lib.grading.compare import exact
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
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
    yield Case("edge: zero parameters", (0, "mixed_manual", "adam"))
    for recipe in RECIPES:
        for optimizer in OPTIMIZER_STATES:
            n = rng.choice([rng.randint(1, 1000), rng.randint(10**6, 10**10)])
            yield Case(f"{recipe} with {optimizer}", (n, recipe, optimizer))


# -- known-correct alternatives and known mistakes ---------------------------------------------
def _bytes_by_itemsize(model, dtype):
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def _bytes_by_finfo_bits(model, dtype):
    unique = {id(p): p for m in model.modules() for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in unique.values()) * torch.finfo(dtype).bits // 8


def _bytes_always_two(model, dtype):
    return sum(p.numel() for p in model.parameters()) * 2


def _bytes_with_buffers(model, dtype):
    return sum(t.numel() for t in model.state_dict().values()) * dtype.itemsize


def _bytes_tied_twice(model, dtype):
    return sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False)) * dtype.itemsize


_LAYOUT = {  # recipe -> bytes of (weights, gradients, masters, each optimizer state)
    "fp32": (4, 4, 0, 4), "amp_fp16": (4, 4, 0, 4), "amp_bf16": (4, 4, 0, 4),
    "mixed_manual": (2, 2, 4, 4), "fp16_naive": (2, 2, 0, 2), "bf16_pure": (2, 2, 0, 2)}
_STATES = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}


def _bill_from_table(n_params, recipe, optimizer="adam"):
    w, g, m, s = _LAYOUT[recipe]
    bill = {"weights": n_params * w, "gradients": n_params * g, "master_weights": n_params * m,
            "optimizer_state": n_params * s * _STATES[optimizer]}
    return {**bill, "total": sum(bill.values())}


def _bill_from_dtypes(n_params, recipe, optimizer="adam"):
    param = {"fp16_naive": torch.float16, "mixed_manual": torch.float16,
             "bf16_pure": torch.bfloat16}.get(recipe, torch.float32)
    size = torch.empty((), dtype=param).element_size()
    master = 4 if recipe == "mixed_manual" else 0
    per_param = {"weights": size, "gradients": size, "master_weights": master,
                 "optimizer_state": (master or size) * _STATES[optimizer]}
    bill = {k: n_params * v for k, v in per_param.items()}
    bill["total"] = n_params * sum(per_param.values())
    return bill


def _bill_mixed_halves(n_params, recipe, optimizer="adam"):
    bill = training_state_bytes(n_params, recipe, optimizer)
    return {k: v // 2 for k, v in bill.items()} if recipe == "mixed_manual" else bill


def _bill_state_in_model_dtype(n_params, recipe, optimizer="adam"):
    bill = training_state_bytes(n_params, recipe, optimizer)
    if recipe == "mixed_manual":  # forgets that the optimizer steps the FP32 masters
        bill["total"] -= bill["optimizer_state"] // 2
        bill["optimizer_state"] //= 2
    return bill


def _bill_amp_in_16_bit(n_params, recipe, optimizer="adam"):
    return training_state_bytes(n_params, "fp16_naive" if recipe.startswith("amp") else recipe, optimizer)


EXERCISES = [
    Exercise(
        id="00.parameter_bytes",
        title="Bytes of a model's parameters in a given dtype",
        points=1,
        reference=parameter_bytes,
        cases=_parameter_bytes_cases,
        compare=exact,
        hint="count every parameter once (model.parameters()) and multiply by the bytes of one "
             "element of dtype (torch.empty((), dtype=dtype).element_size()); buffers are not parameters",
        alternatives=(
            Alternative(_bytes_by_itemsize, "dtype.itemsize instead of element_size()"),
            Alternative(_bytes_by_finfo_bits, "unique parameters by id, bits // 8 from torch.finfo"),
        ),
        mistakes=(
            Mistake(_bytes_always_two, "2 bytes for every dtype"),
            Mistake(_bytes_with_buffers, "counts the buffers in state_dict() as parameters"),
            Mistake(_bytes_tied_twice, "counts a tied weight once per module that holds it"),
        ),
    ),
    Exercise(
        id="00.training_state_bytes",
        title="The memory bill of training: weights, gradients, master weights, optimizer state",
        points=2,
        reference=training_state_bytes,
        cases=_state_bytes_cases,
        compare=exact,
        hint="the optimizer keeps its states in the dtype of the weights it steps: the FP32 master "
             "weights when there are some; autocast ('amp_*') keeps FP32 weights and gradients",
        alternatives=(
            Alternative(_bill_from_table, "a table of bytes per recipe"),
            Alternative(_bill_from_dtypes, "bytes derived from each recipe's parameter dtype"),
        ),
        mistakes=(
            Mistake(_bill_mixed_halves, "'mixed precision halves memory'"),
            Mistake(_bill_state_in_model_dtype, "Adam's state in FP16 under manual mixed precision"),
            Mistake(_bill_amp_in_16_bit, "autocast counted as 16-bit weights"),
        ),
    ),
]
