"""Autoregressive decoding of token ids with a KV cache: batched, left-padded prompts, CFG, EOS, seedable."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from omniar.generation.sampling import (
    Generators,
    PerRow,
    SamplingParams,
    classifier_free_guidance,
    generator_per_row,
    sample,
)
from omniar.masks import PAD_DOC, PositionMeta


def left_pad(prompts: Sequence[Sequence[int]] | Tensor, pad_id: int = 0,
             device=None) -> tuple[Tensor, PositionMeta | None, Tensor | None]:
    """Prompts of any lengths -> ids (B, L) aligned at the right, their metadata (padding marked) and positions.

    A tensor, or prompts of one length, need no padding: metadata and positions are None (plain causal text).
    """
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompt ids must be (batch, length), got shape {tuple(prompts.shape)}")
        return prompts.to(device), None, None
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lengths = [len(p) for p in prompts]
    B, L = len(prompts), max(lengths)
    if len(set(lengths)) == 1:
        return torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device), None, None
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    n = torch.tensor(lengths)
    slot = torch.arange(L)[None, :]
    real = slot >= (L - n)[:, None]
    meta = PositionMeta.text(B, L)
    meta.doc = torch.where(real, 0, PAD_DOC)
    pos = (slot - (L - n)[:, None]).clamp(min=0).float()
    return ids.to(device), PositionMeta.unstack(meta.stack().to(device)), pos[..., None].expand(B, L, 3).to(device)


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]] | Tensor, max_new_tokens: int,
             params: SamplingParams | None = None, *, eos_id: int | None = None, pad_id: int = 0,
             uncond_prompts: Sequence[Sequence[int]] | Tensor | None = None, cfg_scale: PerRow = 1.0,
             generator: Generators = None, progress: bool = False) -> Tensor:
    """Generate up to `max_new_tokens` per prompt; returns (B, T) new ids, `pad_id` after a row's EOS.

    With `uncond_prompts`, each step also runs the unconditional rows in the same batch and samples from
    classifier-free-guided logits: uncond + cfg_scale * (cond - uncond). `generator`: one for the batch, or one
    per prompt, which makes each row's tokens those it gets decoded alone with its generator.
    """
    device = next(model.parameters()).device
    params = params or SamplingParams()
    if uncond_prompts is not None:
        cond = [list(p) for p in (prompts.tolist() if isinstance(prompts, Tensor) else prompts)]
        uncond = [list(p) for p in (uncond_prompts.tolist() if isinstance(uncond_prompts, Tensor) else uncond_prompts)]
        if len(cond) != len(uncond):
            raise ValueError(f"{len(uncond)} uncond_prompts for {len(cond)} prompts: give one per prompt")
        ids, meta, positions = left_pad(cond + uncond, pad_id, device)
        B = len(cond)
    else:
        ids, meta, positions = left_pad(prompts, pad_id, device)
        B = ids.shape[0]
    generator_per_row(generator, B, "prompt")
    cache = model.new_cache()
    out = model(ids, meta=meta, positions=positions, cache=cache, logits_to_keep=1)
    penalize = params.penalizes_repetition
    history = ids[:B]
    if meta is not None:  # padding must not count as a repeated token: show the row's last prompt token instead
        history = torch.where(meta.doc[:B] == PAD_DOC, ids[:B, -1:], history)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new = []
    for _ in tqdm(range(max_new_tokens), disable=not progress, desc="decode", leave=False):
        logits = out.logits[:, -1]
        if uncond_prompts is not None:
            logits = classifier_free_guidance(logits[:B], logits[B:], cfg_scale)
        token = sample(logits, params, previous=history, generator=generator)
        if eos_id is not None:
            token = torch.where(finished, pad_id, token)
            finished |= token == eos_id
        new.append(token)
        if penalize:
            history = torch.cat([history, token[:, None]], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
        step = token if uncond_prompts is None else torch.cat([token, token])
        out = model(step[:, None], cache=cache, logits_to_keep=1)
    return torch.stack(new, dim=1) if new else torch.empty(B, 0, dtype=torch.long, device=device)
