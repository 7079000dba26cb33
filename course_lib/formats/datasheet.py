"""The data sheet of several formats side by side: ``table`` and ``FormatTable``.

Introduced in chapter 01 (notebooks/01_float_formats.ipynb). Every number
comes from the FloatFormat properties (derived from the bits). It corrects
the usual tutorial table, which gives FP16's range as "±6.10e-5 to ±65504"
and leaves out the subnormals: the smallest positive FP16 value is the
subnormal 2**-24 ≈ 5.96e-08; 6.10e-05 = 2**-14 is only the smallest *normal*.
"""
from __future__ import annotations

import html
import math

from .registry import get_format

#: (row key, column header) of a FormatTable, in display order.
COLUMNS = (
    ("name", "format"),
    ("bits", "bits"),
    ("exponent_bits", "exp bits"),
    ("mantissa_bits", "mant bits"),
    ("bias", "bias"),
    ("max", "max"),
    ("min_normal", "min normal"),
    ("min_subnormal", "min subnormal"),
    ("eps", "eps"),
    ("decimal_digits", "decimal digits"),
)

NOTE = ("min subnormal is the smallest positive value (pattern 0x..01); between it and min normal\n"
        "lie the subnormals, with fewer significant bits. eps = 2**-m is the gap after 1.0;\n"
        "decimal digits = (m + 1) * log10(2).")


def format_number(value) -> str:
    """Short text for a table cell: integers up to 7 digits exactly, powers of two as
    ``2^k ≈ %.3g``, anything else ``%.3g``.

    >>> format_number(65504.0), format_number(2.0**-24), format_number(3.3895313892515355e38)
    ('65504', '2^-24 ≈ 5.96e-08', '3.39e+38')
    """
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e7:
        return str(int(value))
    mantissa, exponent = math.frexp(value)
    if mantissa == 0.5:
        return f"2^{exponent - 1} ≈ {value:.3g}"
    return f"{value:.3g}"


class FormatTable(list):
    """Rows (dicts keyed like ``COLUMNS``) with plain-text, HTML and Markdown renderings.

    A list of dicts, so ``rows[0]["max"]`` works; ``str(t)`` is an aligned
    plain-text table, and Jupyter shows ``_repr_html_`` (``_repr_markdown_``
    is there for Markdown front ends). Numbers are kept as numbers in the
    rows and only formatted (:func:`format_number`) for display.
    """

    columns = COLUMNS
    note = NOTE

    @staticmethod
    def _cell(key: str, value) -> str:
        if isinstance(value, str):
            return value
        if key == "decimal_digits":
            return f"{value:.3g}"
        return format_number(value)

    def _cells(self) -> list[list[str]]:
        return [[self._cell(key, row[key]) for key, _ in self.columns] for row in self]

    def __str__(self) -> str:
        headers = [h for _, h in self.columns]
        cells = self._cells()
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

        def line(items):
            return "  ".join(s.ljust(w) if i == 0 else s.rjust(w)
                             for i, (s, w) in enumerate(zip(items, widths))).rstrip()

        out = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
        return "\n".join(out + ["", self.note])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for _, h in self.columns)
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:{"left" if i == 0 else "right"}">'
                             f"{html.escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
            for r in self._cells())
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p><small>{html.escape(' '.join(self.note.split()))}</small></p>")

    def _repr_markdown_(self) -> str:
        headers = [h for _, h in self.columns]
        out = ["| " + " | ".join(headers) + " |",
               "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self._cells()]
        return "\n".join(out + ["", " ".join(self.note.split())])


def table(formats=("fp32", "tf32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")) -> FormatTable:
    """The data sheet of ``formats`` (names, aliases, dtypes or FloatFormats) as a FormatTable.

    Each row is a dict with ``name``, ``bits``, ``exponent_bits``,
    ``mantissa_bits``, ``bias``, ``max``, ``min_normal``, ``min_subnormal``,
    ``eps``, ``decimal_digits`` (the FloatFormat properties). Unknown names
    raise ValueError (see :func:`get_format`).

    >>> t = table(["fp16", "bf16"])
    >>> t[0]["max"], t[0]["min_normal"], t[0]["min_subnormal"] == 2.0**-24
    (65504.0, 6.103515625e-05, True)
    >>> "65504" in str(t) and "2^-24 ≈ 5.96e-08" in str(t)
    True
    """
    if isinstance(formats, (str, bytes)) or not hasattr(formats, "__iter__"):
        formats = [formats]
    rows = FormatTable()
    for spec in formats:
        f = get_format(spec)
        rows.append({key: getattr(f, key) for key, _ in COLUMNS})
    return rows
