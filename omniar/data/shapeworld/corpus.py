"""All the text ShapeWorld says: captions, questions, answers, edit instructions, video captions."""

from __future__ import annotations

import random
from collections.abc import Iterator

from omniar.data.shapeworld.dataset import SPLITS, make_sample
from omniar.data.shapeworld.video import sample_video


def world_text(num_samples: int = 2000, splits: tuple[str, ...] = tuple(SPLITS)) -> Iterator[str]:
    """Texts of the first `num_samples` samples of each split, and as many video captions."""
    for split in splits:
        for i in range(num_samples):
            s = make_sample(split, i)
            yield s["caption"]
            yield s["question"]
            yield s["answer"]
            if s["edit"] is not None:
                yield s["edit"]["instruction"]
    rng = random.Random("shapeworld-corpus-video")
    for _ in range(num_samples):
        yield sample_video(rng).caption
