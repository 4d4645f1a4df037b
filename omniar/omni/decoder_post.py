"""Post-training the image tokenizer's decoder on the generator's own codes (RobusTok's idea: Qiu et al. 2025,
"Image Tokenizer Needs Post-Training").

The decoder learnt to turn the codes the encoder writes for real images back into them. A generated image's codes
are not such codes: its finest scale is drawn bit by bit, guided and at temperature 1, and carries noise no encoder
would write - a disc's rim a few bits off reads as a lumpy blob. Here the model redraws the finest scale(s) of
training images whose coarser scales are kept (`generate_images`' `prefix`: the first `keep` scales are the image's
own, so the layout and the shapes are the image's and only the fine detail is the generator's), and the decoder
alone learns to turn those codes into the image - with a share of encoded images (`true_share`), so that
reconstruction stays what it was. Those come from the text-free image pool (`true_source="pool"`, every colour-shape
pair: the redrawn training scenes hold no held-out pair, and a decoder post-trained on them alone learns to turn a
red star's codes into the red shapes it has seen - 0.81 of 500 held-out scenes round-tripped against the
tokenizer's 0.92; BENCHMARKS.md "Held-out compositions: a decoder that has seen every pair"), or from the redrawn
images' own codes (`"train"`). Kept scales matter: with fewer kept (a redrawn 4 x 4 or 6 x 6) the redrawn codes
often hold another shape than the image, and the decoder learns to guess shapes instead of cleaning edges
(BENCHMARKS.md, "Decoder post-training").

Only `model.tokenizer.decoder` changes: the decoder model, the encoder and the quantiser are the same, so
understanding, teacher forcing and an edit's reference are untouched; the post-trained decoder is saved with the
model (`OmniModel.save_pretrained` holds the tokenizer's weights).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from omniar.checkpoint import (
    TRAINER_NAME,
    WEIGHTS_NAME,
    load_state_strict,
    load_training_state,
    read_tensors,
    recover_directory,
    save_training_checkpoint,
    weights_digest,
    write_directory,
    write_tensors,
)
from omniar.generation.sampling import SamplingParams
from omniar.modality import Modality
from omniar.omni.generate import T2I_CFG, T2I_TEMPERATURE, generate_images
from omniar.omni.model import OmniModel
from omniar.tokenizers.image import reconstruction_loss
from omniar.train.interrupt import GracefulStop, run_in_chunks
from omniar.train.metrics import MetricsLog
from omniar.train.trainer import warm_cosine

DECODER_PREFIX = "tokenizer.decoder."  # the weights post-training changes, in OmniModel.state_dict()
DRAWS, DRAWS_NAME, DRAWS_META = "draws", "bits.safetensors", "draws.json"  # out/draws: the bits drawn so far
SAVE_DRAWS = 1000  # images drawn between saves of the draws
SAVE_STEPS = 200  # training steps between checkpoints
TRUE_SOURCES = ("pool", "train")  # DecoderPostTraining.true_source


@dataclass
class DecoderPostTraining:
    images: int = 8000  # training scenes whose finest scale(s) the model redraws (one draw each)
    steps: int = 1200
    batch: int = 32
    lr: float = 1e-3  # Adam, cosine to a tenth
    keep: int | None = None  # coarse scales kept from the image; None: all but the finest
    true_share: float = 0.4  # of a batch decoded from encoded images' codes
    true_source: str = "pool"  # those images: "pool" (every colour-shape pair), or "train" (the redrawn images)
    chunk: int = 50  # images generated per call

    def __post_init__(self) -> None:
        if self.images < 1 or self.steps < 1 or self.batch < 1 or self.chunk < 1:
            raise ValueError(f"images, steps, batch and chunk must be >= 1, got {self.images}, {self.steps}, "
                             f"{self.batch}, {self.chunk}")
        if not 0 <= self.true_share <= 1:
            raise ValueError(f"true_share must lie in [0, 1], got {self.true_share}")
        if self.true_source not in TRUE_SOURCES:
            raise ValueError(f"unknown true_source {self.true_source!r}; known: {', '.join(TRUE_SOURCES)}")
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


def model_fingerprint(model: OmniModel) -> str:
    """A digest of every weight but the image decoder's: the model a post-training run's draws and checkpoint belong
    to - the same before and after post-training, which changes only the decoder."""
    return weights_digest(model, skip=DECODER_PREFIX)


def _load_draws(directory: Path, key: dict, scales: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The bits per scale saved by `_save_draws` (drawn, own), empty where none are saved; a named error where they
    belong to another model, seed or `keep`."""
    recover_directory(directory)
    if not (directory / DRAWS_META).is_file():
        return [], []
    saved = json.loads((directory / DRAWS_META).read_text())
    changed = [k for k in key if saved.get(k) != key[k]]
    if changed:
        raise ValueError(f"cannot draw on from {directory}: its draws were made with another {', '.join(changed)} "
                         f"({', '.join(f'{saved.get(k)} here, {key[k]} asked' for k in changed)}); use a new output "
                         "directory")
    tensors = read_tensors(directory / DRAWS_NAME)
    return ([tensors[f"drawn.{k}"] for k in range(scales)], [tensors[f"own.{k}"] for k in range(scales)])


def _save_draws(directory: Path, key: dict, drawn: list[torch.Tensor], own: list[torch.Tensor]) -> None:
    """The bits drawn so far and the images' own, with what made them, swapped in whole (a save cut short leaves
    the previous one)."""
    def write(staging: Path) -> None:
        write_tensors(staging / DRAWS_NAME, {**{f"drawn.{k}": b for k, b in enumerate(drawn)},
                                             **{f"own.{k}": b for k, b in enumerate(own)}})
        (staging / DRAWS_META).write_text(json.dumps({**key, "images": len(drawn[0])}, indent=2))

    write_directory(directory, write)


def post_train_decoder(model: OmniModel, out: str | Path, config: DecoderPostTraining | None = None, seed: int = 0,
                       progress: bool = True, stop_at: int | None = None) -> dict:
    """Post-train `model.tokenizer.decoder` in place (module docstring) on the train split's text-to-image scenes
    redrawn and the encoded images of `config.true_source`, and save the model to `out/checkpoint` (with the
    optimizer state and the step); `out/metrics.jsonl` logs the loss. Returns a summary.

    Resumable like every training loop here: the draws are saved to `out/draws` as they are made (every
    `SAVE_DRAWS` images) and the training to `out/checkpoint` every `SAVE_STEPS` steps, both on Ctrl-C or SIGTERM
    too; the same call again draws on and trains on from where it stopped, to the same decoder weights as a run
    never stopped (a batch and its rate are functions of the step). Draws from the same model, seed and `keep` are
    kept when `images` grows. `stop_at` ends the training early, with a checkpoint (for tests)."""
    from omniar.omni.train import shapeworld_example
    from omniar.tokenizers.train_image import shapeworld_images, to_tensor

    config = config or DecoderPostTraining()
    keep = _kept_scales(model, config.keep)
    model._require_fp32("decoder post-training")
    stop_at = config.steps if stop_at is None else min(stop_at, config.steps)
    out = Path(out)
    ckpt = out / "checkpoint"
    fingerprint = model_fingerprint(model)
    run = {"model": fingerprint, "seed": seed, "config": dataclasses.asdict(config)}  # what a resume must match
    decoder = model.tokenizer.decoder
    opt = torch.optim.Adam(decoder.parameters(), lr=config.lr, betas=(0.9, 0.99))
    step, losses = 0, []
    recover_directory(ckpt)
    if (ckpt / TRAINER_NAME).is_file():
        saved = json.loads((ckpt / TRAINER_NAME).read_text()).get("run", {})
        changed = [k for k in run if saved.get(k) != run[k]]
        if changed:
            raise ValueError(f"cannot resume {ckpt}: it was post-trained with another {' and '.join(changed)}; use "
                             "a new output directory")
        weights = read_tensors(ckpt / WEIGHTS_NAME)
        load_state_strict(decoder, {k.removeprefix(DECODER_PREFIX): v for k, v in weights.items()
                                    if k.startswith(DECODER_PREFIX)}, source=str(ckpt / WEIGHTS_NAME))
        state = load_training_state(ckpt, opt)
        step, losses = state["step"], state["losses"]
    t0 = time.perf_counter()
    stop = GracefulStop()
    with stop:
        if step < config.steps:  # the decoder's inputs, f_hat: the redrawn bits, and encoded images' (`truth`'s)
            examples = [shapeworld_example("t2i", i, model.image_size) for i in range(config.images)]
            pixels = torch.from_numpy(np.stack([ex.image for ex in examples]))  # uint8 (N, S, S, 3)
            drawn, own = _draw(model, examples, pixels, {"model": fingerprint, "seed": seed, "keep": keep},
                               config.chunk, out / DRAWS, progress, stop)
            quantizer = model.tokenizer.quantizer
            drawn = quantizer.decode_bits(drawn).cpu()
            if config.true_source == "pool":  # as many encoded renders of every colour-shape pair
                truth = torch.from_numpy(shapeworld_images(config.images, "pool", model.image_size))
                with torch.no_grad():
                    encoded = torch.cat([quantizer.decode_bits(model.tokenizer.encode(to_tensor(
                        truth[a : a + config.chunk].numpy()).to(model.device))).cpu()
                        for a in range(0, config.images, config.chunk)])
            else:
                truth, encoded = pixels, quantizer.decode_bits(own).cpu()
        draw_seconds = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(out / "metrics.jsonl", step)
        bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="decoder post-training", unit="step")
        decoder.train().requires_grad_(True)
        while step < stop_at:
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            idx = torch.randint(0, config.images, (config.batch,), generator=g)
            use_truth = (torch.rand(config.batch, generator=g) < config.true_share)[:, None, None, None]
            f = torch.where(use_truth, encoded[idx], drawn[idx]).to(model.device)
            # one memory layout whether the bits were drawn now or loaded (the convolutions' sums follow it), the
            # faster one (channels last: ~15% off a step)
            f = f.contiguous(memory_format=torch.channels_last)
            target = to_tensor(torch.where(use_truth, truth[idx], pixels[idx]).numpy()).to(model.device)
            for group in opt.param_groups:
                group["lr"] = warm_cosine(step, config.steps, config.lr, warmup=1)  # a fine-tune: no warm-up
            loss = reconstruction_loss(decoder(f) * 0.5 + 0.5, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == config.steps:
                metrics.write({"step": step, "loss": float(np.mean(losses[-50:])),
                               "seconds": round(time.perf_counter() - t0, 1)})
            if step % SAVE_STEPS == 0 or step == stop_at or stop.signal is not None:
                save_training_checkpoint(ckpt, model, opt, step, losses=losses, run=run)
            if stop.signal is not None:
                break
        bar.close()
        metrics.close()
    decoder.requires_grad_(False).eval()
    if stop.signal is not None:
        stop.stop(step, config.steps, ckpt)
    tenth = max(1, len(losses) // 10)  # the losses of the first and the last tenth of the steps (None before any)
    first, last = (float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))) if losses else (None, None)
    return {"images": config.images, "steps": step, "keep": keep, "loss_first": first, "loss_last": last,
            "draw_seconds": round(draw_seconds, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def _draw(model: OmniModel, examples: list, pixels: torch.Tensor, key: dict, chunk: int, directory: Path,
          progress: bool, stop: GracefulStop) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Bits per scale (drawn, own) for every example: those saved in `directory` by an earlier call with the same
    `key` (model, seed, keep; the first ones), the rest drawn `chunk` at a time and saved every `SAVE_DRAWS` images
    and on a signal."""
    from omniar.tokenizers.train_image import to_tensor

    scales = len(model.scales)
    saved_drawn, saved_own = _load_draws(directory, key, scales)
    done = min(len(saved_drawn[0]), len(examples)) if saved_drawn else 0
    drawn = [[b[:done]] for b in saved_drawn] if done else [[] for _ in range(scales)]  # chunks per scale
    own = [[b[:done]] for b in saved_own] if done else [[] for _ in range(scales)]

    def draw(start: int, end: int) -> None:
        d, o = redrawn_codes(model, [ex.text for ex in examples[start:end]], to_tensor(pixels[start:end].numpy()),
                             key["keep"], [key["seed"] * 1_000_003 + i for i in range(start, end)])
        for k in range(scales):
            drawn[k].append(d[k].cpu())
            own[k].append(o[k].cpu())

    run_in_chunks(stop, len(examples), done, chunk, SAVE_DRAWS, draw,
                  lambda _: _save_draws(directory, key, [torch.cat(b) for b in drawn], [torch.cat(b) for b in own]),
                  directory, progress, "decoder post-training: draws", "image")
    return [torch.cat(b) for b in drawn], [torch.cat(b) for b in own]
