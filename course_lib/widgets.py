"""Interactive explorers for the notebooks (ipywidgets).

:func:`bit_explorer` shows one toggle button per bit of a 16- or 8-bit format
(sign, exponent and mantissa coloured apart) and, under them, the value and
its field-by-field breakdown from :func:`course_lib.formats.explain`. Change
the format and the same bits are read again in the new format. It works
without a browser too: the widget is ordinary Python state, so a headless
kernel (the grader, the test suite) builds it, and :meth:`BitExplorer.set_bits`
drives it. Introduced in chapter 01 (notebooks/01_float_formats.ipynb).
"""
from __future__ import annotations

import html

import ipywidgets as widgets

from .formats import explain, get_format

EXPLORER_FORMATS = ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")
_COLOURS = {"sign": "#f4cccc", "exponent": "#cfe2f3", "mantissa": "#d9ead3"}


class BitExplorer:
    """Toggle the bits of one pattern and read its value (see the module docstring)."""

    def __init__(self, fmt: str = "fp16", bits: int = 0x3C00):
        if get_format(fmt).name not in EXPLORER_FORMATS:
            raise ValueError(f"the bit explorer shows {', '.join(EXPLORER_FORMATS)}; got {fmt!r}")
        self.format = widgets.Dropdown(options=EXPLORER_FORMATS, value=get_format(fmt).name,
                                       description="format")
        self.readout = widgets.HTML()
        self.row = widgets.HBox()
        self.buttons: list[widgets.ToggleButton] = []
        self.widget = widgets.VBox([self.format, self.row, self.readout])
        self.format.observe(lambda change: self._build(self.bits), names="value")
        self._build(bits)

    @property
    def fmt(self):
        return get_format(self.format.value)

    @property
    def bits(self) -> int:
        """The pattern the buttons show (most significant bit first)."""
        value = 0
        for b in self.buttons:
            value = (value << 1) | int(b.value)
        return value

    def set_bits(self, bits: int) -> None:
        """Show ``bits`` (0 <= bits < 2**format bits)."""
        n = self.fmt.bits
        if not 0 <= int(bits) < 2**n:
            raise ValueError(f"bits must be in [0, 2**{n}) for {self.fmt.name}, got {bits}")
        for i, b in enumerate(self.buttons):
            b.value = bool((int(bits) >> (n - 1 - i)) & 1)
        self._update()

    def _build(self, bits: int) -> None:
        fmt = self.fmt
        n, e = fmt.bits, fmt.exponent_bits
        self.buttons = []
        for i in range(n):
            part = "sign" if i == 0 else "exponent" if i <= e else "mantissa"
            b = widgets.ToggleButton(value=False, description="0",
                                     tooltip=f"bit {n - 1 - i} ({part})",
                                     layout=widgets.Layout(width="34px"))
            b.style.button_color = _COLOURS[part]
            b.observe(lambda change: self._update(), names="value")
            self.buttons.append(b)
        self.row.children = self.buttons
        self.set_bits(int(bits) & (2**n - 1))

    def _update(self) -> None:
        for b in self.buttons:
            b.description = "1" if b.value else "0"
        text = explain(self.bits, self.fmt)
        self.readout.value = f"<pre>{html.escape(text)}</pre>"

    @property
    def text(self) -> str:
        """The breakdown currently shown, as plain text."""
        return explain(self.bits, self.fmt)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def bit_explorer(fmt: str = "fp16", bits: int = 0x3C00) -> BitExplorer:
    """An interactive bit explorer for ``fmt`` starting at pattern ``bits`` (1.0 in fp16)."""
    return BitExplorer(fmt, bits)
