"""Exercises, Tensor-Puzzles style: a slow, obvious spec (the library's reference), a stub
in the notebook that raises ``NotImplementedError``, and a check that compares the two on
random inputs.

In a notebook::

    from dllm_lesson.exercises import check

    def mask_probability(t, eps):
        raise NotImplementedError  # your code here

    # check("mask_probability", mask_probability)   # uncomment when you have solved it

``check`` raises ``AssertionError`` with the first input where your answer differs and
prints "passed" otherwise. Every check also runs against its reference solution in
``tests/test_exercises.py``. The exercises live in ``part1`` (notebooks 00-03), ``part2``
(04, 05, 12), ``part3`` (06-10) and ``part4`` (11).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

PARTS = ("part1", "part2", "part3", "part4")


@dataclass
class Exercise:
    name: str
    notebook: str
    reference: Callable          # the library's solution
    checker: Callable            # checker(candidate, reference) raises AssertionError


REGISTRY: dict[str, Exercise] = {}


def exercise(name: str, notebook: str, reference: Callable):
    """Decorator: register ``checker(candidate, reference)`` as exercise ``name``."""
    def wrap(checker: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"exercise {name!r} is registered twice")
        REGISTRY[name] = Exercise(name, notebook, reference, checker)
        return checker
    return wrap


def _load_all():
    for part in PARTS:
        try:
            import_module(f"{__name__}.{part}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{part}":
                raise


def exercises() -> dict[str, Exercise]:
    """Every registered exercise, by name."""
    _load_all()
    return dict(REGISTRY)


def get(name: str) -> Exercise:
    """The exercise called ``name`` (a clear error for a typo)."""
    ex = exercises().get(name)
    if ex is None:
        raise ValueError(f"no exercise named {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return ex


def verify(name: str, candidate: Callable) -> None:
    """Run exercise ``name``'s checker on ``candidate``, silently: ``AssertionError`` if
    it is wrong, ``NotImplementedError`` from a stub passes through (for tests)."""
    ex = get(name)
    ex.checker(candidate, ex.reference)


def check(name: str, candidate: Callable, quiet: bool = False) -> bool:
    """Compare ``candidate`` with the reference solution of exercise ``name``."""
    try:
        verify(name, candidate)
    except NotImplementedError:
        print(f"{name}: not solved yet (the stub raises NotImplementedError)")
        return False
    if not quiet:
        print(f"{name}: passed")
    return True
