"""Samples of the world's tasks: prompts with scenes that satisfy them (text-to-image, captioning).

Held-out compositions: `exclude` names (colour, shape) pairs that must never appear in a prompt, so a split can
keep them for measuring compositional generalisation.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from omniar.data.shapeworld.language import KINDS, Phrase, Prompt
from omniar.data.shapeworld.scene import Obj, Scene, fits, place
from omniar.data.shapeworld.world import COLORS, RELATIONS, SHAPES, SIZES

Pair = tuple[str, str]  # (colour, shape)


def _pair(rng: random.Random, exclude: Collection[Pair], avoid: Collection[Pair] = ()) -> Pair:
    while True:
        pair = (rng.choice(list(COLORS)), rng.choice(SHAPES))
        if pair not in exclude and pair not in avoid:
            return pair


def sample_prompt(rng: random.Random, kind: str | None = None, exclude: Collection[Pair] = ()) -> Prompt:
    """A prompt of `kind` (random if None) none of whose (colour, shape) pairs is in `exclude`."""
    kind = kind or rng.choice(KINDS)
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; known: {', '.join(KINDS)}")
    c1, s1 = _pair(rng, exclude)
    if kind == "single_object":
        return Prompt(kind, (Phrase(s1, c1, rng.choice(list(SIZES))),))
    if kind == "colors":
        return Prompt(kind, (Phrase(s1, c1),))
    if kind == "counting":
        return Prompt(kind, (Phrase(s1, c1, count=rng.choice((2, 3))),))
    if kind == "color_attr":
        c2 = rng.choice([c for c in COLORS if c != c1 and (c, s1) not in exclude])
        return Prompt(kind, (Phrase(s1, c1), Phrase(s1, c2)))
    while True:
        c2, s2 = _pair(rng, exclude)
        if s2 != s1 or kind == "position" and c2 != c1:
            break
    relation = rng.choice(RELATIONS) if kind == "position" else None
    return Prompt(kind, (Phrase(s1, c1), Phrase(s2, c2)), relation)


def _place_related(rng: random.Random, a: Obj, b_spec: tuple[str, str, str], relation: str) -> Obj | None:
    """Place b so that a is clearly `relation` b: >= 0.2 apart along the axis, at most half that across it."""
    shape, color, size = b_spec
    for _ in range(200):
        b = place(rng, shape, color, size, [a], tries=1)
        if b is None:
            continue
        dx, dy = b.cx - a.cx, b.cy - a.cy
        along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
        if along >= 0.2 and abs(across) <= along / 2:
            return b
    return None


def scene_for_prompt(prompt: Prompt, rng: random.Random, max_objects: int = 3) -> Scene:
    """A scene that satisfies `prompt`, with random distractors that fit none of its phrases."""
    while True:
        objects: list[Obj] = []
        specs = [(p.shape, p.color or rng.choice(list(COLORS)), p.size or rng.choice(list(SIZES)))
                 for p in prompt.phrases for _ in range(p.count)]
        if prompt.relation is not None:
            a = place(rng, *specs[0], objects)
            b = _place_related(rng, a, specs[1], prompt.relation) if a else None
            if a is None or b is None:
                continue
            objects = [a, b]
        else:
            for spec in specs:
                obj = place(rng, *spec, objects)
                if obj is None:
                    break
                objects.append(obj)
            if len(objects) < len(specs):
                continue
        extra = rng.randint(0, max(0, max_objects - len(objects)))
        for _ in range(extra):
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            distractor = Obj(shape, color, rng.choice(list(SIZES)), 0.0, 0.0)
            if any(p.matches(distractor) for p in prompt.phrases):
                continue
            obj = place(rng, shape, color, distractor.size, objects)
            if obj is not None and fits(obj, objects):
                objects.append(obj)
        rng.shuffle(objects)
        return Scene(objects, textured=rng.random() < 0.5, texture_seed=rng.randrange(2**31))
