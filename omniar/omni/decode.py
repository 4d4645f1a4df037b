"""Token decoding of an `OmniModel` under finite-state control (omniar.generation.fsm): text and speech responses,
batched, with the KV cache.

Prompts are stream `Sample`s without their targets (`OmniModel.sample` of an example without its target). They
are left-padded and prefilled in one forward; then every step draws each row's token under its own mode (the
markers of the prompt and of what the row has emitted decide it) and feeds the tokens back in one forward, each
with its modality, so speech codes pass through the speech expert exactly as in training. Rows stop at their own
stop token; the loop ends when every row has.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from omniar.generation.fsm import DecodingRules, FiniteStateDecoder
from omniar.masks import PositionMeta
from omniar.modality import Modality
from omniar.stream.collate import collate
from omniar.stream.segment import Sample


class Step(NamedTuple):
    tokens: Tensor  # (B,) the ids drawn (<pad> for rows already done)
    finished: Tensor  # (B,) rows that have emitted their stop token
    logits: Tensor  # (B, V) the model's logits they were drawn from (before the mode's mask)


def steps(model, samples: Sequence[Sample], rules: DecodingRules | None = None,
          greedy: Sequence[bool] | None = None, max_new_tokens: int = 64, stops: Sequence[int] | None = None,
          generator: torch.Generator | None = None, names: Sequence[str] | None = None) -> Iterator[Step]:
    """Yield a `Step` per decoding step. `greedy` marks rows of greedy tasks (ASR, TTS: greedy text too);
    `names` name the prompts in errors (default "prompt i")."""
    if not samples:
        raise ValueError("decoding needs at least one prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    names = list(names) if names is not None else [f"prompt {i}" for i in range(len(samples))]
    model.check_context(list(samples), names, reserve=max_new_tokens)
    decoder = model.decoder
    batch = collate(list(samples), pad_side="left", pad_id=model.text.pad)
    B = len(samples)
    fsm = FiniteStateDecoder(model.joint_vocab(), rules, batch=B, greedy=greedy, stops=stops)
    fsm.observe(batch.input_ids.masked_fill(batch.meta.doc < 0, model.text.pad))
    cache = decoder.new_cache()
    logits = decoder(**batch.model_inputs(), cache=cache, logits_to_keep=1).logits[:, -1]
    history = batch.input_ids
    offset = model.speech_offset
    for _ in range(max_new_tokens):
        token = fsm.step(logits, previous=history, generator=generator)
        yield Step(token, fsm.done.clone(), logits)
        if bool(fsm.done.all()):
            return
        history = torch.cat([history, token[:, None]], 1)
        meta = PositionMeta.text(B, 1)
        meta.modality = torch.where(token >= offset, int(Modality.SPEECH), int(Modality.TEXT))[:, None]
        logits = decoder(token[:, None], meta=meta, cache=cache, logits_to_keep=1).logits[:, -1]


@torch.inference_mode()
def decode(model, samples: Sequence[Sample], rules: DecodingRules | None = None, greedy: Sequence[bool] | None = None,
           max_new_tokens: int = 64, stops: Sequence[int] | None = None,
           generator: torch.Generator | None = None, names: Sequence[str] | None = None) -> list[list[int]]:
    """Each row's new ids, up to (not including) its stop token."""
    model.eval()
    B = len(samples)
    out: list[list[int]] = [[] for _ in range(B)]
    ended = [False] * B
    for token, finished, _ in steps(model, samples, rules, greedy, max_new_tokens, stops, generator, names):
        for b in range(B):
            if not ended[b] and not bool(finished[b]):
                out[b].append(int(token[b]))
            ended[b] = ended[b] or bool(finished[b])
    return out
