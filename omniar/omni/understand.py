"""Image understanding with an `OmniModel`: answers to questions about images and captions, batched.

The prompt rows are the training layouts without their targets (`OmniModel.sample`): the image is patch-embedded
(no vision encoder), read bidirectionally by the understanding expert, and the text is decoded with the KV cache
after one prefill (omni/decode.py, text only); rows are left-padded so they decode in lockstep and stop at <eos>.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omniar.generation.fsm import DecodingRules
from omniar.generation.sampling import Generators, SamplingParams
from omniar.omni.decode import decode
from omniar.omni.model import Example, OmniModel, as_images


@torch.inference_mode()
def describe(model: OmniModel, images: Sequence, questions: Sequence[str] | None = None,
             params: SamplingParams | None = None, max_new_tokens: int = 32,
             generator: Generators = None, return_ids: bool = False) -> list[str] | list[list[int]]:
    """Captions of `images`, or with `questions` (one per image) the answers; with return_ids, the token ids
    (without the final <eos>) instead of the text. `generator`: one, or one per image (sampled `params`)."""
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
    rules = DecodingRules(instruction=params, response=params, may_open=())
    names = [f"question {i}" if questions else f"image {i}" for i in range(len(samples))]
    ids = decode(model, samples, rules, max_new_tokens=max_new_tokens, generator=generator, names=names)
    return ids if return_ids else [model.text.decode(row) for row in ids]
