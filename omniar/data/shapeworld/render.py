"""Render a scene with Pillow, anti-aliased by drawing at 4x and downsampling."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from omniar.data.shapeworld.scene import Obj, Scene, star_points
from omniar.data.shapeworld.world import BACKGROUND, COLORS

SUPERSAMPLE = 4


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, side: int) -> None:
    cx, cy, r = obj.cx * side, obj.cy * side, obj.r * side
    color = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif obj.shape == "square":
        s = r * 0.9  # a square of the same half-extent looks larger than the circle: shrink it a little
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=color)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=color)
    elif obj.shape == "star":
        draw.polygon(star_points(cx, cy + 0.1 * r, 1.05 * r), fill=color)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, side: int = 64) -> np.ndarray:
    """(side, side, 3) uint8 RGB image of the scene."""
    if not 16 <= side <= 1024:
        raise ValueError(f"image side must be in [16, 1024], got {side}")
    big = side * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw(draw, obj, big)
    out = np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.uint8)
    if scene.textured:  # light texture: low-amplitude noise on the background only
        rng = np.random.default_rng(scene.texture_seed)
        noise = rng.integers(-10, 11, size=(side, side, 1), dtype=np.int16)
        background = np.all(out == BACKGROUND, axis=-1, keepdims=True)
        out = np.where(background, np.clip(out.astype(np.int16) + noise, 0, 255), out).astype(np.uint8)
    return out
