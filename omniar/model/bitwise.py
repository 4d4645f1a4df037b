"""Next-scale bitwise generation (Infinity, OneCAT): the generation tokens' input embedding and the bitwise head.

Input at the positions of scale k (VAR's teacher forcing): the image tokenizer's AR input for scale k - the
running reconstruction after scales < k, area-downsampled to s_k x s_k, d channels (`ImageTokenizer.ar_inputs`)
-> Linear(d, D) -> GELU, plus a learned embedding of k and a learned 2-D position embedding of the final grid
area-downsampled to s_k x s_k (VAR adds absolute positions too: at the coarse scales the inputs are nearly
uniform, and without them the tokens of a scale could not tell their places apart). Scale 0 has no earlier
scale: its single position reads a learned start vector. The decoder's `image_gen` feature projection (a
Linear(D, D)) is the MLP's second layer, as for understanding patches. The stream places scale tokens at the
centres of the final grid's cells (`collate`), which gives the 2-D positions scaled to the final grid.

Head: Linear(D, 2d), two logits per bit (optionally each bit also conditioned on the token's earlier bits:
`BitwiseHead(ar_width=...)`), trained with the mean binary cross-entropy over bits and sampled bit by bit
(temperature, top-k, top-p; with two outcomes top-k 1 is greedy and top-p keeps the likelier bit alone when its
probability reaches p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniar.generation.sampling import Generators, SamplingParams, generator_per_row, sample


class ScaleInputEmbed(nn.Module):
    def __init__(self, bits: int, hidden: int, num_scales: int, side: int = 1):
        super().__init__()
        self.bits, self.num_scales = bits, num_scales
        self.proj = nn.Linear(bits, hidden)
        self.start = nn.Parameter(torch.randn(hidden) * 0.02)
        self.scale = nn.Embedding(num_scales, hidden)
        self.pos = nn.Parameter(torch.randn(1, hidden, side, side) * 0.02)  # the final grid's positions
        nn.init.normal_(self.scale.weight, std=0.02)

    def position(self, size: int) -> Tensor:
        """(size * size, D) position embeddings of a size x size scale: the final grid's, area-downsampled."""
        pos = self.pos if size == self.pos.shape[-1] else F.interpolate(self.pos, size=(size, size), mode="area")
        return pos[0].flatten(1).t()

    def forward(self, ar_inputs: list[Tensor], batch: int, first: int = 0) -> Tensor:
        """Embeddings (batch, T, D) of scales first, first + 1, ... in scale-major, row-major order.

        ar_inputs[j] (batch, d, s, s) is the input of scale first + j for scales > 0; scale 0 needs none (pass
        the inputs of scales 1.. only, with first=0, and scale 0's start vector is put in front)."""
        parts = []
        if first == 0:
            parts.append((self.start + self.scale.weight[0] + self.position(1)).expand(batch, 1, -1))
        for j, x in enumerate(ar_inputs):
            k = first + j + (first == 0)
            if k >= self.num_scales:
                raise ValueError(f"scale {k} is beyond the {self.num_scales} scales of this embedding")
            if x.dim() != 4 or x.shape[:2] != (batch, self.bits):
                raise ValueError(f"AR input of scale {k} must be ({batch}, {self.bits}, s, s), got {tuple(x.shape)}")
            tokens = x.flatten(2).transpose(1, 2)
            parts.append(F.gelu(self.proj(tokens)) + self.scale.weight[k] + self.position(x.shape[-1]))
        if not parts:
            raise ValueError("no scales to embed")
        return torch.cat(parts, 1)

    def raster(self, codes: Tensor, first: int, stop: int) -> Tensor:
        """Next-token inputs (B, stop - first, D) of raster positions [first, stop) of a single-scale image:
        position t reads the code of token t - 1 (codes (B, >= stop - 1, d), row-major), position 0 the start
        vector; plus the position embedding of t (the Chameleon / AR-Omni baseline)."""
        parts = []
        if first == 0:
            parts.append(self.start.expand(codes.shape[0], 1, -1))
        if stop > max(first, 1):
            parts.append(F.gelu(self.proj(codes[:, max(first, 1) - 1 : stop - 1])))
        side = self.pos.shape[-1]
        return torch.cat(parts, 1) + self.scale.weight[0] + self.position(side)[first:stop]


class BitwiseHead(nn.Module):
    """Two logits per bit from the hidden state: Infinity's independent bits, or with `ar_width` > 0 each bit also
    conditioned on the token's earlier bits (MADE, Germain et al. 2015: one masked hidden layer of that width plus a
    strictly lower-triangular direct term), so the d bits of a token are drawn from their joint distribution instead
    of d independent marginals. Where a token's bits are ambiguous (the object's position at a coarse scale, say),
    independent draws mix the modes bit by bit - a blend of every possible place; the autoregressive head draws one
    mode (a unit test shows it). It costs d tiny steps of the head per scale, no decoder passes; training stays
    one parallel pass (teacher forcing with the target bits). On ShapeWorld it takes a trained model's bits 8% lower
    in nats, draws single objects better and two-object prompts worse by as much: the text-to-image score stays
    where it was (BENCHMARKS.md, "A token's bits drawn jointly"), so the presets keep independent bits."""

    def __init__(self, hidden: int, bits: int, ar_width: int = 0):
        super().__init__()
        self.bits, self.ar_width = bits, ar_width
        self.proj = nn.Linear(hidden, 2 * bits)
        if ar_width:
            if bits < 2:
                raise ValueError("an autoregressive bit head needs tokens of at least 2 bits")
            degree = torch.arange(ar_width) % (bits - 1) + 1  # hidden unit k sees bits 0 .. degree_k - 1
            self.register_buffer("mask_in", (torch.arange(bits)[None, :] < degree[:, None]).float(), persistent=False)
            self.register_buffer("mask_out", (degree[None, :] <= torch.arange(bits)[:, None]).float(), persistent=False)
            self.register_buffer("mask_direct", torch.ones(bits, bits).tril(-1), persistent=False)
            self.ar_context = nn.Linear(hidden, ar_width)
            self.ar_in = nn.Parameter(torch.randn(ar_width, bits) / bits**0.5)
            self.ar_out = nn.Parameter(torch.zeros(bits, ar_width))
            self.ar_direct = nn.Parameter(torch.zeros(bits, bits))

    @property
    def autoregressive(self) -> bool:
        return self.ar_width > 0

    def forward(self, h: Tensor, bits: Tensor | None = None) -> Tensor:
        """(..., D) -> (..., bits, 2) logits of each bit being 0 or 1. An autoregressive head needs the token's
        `bits` (..., d) (bool, or +-1 / 0 floats: 0 for bits not drawn yet); bit i's logits read bits < i only."""
        logits = self.proj(h).unflatten(-1, (self.bits, 2))
        if not self.autoregressive:
            return logits
        if bits is None:
            raise ValueError("an autoregressive bit head needs the token's bits (teacher forcing or those drawn)")
        return self._conditioned(logits, self.ar_context(h), bits)

    def _conditioned(self, logits: Tensor, context: Tensor, bits: Tensor) -> Tensor:
        x = bits.float() * 2 - 1 if bits.dtype == torch.bool else bits.to(context.dtype)
        z = F.gelu(context + x @ (self.ar_in * self.mask_in).t())
        delta = z @ (self.ar_out * self.mask_out).t() + x @ (self.ar_direct * self.mask_direct).t()
        return logits + torch.stack([torch.zeros_like(delta), delta], -1)

    def draw(self, h: Tensor, groups: int, guide, sample_rows, bias: Tensor | None = None) -> Tensor:
        """Bits (N, T, d) for hidden states h (groups * N, T, D), the guidance groups stacked: `guide` maps
        log-probabilities (groups, N, T, d', 2) to guided ones (N, T, d', 2) and `sample_rows` those to bits
        (N, T, d'). `bias` (N, T, d, 2) is added to the guided log-probabilities (an edit's pull towards its
        reference). Independent bits take one step; an autoregressive head draws bit by bit, every group reading
        the bits drawn so far."""
        def logp(logits: Tensor) -> Tensor:
            return logits.float().log_softmax(-1).unflatten(0, (groups, -1))

        def guided(logits: Tensor, i: slice = slice(None)) -> Tensor:
            g = guide(logp(logits))
            return g if bias is None else g + bias[..., i, :]

        logits = self.proj(h).unflatten(-1, (self.bits, 2))
        if not self.autoregressive:
            return sample_rows(guided(logits))
        context = self.ar_context(h)
        n = h.shape[0] // groups
        x = h.new_zeros(n, h.shape[1], self.bits)
        for i in range(self.bits):  # bit i's logits read only bits < i (the masks), so the zeros beyond are unread
            full = self._conditioned(logits, context, x.repeat(groups, 1, 1))
            x[..., i : i + 1] = sample_rows(guided(full[..., i : i + 1, :], slice(i, i + 1))).to(x.dtype) * 2 - 1
        return x > 0


def bitwise_loss(logits: Tensor, bits: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over bits of logits (N, d, 2) against bits (N, d); `weights` (N,) weighs tokens."""
    if logits.shape[:-1] != bits.shape or logits.shape[-1] != 2:
        raise ValueError(f"logits {tuple(logits.shape)} do not match bits {tuple(bits.shape)} (expected (..., 2))")
    ce = F.cross_entropy(logits.reshape(-1, 2).float(), bits.reshape(-1).long(), reduction="none").view(bits.shape)
    per_token = ce.mean(-1)
    if weights is None:
        return per_token.mean()
    return (per_token * weights).sum() / weights.sum().clamp(min=1e-8)


def sample_bits(logits: Tensor, params: SamplingParams | None = None, generator: Generators = None) -> Tensor:
    """Bits (B, ..., d) drawn from logits (B, ..., d, 2); per-row knobs (B,) apply to every bit of their row, and a
    sequence of B generators draws each row's bits from its own (so a row's bits do not depend on its batch)."""
    params = params or SamplingParams()
    per_row = logits[..., 0].numel() // logits.shape[0]
    generator_per_row(generator, logits.shape[0])

    def spread(value):
        if isinstance(value, (int, float)):
            return value
        t = torch.as_tensor(value)
        return value if t.dim() == 0 else t.repeat_interleave(per_row)

    flat = SamplingParams(spread(params.temperature), spread(params.top_k), spread(params.top_p))
    return sample(logits.reshape(-1, 2), flat, generator=generator).view(logits.shape[:-1]).bool()
