"""Post-training the image tokenizer's decoder on the generator's own codes (RobusTok's idea: Qiu et al. 2025,
"Image Tokenizer Needs Post-Training").

The decoder learnt to turn the codes the encoder writes for real images back into them. A generated image's codes
are not such codes: its finest scale is drawn bit by bit, guided and at temperature 1, and carries noise no encoder
would write - a disc's rim a few bits off reads as a lumpy blob. Here the model redraws the finest scale(s) of
training images whose coarser scales are kept (`generate_images`' `prefix`: the first `keep` scales are the image's
own, so the layout and the shapes are the image's and only the fine detail is the generator's), and the decoder
alone learns to turn those codes into the image - with a share of the image's own codes (`true_share`), so that
reconstruction stays what it was. Kept scales matter: with fewer kept (a redrawn 4 x 4 or 6 x 6) the redrawn codes
often hold another shape than the image, and the decoder learns to guess shapes instead of cleaning edges
(BENCHMARKS.md, "Decoder post-training").

Only `model.tokenizer.decoder` changes: the decoder model, the encoder and the quantiser are the same, so
understanding, teacher forcing and an edit's reference are untouched; the post-trained decoder is saved with the
model (`OmniModel.save_pretrained` holds the tokenizer's weights).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from omniar.generation.sampling import SamplingParams
from omniar.modality import Modality
from omniar.omni.generate import T2I_CFG, T2I_TEMPERATURE, generate_images
from omniar.omni.model import OmniModel
from omniar.tokenizers.image import reconstruction_loss
from omniar.train.trainer import warm_cosine


@dataclass
class DecoderPostTraining:
    images: int = 8000  # training scenes whose finest scale(s) the model redraws (one draw each)
    steps: int = 1200
    batch: int = 32
    lr: float = 1e-3  # Adam, cosine to a tenth
    keep: int | None = None  # coarse scales kept from the image; None: all but the finest
    true_share: float = 0.2  # of a batch decoded from the image's own codes
    chunk: int = 50  # images generated per call

    def __post_init__(self) -> None:
        if self.images < 1 or self.steps < 1 or self.batch < 1 or self.chunk < 1:
            raise ValueError(f"images, steps, batch and chunk must be >= 1, got {self.images}, {self.steps}, "
                             f"{self.batch}, {self.chunk}")
        if not 0 <= self.true_share <= 1:
            raise ValueError(f"true_share must lie in [0, 1], got {self.true_share}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _kept_scales(model: OmniModel, keep: int | None) -> int:
    scales = len(model.scales) if model.gen_modality == Modality.IMAGE_GEN else 1
    if scales < 2:
        raise ValueError("decoder post-training redraws the finest scales of next-scale codes from the coarser "
                         "ones; this model decodes raster tokens (one scale)")
    keep = scales - 1 if keep is None else keep
    if not 1 <= keep < scales:
        raise ValueError(f"keep must lie in [1, {scales - 1}] (the model has {scales} scales), got {keep}")
    return keep


@torch.no_grad()
def redrawn_codes(model: OmniModel, prompts: list[str], images: torch.Tensor, keep: int, seeds: list[int]
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Bits per scale for `images` (B, 3, S, S) in [0, 1]: those the model draws for their `prompts` with the first
    `keep` scales kept from the images' own (the benchmark's sampling; `seeds`, one per image), and the images' own."""
    own = model.tokenizer.encode(images.to(model.device))
    _, drawn = generate_images(model, prompts, cfg=T2I_CFG, params=SamplingParams(temperature=T2I_TEMPERATURE),
                               seeds=seeds, prefix=own[:keep], return_bits=True)
    return drawn, own


def post_train_decoder(model: OmniModel, out: str | Path, config: DecoderPostTraining | None = None, seed: int = 0,
                       progress: bool = True) -> dict:
    """Post-train `model.tokenizer.decoder` in place (module docstring) on the train split's text-to-image scenes,
    and save the model to `out/checkpoint`; `out/metrics.jsonl` logs the loss. Returns a summary."""
    from omniar.omni.train import shapeworld_example
    from omniar.tokenizers.train_image import to_tensor

    config = config or DecoderPostTraining()
    keep = _kept_scales(model, config.keep)
    model._require_fp32("decoder post-training")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    examples = [shapeworld_example("t2i", i, model.image_size) for i in range(config.images)]
    pixels = torch.from_numpy(np.stack([ex.image for ex in examples]))  # uint8 (N, S, S, 3)
    drawn, own = [], []
    for a in tqdm(range(0, config.images, config.chunk), disable=not progress, desc="decoder post-training: draws",
                  unit="call"):
        chunk = examples[a : a + config.chunk]
        d, o = redrawn_codes(model, [ex.text for ex in chunk], to_tensor(pixels[a : a + config.chunk].numpy()),
                             keep, [seed * 1_000_003 + a + i for i in range(len(chunk))])
        drawn.append(model.tokenizer.quantizer.decode_bits(d).cpu())  # the decoder's inputs, f_hat
        own.append(model.tokenizer.quantizer.decode_bits(o).cpu())
    drawn, own = torch.cat(drawn), torch.cat(own)
    draw_seconds = time.perf_counter() - t0
    decoder = model.tokenizer.decoder
    decoder.train().requires_grad_(True)
    opt = torch.optim.Adam(decoder.parameters(), lr=config.lr, betas=(0.9, 0.99))
    losses = []
    with open(out / "metrics.jsonl", "w") as metrics:
        for step in tqdm(range(config.steps), disable=not progress, desc="decoder post-training", unit="step"):
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            idx = torch.randint(0, config.images, (config.batch,), generator=g)
            use_own = (torch.rand(config.batch, generator=g) < config.true_share)[:, None, None, None]
            f = torch.where(use_own, own[idx], drawn[idx]).to(model.device)
            target = to_tensor(pixels[idx].numpy()).to(model.device)
            for group in opt.param_groups:
                group["lr"] = warm_cosine(step, config.steps, config.lr, warmup=1)  # a fine-tune: no warm-up
            loss = reconstruction_loss(decoder(f) * 0.5 + 0.5, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if (step + 1) % 50 == 0 or step + 1 == config.steps:
                metrics.write(json.dumps({"step": step + 1, "loss": float(np.mean(losses[-50:])),
                                          "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    decoder.requires_grad_(False).eval()
    model.save_pretrained(out / "checkpoint")
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10) :]
    return {"images": config.images, "steps": config.steps, "keep": keep, "loss_first": float(np.mean(head)),
            "loss_last": float(np.mean(tail)), "draw_seconds": round(draw_seconds, 1),
            "seconds": round(time.perf_counter() - t0, 1)}
