"""The analytic scene parser: image -> objects (shape, colour, size, position). No learned parts.

1. Coverage. Each pixel is explained as a mix of the grey background and a palette colour C,
   p = a * C + (1 - a) * BG (least squares a, clipped to [0, 1]); a pixel counts for C when the mix explains it
   within `MAX_RESIDUAL`. Colours are saturated and far apart, so blur and JPEG move a, not the colour.
2. Objects. Connected components of {a >= 1/2} per colour (objects of one colour never touch in ShapeWorld).
3. Shape and size by analysis-by-synthesis: the coverage around a component is compared with the renderer's own
   coverage of each (shape, size), placed so that its centroid falls on the observed centroid (blur moves no
   centroid), and blurred by a few sigmas (0 to 1.4 px at 64 px) to cover degraded or generated images; the
   closest (least squares) wins. Position is the winning template's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageFilter

from omniar.data.shapeworld.render import coverage
from omniar.data.shapeworld.world import BACKGROUND, COLORS, SHAPES, SIZES

_BG = np.array(BACKGROUND, dtype=np.float32)
MAX_RESIDUAL = 45.0  # RGB distance a pixel may stray from its best mix (texture, neighbours' blur, JPEG)
MIN_AREA = 0.006  # components smaller than this fraction of the image are noise (the smallest object is ~0.015)
BLURS = (0.0, 0.7, 1.0, 1.4)  # template blurs, in pixels at 64 px (scaled with the image side)
WINDOW = 3  # pixels of context around a component's box


@dataclass(frozen=True)
class ParsedObj:
    shape: str
    color: str
    size: str
    cx: float
    cy: float
    area: float  # coverage mass as a fraction of the image
    error: float  # mean squared coverage error of the best template (0 = a perfect render)


def color_coverage(img: np.ndarray, color: str) -> np.ndarray:
    """(H, W) coverage of `color` per pixel, 0 where the background-colour mix does not explain the pixel."""
    p = img.astype(np.float32) - _BG
    d = np.array(COLORS[color], dtype=np.float32) - _BG
    a = np.clip(p @ d / (d @ d), 0.0, 1.0)
    residual = np.linalg.norm(p - a[..., None] * d, axis=-1)
    return np.where(residual <= MAX_RESIDUAL, a, 0.0).astype(np.float32)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of `mask` (vectorised label propagation)."""
    H, W = mask.shape
    big = H * W + 1
    labels = np.where(mask, np.arange(1, H * W + 1).reshape(H, W), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neigh = np.min([padded[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                       axis=0)
        new = np.where(mask, np.minimum(labels, neigh), big)
        if np.array_equal(new, labels):
            return [labels == v for v in np.unique(labels[mask])]
        labels = new


@cache
def _centroid_offset(shape: str, size: str) -> tuple[float, float]:
    """Centroid minus drawing centre of a shape, as fractions of the side (measured on a 256 px render)."""
    cov = coverage(shape, size, 0.5, 0.5, 256)
    ys, xs = np.mgrid[0:256, 0:256]
    mass = cov.sum()
    return float(((cov * xs).sum() / mass + 0.5) / 256 - 0.5), float(((cov * ys).sum() / mass + 0.5) / 256 - 0.5)


def _blur(cov: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return cov
    img = Image.fromarray(np.round(cov * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(img, dtype=np.float32) / 255.0


def match_templates(cov: np.ndarray, comp: np.ndarray) -> tuple[str, str, float, float, float]:
    """Best (shape, size, cx, cy, error) for the object whose {a >= 1/2} pixels are `comp`."""
    H, W = cov.shape
    ys, xs = np.nonzero(comp)
    y0, y1 = max(ys.min() - WINDOW, 0), min(ys.max() + WINDOW + 1, H)
    x0, x1 = max(xs.min() - WINDOW, 0), min(xs.max() + WINDOW + 1, W)
    seen = cov[y0:y1, x0:x1]
    mass = seen.sum()
    gy, gx = np.mgrid[y0:y1, x0:x1]
    mx, my = ((seen * gx).sum() / mass + 0.5) / W, ((seen * gy).sum() / mass + 0.5) / H
    best = None
    for shape in SHAPES:
        for size in SIZES:
            ox, oy = _centroid_offset(shape, size)
            cx, cy = mx - ox, my - oy
            template = coverage(shape, size, cx, cy, W)
            for sigma in BLURS:
                err = float(((_blur(template, sigma * W / 64)[y0:y1, x0:x1] - seen) ** 2).mean())
                if best is None or err < best[4]:
                    best = (shape, size, float(cx), float(cy), err)
    return best


def parse_image(img: np.ndarray) -> list[ParsedObj]:
    """Objects in an (H, W, 3) uint8 RGB image (square), sorted top to bottom, then left to right."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got {getattr(img, 'shape', type(img).__name__)}")
    H, W, _ = img.shape
    if H != W:
        raise ValueError(f"ShapeWorld images are square, got {H}x{W}")
    objects = []
    for color in COLORS:
        cov = color_coverage(img, color)
        mask = cov >= 0.5
        if mask.sum() < MIN_AREA * H * W:
            continue
        for comp in components(mask):
            if comp.sum() < MIN_AREA * H * W:
                continue
            shape, size, cx, cy, err = match_templates(np.where(cov > 0.1, cov, 0.0), comp)
            objects.append(ParsedObj(shape, color, size, cx, cy, float(cov[comp].sum() / (H * W)), err))
    return sorted(objects, key=lambda o: (round(o.cy, 2), o.cx))
