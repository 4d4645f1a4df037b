"""Rotary position embedding with three position components (t, row, col), as Qwen2-VL's M-RoPE.

Frequency pair i rotates by `position[component(i)] * theta^(-2i/d)`; `sections` says how many pairs follow t,
the image row and the image column. Qwen2-VL gives each component one contiguous block of pairs, which leaves
rows and columns only the lowest frequencies: with head_dim 32 and theta 1e4 a column 7 cells away is turned
by less than 0.01 rad, so the tokens of an 8 x 8 grid can hardly tell where they are. `interleaved` (the
default, Qwen3-VL's interleaved M-RoPE) spreads each component's pairs over the whole frequency range instead.
Text positions have t == row == col, so either way text sees exactly the 1-D RoPE of Qwen2 (the HF parity
tests rely on it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, sections: tuple[int, int, int], interleaved: bool = True):
        super().__init__()
        self.head_dim, self.theta, self.sections, self.interleaved = head_dim, theta, tuple(sections), interleaved
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.register_buffer("component", torch.empty(head_dim // 2, dtype=torch.long), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Fill the (non-persistent) buffers; also after the model was built on the meta device."""
        half, cpu = self.head_dim // 2, torch.device("cpu")  # computed on the CPU, even inside a meta-device context
        exponent = torch.arange(0, half, dtype=torch.float32, device=cpu) * 2 / self.head_dim
        if self.interleaved:  # component c's j-th of n pairs sits at (j + 0.5) / n of the frequency range
            order = sorted(((j + 0.5) / n, c) for c, n in enumerate(self.sections) for j in range(n))
            component = torch.tensor([c for _, c in order], device=cpu)
        else:
            component = torch.repeat_interleave(torch.arange(3, device=cpu), torch.tensor(self.sections, device=cpu))
        with torch.no_grad():
            self.inv_freq.copy_(1.0 / self.theta**exponent)
            self.component.copy_(component)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (B, L, 3), or (B, L) for 1-D ones -> cos, signed sin, each (B, L, 1, head_dim).

        The sin carries the sign of rotate-half, so `apply_rotary` needs only a roll: rotate_half(x) * sin ==
        roll(x, d/2) * cat(-sin, sin).
        """
        if positions.dim() == 2:
            freqs = positions[..., None].float() * self.inv_freq
        elif self.sections[1] == self.sections[2] == 0:
            freqs = positions[..., :1].float() * self.inv_freq
        else:
            freqs = positions[..., self.component].float() * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        return torch.cat([cos, cos], -1).unsqueeze(2), torch.cat([-sin, sin], -1).unsqueeze(2)


def apply_rotary(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x (B, L, H, D) rotated by the angles of (B, L, 1, D) tables, HF Qwen2's rotate-half convention."""
    out = torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)
    return out if out.dtype == x.dtype else out.to(x.dtype)
