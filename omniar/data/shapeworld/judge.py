"""Independent judges: GenEval-style scoring of (prompt, image), edits, answers and captions.

Nothing here depends on the model being judged: an image is parsed into objects (`parse.parse_image`) and the
prompt's structure is checked against them. A scene satisfies a prompt when:
  single_object / colors   some object fits the phrase
  counting                 exactly `count` objects fit the phrase
  two_object / color_attr  two different objects fit the two phrases
  position                 ... and the first is `relation` the second by at least `RELATION_MARGIN` of the side
Overall is the mean over kinds, as GenEval reports it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import permutations
from typing import NamedTuple

import numpy as np

from omniar.data.shapeworld.language import KINDS, NUMBER_WORDS, Prompt, parse_prompt
from omniar.data.shapeworld.parse import parse_image
from omniar.data.shapeworld.world import COLORS, SHAPES, SIZES

RELATION_MARGIN = 0.1


def relation_holds(a, b, relation: str, margin: float = RELATION_MARGIN) -> bool:
    """Is object a `relation` object b? Image y grows downwards."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    along = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}
    if relation not in along:
        raise ValueError(f"unknown relation {relation!r}")
    return along[relation] >= margin


def prompt_satisfied(prompt: Prompt | str, objects: Sequence) -> bool:
    """Does a list of objects (parsed or ground truth) satisfy the prompt?"""
    prompt = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    first = prompt.phrases[0]
    if prompt.kind == "counting":
        return sum(first.matches(o) for o in objects) == first.count
    if len(prompt.phrases) == 1:
        return any(first.matches(o) for o in objects)
    second = prompt.phrases[1]
    for a, b in permutations(objects, 2):
        if first.matches(a) and second.matches(b):
            if prompt.relation is None or relation_holds(a, b, prompt.relation):
                return True
    return False


def score_images(prompts: Sequence[Prompt | str], images: Sequence[np.ndarray]) -> dict:
    """GenEval-style scores of generated images against their prompts: per kind, overall (mean over kinds)."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    per_kind: dict[str, list[bool]] = {}
    for prompt, image in zip(prompts, images):
        prompt = parse_prompt(prompt) if isinstance(prompt, str) else prompt
        per_kind.setdefault(prompt.kind, []).append(prompt_satisfied(prompt, parse_image(image)))
    scores = {k: float(np.mean(per_kind[k])) for k in KINDS if k in per_kind}
    scores["overall"] = float(np.mean(list(scores.values()))) if scores else 0.0
    scores["count"] = len(prompts)
    return scores


# ---- edits ------------------------------------------------------------------------------------------------------
_C, _S, _Z = (f"({'|'.join(words)})" for words in (COLORS, SHAPES, SIZES))
_EDITS = {
    "recolor": re.compile(rf"make the {_C} {_S} {_C}"),
    "remove": re.compile(rf"remove the {_C} {_S}"),
    "add": re.compile(rf"add an? {_Z} {_C} {_S}"),
    "move": re.compile(rf"move the {_C} {_S} (left|right|up|down)"),
}
SAME_PLACE = 0.05  # an object counts as staying put within this distance (fraction of the side)
MOVED = 0.1  # a move must carry the object at least this far in its direction


def parse_edit(instruction: str) -> tuple[str, tuple[str, ...]]:
    text = " ".join(instruction.lower().strip().rstrip(".").split())
    for kind, pattern in _EDITS.items():
        m = pattern.fullmatch(text)
        if m:
            return kind, m.groups()
    raise ValueError(f"not a ShapeWorld edit instruction: {instruction!r}")


def _near(a, b) -> bool:
    return max(abs(a.cx - b.cx), abs(a.cy - b.cy)) <= SAME_PLACE


def _same(a, b) -> bool:
    return (a.shape, a.color, a.size) == (b.shape, b.color, b.size) and _near(a, b)


class EditOutcome(NamedTuple):
    satisfied: bool  # the instruction holds of the objects after
    preserved: bool  # every object the instruction leaves alone is still there (true when there is none)
    untouched: int  # how many objects the instruction leaves alone


def edit_outcome(instruction: str, before: Sequence, after: Sequence) -> EditOutcome:
    """Whether an edit did what it says and kept the rest, for objects before and after it."""
    kind, args = parse_edit(instruction)
    if kind == "add":
        size, color, shape = args
        fits = [o for o in after if (o.shape, o.color, o.size) == (shape, color, size)]
        olds = [o for o in before if (o.shape, o.color, o.size) == (shape, color, size)]
        untouched = list(before)
        satisfied = len(fits) == len(olds) + 1
    else:
        color, shape = args[:2]
        refs = [o for o in before if (o.color, o.shape) == (color, shape)]
        if len(refs) != 1:
            return EditOutcome(False, False, len(before))  # the instruction does not name one object of the source
        ref = refs[0]
        untouched = [o for o in before if o is not ref]
        now = [o for o in after if (o.color, o.shape) == (color, shape)]
        if kind == "recolor":
            new = args[2]
            satisfied = not now and any(o.color == new and o.shape == shape and o.size == ref.size and _near(o, ref)
                                        for o in after)
        elif kind == "remove":
            satisfied = not now
        else:
            dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[args[2]]
            satisfied = len(now) == 1 and ((now[0].cx - ref.cx) * dx + (now[0].cy - ref.cy) * dy) >= MOVED
    preserved = all(any(_same(o, n) for n in after) for o in untouched)
    return EditOutcome(satisfied, preserved, len(untouched))


def score_edits(instructions: Sequence[str], sources: Sequence[np.ndarray], edited: Sequence[np.ndarray]) -> dict:
    """Edit scores from images: instruction satisfied, untouched objects preserved (means), per kind too.
    `preserved` counts an edit that leaves no object alone (a remove in a one-object scene) as preserved, as the
    target defines it; `preserved_nontrivial` is the same mean over the edits that leave at least one object alone."""
    if not len(instructions) == len(sources) == len(edited):
        raise ValueError(f"{len(instructions)} instructions, {len(sources)} sources, {len(edited)} edited images")
    rows: dict[str, list[EditOutcome]] = {}
    for text, src, out in zip(instructions, sources, edited):
        rows.setdefault(parse_edit(text)[0], []).append(edit_outcome(text, parse_image(src), parse_image(out)))
    everything = [r for v in rows.values() for r in v]
    nontrivial = [r.preserved for r in everything if r.untouched]
    result = {"satisfied": float(np.mean([r.satisfied for r in everything])),
              "preserved": float(np.mean([r.preserved for r in everything])),
              "preserved_nontrivial": float(np.mean(nontrivial)) if nontrivial else None,
              "count": len(everything)}
    for kind, v in rows.items():
        result[f"{kind}_satisfied"] = float(np.mean([r.satisfied for r in v]))
    return result


# ---- answers and captions -----------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, digits as words: 'The Red.' == 'red', '2' == 'two'."""
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    words = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w for w in words]
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def answer_correct(predicted: str, gold: str) -> bool:
    return normalize_answer(predicted) == normalize_answer(gold)


def score_answers(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """Exact match after normalisation (case, punctuation, articles, digits)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} answers for {len(gold)} questions")
    return float(np.mean([answer_correct(p, g) for p, g in zip(predicted, gold)])) if gold else 0.0


def caption_correct(caption: str, objects: Sequence) -> bool:
    """A caption is correct when it is in the world's grammar and true of the scene's objects."""
    try:
        return prompt_satisfied(parse_prompt(caption), objects)
    except ValueError:
        return False
