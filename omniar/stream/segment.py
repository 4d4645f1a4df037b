"""A sample of the unified token stream: a task token and a list of segments, one modality each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from omniar.modality import DEFAULT_PATTERN, Modality, Pattern


@dataclass
class Segment:
    """A run of positions of one modality, between optional boundary markers (e.g. <boi> ... <eoi>).

    A segment holds either discrete `ids` (text, raster image codes, speech codes) or continuous `features`
    (n, d) - one row per position, e.g. patch features of an understanding image. Images give their layout so
    positions can be 2-D: `grid=(h, w)` for a single-grid image, `scales=[(1, 1), (2, 2), ...]` for a next-scale
    image whose tokens are laid out coarse to fine. `loss` marks the segment (and its markers) as prediction
    targets, with `weight` in the task-aware loss.
    """

    modality: Modality | str
    ids: Sequence[int] | Tensor | None = None
    features: Tensor | None = None
    grid: tuple[int, int] | None = None
    scales: Sequence[tuple[int, int]] | None = None
    begin: int | None = None
    end: int | None = None
    loss: bool = False
    weight: float = 1.0
    pattern: Pattern | None = None

    def __post_init__(self) -> None:
        self.modality = Modality.parse(self.modality)
        if (self.ids is None) == (self.features is None):
            raise ValueError(f"{self.modality.name} segment needs exactly one of `ids` or `features`")
        if self.ids is not None:
            self.ids = torch.as_tensor(self.ids, dtype=torch.long).reshape(-1)
        else:
            f = self.features
            if not isinstance(f, Tensor) or f.dim() != 2 or not f.is_floating_point():
                desc = f"{tuple(f.shape)} {f.dtype}" if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(f"{self.modality.name} segment features must be a float tensor (n, d); got {desc}")
        if self.grid is not None and self.scales is not None:
            raise ValueError("give either `grid` (one image grid) or `scales` (next-scale image), not both")
        if self.scales is not None:
            self.scales = [tuple(s) for s in self.scales]
            expected = sum(h * w for h, w in self.scales)
        elif self.grid is not None:
            self.grid = tuple(self.grid)
            expected = self.grid[0] * self.grid[1]
        else:
            expected = len(self)
        if len(self) != expected:
            raise ValueError(f"{self.modality.name} segment has {len(self)} positions but its layout needs {expected}")
        if len(self) == 0:
            raise ValueError(f"{self.modality.name} segment is empty")
        if self.pattern is None:
            self.pattern = DEFAULT_PATTERN[self.modality]

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else self.features.shape[0]


@dataclass
class Sample:
    """One document of the stream. `task` is a task token id put in front (e.g. <t2i>, <caption>)."""

    segments: list[Segment]
    task: int | None = None

    def __len__(self) -> int:
        """Positions of the laid-out sample: task token, segments and their boundary markers."""
        markers = sum((s.begin is not None) + (s.end is not None) for s in self.segments)
        return (self.task is not None) + markers + sum(len(s) for s in self.segments)
