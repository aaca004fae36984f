"""Decoded noise as readable text: control and replacement characters as visible glyphs.

Random token ids (Duo's noise, notebooks 06 and 09) decode to byte-level pieces that
include control characters (``\\x00``, ``\\x19``) and, where a multi-byte character is
cut, the replacement character ``\\ufffd``. Printed raw they vanish or garble the line;
``repr`` shows escapes. :func:`visible` maps each to one visible glyph, so a corrupted
sentence keeps its length and its shape.

Taught in ``06_duo_gaussian_noise`` and ``09_duo_sampling``.
"""

from __future__ import annotations

__all__ = ["visible"]

#: what a cut multi-byte character (U+FFFD) is shown as
BROKEN = "\u25a1"          # □


def _glyph(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\u21b5"                      # ↵ : a newline stays on one line
    if code < 0x20:
        return chr(0x2400 + code)            # the Unicode "control pictures": ␀ ... ␟
    if code == 0x7F:
        return "\u2421"                      # ␡
    if 0x80 <= code < 0xA0:
        return "\u2426"                      # ␦ : C1 control characters
    if ch == "\ufffd":
        return BROKEN
    return ch


def visible(text: str) -> str:
    """``text`` with newlines as ``↵``, control characters as their control pictures
    (``\\x00`` -> ``␀``, ``\\x19`` -> ``␙``) and ``\\ufffd`` as ``□``; every other
    character unchanged, one glyph per character.

    Taught in ``06_duo_gaussian_noise`` (corrupted sentences) and ``09_duo_sampling``.
    """
    if not isinstance(text, str):
        raise TypeError(f"visible() takes a str, got {type(text).__name__}; decode the "
                        "ids first (tokenizer.decode)")
    return "".join(_glyph(ch) for ch in text)
