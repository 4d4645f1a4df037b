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


class ScaleIds:
    """The scale ids of some tokens (N,), with what an adapter asks of them - their range, their order, their count
    per scale - each worked out once (a host sync) and kept: a forward's `Routing` makes one per expert group, which
    every layer's adapter then shares."""

    def __init__(self, ids: Tensor, is_sorted: bool = False):
        self.ids = ids.reshape(-1)
        self._sorted = is_sorted or len(self.ids) < 2
        self._range: tuple[int, int] | None = None
        self._order: tuple[Tensor, Tensor, ScaleIds] | None = None
        self._counts: list[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def range(self) -> tuple[int, int]:
        """(lowest, highest) id; (0, -1) for no tokens."""
        if self._range is None:
            self._range = tuple(torch.stack(torch.aminmax(self.ids)).tolist()) if len(self) else (0, -1)
        return self._range

    def in_order(self) -> tuple[Tensor | None, Tensor | None, ScaleIds]:
        """(order, inverse, the ids sorted by order): None, None, self where they are sorted already."""
        if self._order is None:
            self._sorted = self._sorted or bool((self.ids[1:] >= self.ids[:-1]).all())
            if self._sorted:
                return None, None, self
            order = torch.argsort(self.ids, stable=True)
            self._order = (order, torch.argsort(order), ScaleIds(self.ids[order], is_sorted=True))
        return self._order

    def counts(self, num_scales: int) -> list[int]:
        """Tokens of each scale 0 .. num_scales - 1."""
        if self._counts is None:
            self._counts = torch.bincount(self.ids, minlength=num_scales).tolist()
        return self._counts


class ScaleLoRA(nn.Module):
    """The per-scale low-rank deltas of one Linear (in -> out)."""

    def __init__(self, in_features: int, out_features: int, num_scales: int, rank: int, alpha: float):
        super().__init__()
        self.rank, self.factor = rank, alpha / rank
        bound = 1 / math.sqrt(in_features)  # nn.Linear's Kaiming-uniform bound, as in the LoRA reference code
        self.A = nn.Parameter(torch.empty(num_scales, rank, in_features).uniform_(-bound, bound))
        self.B = nn.Parameter(torch.zeros(num_scales, out_features, rank))

    def delta(self, x: Tensor, scale: ScaleIds) -> Tensor:
        """(alpha / r) B_k A_k x for rows x (N, in) of scales `scale`.

        Rows sorted by scale (the `Routing` of a forward sorts each expert's tokens so) take one pair of matmuls
        per scale on contiguous slices; other rows are sorted here first."""
        order, inverse, ordered = scale.in_order()
        if order is not None:
            return self.delta(x[order], ordered)[inverse]
        parts = [(chunk @ self.A[k].t()) @ self.B[k].t()
                 for k, chunk in enumerate(x.split(scale.counts(self.A.shape[0])))]
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

    def forward(self, x: Tensor, scale: Tensor | ScaleIds | None = None) -> Tensor:
        """x (N, hidden) or (B, L, hidden); `scale` the matching scale of every token (None: no adapter)."""
        if not self.enabled or scale is None:
            return super().forward(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        scale = scale if isinstance(scale, ScaleIds) else ScaleIds(scale.to(x.device))
        if x.shape[0] != len(scale):
            raise ValueError(f"{x.shape[0]} tokens but {len(scale)} scale ids")
        lo, hi = scale.range()
        if len(scale) and (lo < 0 or hi >= self.num_scales):
            raise ValueError(f"scale ids must be in [0, {self.num_scales}), got [{lo}, {hi}]")
        if self._merged and len(scale) and lo == hi:
            gate_up, down = self._merged[lo]
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
