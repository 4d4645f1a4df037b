"""Image understanding with an `OmniModel`: answers to questions about images and captions, batched.

The prompt rows are the training layouts without their targets (`OmniModel.sample`): the image is patch-embedded
(no vision encoder), read bidirectionally by the understanding expert, and the text is decoded with the KV cache
after one prefill; rows are left-padded so they decode in lockstep and stop at <eos>.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omniar.generation.sampling import SamplingParams, sample
from omniar.omni.model import Example, OmniModel, as_images
from omniar.stream.collate import collate


@torch.inference_mode()
def describe(model: OmniModel, images: Sequence, questions: Sequence[str] | None = None,
             params: SamplingParams | None = None, max_new_tokens: int = 32,
             generator: torch.Generator | None = None, return_ids: bool = False) -> list[str] | list[list[int]]:
    """Captions of `images`, or with `questions` (one per image) the answers; with return_ids, the token ids
    (without the final <eos>) instead of the text."""
    if len(images) == 0:
        raise ValueError("describe needs at least one image")
    if questions is not None and len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions for {len(images)} images: give one per image")
    model.eval()
    params = params or SamplingParams(temperature=0.0)
    pixels = as_images(list(images), model.image_size)
    und = model.und_features(pixels)
    samples = []
    for i in range(len(images)):
        ex = Example("caption", image=pixels[i]) if questions is None else Example("vqa", questions[i],
                                                                                    image=pixels[i])
        s = model.sample(ex, und[i], None)
        s.segments.pop()  # the target text: that is what we generate
        samples.append(s)
    model.check_context(samples, [f"question {i}" if questions else f"image {i}" for i in range(len(samples))],
                        reserve=max_new_tokens)
    batch = collate(samples, pad_side="left", pad_id=model.text.pad)
    cache = model.decoder.new_cache()
    logits = model.decoder(**batch.model_inputs(), cache=cache, logits_to_keep=1).logits[:, -1]
    eos = model.ids["eos"]
    B = len(samples)
    finished = torch.zeros(B, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(B)]
    for _ in range(max_new_tokens):
        token = sample(logits, params, generator=generator)
        for b in range(B):
            if not finished[b] and int(token[b]) != eos:
                out[b].append(int(token[b]))
        finished |= token == eos
        if bool(finished.all()):
            break
        logits = model.decoder(token[:, None], cache=cache, logits_to_keep=1).logits[:, -1]
    return out if return_ids else [model.text.decode(ids) for ids in out]
