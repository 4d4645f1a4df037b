"""Best-of-N text-to-image: the model draws N images per prompt and its own understanding path picks one.

A unified model can check its own drafts. Each candidate is scored by the log-likelihood of the prompt as the
caption of that image - the captioning layout of training (`OmniModel.sample`), teacher-forced in one forward
pass, the prompt's tokens and <eos> summed (`caption_scores`) - and the best-scoring candidate is kept. On
ShapeWorld a caption *is* the prompt that drew its scene, so this asks the captioner "would you have described
this image with these words?". Nothing outside the model is consulted.

Cost: N times the generation (each candidate still takes one forward pass per scale, guidance rows batched) plus
one scoring pass per candidate. Candidate 0 of each prompt uses the prompt's own seed, so `best_of=1` returns
exactly the plain sample; candidate j uses `seed + j * SEED_STRIDE`. Candidates only differ when bits are sampled
(temperature > 0). BENCHMARKS.md ("Best of N by the model's own captioner") measures what it buys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from omniar.generation.sampling import SamplingParams
from omniar.omni.generate import generate_images
from omniar.omni.model import Example, OmniModel, as_images
from omniar.stream.collate import IGNORE, collate

SEED_STRIDE = 1_000_003  # candidate j of the prompt with seed s draws with seed s + j * SEED_STRIDE


@torch.inference_mode()
def caption_scores(model: OmniModel, images, texts: Sequence[str]) -> Tensor:
    """(B,) log p(text, <eos> | image) of each (image, text) pair under the captioning layout, in nats (summed
    over the text's tokens): how well the model finds `text` describes `image`. Batched; one forward pass."""
    if len(texts) == 0:
        raise ValueError("caption_scores needs at least one (image, text) pair")
    pixels = as_images(images, model.image_size)
    if len(pixels) != len(texts):
        raise ValueError(f"{len(pixels)} images for {len(texts)} texts: give one image per text")
    model.eval()
    und = model.und_features(pixels)
    samples = [model.sample(Example("caption", t, image=pixels[i]), und[i], None) for i, t in enumerate(texts)]
    model.check_context(samples, [f"caption {i} ({t[:40]!r})" for i, t in enumerate(texts)])
    batch = collate(samples, pad_id=model.text.pad).to(model.device)
    logits = model.decoder(**batch.model_inputs()).logits
    scored = batch.labels != IGNORE  # the text's tokens and <eos>: only there is a vocabulary softmax taken
    logp = torch.log_softmax(logits[scored].float(), -1).gather(-1, batch.labels[scored][:, None])[:, 0]
    return logp.new_zeros(len(texts)).index_add_(0, scored.nonzero()[:, 0], logp)


@torch.inference_mode()
def generate_best_of(model: OmniModel, prompts: Sequence[str], best_of: int = 1, *,
                     params: SamplingParams | None = None, seeds: Sequence[int] | None = None,
                     return_scores: bool = False, **kw):
    """Images (B, 3, S, S): for each prompt the best of `best_of` sampled candidates by `caption_scores` of the
    prompt (module docstring); `best_of=1` is `generate_images` itself. `kw` go to `generate_images` (cfg,
    cfg_schedule). With return_scores, also the scores (B, best_of) of every candidate (column 0: the plain
    sample)."""
    if best_of < 1:
        raise ValueError(f"best_of must be >= 1, got {best_of}")
    if kw.get("sources") is not None and best_of > 1:
        raise ValueError("best-of-N picks text-to-image samples by their caption; edits have no caption to check")
    if kw.get("on_scale") is not None and best_of > 1:
        raise ValueError("on_scale (--scales) shows one drawing scale by scale; best-of-N draws several and keeps one "
                         "after the last scale: ask for one of the two")
    if best_of == 1 and not return_scores:
        return generate_images(model, prompts, params=params, seeds=seeds, **kw)
    params = params or SamplingParams(temperature=0.0)  # generate_images' default: greedy
    if best_of > 1 and float(torch.as_tensor(params.temperature).max()) <= 0:
        raise ValueError("best-of-N needs sampled bits (params with temperature > 0): greedy candidates are all "
                         "the same image")
    prompts = list(prompts)
    n = len(prompts)
    seeds = list(seeds) if seeds is not None else [0] * n
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts: give one per prompt")
    rows = [p for _ in range(best_of) for p in prompts]  # candidate-major: row j * n + i is prompt i's candidate j

    def tile(v):  # per-row sampling knobs follow their prompt's candidates
        t = torch.as_tensor(v)
        return v if t.dim() == 0 else t.repeat(best_of)

    params = dataclasses.replace(params, **{k: tile(getattr(params, k)) for k in ("temperature", "top_k", "top_p")})
    images = generate_images(model, rows, params=params, seeds=[s + j * SEED_STRIDE for j in range(best_of)
                                                                for s in seeds], **kw)
    scores = caption_scores(model, images, rows).view(best_of, n).T
    best = scores.argmax(1)
    chosen = images.view(best_of, n, *images.shape[1:])[best, torch.arange(n, device=best.device)]
    return (chosen, scores) if return_scores else chosen
