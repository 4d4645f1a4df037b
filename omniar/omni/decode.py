"""Token decoding of an `OmniModel` under finite-state control (omniar.generation.fsm): text and speech responses,
batched, with the KV cache.

Prompts are stream `Sample`s without their targets (`OmniModel.sample` of an example without its target). They
are left-padded and prefilled in one forward; then every step draws each row's token under its own mode (the
markers of the prompt and of what the row has emitted decide it) and feeds the tokens back in one forward, each
with its modality, so speech codes pass through the speech expert exactly as in training. Rows stop at their own
stop token; the loop ends when every row has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from omniar.generation.fsm import DecodingRules, FiniteStateDecoder
from omniar.generation.sampling import Generators, generator_per_row
from omniar.masks import PositionMeta
from omniar.modality import Modality
from omniar.model.bitwise import sample_bits
from omniar.stream.collate import collate
from omniar.stream.segment import Sample


class Step(NamedTuple):
    tokens: Tensor  # (B,) the ids drawn (-1: the row drew an image code, or opened its image; <pad> once done)
    finished: Tensor  # (B,) rows that have emitted their stop token
    logits: Tensor  # (B, V) the model's logits the ids were drawn from (before the mode's mask; on the CPU)
    hidden: Tensor  # (B, D) the hidden state they came from (image codes: through the bitwise head; model's device)
    bits: Tensor  # (B, d) the image code each row in `drew` drew with the bitwise head
    drew: Tensor  # (B,) rows that drew an image code this step


def _rules(model, rules: DecodingRules | None) -> DecodingRules:
    """The rules with the model's image token count: a raster model can draw images inside a response; a
    next-scale one decodes images per scale (omni/generate.py), not here."""
    rules = rules or DecodingRules()
    n = model.scales[-1] ** 2 if model.gen_modality == Modality.IMAGE_RASTER else 0
    if rules.image_tokens not in (0, n):
        raise ValueError(f"DecodingRules.image_tokens is {rules.image_tokens}, but this model's images have {n} "
                         f"tokens")
    return dataclasses.replace(rules, image_tokens=n, may_open=rules.may_open if n else
                               tuple(m for m in rules.may_open if m != "image"))


def steps(model, samples: Sequence[Sample], rules: DecodingRules | None = None,
          greedy: Sequence[bool] | None = None, max_new_tokens: int = 64, stops: Sequence[int] | None = None,
          generator: Generators = None, names: Sequence[str] | None = None) -> Iterator[Step]:
    """Yield a `Step` per decoding step. `greedy` marks rows of greedy tasks (ASR, TTS: greedy text too);
    `names` name the prompts in errors (default "prompt i"); `generator`: one for the batch, or one per prompt (a
    row then draws what it draws decoded alone). An image (raster models) costs its token count
    plus one steps: the step after <boi> feeds the image's start position, then each step draws one code with
    the bitwise head (`rules.image` sampling) and feeds it; after the last code <eoi> is forced in the same step."""
    if not samples:
        raise ValueError("decoding needs at least one prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    names = list(names) if names is not None else [f"prompt {i}" for i in range(len(samples))]
    per_row = generator_per_row(generator, len(samples), "prompt")
    model.check_context(list(samples), names, reserve=max_new_tokens)
    decoder = model.decoder
    batch = collate(list(samples), pad_side="left", pad_id=model.text.pad)
    B, pad = len(samples), model.text.pad
    rules = _rules(model, rules)
    fsm = FiniteStateDecoder(model.joint_vocab(), rules, batch=B, greedy=greedy, stops=stops)
    fsm.observe(batch.input_ids.masked_fill(batch.meta.doc < 0, pad))
    # the decoder runs on the model's device; the per-row bookkeeping (the state machine, positions, the image
    # codes so far) stays on the CPU, which the logits visit once a step
    device = model.device
    cache = decoder.new_cache()
    out = decoder(**batch.to(device).model_inputs(), cache=cache, logits_to_keep=1)
    logits, hidden = out.logits[:, -1].cpu(), out.hidden[:, -1]
    history = batch.input_ids
    position = cache.next_position.to("cpu", copy=True)  # each row's next RoPE position (t)
    side, d = model.scales[-1], model.tokenizer.config.bits
    eoi, boi = model.ids["eoi"], model.ids["boi"]
    wait = fsm.drawing_image.clone()  # fed <boi> last: the next input opens the image, nothing is drawn
    image_at = position.clone()  # the t-position of each row's current image
    codes: list[list[Tensor]] = [[] for _ in range(B)]  # the current image's codes so far, per row
    raster = int(Modality.IMAGE_RASTER)
    for _ in range(max_new_tokens):
        drawing = fsm.drawing_image & ~wait
        token = fsm.step(logits, previous=history, generator=generator, active=~wait & ~drawing)
        bits = torch.zeros(B, d, dtype=torch.bool)
        if drawing.any():
            rows = drawing.nonzero().squeeze(1)
            gens = [generator[r] for r in rows.tolist()] if per_row else generator
            drawn = model.bit_head.draw(hidden[rows][:, None], 1, lambda logp: logp[0],
                                        lambda logp, g=gens: sample_bits(logp, rules.image, g))[:, 0].cpu()
            bits[rows] = drawn
            fsm.advance(torch.where(drawing, 0, -1))  # one image code each
            for i, b in enumerate(rows.tolist()):
                codes[b].append(drawn[i])
            closed = drawing & (fsm.forced() == eoi)  # the image is complete: its <eoi> comes in this step
            if closed.any():
                fsm.advance(torch.where(closed, eoi, -1))
                token = torch.where(closed, eoi, token)
        yield Step(token, fsm.done.clone(), logits, hidden, bits, drawing)
        if bool(fsm.done.all()):
            return
        history = torch.cat([history, torch.where(token < 0, pad, token)[:, None]], 1)
        ids = token.clamp(min=0)
        modality = torch.where(ids >= model.speech_offset, int(Modality.SPEECH), int(Modality.TEXT))[:, None]
        pos = torch.zeros(B, 3)
        features = []
        for b in range(B):
            t = int(token[b])
            if wait[b] or (drawing[b] and t < 0):  # the image's next cell: the start vector, or the last code
                n = len(codes[b])
                prev = model.tokenizer.quantizer.codes(torch.stack(codes[b])) if n else torch.zeros(0, d)
                features.append(model.scale_embed.raster(prev[None].to(device), n, n + 1)[0])
                s = float(image_at[b])
                pos[b] = torch.tensor([s, s + n // side, s + n % side])
                modality[b] = raster
                wait[b] = False
                continue
            if t == eoi and drawing[b]:  # after the image's cells (collate: the next segment starts at + side)
                position[b] = image_at[b] + side
                codes[b] = []
            pos[b] = position[b]
            position[b] += 1
            if t == boi:
                wait[b], image_at[b] = True, position[b]
        feats = {raster: torch.cat(features)} if features else {}
        meta = PositionMeta.text(B, 1, device=device)
        meta.modality = modality.to(device)
        out = decoder(ids[:, None].to(device), meta=meta, positions=pos[:, None].to(device), features=feats,
                      cache=cache, logits_to_keep=1)
        logits, hidden = out.logits[:, -1].cpu(), out.hidden[:, -1]


@torch.inference_mode()
def decode(model, samples: Sequence[Sample], rules: DecodingRules | None = None, greedy: Sequence[bool] | None = None,
           max_new_tokens: int = 64, stops: Sequence[int] | None = None, generator: Generators = None,
           names: Sequence[str] | None = None, images: bool = False) -> list[list[int]] | tuple[list, list]:
    """Each row's new ids, up to (not including) its stop token; with `images`, also each row's images (a list
    of bits (d, side, side) per row, one per <boi> ... <eoi> it drew - `model.tokenizer.decode` paints them)."""
    model.eval()
    B = len(samples)
    out: list[list[int]] = [[] for _ in range(B)]
    drawn: list[list[Tensor]] = [[] for _ in range(B)]
    current: list[list[Tensor]] = [[] for _ in range(B)]
    ended = [False] * B
    side = model.scales[-1]
    for step in steps(model, samples, rules, greedy, max_new_tokens, stops, generator, names):
        for b in range(B):
            if ended[b]:
                continue
            if step.drew[b]:
                current[b].append(step.bits[b])
                if len(current[b]) == side * side:
                    drawn[b].append(torch.stack(current[b]).T.reshape(-1, side, side))
                    current[b] = []
            if bool(step.finished[b]):
                ended[b] = True
            elif int(step.tokens[b]) >= 0:
                out[b].append(int(step.tokens[b]))
    return (out, drawn) if images else out
