"""Claims as code: a sentence of prose that states a computed result, checked.

A notebook cell such as ::

    claim(acc_low > acc_rand, "low-confidence order beats random order")

prints ``✓ low-confidence order beats random order`` while it holds, and raises
:class:`ClaimError` (an ``AssertionError`` carrying the sentence) as soon as the outputs
stop supporting the prose, so strict nbval fails on a notebook whose story drifted.
Used in every notebook from ``00_welcome`` on.
"""

from __future__ import annotations

import math
import numbers

MARK = "✓"


class ClaimError(AssertionError):
    """A sentence of the lesson that the computed results no longer support."""


def _truth(condition) -> bool:
    """``condition`` as a plain bool: Python and NumPy bools, numbers, one-element
    tensors/arrays. Anything ambiguous is a ``TypeError`` that says what to pass."""
    if isinstance(condition, str):
        raise TypeError("claim(condition, sentence): the condition comes first and the "
                        f"sentence second; got the string {condition!r} as the condition")
    if condition is None:
        raise TypeError("claim(condition, sentence): the condition is None; pass a "
                        "comparison such as `a > b`")
    size = getattr(condition, "numel", None) or getattr(condition, "size", None)
    if size is not None and not isinstance(condition, numbers.Number):
        n = size() if callable(size) else size
        if n != 1:
            raise TypeError(f"claim(condition, sentence): the condition has {n} elements; "
                            "reduce it with .all() or .any() first")
        condition = condition.item()
    return bool(condition)


def claim(condition, sentence: str) -> None:
    """Print ``✓ sentence`` if ``condition`` holds; raise :class:`ClaimError` otherwise.

    ``condition``: a bool (or a one-element tensor/array, or a number). ``sentence``: the
    prose it backs, in the notebook's words; put the measured values in it (an f-string)
    so the printed line quotes them.
    """
    if not isinstance(sentence, str) or not sentence.strip():
        if isinstance(condition, str):
            _truth(condition)                     # the arguments are swapped: say so
        raise TypeError("claim(condition, sentence): the sentence must be a non-empty "
                        f"string; got {sentence!r}")
    if not _truth(condition):
        raise ClaimError(f"This claim of the lesson no longer holds: {sentence}")
    print(f"{MARK} {sentence}")


def claim_between(value: float, low: float, high: float, sentence: str) -> None:
    """Claim ``low <= value <= high`` (for instance, a measured figure inside the range
    the prose gives, or a difference whose 95% interval the prose calls null); the error
    names the value and the range."""
    for name, v in (("value", value), ("low", low), ("high", high)):
        if not isinstance(v, numbers.Real) and not hasattr(v, "item"):
            raise TypeError(f"claim_between: {name} must be a number; got {v!r}")
    value, low, high = float(value), float(low), float(high)
    if low > high:
        raise ValueError(f"claim_between: low ({low}) is above high ({high})")
    if math.isnan(value) or not low <= value <= high:
        raise ClaimError(f"This claim of the lesson no longer holds: {sentence} "
                         f"(measured {value:.4g}, outside [{low:.4g}, {high:.4g}])")
    claim(True, sentence)
