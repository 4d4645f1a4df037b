"""Scenes: a few coloured shapes on a grey canvas, with a structured description; deterministic for a seed."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from omniar.data.shapeworld.world import COLORS, SHAPES, SIZES


@dataclass(frozen=True)
class Obj:
    """One shape. Centre (cx, cy) and half-extent r are fractions of the image side (resolution independent)."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float

    @property
    def r(self) -> float:
        return SIZES[self.size]

    def bbox(self, side: int) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1) on a side x side image."""
        return (round((self.cx - self.r) * side), round((self.cy - self.r) * side),
                round((self.cx + self.r) * side), round((self.cy + self.r) * side))


@dataclass
class Scene:
    objects: list[Obj]
    textured: bool = False
    texture_seed: int = 0

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "textured": self.textured,
                "texture_seed": self.texture_seed}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls([Obj(**o) for o in d["objects"]], d.get("textured", False), d.get("texture_seed", 0))


MARGIN = 0.06  # minimum gap between two objects (fraction of the side): they never touch, even blurred


def fits(obj: Obj, others: list[Obj]) -> bool:
    if not (obj.r <= obj.cx <= 1 - obj.r and obj.r <= obj.cy <= 1 - obj.r):
        return False
    return all(max(abs(obj.cx - o.cx), abs(obj.cy - o.cy)) >= obj.r + o.r + MARGIN for o in others)


def place(rng: random.Random, shape: str, color: str, size: str, others: list[Obj], tries: int = 200) -> Obj | None:
    """A free position for a new object, or None when there is none after `tries` draws."""
    r = SIZES[size]
    for _ in range(tries):
        obj = Obj(shape, color, size, round(rng.uniform(r, 1 - r), 4), round(rng.uniform(r, 1 - r), 4))
        if fits(obj, others):
            return obj
    return None


def sample_scene(rng: random.Random, num_objects: int | None = None, textured: bool | None = None) -> Scene:
    """1-3 objects of distinct (colour, shape) pairs, never touching; a plain or lightly textured background."""
    n = num_objects if num_objects is not None else rng.randint(1, 3)
    while True:
        objects: list[Obj] = []
        used = set()
        for _ in range(n):
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            while (shape, color) in used:
                shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            used.add((shape, color))
            obj = place(rng, shape, color, rng.choice(list(SIZES)), objects)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n:
            textured = rng.random() < 0.5 if textured is None else textured
            return Scene(objects, textured=textured, texture_seed=rng.randrange(2**31))


def star_points(cx: float, cy: float, r: float, inner: float = 0.45) -> list[tuple[float, float]]:
    """A five-pointed star pointing up, outer radius r, inner radius inner * r."""
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * inner
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts
