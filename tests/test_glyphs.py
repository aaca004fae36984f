"""glyphs.visible: decoded noise printed with visible glyphs, one per character."""

from __future__ import annotations

import pytest

from dllm_lesson.glyphs import visible


def test_control_and_replacement_characters_become_glyphs():
    raw = "90\x1a V\x00Monaco\ufffd\nend\x7f\x85"
    shown = visible(raw)
    assert shown == "90\u241a V\u2400Monaco\u25a1\u21b5end\u2421\u2426"
    assert len(shown) == len(raw)
    assert shown.isprintable()
    assert "\x1a" not in shown and "\ufffd" not in shown


def test_plain_text_is_unchanged():
    text = "The capital of Côte d'Ivoire is Yamoussoukro. 123 · ok"
    assert visible(text) == text


def test_every_c0_control_is_printable_after():
    raw = "".join(chr(i) for i in range(32)) + "\x7f"
    assert visible(raw).isprintable()


def test_not_a_string_is_a_clear_error():
    with pytest.raises(TypeError, match="decode the ids first"):
        visible([1, 2, 3])
