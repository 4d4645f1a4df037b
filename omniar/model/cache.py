"""Decoding state: one cache object per layer, held together by a `DecoderCache`.

A layer's cache is whatever its sequence mixer needs to continue: attention keeps keys and values (`KVCache`);
a recurrent mixer (Mamba-2, a later issue) keeps a fixed-size state. Every layer cache supports `reset`, and
`select` (keep some batch rows, e.g. to drop finished rows or to fan out CFG branches).

The `DecoderCache` also keeps the per-position metadata of everything cached, so the attention mask of an
incremental step is built by the same `build_attention_mask` as a full forward, and the next RoPE position of
each row. Buffers grow by doubling and are written in place; `reset()` keeps them for the next request.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniar.masks import PositionMeta

APPENDED_TEXT_SEGMENT = -2  # segment id of text appended without metadata (collated segments count from 0)


def _grow(buf: Tensor | None, like: Tensor, keep: int, need: int) -> Tensor:
    """A buffer shaped like `like` (B, H, L, D) with room for `need` positions, holding buf's first `keep`."""
    cap = buf.shape[2] if buf is not None else 0
    shape = list(like.shape)
    shape[2] = max(need, 2 * cap, 64)
    new = like.new_zeros(shape)
    if keep:
        new[:, :, :keep] = buf[:, :, :keep]
    return new


class KVCache:
    """Keys and values of one attention layer, (B, H_kv, capacity, head_dim), filled up to `length`."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, H_kv, L, D); return views of all keys and values so far."""
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2] or self.k.shape[0] != k.shape[0]:
            if self.length and self.k.shape[0] != k.shape[0]:
                raise ValueError(f"cache holds {self.k.shape[0]} rows, got {k.shape[0]}; reset() or select() first")
            self.k = _grow(self.k, k, self.length, end)
            self.v = _grow(self.v, v, self.length, end)
        self.k.narrow(2, self.length, k.shape[2]).copy_(k)
        self.v.narrow(2, self.length, v.shape[2]).copy_(v)
        self.length = end
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        """Forget the positions from `length` on (the buffers keep them, to be overwritten)."""
        self.length = length

    def select(self, rows: Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]


class DecoderCache:
    """Per-layer caches plus what all layers share: cached positions' metadata, length and next RoPE position."""

    def __init__(self, layers: list) -> None:
        self.layers = layers
        self.length = 0
        self.meta: Tensor | None = None  # (F, B, capacity) stacked PositionMeta of cached positions
        self.next_position: Tensor | None = None  # (B,) RoPE t-position of the next token of each row
        self.plain = True  # one document, no padding: a single plain-text query may see every cached key

    @property
    def positions_lost(self) -> bool:
        """Truncated: positions are cached but the next RoPE position is unknown until a step gives positions."""
        return self.next_position is None and self.length > 0

    def append_meta(self, meta: PositionMeta | None, batch: int, new: int, device: torch.device) -> PositionMeta:
        """Record the metadata of `new` positions (plain text when `meta` is None); return the keys' metadata.

        Fresh buffer slots already hold plain text's metadata (slot index, document 0, a segment id of its own
        that no collated segment uses), so plain-text steps after one document write nothing; after packed
        documents, appended text joins the row's last document.
        """
        end = self.length + new
        if self.meta is None or end > self.meta.shape[2] or self.meta.shape[1] != batch:
            if self.length and self.meta.shape[1] != batch:
                raise ValueError(f"cache holds {self.meta.shape[1]} rows, got {batch}; reset() or select() first")
            cap = max(end, 2 * (self.meta.shape[2] if self.meta is not None else 0), 64)
            buf = PositionMeta.text(batch, cap, device=device).stack().clone()
            buf[2] = APPENDED_TEXT_SEGMENT
            if self.length:
                buf[:, :, : self.length] = self.meta[:, :, : self.length]
            self.meta = buf
        if meta is not None:
            self.meta[:, :, self.length : end] = meta.stack()
            self.plain = self.plain and bool((meta.doc == 0).all())
        elif not self.plain:
            last_doc = self.meta[1, :, self.length - 1 : self.length]
            if bool((last_doc < 0).any()):
                raise ValueError("a row's last cached position is padding: pad prompts on the left to continue them")
            self.meta[1, :, self.length : end] = last_doc
        self.length = end
        return PositionMeta.unstack(self.meta[:, :, :end])

    def reset(self) -> None:
        """Forget the contents, keep the K/V buffers: the cache can serve the next request."""
        self.length = 0
        self.meta = None
        self.next_position = None
        self.plain = True
        for layer in self.layers:
            layer.reset()

    def truncate(self, length: int) -> None:
        """Forget every cached position from `length` on, as if the forward passes had stopped there (e.g. a
        pass that read the prompt and a first guess of what follows keeps the prompt). Attention caches only: a
        recurrent state cannot go back. The RoPE position after `length` is not kept, so the next step must give
        its positions (a text step without them raises)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        for layer in self.layers:
            if not hasattr(layer, "truncate"):
                raise ValueError(f"a {type(layer).__name__} cannot be cut back to an earlier position")
        for layer in self.layers:
            layer.truncate(length)
        if self.meta is not None:  # the forgotten slots hold plain text's metadata again, as fresh ones do
            self.meta[:, :, length:] = PositionMeta.text(self.meta.shape[1], self.meta.shape[2] - length, start=length,
                                                         device=self.meta.device).stack()
            self.meta[2, :, length:] = APPENDED_TEXT_SEGMENT
        self.length = length
        self.next_position = None

    def select(self, rows: Tensor) -> None:
        """Keep only the given batch rows (in that order)."""
        if self.meta is not None:
            self.meta = self.meta[:, rows]
        if self.next_position is not None:
            self.next_position = self.next_position[rows]
        for layer in self.layers:
            layer.select(rows)
