"""Turning logits into tokens: greedy, temperature, top-k, top-p, repetition penalty, classifier-free guidance.

Every knob is per row: a float applies to the whole batch, a sequence or (B,) tensor gives each row its own
value (a batch can mix greedy and sampled rows, as finite-state decoding needs). Sampling draws from an
optional `torch.Generator`, so a seeded generator reproduces the same tokens - or from one generator per block of
rows, so each block's tokens (an image's bits, say) do not depend on the batch it is drawn in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

PerRow = float | int | Sequence[float] | Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None


def generator_per_row(generator: Generators, n: int, what: str = "row") -> bool:
    """Whether `generator` is a sequence, one per row (checked: `n` of them, else a named error); False for one
    generator or None."""
    if generator is None or isinstance(generator, torch.Generator):
        return False
    if len(generator) != n:
        raise ValueError(f"{len(generator)} generators for {n} {what}s: give one, or one per {what}")
    return True


def _rows(value: PerRow, batch: int, device, dtype=torch.float32) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"per-row sampling parameter has shape {tuple(t.shape)}, expected ({batch},)")
    return t


@dataclass
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off; repetition_penalty 1 = off (CTRL / HF rule)."""

    temperature: PerRow = 1.0
    top_k: PerRow = 0
    top_p: PerRow = 1.0
    repetition_penalty: PerRow = 1.0

    def __post_init__(self) -> None:
        for name, lo in (("temperature", 0.0), ("top_k", 0), ("repetition_penalty", 1e-6)):
            if _violates(getattr(self, name), lambda v, lo=lo: v < lo):
                raise ValueError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if _violates(self.top_p, lambda p: (p <= 0) | (p > 1)):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def penalizes_repetition(self) -> bool:
        return not _plainly(self.repetition_penalty, 1.0)


def _violates(value: PerRow, bad) -> bool:
    """Whether `bad` holds for a knob or any of its rows; a plain number is checked without tensors (decoding makes
    its parameters per step)."""
    return bool(bad(value)) if isinstance(value, (int, float)) else bool(bad(torch.as_tensor(value)).any())


def _plainly(value: PerRow, setting: float) -> bool:
    """True when a knob is a plain number equal to `setting` for every row (known without touching the device)."""
    return isinstance(value, (int, float)) and value == setting


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: Tensor) -> Tensor:
    """Divide positive logits, multiply negative ones, of every token already in `previous` (B, T)."""
    if previous is None or previous.shape[1] == 0:
        return logits
    p = penalty[:, None]
    seen = logits.gather(1, previous)
    seen = torch.where(seen > 0, seen / p, seen * p)
    return logits.scatter(1, previous, seen)


def filter_top_k_top_p(logits: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """Mask (to -inf) tokens outside each row's top-k and outside the smallest set whose mass reaches top-p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)
    k = torch.where(top_k > 0, top_k, logits.shape[-1]).to(torch.long)
    drop = rank[None, :] >= k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    drop |= mass_before >= top_p[:, None]
    drop[:, 0] = False  # always keep the best token
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def sample(logits: Tensor, params: SamplingParams | None = None, previous: Tensor | None = None,
           generator: Generators = None) -> Tensor:
    """Pick one token per row from logits (B, V); `previous` (B, T) feeds the repetition penalty. `generator`: one
    for the batch, or a sequence of n that split the rows into n equal consecutive blocks, block i drawn from
    generator i."""
    params = params or SamplingParams()
    B, device = logits.shape[0], logits.device
    logits = logits.float()
    if params.penalizes_repetition:
        logits = apply_repetition_penalty(logits, previous, _rows(params.repetition_penalty, B, device))
    if _plainly(params.temperature, 0.0):
        return logits.argmax(-1)
    temperature = _rows(params.temperature, B, device)
    greedy = temperature == 0
    scaled = logits / torch.where(greedy, 1.0, temperature)[:, None]
    if not (_plainly(params.top_k, 0) and _plainly(params.top_p, 1.0)):
        scaled = filter_top_k_top_p(scaled, _rows(params.top_k, B, device, torch.long), _rows(params.top_p, B, device))
    drawn = categorical(scaled.softmax(-1), generator, skip=greedy).to(device)
    return torch.where(greedy, logits.argmax(-1), drawn)


def categorical(probs: Tensor, generator: Generators = None, skip: Tensor | None = None) -> Tensor:
    """One index per row of probs (B, V), drawn with those probabilities: argmax(p / q) with q ~ Exp(1), which is
    what `torch.multinomial` does for one draw (the same indices from the same generator state), here with one
    generator per block of rows (`sample`). With a generator per block, a block whose rows are all in `skip` (B,)
    (greedy rows, whose draw is discarded) takes nothing from its generator: a generator advances only when its rows
    sample, in a batch as alone. The draws are made where the generators live, so a seed gives the same tokens on
    every device."""
    gens = [generator] if generator is None or isinstance(generator, torch.Generator) else list(generator)
    if not gens or probs.shape[0] % len(gens):
        raise ValueError(f"{len(gens)} generators for {probs.shape[0]} rows: give one per equal block of rows")
    places = {probs.device if g is None else g.device for g in gens}
    if len(places) > 1:
        raise ValueError(f"the generators live on different devices: {sorted(map(str, places))}")
    if not bool((probs >= 0).all()):
        raise ValueError("sampling probabilities hold NaN or negative values (NaN or all -inf logits?)")
    p = probs.to(places.pop())
    n = p.shape[0] // len(gens)
    draws = [True] * len(gens) if skip is None or len(gens) == 1 else (~skip.view(len(gens), n).all(1)).tolist()
    q = [p.new_empty(n, p.shape[1]).exponential_(1, generator=g) if d else p.new_ones(n, p.shape[1])
         for g, d in zip(gens, draws)]
    return (p / (q[0] if len(q) == 1 else torch.cat(q))).argmax(-1)


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: PerRow) -> Tensor:
    """uncond + scale * (cond - uncond), per row; rows are the conditional and unconditional halves of a batch."""
    s = _rows(scale, cond.shape[0], cond.device, cond.dtype)
    return uncond + s.view(-1, *([1] * (cond.dim() - 1))) * (cond - uncond)
