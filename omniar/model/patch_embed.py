"""OneCAT's understanding input: pixels to decoder tokens without a vision encoder.

    Conv2d(3, C, p, stride p) + learned position embedding (bicubic-resized to other grids)
    -> 2 x 2 pixel-unshuffle (4C channels, a quarter of the tokens) -> LayerNorm -> Linear(4C, D) -> GELU

The decoder's feature projection for `image_und` (a Linear(D, D)) is the second layer of OneCAT's 2-layer MLP, so
this module ends at the GELU. A 64 x 64 image with p = 4 gives a 16 x 16 patch grid and 8 x 8 = 64 tokens, laid
out row-major; `grid(side)` gives the token grid to put in the stream's `Segment(grid=...)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def token_grid(side: int, patch: int) -> int:
    """Understanding tokens per side of a side x side image: patchify by `patch`, then 2 x 2 pixel-unshuffle."""
    return side // (2 * patch)


class PatchEmbed(nn.Module):
    def __init__(self, hidden: int, patch: int = 4, channels: int = 64, image_size: int = 64):
        super().__init__()
        if image_size % (2 * patch):
            raise ValueError(f"image_size {image_size} must be a multiple of 2 x patch ({2 * patch})")
        self.patch, self.image_size = patch, image_size
        side = image_size // patch
        self.conv = nn.Conv2d(3, channels, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, channels, side, side) * 0.02)
        self.norm = nn.LayerNorm(4 * channels)
        self.proj = nn.Linear(4 * channels, hidden)

    def grid(self, side: int | None = None) -> tuple[int, int]:
        """The (rows, cols) token grid of a side x side image."""
        n = token_grid(side or self.image_size, self.patch)
        return n, n

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) in [0, 1], S a multiple of 2 x patch -> (B, (S / 2p)^2, hidden)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be (B, 3, S, S) floats in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got {images.dtype}")
        h, w = images.shape[2:]
        if h != w or h % (2 * self.patch):
            raise ValueError(f"images must be square with a side that is a multiple of {2 * self.patch}, "
                             f"got {h}x{w}")
        x = self.conv(images * 2 - 1)
        pos = self.pos if x.shape[-1] == self.pos.shape[-1] else F.interpolate(
            self.pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        x = F.pixel_unshuffle(x + pos, 2)  # (B, 4C, S/2p, S/2p)
        x = x.flatten(2).transpose(1, 2)
        return F.gelu(self.proj(self.norm(x)))

