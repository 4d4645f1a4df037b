"""ShapeWorld videos: shapes moving at constant velocity, with captions ("a red circle moves right").

For the blockwise-diffusion issue: frames are rendered by the same renderer, and the judge tracks each captioned
object through the frames with the scene parser.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from omniar.data.shapeworld.language import article
from omniar.data.shapeworld.parse import parse_image
from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import Obj, Scene, fits, place
from omniar.data.shapeworld.world import COLORS, SHAPES, SIZES

DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
MIN_TRAVEL = 0.15  # a judged move must cover at least this much of the side, in its direction


@dataclass
class Video:
    frames: list[Scene]
    caption: str
    motions: list[tuple[Obj, str]]  # each moving object (as in the first frame) and its direction


def _caption(motions: list[tuple[Obj, str]]) -> str:
    return " and ".join(f"{article(o.color)} {o.color} {o.shape} moves {d}" for o, d in motions)


def sample_video(rng: random.Random, num_frames: int = 8, num_objects: int | None = None,
                 speed: float = 0.05) -> Video:
    """1-2 objects of distinct (colour, shape), each moving `speed` of the side per frame in one direction."""
    if num_frames < 2:
        raise ValueError(f"a video needs at least 2 frames, got {num_frames}")
    n = num_objects or rng.randint(1, 2)
    while True:
        objects, motions = [], []
        used = set()
        for _ in range(n):
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            if (color, shape) in used:
                break
            used.add((color, shape))
            obj = place(rng, shape, color, rng.choice(list(SIZES)), objects)
            if obj is None:
                break
            objects.append(obj)
            motions.append((obj, rng.choice(list(DIRECTIONS))))
        if len(objects) < n:
            continue
        frames = []
        for t in range(num_frames):
            moved = [replace(o, cx=round(o.cx + DIRECTIONS[d][0] * speed * t, 4),
                             cy=round(o.cy + DIRECTIONS[d][1] * speed * t, 4)) for o, d in motions]
            if not all(fits(o, moved[:i] + moved[i + 1 :]) for i, o in enumerate(moved)):
                break
            frames.append(Scene(moved, textured=False))
        if len(frames) == num_frames:
            return Video(frames, _caption(motions), motions)


def render_video(video: Video, side: int = 64) -> np.ndarray:
    """(T, side, side, 3) uint8."""
    return np.stack([render(f, side) for f in video.frames])


def video_caption_satisfied(caption: str, frames: np.ndarray) -> bool:
    """Each "<colour> <shape> moves <direction>" clause holds: the object is in the first and last frames and has
    travelled at least `MIN_TRAVEL` in that direction, more than across it."""
    first, last = parse_image(frames[0]), parse_image(frames[-1])
    for clause in caption.lower().strip().rstrip(".").split(" and "):
        words = clause.split()
        if len(words) != 5 or words[3] != "moves" or words[4] not in DIRECTIONS:
            raise ValueError(f"not a ShapeWorld video caption: {caption!r}")
        color, shape, direction = words[1], words[2], words[4]
        a = [o for o in first if (o.color, o.shape) == (color, shape)]
        b = [o for o in last if (o.color, o.shape) == (color, shape)]
        if len(a) != 1 or len(b) != 1:
            return False
        dx, dy = DIRECTIONS[direction]
        along = (b[0].cx - a[0].cx) * dx + (b[0].cy - a[0].cy) * dy
        across = abs((b[0].cx - a[0].cx) * dy) + abs((b[0].cy - a[0].cy) * dx)
        if along < MIN_TRAVEL or across > along / 2:
            return False
    return True


def make_video_dataset(out: str | Path, num: int, split: str = "train", side: int = 64, num_frames: int = 8,
                       progress: bool = True) -> Path:
    """Write `num` videos of `split` as PNG strips (frames side by side) with a manifest `videos-<split>.jsonl`."""
    from omniar.data.shapeworld.dataset import SPLITS

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    out = Path(out)
    (out / "videos" / split).mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(num), disable=not progress, desc=f"shapeworld videos {split}", unit="video"):
        video = sample_video(random.Random(f"shapeworld-video/{split}/{i}"), num_frames)
        rel = f"videos/{split}/{i:06d}.png"
        Image.fromarray(np.concatenate(list(render_video(video, side)), axis=1)).save(out / rel)
        records.append({"id": f"video-{split}-{i:06d}", "caption": video.caption, "frames": rel,
                        "num_frames": num_frames, "scenes": [f.to_dict() for f in video.frames]})
    manifest = out / f"videos-{split}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


def load_video(path: str | Path, num_frames: int) -> np.ndarray:
    """(T, H, W, 3) frames from a PNG strip written by `make_video_dataset`."""
    from omniar.data.manifest import load_image

    strip = load_image(path)
    if strip.shape[1] % num_frames:
        raise ValueError(f"{path}: width {strip.shape[1]} is not {num_frames} frames")
    return np.stack(np.split(strip, num_frames, axis=1))
