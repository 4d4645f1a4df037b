"""The analytic scene parser: image -> objects (shape, colour, size, position). No learned parts.

Each pixel is explained as a mix of the grey background and one palette colour, p = a * C + (1 - a) * BG, choosing
the colour with the smallest residual; a is the pixel's coverage. Pixels covered at least half by a colour, and
well explained by the mix, form that colour's mask - the half-coverage contour is where the true edge lay, which
keeps shape measurements stable under blur. Connected components of each mask are objects; each is classified by
its fill ratio (area / box area: square ~ 1, circle ~ pi/4, triangle ~ 1/2, star ~ 0.38) and where its mass sits
in its box (a triangle's centroid is low), its size by its extent, its position by its box centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniar.data.shapeworld.world import BACKGROUND, COLORS, SIZES

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)  # (K, 3)
_BG = np.array(BACKGROUND, dtype=np.float32)
MAX_RESIDUAL = 45.0  # RGB distance a pixel may stray from its best mix (texture, blur of neighbours, JPEG)
MIN_AREA = 0.006  # components smaller than this fraction of the image are noise (the smallest object is ~0.015)


@dataclass(frozen=True)
class ParsedObj:
    shape: str
    color: str
    size: str
    cx: float
    cy: float
    area: float  # fraction of the image


def _coverage(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the best palette colour and its coverage a (0 where no colour explains the pixel)."""
    p = img.astype(np.float32) - _BG  # (H, W, 3)
    d = _PALETTE - _BG  # (K, 3)
    a = np.clip(np.einsum("hwc,kc->hwk", p, d) / (d * d).sum(-1), 0.0, 1.0)  # (H, W, K)
    residual = np.linalg.norm(p[:, :, None, :] - a[..., None] * d, axis=-1)  # (H, W, K)
    residual = np.where(a >= 0.5, residual, np.inf)  # only colours that cover the pixel at least half compete
    best = residual.argmin(-1)
    ok = np.take_along_axis(residual, best[..., None], -1)[..., 0] <= MAX_RESIDUAL
    return best, np.where(ok, np.take_along_axis(a, best[..., None], -1)[..., 0], 0.0)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of `mask` (label propagation, vectorised)."""
    H, W = mask.shape
    big = H * W + 1
    labels = np.where(mask, np.arange(1, H * W + 1).reshape(H, W), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neigh = np.min([padded[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        new = np.where(mask, np.minimum(labels, neigh), big)
        if np.array_equal(new, labels):
            break
        labels = new
    return [labels == v for v in np.unique(labels[mask])]


def classify_shape(comp: np.ndarray) -> str:
    ys, xs = np.nonzero(comp)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(ys) / (h * w)
    low = (ys.mean() - ys.min() + 0.5) / h  # centroid height in the box, 0 = top
    if fill >= 0.88:
        return "square"
    if fill >= 0.66:
        return "circle"
    return "triangle" if low >= 0.61 else "star"


def parse_image(img: np.ndarray) -> list[ParsedObj]:
    """Objects in an (H, W, 3) uint8 RGB image, sorted by position (top to bottom, left to right)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    H, W, _ = img.shape
    best, cover = _coverage(img)
    objects = []
    threshold = 0.5 * (SIZES["small"] + SIZES["big"])
    for k, name in enumerate(_NAMES):
        mask = (best == k) & (cover >= 0.5)
        if mask.sum() < MIN_AREA * H * W:
            continue
        for comp in _components(mask):
            if comp.sum() < MIN_AREA * H * W:
                continue
            ys, xs = np.nonzero(comp)
            half = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2 / max(H, W)
            objects.append(ParsedObj(
                shape=classify_shape(comp), color=name, size="small" if half < threshold else "big",
                cx=float((xs.min() + xs.max() + 1) / 2 / W), cy=float((ys.min() + ys.max() + 1) / 2 / H),
                area=float(comp.sum() / (H * W))))
    return sorted(objects, key=lambda o: (round(o.cy, 2), o.cx))
