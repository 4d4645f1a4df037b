"""Render a scene with Pillow, anti-aliased by drawing at 4x and downsampling."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from omniar.data.shapeworld.scene import Scene, star_points
from omniar.data.shapeworld.world import BACKGROUND, COLORS, SHAPES, SIZES

SUPERSAMPLE = 4


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    """One shape of half-extent r (pixels) centred at (cx, cy): its box is [cx - r, cx + r] x [cy - r, cy + r]."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "star":
        draw.polygon(star_points(cx, cy + 0.1 * r, 1.05 * r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, side: int = 64) -> np.ndarray:
    """(side, side, 3) uint8 RGB image of the scene."""
    if not 16 <= side <= 1024:
        raise ValueError(f"image side must be in [16, 1024], got {side}")
    big = side * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.cx * big, obj.cy * big, obj.r * big, COLORS[obj.color])
    out = np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.uint8)
    if scene.textured:  # light texture: low-amplitude noise on the background only
        rng = np.random.default_rng(scene.texture_seed)
        noise = rng.integers(-10, 11, size=(side, side, 1), dtype=np.int16)
        background = np.all(out == BACKGROUND, axis=-1, keepdims=True)
        out = np.where(background, np.clip(out.astype(np.int16) + noise, 0, 255), out).astype(np.uint8)
    return out


def coverage(shape: str, size: str, cx: float, cy: float, side: int) -> np.ndarray:
    """(side, side) float coverage in [0, 1] of one shape drawn exactly as `render` draws it."""
    big = side * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw_shape(ImageDraw.Draw(img), shape, cx * big, cy * big, SIZES[size] * big, 255)
    return np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float32) / 255.0


def degrade(img: np.ndarray, blur_sigma: float = 1.0, jpeg_quality: int = 50) -> np.ndarray:
    """Gaussian blur then JPEG round trip: the stress test of the parser (and a stand-in for generated images)."""
    import io

    from PIL import ImageFilter

    im = Image.fromarray(img)
    if blur_sigma > 0:
        im = im.filter(ImageFilter.GaussianBlur(blur_sigma))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=jpeg_quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
