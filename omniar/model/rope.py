"""Rotary position embedding with three position components (t, row, col), as Qwen2-VL's M-RoPE.

Frequency pair i rotates by `position[section(i)] * theta^(-2i/d)`: the first `sections[0]` pairs follow t,
the next `sections[1]` the image row, the last `sections[2]` the image column. Text positions have
t == row == col, which makes this exactly the 1-D RoPE of Qwen2 (the HF parity tests rely on it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, sections: tuple[int, int, int]):
        super().__init__()
        half = head_dim // 2
        inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float32) * 2 / head_dim))
        component = torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("component", component, persistent=False)
        self.single = sections[1] == 0 and sections[2] == 0

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (B, L, 3) -> cos, sin of shape (B, L, 1, head_dim), broadcast over heads."""
        pos = positions[..., :1] if self.single else positions[..., self.component]
        freqs = pos.float() * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)
        return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, L, H, D) rotated by the angles in cos/sin (B, L, 1, D), rotate-half convention (as HF Qwen2)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
