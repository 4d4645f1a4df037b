"""Samples of the world's tasks: prompts with scenes that satisfy them (text-to-image, captioning), questions
with their answers (VQA) and edit instructions with the scenes they produce (editing).

Held-out compositions: `exclude` names (colour, shape) pairs that must never appear in a prompt, so a split can
keep them for measuring compositional generalisation.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, replace

from omniar.data.shapeworld.judge import relation_holds
from omniar.data.shapeworld.language import KINDS, NUMBER_WORDS, Phrase, Prompt, article
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


def scene_for_prompt(prompt: Prompt, rng: random.Random, max_objects: int = 3, exclude: Collection[Pair] = ()) -> Scene:
    """A scene that satisfies `prompt`, with random distractors that fit none of its phrases (nor `exclude`)."""
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
            color, shape = _pair(rng, exclude)
            distractor = Obj(shape, color, rng.choice(list(SIZES)), 0.0, 0.0)
            if any(p.matches(distractor) for p in prompt.phrases):
                continue
            obj = place(rng, shape, color, distractor.size, objects)
            if obj is not None and fits(obj, objects):
                objects.append(obj)
        rng.shuffle(objects)
        return Scene(objects, textured=rng.random() < 0.5, texture_seed=rng.randrange(2**31))


# ---- questions and answers -----------------------------------------------------------------------------------
QA_KINDS = ("color", "shape", "count", "position", "exist")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str


def _unique(objects: list[Obj], **attrs) -> list[Obj]:
    return [o for o in objects if all(getattr(o, k) == v for k, v in attrs.items())]


def count_qa(objects: list[Obj], attribute: str, value: str) -> QA:
    """"how many <shape>s are there?" (`attribute` "shape") or "how many <color> objects are there?" ("color") about
    `objects`, with its answer."""
    if attribute not in ("shape", "color"):
        raise ValueError(f"a count asks by shape or color, not {attribute!r}")
    question = f"how many {value}s are there?" if attribute == "shape" else f"how many {value} objects are there?"
    return QA(question, NUMBER_WORDS[len(_unique(objects, **{attribute: value}))], "count")


def sample_qa(scene: Scene, rng: random.Random, kind: str | None = None,
              relations: Collection[str] = RELATIONS) -> QA:
    """A question about `scene` whose answer follows from it unambiguously; position questions ask about one of
    `relations` only (a scene with no such pair gets a question of another kind, or, asked for "position", none)."""
    if not set(relations) <= set(RELATIONS):
        unknown = sorted(set(relations) - set(RELATIONS))
        raise ValueError(f"unknown relation(s) {unknown}; known: {', '.join(RELATIONS)}")
    objs = scene.objects
    kinds = [kind] if kind else list(QA_KINDS)
    rng.shuffle(kinds)
    for k in kinds:
        if k == "color":
            shapes = [s for s in SHAPES if len(_unique(objs, shape=s)) == 1]
            if shapes:
                s = rng.choice(shapes)
                return QA(f"what color is the {s}?", _unique(objs, shape=s)[0].color, k)
        elif k == "shape":
            colors = [c for c in COLORS if len(_unique(objs, color=c)) == 1]
            if colors:
                c = rng.choice(colors)
                return QA(f"what shape is the {c} object?", _unique(objs, color=c)[0].shape, k)
        elif k == "count":
            if rng.random() < 0.5:
                return count_qa(objs, "shape", rng.choice(SHAPES))
            return count_qa(objs, "color", rng.choice(list(COLORS)))
        elif k == "position":
            named = [o for o in objs if len(_unique(objs, shape=o.shape, color=o.color)) == 1]
            pairs = [(a, b, r) for a in named for b in named if a is not b for r in relations
                     if relation_holds(a, b, r) or relation_holds(b, a, r)]
            if pairs:
                a, b, r = rng.choice(pairs)
                answer = "yes" if relation_holds(a, b, r) else "no"
                return QA(f"is the {a.color} {a.shape} {r} the {b.color} {b.shape}?", answer, k)
        elif k == "exist":
            c, s = rng.choice(list(COLORS)), rng.choice(SHAPES)
            if rng.random() < 0.5 and objs:
                o = rng.choice(objs)
                c, s = o.color, o.shape
            return QA(f"is there {article(c)} {c} {s}?", "yes" if _unique(objs, color=c, shape=s) else "no", k)
        else:
            raise ValueError(f"unknown question kind {k!r}; known: {', '.join(QA_KINDS)}")
    raise ValueError(f"no {kind} question can be asked about this scene")


# ---- edits ------------------------------------------------------------------------------------------------------
EDIT_KINDS = ("recolor", "remove", "add", "move")
MOVES = {"left": (-0.25, 0.0), "right": (0.25, 0.0), "up": (0.0, -0.25), "down": (0.0, 0.25)}


@dataclass(frozen=True)
class Edit:
    instruction: str
    kind: str
    source: Scene
    target: Scene


def sample_edit(scene: Scene, rng: random.Random, kind: str | None = None,
                exclude: Collection[Pair] = ()) -> Edit | None:
    """An instruction with the scene it produces; None when `kind` cannot apply (e.g. nothing to move).
    New objects and colours never form a pair of `exclude`."""
    named = [o for o in scene.objects if len(_unique(scene.objects, shape=o.shape, color=o.color)) == 1]
    kinds = [kind] if kind else list(EDIT_KINDS)
    rng.shuffle(kinds)
    for k in kinds:
        others = lambda o: [x for x in scene.objects if x is not o]  # noqa: E731
        if k == "recolor" and named:
            o = rng.choice(named)
            colors = [c for c in COLORS if c != o.color and (c, o.shape) not in exclude
                      and not _unique(scene.objects, shape=o.shape, color=c)]
            if not colors:
                continue
            new = rng.choice(colors)
            target = others(o) + [replace(o, color=new)]
            return Edit(f"make the {o.color} {o.shape} {new}", k, scene, replace_objects(scene, target))
        if k == "remove" and named and len(scene.objects) > 1:
            o = rng.choice(named)
            return Edit(f"remove the {o.color} {o.shape}", k, scene, replace_objects(scene, others(o)))
        if k == "add" and len(scene.objects) < 3:
            c, s = _pair(rng, exclude, {(o.color, o.shape) for o in scene.objects})
            size = rng.choice(list(SIZES))
            obj = place(rng, s, c, size, scene.objects)
            if obj is not None:
                target = replace_objects(scene, scene.objects + [obj])
                return Edit(f"add {article(size)} {size} {c} {s}", k, scene, target)
        if k == "move" and named:
            o = rng.choice(named)
            direction = rng.choice(list(MOVES))
            dx, dy = MOVES[direction]
            moved = replace(o, cx=round(o.cx + dx, 4), cy=round(o.cy + dy, 4))
            if fits(moved, others(o)):
                return Edit(f"move the {o.color} {o.shape} {direction}", k, scene,
                            replace_objects(scene, others(o) + [moved]))
    return None


def replace_objects(scene: Scene, objects: list[Obj]) -> Scene:
    return Scene(list(objects), scene.textured, scene.texture_seed)
