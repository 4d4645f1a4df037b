"""OneCAT's Scale-Aware Adapter: per-scale LoRA on the generation expert's FFN, chosen by each token's scale.

For a token of scale k, each adapted projection computes W x + (alpha / r) B_k A_k x (LoRA, Hu et al. 2021):
A_k is (r, in) with a Kaiming-uniform start and B_k is (out, r) with a zero start, so a new adapter leaves the
model's outputs unchanged. The scale of a token is its `block` in the stream's metadata (collate numbers the
scales of a next-scale image 0, 1, ...). `enabled = False` switches the adapter off (ablation); `merge()`
precomputes W + (alpha / r) B_k A_k for every scale, after which a forward whose tokens all have one scale -
every step of next-scale decoding - runs the plain matmul with the merged weight. Training drops the merged copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniar.model.ffn import SwiGLU
from omniar.model.linear import linear


class ScaleLoRA(nn.Module):
    """The per-scale low-rank deltas of one Linear (in -> out)."""

    def __init__(self, in_features: int, out_features: int, num_scales: int, rank: int, alpha: float):
        super().__init__()
        self.rank, self.factor = rank, alpha / rank
        bound = 1 / math.sqrt(in_features)  # nn.Linear's Kaiming-uniform bound, as in the LoRA reference code
        self.A = nn.Parameter(torch.empty(num_scales, rank, in_features).uniform_(-bound, bound))
        self.B = nn.Parameter(torch.zeros(num_scales, out_features, rank))

    def delta(self, x: Tensor, scale: Tensor) -> Tensor:
        """(alpha / r) B_k A_k x for rows x (N, in) of scales `scale` (N,).

        Rows sorted by scale (the `Routing` of a forward sorts each expert's tokens so) take one pair of matmuls
        per scale on contiguous slices; other rows are sorted here first."""
        if len(scale) > 1 and not bool((scale[1:] >= scale[:-1]).all()):
            order = torch.argsort(scale, stable=True)
            return self.delta(x[order], scale[order])[torch.argsort(order)]
        counts = torch.bincount(scale, minlength=self.A.shape[0]).tolist()
        parts = [(chunk @ self.A[k].t()) @ self.B[k].t() for k, chunk in enumerate(x.split(counts))]
        return torch.cat(parts) * self.factor

    def merged(self, weight: Tensor, k: int) -> Tensor:
        return weight + self.factor * (self.B[k] @ self.A[k])


class _Merged:
    """One scale's merged weight, and the holder of its inference copies (`omniar.model.linear`)."""

    def __init__(self, weight: Tensor):
        self.weight = weight


class ScaleAdaptedSwiGLU(SwiGLU):
    """A SwiGLU expert with a Scale-Aware Adapter on its gate/up and down projections."""

    def __init__(self, hidden: int, intermediate: int, num_scales: int, rank: int, alpha: float):
        super().__init__(hidden, intermediate)
        self.num_scales = num_scales
        self.gate_up_lora = ScaleLoRA(hidden, 2 * intermediate, num_scales, rank, alpha)
        self.down_lora = ScaleLoRA(intermediate, hidden, num_scales, rank, alpha)
        self.enabled = True
        self._merged: dict[int, tuple[_Merged, _Merged]] = {}
        self._merged_at: tuple[int, ...] = ()

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """x (N, hidden) or (B, L, hidden); `scale` the matching scale of every token (None: no adapter)."""
        if not self.enabled or scale is None:
            return super().forward(x)
        shape = x.shape
        x, scale = x.reshape(-1, shape[-1]), scale.reshape(-1).to(x.device)
        if x.shape[0] != scale.shape[0]:
            raise ValueError(f"{x.shape[0]} tokens but {scale.shape[0]} scale ids")
        if len(scale) and (int(scale.min()) < 0 or int(scale.max()) >= self.num_scales):
            raise ValueError(f"scale ids must be in [0, {self.num_scales}), got [{int(scale.min())}, "
                             f"{int(scale.max())}]")
        if self._merged and len(scale) and bool((scale == scale[0]).all()):
            gate_up, down = self._merged[int(scale[0])]
            gate, up = linear(x, gate_up.weight, None, gate_up).split(self.intermediate, dim=-1)
            return linear(F.silu(gate) * up, down.weight, None, down).reshape(shape)
        gate, up = (self.gate_up(x) + self.gate_up_lora.delta(x, scale)).split(self.intermediate, dim=-1)
        h = F.silu(gate) * up
        return (self.down(h) + self.down_lora.delta(h, scale)).reshape(shape)

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in (self.gate_up.weight, self.down.weight, self.gate_up_lora.A,
                                          self.gate_up_lora.B, self.down_lora.A, self.down_lora.B))

    @torch.no_grad()
    def merge(self) -> None:
        """Precompute each scale's merged weights (inference); `train()` drops them. A no-op while the weights
        are unchanged since the last merge (their in-place version counters say so)."""
        if self._merged and self._merged_at == self._versions():
            return
        self._merged = {k: (_Merged(self.gate_up_lora.merged(self.gate_up.weight, k)),
                            _Merged(self.down_lora.merged(self.down.weight, k))) for k in range(self.num_scales)}
        self._merged_at = self._versions()

    def train(self, mode: bool = True) -> ScaleAdaptedSwiGLU:
        if mode:
            self._merged = {}
        return super().train(mode)
