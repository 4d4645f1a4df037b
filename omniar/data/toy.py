"""A built-in toy text corpus: sentences about coloured shapes from a small grammar, with an exact checker.

The text-only demo trains on it; `is_grammatical` is its independent judge (does a generated sentence belong to
the grammar?). The multimodal ShapeWorld replaces it in a later issue.
"""

from __future__ import annotations

import random
import re

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]
SIZES = ["small", "big"]
RELATIONS = ["above", "below", "left of", "right of"]
COUNTS = ["two", "three", "four"]


def _plural(shape: str) -> str:
    return shape + "s"


def sentence(rng: random.Random) -> str:
    c1, c2 = rng.sample(COLORS, 2)
    s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
    kind = rng.randrange(4)
    if kind == 0:
        return f"a {rng.choice(SIZES)} {c1} {s1} is {rng.choice(RELATIONS)} a {c2} {s2}."
    if kind == 1:
        return f"there are {rng.choice(COUNTS)} {c1} {_plural(s1)}."
    if kind == 2:
        return f"the {c1} {s1} is {rng.choice(SIZES)}."
    return f"a {c1} {s1} and a {c2} {s2}."


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def _alt(words) -> str:
    return "(?:" + "|".join(re.escape(w) for w in words) + ")"


_C, _S, _Z, _R, _N = _alt(COLORS), _alt(SHAPES), _alt(SIZES), _alt(RELATIONS), _alt(COUNTS)
_GRAMMAR = re.compile("|".join([
    rf"a {_Z} {_C} {_S} is {_R} a {_C} {_S}\.",
    rf"there are {_N} {_C} {_alt(_plural(s) for s in SHAPES)}\.",
    rf"the {_C} {_S} is {_Z}\.",
    rf"a {_C} {_S} and a {_C} {_S}\.",
]))


def is_grammatical(text: str) -> bool:
    """True when `text` is exactly one sentence of the grammar."""
    return _GRAMMAR.fullmatch(text.strip()) is not None
