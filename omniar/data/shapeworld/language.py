"""Prompts: a structured description (kind, phrases, relation), its text, and the parser back from text.

Kinds follow GenEval's categories, adapted to a world where every object has a colour:
  single_object  "a big red circle"                  one object with every attribute given
  colors         "a red circle"                      the colour of one object
  counting       "three green triangles"             exactly that many
  two_object     "a red circle and a blue square"     two objects of different shapes
  color_attr     "a red circle and a blue circle"     two objects of one shape: colour binding
  position       "a red circle left of a blue square" two objects and where they are
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from omniar.data.shapeworld.world import COLORS, RELATIONS, SHAPES, SIZES

KINDS = ("single_object", "colors", "counting", "two_object", "color_attr", "position")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
NUMBERS = {1: "one", 2: "two", 3: "three"}  # counts a prompt can ask for


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Phrase:
    shape: str
    color: str | None = None
    size: str | None = None
    count: int = 1

    @property
    def text(self) -> str:
        words = [w for w in (self.size, self.color) if w]
        if self.count == 1:
            return " ".join([article(words[0] if words else self.shape), *words, self.shape])
        return " ".join([NUMBERS[self.count], *words, self.shape + "s"])

    def matches(self, obj) -> bool:
        """Does an object (anything with shape, color, size) fit this phrase?"""
        return (obj.shape == self.shape and (self.color is None or obj.color == self.color)
                and (self.size is None or obj.size == self.size))


@dataclass(frozen=True)
class Prompt:
    kind: str
    phrases: tuple[Phrase, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if len(self.phrases) == 1:
            return self.phrases[0].text
        joiner = f" {self.relation} " if self.relation else " and "
        return joiner.join(p.text for p in self.phrases)


def _alt(words) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_PHRASE = (rf"(?P<det{{i}}>a|an|{_alt(NUMBERS.values())}) (?:(?P<size{{i}}>{_alt(SIZES)}) )?"
           rf"(?:(?P<color{{i}}>{_alt(COLORS)}) )?(?P<shape{{i}}>{_alt(SHAPES)})(?P<plural{{i}}>s?)")
_ONE = re.compile(_PHRASE.format(i=0))
_TWO = re.compile(_PHRASE.format(i=0) + rf" (?P<rel>and|{_alt(RELATIONS)}) " + _PHRASE.format(i=1))
_WORD_NUMBERS = {v: k for k, v in NUMBERS.items()}


def parse_prompt(text: str) -> Prompt:
    """The structured prompt of a text in the world's grammar; ValueError (naming the text) otherwise."""
    t = " ".join(text.lower().strip().rstrip(".").split())
    m = _ONE.fullmatch(t) or _TWO.fullmatch(t)
    if m is None:
        raise ValueError(f"not a ShapeWorld prompt: {text!r}")
    phrases = []
    for i in range(2 if m.re is _TWO else 1):
        det = m[f"det{i}"]
        count = 1 if det in ("a", "an") else _WORD_NUMBERS[det]
        if (count > 1) != bool(m[f"plural{i}"]):
            raise ValueError(f"number disagreement in {text!r}")
        phrases.append(Phrase(m[f"shape{i}"], m[f"color{i}"], m[f"size{i}"], count))
    if len(phrases) == 1:
        p = phrases[0]
        kind = "counting" if p.count > 1 else "single_object" if p.size and p.color else "colors"
        return Prompt(kind, tuple(phrases))
    relation = None if m["rel"] == "and" else m["rel"]
    if relation:
        kind = "position"
    else:
        kind = "color_attr" if phrases[0].shape == phrases[1].shape else "two_object"
    return Prompt(kind, tuple(phrases), relation)
