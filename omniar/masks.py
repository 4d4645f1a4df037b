"""Attention masks built from per-position metadata (MECHANISMS.md, "Attention masks").

One builder serves every seed system: a query sees a key only inside its own document (packing isolation),
and then by the rule of the pair:

- different segments: causal (the key comes first);
- same segment: the segment's `Pattern` - causal (text, speech, raster image), bidirectional (OneCAT
  understanding image) or block-causal over scales (VAR / Infinity / OneCAT next-scale generation).

The KV cache keeps the metadata of the keys it holds, so incremental decoding builds its masks with the very
same function as a full forward (which is what makes cached == uncached hold for every pattern).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from omniar.modality import Pattern

PAD_DOC = -1  # document id of padding positions: never a key, and a padding query sees only itself


@dataclass
class PositionMeta:
    """Per-position metadata, every field a LongTensor of shape (B, L)."""

    index: Tensor  # slot in the row: causality is decided on it
    doc: Tensor  # document id inside the packed row; PAD_DOC for padding
    segment: Tensor  # segment id, unique inside a row
    modality: Tensor  # `Modality`: routes the FFN expert
    pattern: Tensor  # `Pattern` of the segment
    block: Tensor  # scale index (next-scale images) or block index (blockwise diffusion); 0 elsewhere

    @classmethod
    def text(cls, batch: int, length: int, start: int = 0, device: torch.device | str | None = None) -> PositionMeta:
        """Metadata of plain causal text: one document, one segment, no padding."""
        index = torch.arange(start, start + length, device=device).expand(batch, length)
        zeros = torch.zeros(batch, length, dtype=torch.long, device=device)
        return cls(index=index, doc=zeros, segment=zeros, modality=zeros, pattern=zeros, block=zeros)

    def stack(self) -> Tensor:
        """All fields as one (F, B, L) tensor, the form the cache stores."""
        return torch.stack([getattr(self, f.name) for f in fields(self)])

    @classmethod
    def unstack(cls, packed: Tensor) -> PositionMeta:
        return cls(*packed.unbind(0))

    def __getitem__(self, idx) -> PositionMeta:
        return PositionMeta(*(getattr(self, f.name)[idx] for f in fields(self)))

    @property
    def shape(self) -> torch.Size:
        return self.index.shape

    def is_plain_causal(self) -> bool:
        """True when a plain causal mask is exactly right: one document per row, no padding, causal patterns.

        Costs a couple of host syncs, far less than building an L x L mask.
        """
        doc = self.doc
        one_doc = bool((doc >= 0).all()) and bool((doc == doc[:, :1]).all())
        return one_doc and bool((self.pattern == Pattern.CAUSAL).all())


def build_attention_mask(q: PositionMeta, k: PositionMeta) -> Tensor:
    """Boolean mask (B, Lq, Lk), True where query q may attend to key k. Usable by `scaled_dot_product_attention`.

    Padding queries see themselves only, so no row of the mask is empty (an empty row would give NaN).
    """

    def pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return a[:, :, None], b[:, None, :]

    qi, ki = pair(q.index, k.index)
    qd, kd = pair(q.doc, k.doc)
    qs, ks = pair(q.segment, k.segment)
    qb, kb = pair(q.block, k.block)
    causal = ki <= qi
    pattern = q.pattern[:, :, None]
    intra = torch.where(pattern == Pattern.BIDIRECTIONAL, True, causal)
    intra = torch.where(pattern == Pattern.BLOCK_CAUSAL, kb <= qb, intra)
    visible = (qd == kd) & (kd != PAD_DOC) & torch.where(qs == ks, intra, causal)
    return visible | ((qd == PAD_DOC) & (ki == qi))


__all__ = ["PAD_DOC", "PositionMeta", "build_attention_mask"]
