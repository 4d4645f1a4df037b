"""The vocabulary of ShapeWorld: colours (with their exact RGB), shapes, sizes, relations.

Colours are saturated and far apart in RGB, and none is grey, so the scene parser can tell every object pixel from
the grey background and from every other colour even after blur and JPEG compression.
"""

from __future__ import annotations

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (35, 175, 55),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (135, 45, 190),
    "orange": (250, 140, 20),
    "cyan": (30, 205, 215),
    "pink": (250, 125, 195),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES: dict[str, float] = {"small": 0.10, "big": 0.18}  # half-extent as a fraction of the image side
RELATIONS = ("left of", "right of", "above", "below")
BACKGROUND = (128, 128, 128)
