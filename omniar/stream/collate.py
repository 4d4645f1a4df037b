"""Pack samples into rows with document isolation and produce the per-position metadata the decoder reads.

Positions follow Qwen2-VL's multimodal RoPE: every position has three components (t, row, col). Text and other
1-D tokens use (p, p, p), which is exactly 1-D RoPE. A grid image starting at p uses (p, p + r, p + c); a
next-scale image places each scale's tokens on the final grid, (r + 0.5) * H / h - 0.5, so coarse tokens sit
at the centres of the fine cells they summarise. The next segment starts at p + max(H, W).

Labels are already shifted: `labels[t]` is the token to predict from position t (-100 where there is none),
and `loss_weights[t]` its weight.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from omniar.masks import PAD_DOC, PositionMeta
from omniar.modality import Modality, Pattern
from omniar.stream.segment import Sample, Segment

IGNORE = -100


@dataclass
class Batch:
    """Collated rows: model inputs plus training targets."""

    input_ids: Tensor  # (B, L), 0 at continuous and padding positions
    meta: PositionMeta  # per-position metadata, (B, L) each
    positions: Tensor  # (B, L, 3) float RoPE positions (t, row, col)
    features: dict[int, Tensor]  # modality id -> (N, d) continuous inputs, in row-major position order
    labels: Tensor  # (B, L) next-token targets, IGNORE where none
    loss_weights: Tensor  # (B, L)

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "meta": self.meta, "positions": self.positions, "features": self.features}

    def slice(self, start: int, stop: int) -> Batch:
        """Positions [start, stop) of every row, with the features that fall inside (for chunked prefill)."""
        return self._part((slice(None), slice(start, stop)))

    def select(self, rows: Tensor) -> Batch:
        """The given rows (in that order), with their features (e.g. to drop a decoding's guidance rows)."""
        return self._part(rows)

    def _part(self, index) -> Batch:
        """The positions `index` picks from every (B, L) field, with the features that fall inside."""
        feats = {}
        for m, f in self.features.items():
            where = self.meta.modality == m
            rank = where.reshape(-1).cumsum(0).reshape(where.shape) - 1  # each position's row in f
            feats[m] = f[rank[index][where[index]]]
        return Batch(self.input_ids[index], self.meta[index], self.positions[index], feats, self.labels[index],
                     self.loss_weights[index])

    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device` (itself when every tensor is there already)."""
        device = torch.device(device)
        tensors = [self.input_ids, self.positions, self.labels, self.loss_weights, *self.features.values()]
        if all(t.device == device for t in tensors) and self.meta.index.device == device:
            return self
        meta = PositionMeta.unstack(self.meta.stack().to(device))
        feats = {m: f.to(device) for m, f in self.features.items()}
        return Batch(self.input_ids.to(device), meta, self.positions.to(device), feats, self.labels.to(device),
                     self.loss_weights.to(device))


@dataclass
class _Flat:
    """One sample laid out position by position (columns of equal length)."""

    ids: Tensor
    modality: Tensor
    segment: Tensor
    pattern: Tensor
    block: Tensor
    positions: Tensor  # (n, 3)
    labels: Tensor
    weights: Tensor
    features: list[tuple[int, Tensor]]

    def __len__(self) -> int:
        return len(self.ids)


def _segment_positions(seg: Segment, start: float) -> tuple[Tensor, Tensor, float]:
    """RoPE positions (n, 3) and block (scale) index of each position, and where the next segment starts."""
    n = len(seg)
    if seg.grid is None and seg.scales is None:
        p = torch.arange(n, dtype=torch.float32) + start
        return p[:, None].expand(n, 3), torch.zeros(n, dtype=torch.long), start + n
    grids = tuple((int(h), int(w)) for h, w in (seg.scales if seg.scales is not None else [seg.grid]))
    pos, block = _grid_positions(grids)
    H, W = grids[-1]
    return pos + start, block, start + max(H, W)


@functools.lru_cache(maxsize=64)
def _grid_positions(grids: tuple[tuple[int, int], ...]) -> tuple[Tensor, Tensor]:
    """(t, row, col) positions (n, 3) from t = 0 and the scale index of the cells of `grids` (scale by scale, row
    major): each scale's cell centres on the last grid's coordinates. Kept per layout (shared: never written)."""
    H, W = grids[-1]
    pos, block = [], []
    for k, (h, w) in enumerate(grids):
        rows = (torch.arange(h, dtype=torch.float32) + 0.5) * H / h - 0.5
        cols = (torch.arange(w, dtype=torch.float32) + 0.5) * W / w - 0.5
        r, c = torch.meshgrid(rows, cols, indexing="ij")
        pos.append(torch.stack([torch.zeros(h * w), r.reshape(-1), c.reshape(-1)], dim=1))
        block.append(torch.full((h * w,), k, dtype=torch.long))
    return torch.cat(pos), torch.cat(block)


def flatten(sample: Sample) -> _Flat:
    """Lay a sample out: task token, then each segment with its boundary markers."""
    cols: dict[str, list[Tensor]] = {k: [] for k in ("ids", "mod", "seg", "pat", "blk", "pos", "loss", "w")}
    features: list[tuple[int, Tensor]] = []
    cursor = 0.0
    seg_id = 0

    def add_text(token: int, loss: bool, weight: float) -> None:
        nonlocal cursor
        add(torch.tensor([token]), Modality.TEXT, Pattern.CAUSAL, torch.full((1, 3), cursor),
            torch.zeros(1, dtype=torch.long), False, loss, weight)
        cursor += 1

    def add(ids, modality, pattern, pos, block, is_feat, loss, weight) -> None:
        nonlocal seg_id
        n = len(ids)
        cols["ids"].append(ids)
        cols["mod"].append(torch.full((n,), int(modality)))
        cols["seg"].append(torch.full((n,), seg_id))
        cols["pat"].append(torch.full((n,), int(pattern)))
        cols["blk"].append(block)
        cols["pos"].append(pos)
        cols["loss"].append(torch.full((n,), loss and not is_feat))
        cols["w"].append(torch.full((n,), float(weight)))
        seg_id += 1

    if sample.task is not None:
        add_text(sample.task, False, 1.0)
    for seg in sample.segments:
        if seg.begin is not None:
            add_text(seg.begin, seg.loss, seg.weight)
        pos, block, nxt = _segment_positions(seg, cursor)
        if seg.ids is not None:
            ids, is_feat = seg.ids, False
        else:
            ids, is_feat = torch.zeros(len(seg), dtype=torch.long), True
            features.append((int(seg.modality), seg.features))
        add(ids, seg.modality, seg.pattern, pos, block, is_feat, seg.loss, seg.weight)
        cursor = nxt
        if seg.end is not None:
            add_text(seg.end, seg.loss, seg.weight)
    if not cols["ids"]:
        raise ValueError("sample has no positions")
    ids = torch.cat(cols["ids"])
    loss = torch.cat(cols["loss"])
    w = torch.cat(cols["w"])
    labels = torch.full_like(ids, IGNORE)
    labels[:-1] = torch.where(loss[1:], ids[1:], IGNORE)
    weights = torch.zeros_like(w)
    weights[:-1] = torch.where(loss[1:], w[1:], 0.0)
    return _Flat(ids, torch.cat(cols["mod"]), torch.cat(cols["seg"]), torch.cat(cols["pat"]), torch.cat(cols["blk"]),
                 torch.cat(cols["pos"]), labels, weights, features)


def pack(samples: Sequence[Sample], max_len: int) -> list[list[_Flat]]:
    """Greedy packing in order: a new row starts when the next sample would not fit in `max_len`."""
    rows: list[list[_Flat]] = []
    used = max_len + 1
    for i, s in enumerate(samples):
        f = flatten(s)
        if len(f) > max_len:
            raise ValueError(f"sample {i} has {len(f)} positions, more than max_len={max_len}")
        if used + len(f) > max_len:
            rows.append([])
            used = 0
        rows[-1].append(f)
        used += len(f)
    return rows


def collate(samples: Sequence[Sample], max_len: int | None = None, pad_side: str = "right", pad_id: int = 0) -> Batch:
    """Collate samples into a `Batch`.

    With `max_len`, samples are packed several to a row (documents isolated by the mask); without it each sample
    is its own row. `pad_side="left"` aligns the ends of rows, as prompts for batched generation want.
    """
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    if not samples:
        raise ValueError("collate needs at least one sample")
    rows = pack(samples, max_len) if max_len is not None else [[flatten(s)] for s in samples]
    B = len(rows)
    L = max(sum(len(f) for f in row) for row in rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    doc = torch.full((B, L), PAD_DOC, dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)
    mod = torch.zeros(B, L, dtype=torch.long)
    pat = torch.zeros(B, L, dtype=torch.long)
    blk = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(B, L, 3)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    weights = torch.zeros(B, L)
    per_modality: dict[int, list[tuple[int, Tensor]]] = {}
    for b, row in enumerate(rows):
        n = sum(len(f) for f in row)
        at = L - n if pad_side == "left" else 0
        seg_base = 0
        for d, f in enumerate(row):
            sl = slice(at, at + len(f))
            ids[b, sl], mod[b, sl], pat[b, sl], blk[b, sl] = f.ids, f.modality, f.pattern, f.block
            seg[b, sl] = f.segment + seg_base
            doc[b, sl] = d
            pos[b, sl] = f.positions
            labels[b, sl], weights[b, sl] = f.labels, f.weights
            # features of this document, keyed by flat row-major order so the model can scatter them back
            for m, x in f.features:
                per_modality.setdefault(m, []).append((b * L + at, x))
            seg_base += int(f.segment.max()) + 1
            at += len(f)
    features = {}
    for m, parts in per_modality.items():
        dims = {x.shape[1] for _, x in parts}
        if len(dims) > 1:
            raise ValueError(f"{Modality(m).name} features have different widths in one batch: {sorted(dims)}")
        features[m] = torch.cat([x for _, x in sorted(parts, key=lambda t: t[0])])
    index = torch.arange(L).expand(B, L)
    meta = PositionMeta(index=index, doc=doc, segment=seg, modality=mod, pattern=pat, block=blk)
    return Batch(ids, meta, pos, features, labels, weights)
