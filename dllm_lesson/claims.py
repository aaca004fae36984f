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


# -- intervals: how sure a comparison on n questions can be -------------------------------
def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``k / n`` (``z`` = 1.96).

    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = k / n``: unlike
    ``p -+ 1.96 sqrt(p(1-p)/n)`` it stays inside [0, 1] and is not zero-width at 0% or
    100% (5 of 5 right gives [0.57, 1.0], not [1, 1]). ``n = 0`` gives (0, 1).
    Taught in ``04_block_generation_and_kv_cache``; ``eval``, ``bench`` and the Duo
    notebooks use it too.
    """
    if not (0 <= k <= n):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def paired_difference(a, b, z: float = 1.96) -> tuple[float, float, float]:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same questions (two 0/1
    sequences), with a 95% interval from the per-question differences (normal
    approximation; questions both get right or both get wrong carry no information, so
    this is much tighter than two separate intervals). Returns ``(diff, low, high)``.

    Taught in ``05_remasking_and_parallel_decoding``.
    """
    a, b = [int(v) for v in a], [int(v) for v in b]
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two non-empty sequences of equal "
                         f"length, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((v - mean) ** 2 for v in d) / max(n - 1, 1)
    half = z * math.sqrt(var / n)
    return mean, mean - half, mean + half
