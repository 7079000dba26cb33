"""course_lib.formats: bit-exact tools for every 16- and 8-bit float format.

Introduced in chapter 01 (notebooks/01_float_formats.ipynb).

One idea per submodule:

- ``registry``: ``FloatFormat`` (exponent bits, mantissa bits, convention
  "ieee" / "fn" / "fnuz") with every number of its data sheet derived from
  the bits; the built-ins fp32, tf32, fp16, bf16, fp8_e4m3fn, fp8_e5m2,
  fp8_e4m3fnuz, fp8_e5m2fnuz; ``get_format`` (names, aliases, torch dtypes)
  and ``make_format`` (user formats, 2..8 exponent and 0..23 mantissa bits).
- ``codec``: ``decode`` (bit patterns -> float32 values: normal numbers by
  re-biasing the exponent field into a float32 bit pattern, subnormals as
  ``M * min_subnormal``), ``encode`` (values -> bit patterns), ``fields``
  and ``explain`` (one pattern, field by field).
- ``rounding``: ``round_to_format`` -- round-to-nearest-even, stochastic
  and toward-zero rounding as integer arithmetic on the float32 bit pattern
  (drop ``23 - m`` bits, one more per binade below ``min_normal``; a carry
  out of the mantissa is the next power of two), plus the target's
  subnormal range, overflow (inf, NaN or saturation -- by default whatever
  torch's own cast does, measured by ``torch_overflow``) and specials.
- ``spacing``: ``ulp`` (``2**(e - m)`` in the binade of ``x``), ``next_up``,
  ``next_down`` (step the sign-magnitude bit pattern).
- ``datasheet``: ``table()`` -- the formats side by side, as text, HTML or
  Markdown (with the subnormals the usual tutorial table forgets).

Everything is vectorised over torch tensors (no Python loop per element)
and runs on the input's device.

>>> round_to_format(torch.tensor([0.1]), "fp16").item()
0.0999755859375
>>> explain(encode(torch.tensor(0.1), "fp16").item(), "fp16")
'0 01011 1001100110  fp16  sign=+  exponent=11-15=-4  mantissa=1+614/1024  → 0.0999755859375 (normal)'
"""
from __future__ import annotations

import torch  # noqa: F401  (the doctests above use it)

from .codec import KINDS, BitFields, decode, encode, explain, fields
from .registry import (ALIASES, CONVENTIONS, FORMATS, FloatFormat, get_format, make_format)
from .rounding import (ROUNDING_MODES, OverflowRule, overflow_rule, round_to_format,
                       torch_overflow)
from .spacing import next_down, next_up, ulp
from .datasheet import FormatTable, table

__all__ = [
    "FloatFormat", "FORMATS", "ALIASES", "CONVENTIONS", "get_format", "make_format",
    "decode", "encode", "fields", "explain", "BitFields", "KINDS",
    "round_to_format", "ROUNDING_MODES", "OverflowRule", "overflow_rule", "torch_overflow",
    "ulp", "next_up", "next_down",
    "table", "FormatTable",
]
