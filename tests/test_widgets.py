"""The bit explorer works headless: toggling bits updates the breakdown."""
import pytest

from course_lib.formats import explain
from course_lib.widgets import bit_explorer


def test_toggling_bits_updates_value_and_breakdown():
    ex = bit_explorer("fp16", 0x3C00)
    assert ex.bits == 0x3C00 and "1.0" in ex.readout.value
    ex.buttons[0].value = True                      # the sign bit
    assert ex.bits == 0xBC00 and ex.text == explain(0xBC00, "fp16")
    assert "-1.0" in ex.readout.value
    assert [b.description for b in ex.buttons[:2]] == ["1", "0"]


def test_switching_format_rereads_the_bits():
    ex = bit_explorer("fp16", 0x0001)
    ex.format.value = "fp8_e4m3fn"
    assert len(ex.buttons) == 8 and ex.bits == 0x01
    assert ex.text == explain(0x01, "fp8_e4m3fn")
    ex.set_bits(0x7F)
    assert "nan" in ex.text.lower()


def test_bad_input():
    with pytest.raises(ValueError, match="bit explorer shows"):
        bit_explorer("fp32")
    with pytest.raises(ValueError, match=r"bits must be in \[0, 2\*\*8\)"):
        bit_explorer("fp8_e5m2").set_bits(256)
