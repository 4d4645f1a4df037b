"""Independent judges: GenEval-style scoring of (prompt, image) through the analytic scene parser.

Nothing here depends on the model being judged: an image is parsed into objects (`parse.parse_image`) and the
prompt's structure is checked against them. A scene satisfies a prompt when:
  single_object / colors   some object fits the phrase
  counting                 exactly `count` objects fit the phrase
  two_object / color_attr  two different objects fit the two phrases
  position                 ... and the first is `relation` the second by at least `RELATION_MARGIN` of the side
Overall is the mean over kinds, as GenEval reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations

import numpy as np

from omniar.data.shapeworld.language import KINDS, Prompt, parse_prompt
from omniar.data.shapeworld.parse import parse_image

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
