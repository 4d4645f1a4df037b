"""Image generation with the KV cache, batched, with classifier-free guidance: next-scale (VAR / Infinity /
OneCAT) or, for the raster baseline, next-token (Chameleon / AR-Omni).

The rows are laid out exactly as in training (`OmniModel.sample`) with placeholder generation features, collated
left-padded so every row's image positions occupy the same final columns. Then, next-scale:

    pass 0:      the prompt (and <boi>) plus scale 0's start position -> bits of scale 0
    pass k >= 1: scale k's positions, whose inputs are the tokenizer's running reconstruction after scales < k
                 (area-downsampled to s_k) -> bits of scale k

so an image costs one forward pass per scale, the prompt prefill included in the first. The raster baseline
runs the same loop with one token per pass (its input: the previous token's code), 64 passes for an 8 x 8 grid.
With guidance the unconditional rows (prompt dropped, as in training's condition dropout) run in the same
passes; the per-bit log-probabilities are combined as uncond + w_k (cond - uncond), with w_k constant or ramped
linearly from 1 at the first scale to `cfg` at the last (VAR's schedule; raster: constant). `unguided_scales` leaves
the finest scales unguided (a guidance interval, Kynkaanniemi et al. 2024): their passes run on the conditional rows
alone, the guidance rows dropped from the batch and the cache. Editing with
`image_cfg` uses OneCAT's three branches in one batch - full (reference + instruction), text-only
(instruction), empty: l_I = (l_full + image_cfg l_text) / (1 + image_cfg), l = l_empty + w_k (l_I - l_empty).
An edit's `keep` then adds keep * (1 - the named object's map) to the log-probability of each bit that keeps the
reference there, with `keep_tau` only where the drawing so far already reproduces the reference
(`_NextScale.keep_bias`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from omniar.generation.sampling import SamplingParams
from omniar.modality import Modality
from omniar.model.bitwise import sample_bits
from omniar.model.cache import DecoderCache
from omniar.omni.model import Example, OmniModel, as_images
from omniar.stream.collate import collate

# the default guidance, chosen on the validation split (BENCHMARKS.md "Guidance for the aligned latent", "Edits told
# which object: guidance and sampling"): text-to-image gains from strong guidance (10: +0.03-0.05 over 3), ramped
# over the scales; a grounded edit (onecat-tiny) is best drawn greedily at a constant 1.5 (2,000 validation edits:
# satisfied 0.888, preserved 0.953, against 0.856 / 0.922 at 3 ramped and sampled): stronger guidance and
# sampled bits redraw untouched objects. The benchmark (`ImageSampling`), the CLI and `OmniModel.generate_image` /
# `edit_image` all default to these.
T2I_CFG = 10.0
T2I_TEMPERATURE = 1.0  # sampled bits: greedy ones draw the same blob for every seed and score lower (BENCHMARKS.md)
EDIT_CFG = 1.5
EDIT_CFG_SCHEDULE = "constant"
EDIT_TEMPERATURE = 0.0
# An edit's pull towards its reference (`keep`) only where the drawing so far reproduces it (`keep_tau`): chosen on
# 1,000 validation edits of the reference plan's model (satisfied / preserved 0.823 / 0.939 without, 0.819 / 0.956
# with; BENCHMARKS.md, "Keep where the drawing agrees").
EDIT_KEEP = 10.0
EDIT_KEEP_TAU = 0.6


def guidance_weights(cfg: float, scales: int, schedule: str = "linear", unguided: int = 0) -> list[float]:
    """The guidance weight of each of `scales` steps: `cfg` (constant) or ramped linearly from 1 at the first to
    `cfg` at the last guided one (linear, VAR's); the last `unguided` weigh 1 (no guidance)."""
    if not 0 <= unguided <= scales:
        raise ValueError(f"unguided scales must be between 0 and the {scales} scales, got {unguided}")
    guided = scales - unguided
    if schedule == "constant":
        weights = [cfg] * guided
    elif schedule == "linear":
        weights = [1 + (cfg - 1) * k / max(1, guided - 1) for k in range(guided)]
    else:
        raise ValueError(f"cfg schedule must be 'constant' or 'linear', got {schedule!r}")
    return weights + [1.0] * unguided


@torch.inference_mode()
def generate_images(model: OmniModel, prompts: Sequence[str], *, sources: Sequence | None = None,
                    cfg: float = 1.0, cfg_schedule: str = "linear", unguided_scales: int = 0,
                    image_cfg: float | None = None, params: SamplingParams | None = None,
                    seeds: Sequence[int] | None = None, prefix: Sequence | None = None, return_bits: bool = False,
                    keep: float = 0.0, keep_tau: float | None = None,
                    on_scale: Callable[[int, Tensor], None] | None = None):
    """Images (B, 3, S, S) in [0, 1], on the model's device, for text prompts - or, with `sources` (one image per
    prompt), edits of them (guidance then drops the instruction and keeps the reference image); `unguided_scales`
    (next-scale) draws the last that many scales without guidance, on the conditional rows alone, the ramp reaching
    `cfg` at the last guided scale (BENCHMARKS.md: batches ~1.2x faster at 1, text-to-image a little worse).
    `params` sample each bit (default greedy); `seeds` gives each row its own generator, so a row's image does not
    depend on its batch.
    `prefix` (next-scale): the bits of the first K scales, each (B, d, s_k, s_k) as `ImageTokenizer.encode` gives
    them, which are kept and the later scales generated from them (complete an image from its coarse layout; where
    quality is lost per scale: bench/omni_scale_forcing.py). `keep` (edits, next-scale) pulls every bit towards
    the one that keeps the reference there: it is added to that bit's guided log-probability, scaled by 1 - the
    grounding head's map of the named object (max-pooled to the scale) where the model has one; the bit that keeps
    is the sign of the reference's latent less the running reconstruction, pooled to the scale - the tokenizer's
    own code, so a large `keep` with no map redraws the reference as the tokenizer encodes it. `keep_tau` (None:
    everywhere) pulls only the tokens whose place the drawing so far reproduces: where the running reconstruction's
    distance to the reference's latent, relative to the latent's norm (per position of the finest grid, max-pooled
    to the scale), is below `keep_tau` - so with `keep_tau` <= 1 the first scale, drawn from nothing (distance 1),
    is free, and so is a place the drawing has begun to change (an added object, a moved one's destination). With
    return_bits, also the bits per scale. `on_scale(k, images)` (next-scale) is called after each scale k with the
    images (B, 3, S, S) its scales so far decode to - coarse to fine, the last of them the images returned (VAR's
    progressive view; one decoder pass of the image tokenizer a scale, only when asked)."""
    if not prompts:
        raise ValueError("generate_images needs at least one prompt")
    if sources is not None and len(sources) != len(prompts):
        raise ValueError(f"{len(sources)} source images for {len(prompts)} prompts: give one per prompt")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one per prompt")
    if image_cfg is not None and sources is None:
        raise ValueError("image_cfg guides edits: give `sources`")
    if keep and (sources is None or model.gen_modality != Modality.IMAGE_GEN):
        raise ValueError("keep pulls an edit towards its reference's bits: it needs `sources` and next-scale "
                         "generation")
    for name, weight in (("cfg", cfg), ("image_cfg", image_cfg), ("keep", keep)):
        if weight is not None and not weight >= 0:  # NaN too
            raise ValueError(f"{name} must be >= 0, got {weight}" + (
                " (1: no guidance, 0: the model without the prompt)" if name != "keep" else ""))
    if unguided_scales and model.gen_modality != Modality.IMAGE_GEN:
        raise ValueError("unguided_scales leaves the finest scales of a next-scale image unguided; this model decodes "
                         "raster tokens, one a pass, with no scales")
    if not 0 <= unguided_scales <= len(model.scales):
        raise ValueError(f"unguided_scales must be between 0 and the model's {len(model.scales)} scales, got "
                         f"{unguided_scales}")
    if keep_tau is not None and not keep_tau > 0:
        raise ValueError(f"keep_tau must be > 0 (a relative distance) or None, got {keep_tau}")
    if on_scale is not None and model.gen_modality != Modality.IMAGE_GEN:
        raise ValueError("on_scale (--scales) shows a next-scale drawing scale by scale; this model decodes raster "
                         "tokens, one a pass, with no scales to show")
    # the arguments checked, the model prepared
    generators = [torch.Generator().manual_seed(int(s)) for s in (seeds if seeds is not None else [0] * len(prompts))]
    params = params or SamplingParams(temperature=0.0)
    model.eval()
    model.decoder.merge_scale_adapter()  # each scale's forward pass has one scale: merged weights, no LoRA matmuls
    n = len(prompts)
    task = "t2i" if sources is None else "edit"
    examples = [Example(task, p, image=torch.zeros(3, model.image_size, model.image_size),
                        source=None if sources is None else sources[i]) for i, p in enumerate(prompts)]
    # row groups: (drop prompt, drop image) - conditional first, then the unconditional branches
    branches = [(False, False)] + ([(False, True), (True, True)] if image_cfg is not None else
                                   [(True, False)] if cfg != 1.0 else [])
    pixels = None if sources is None else as_images(list(sources), model.image_size)
    und = None if sources is None else model.und_features(pixels)
    # the reference's latents, encoded once: edit_reference's input and keep's target
    latents = model.tokenizer.latents(pixels.to(model.device)) if sources is not None and (
        model.ref_embed is not None or keep) else None
    ref = None  # edit_reference: the reference's latent at each generation position, in the branches that keep it
    if sources is not None and model.ref_embed is not None:
        r = model.reference_features(sources, latents=latents)
        ref = torch.cat([torch.zeros_like(r) if di else r for _, di in branches])
    T = sum(s * s for s in model.scales)
    D = model.decoder.config.hidden_size
    placeholder = torch.zeros(T, D)
    samples = [model.sample(ex, None if und is None else und[i], placeholder, drop_prompt=dp, drop_image=di)
               for dp, di in branches for i, ex in enumerate(examples)]
    for s in samples:  # generation stops at the last scale: no <eoi> position
        s.segments[-1].end = None
    if prefix is not None:
        _check_prefix(model, prefix, n)
    model.check_context(samples, [f"prompt {i % n} ({prompts[i % n][:40]!r})" for i in range(len(samples))])
    batch = collate(samples, pad_side="left", pad_id=model.text.pad).to(model.device)
    groups = len(branches)
    steps = _NextScale(model, n) if model.gen_modality == Modality.IMAGE_GEN else _Raster(model, n)
    weights = guidance_weights(cfg, len(steps.sizes), cfg_schedule, unguided_scales) if isinstance(
        steps, _NextScale) else [cfg] * len(steps.sizes)  # raster: constant guidance over tokens
    # the passes from which no scale is guided draw from the conditional rows alone: the guidance rows are dropped
    # (with image_cfg a weight of 1 still mixes the full and text-only branches)
    alone = next((k for k in range(len(weights)) if all(w == 1.0 for w in weights[k:])), len(weights)) if (
        groups == 2) else len(weights)
    L = batch.input_ids.shape[1]
    at = first = L - T  # first image column, identical in every row
    gen_key = int(model.gen_modality)
    cache = model.decoder.new_cache()
    grounded = maps = None  # grounding_input: the reference tokens' map, read in a first pass, into every position
    if sources is not None and model.ground_embed is not None:
        x = steps.inputs(0).repeat(groups, 1, 1)
        x = x if ref is None else x + ref[:, : steps.sizes[0]]
        grounded, maps = _grounding(model, batch.slice(0, first + steps.sizes[0]), x.reshape(-1, D), n, groups,
                                    cache)
        cache.truncate(first)  # keep the prompt; the first scale is passed again with its map
    for k, size in enumerate(steps.sizes):
        if k == alone:
            rows = torch.arange(n, device=model.device)
            batch, groups = batch.select(rows), 1
            cache.select(rows)
            ref = None if ref is None else ref[:n]
            grounded = None if grounded is None else grounded[:n]
        piece = batch.slice(0 if k == 0 and grounded is None else at, at + size)
        inputs = piece.model_inputs()
        x = steps.inputs(k).repeat(groups, 1, 1)
        if ref is not None:
            x = x + ref[:, at - first : at - first + size]
        if grounded is not None:
            x = x + grounded[:, at - first : at - first + size]
        inputs["features"] = {**inputs["features"], gen_key: x.reshape(-1, D)}
        hidden = model.decoder(**inputs, cache=cache).hidden[:, -size:]
        drawn = model.bit_head.draw(hidden, groups, lambda logp, w=weights[k]: _guide(logp, w, image_cfg),
                                    lambda logp: sample_bits(logp, params, generators),
                                    bias=None if not keep else steps.keep_bias(k, latents[-1], keep, maps,
                                                                               keep_tau))
        if prefix is not None and k < len(prefix):  # drawn all the same: a row's generator does not depend on K
            drawn = prefix[k].flatten(2).transpose(1, 2).to(drawn.device, drawn.dtype)
        steps.add(k, drawn)
        shown = None
        if on_scale is not None:
            shown = model.tokenizer.decode_latent(steps.f_hat)
            on_scale(k, shown)
        at += size
    # watched, the last scale's view is the image: not decoded twice
    images = shown if shown is not None else steps.images()
    return (images, steps.bits()) if return_bits else images


def scale_strip(images: Sequence[Tensor], gap: int = 2) -> np.ndarray:
    """One image's drawing scale by scale (`generate_images`' `on_scale` images of one row, each (3, S, S) in
    [0, 1]) side by side, coarse to fine, `gap` white pixels apart: a uint8 (S, n * S + (n - 1) * gap, 3) array."""
    from omniar.tokenizers.train_image import to_uint8

    if not images:
        raise ValueError("scale_strip needs at least one scale's image")
    return image_grid([list(to_uint8(torch.stack([x.detach().cpu().float() for x in images])))], gap)


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """uint8 (H, W, 3) images of one size laid out row by row, `gap` white pixels between neighbours: a uint8
    (R * H + (R - 1) * gap, C * W + (C - 1) * gap, 3) array for R rows of C images."""
    if not rows or not rows[0] or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError(f"image_grid needs rows of one length, got {[len(row) for row in rows]}")
    white = np.full((rows[0][0].shape[0], gap, 3), 255, np.uint8)
    lines = [np.concatenate([part for a in row for part in (a, white)][:-1], axis=1) for row in rows]
    across = np.full((gap, lines[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for line in lines for part in (line, across)][:-1], axis=0)


def _grounding(model: OmniModel, prompt, first_scale: Tensor, n: int, groups: int,
               cache: DecoderCache) -> tuple[Tensor, Tensor]:
    """The generation positions' grounding features (groups * n, T, D): the grounding head's map over the
    reference's tokens in the conditional rows (the first n), zero in the guidance rows (their instruction or
    reference is dropped, as in training); and those maps (n, h, w). The prompt's prefill: one pass over the
    prompt and the first scale's positions without their map (which, causal, the prompt does not see), so the
    prompt is routed as generation routes it (`prompt_positions`), into `cache` (the caller then forgets the first
    scale's positions, which are passed again with their map)."""
    inputs = prompt.model_inputs()
    inputs["features"] = {**inputs["features"], int(model.gen_modality): first_scale}
    hidden = model.decoder(**inputs, cache=cache).hidden
    und = prompt.meta.modality[:n] == Modality.IMAGE_UND
    grid = model.patch_embed.grid()
    maps = torch.sigmoid(model.grounding_head(hidden[:n][und])).reshape(n, *grid)
    feats = model.grounding_features(maps)
    return torch.cat([feats, torch.zeros_like(feats).repeat(groups - 1, 1, 1)]), maps


def _guide(logp, w: float, image_cfg: float | None):
    """Guided log-probabilities (N, ...) from those of the branches (groups, N, ...): module docstring."""
    if image_cfg is not None:
        full, text, empty = logp
        return empty + w * ((full + image_cfg * text) / (1 + image_cfg) - empty)
    return logp[1] + w * (logp[0] - logp[1]) if len(logp) == 2 else logp[0]


def _check_prefix(model: OmniModel, prefix: Sequence, n: int) -> None:
    if model.gen_modality != Modality.IMAGE_GEN:
        raise ValueError("a bits prefix needs next-scale generation (this model decodes raster tokens)")
    if len(prefix) > len(model.scales):
        raise ValueError(f"a prefix of {len(prefix)} scales for a model with {len(model.scales)}")
    d = model.tokenizer.config.bits
    for s, b in zip(model.scales, prefix):
        if tuple(b.shape) != (n, d, s, s):
            raise ValueError(f"prefix bits of scale {s} must be ({n}, {d}, {s}, {s}), got {tuple(b.shape)}")


class _NextScale:
    """Decoding state of next-scale generation: one step per scale, inputs from the running reconstruction."""

    def __init__(self, model: OmniModel, n: int):
        self.model, self.n, self.scales = model, n, model.scales
        self.sizes = [s * s for s in self.scales]
        self.per_scale: list = []
        self.f_hat = None

    def inputs(self, k: int):
        embed = self.model.scale_embed
        if k == 0:
            return embed([], batch=self.n)
        return embed([self.model.tokenizer.quantizer.down(self.f_hat, self.scales[k])], batch=self.n, first=k)

    def keep_bias(self, k: int, reference: Tensor, keep: float, maps: Tensor | None,
                  tau: float | None = None) -> Tensor:
        """(n, s_k^2, d, 2): `keep` on the log-probability of each bit of scale k that keeps the reference (its
        latent (n, d, H, H)), times 1 - the named object's map max-pooled to the scale, and with `tau` zero where the
        drawing so far is `tau` or more (relative) from the reference (generate_images' `keep`, `keep_tau`)."""
        s = self.scales[k]
        q = self.model.tokenizer.quantizer
        residual = reference if self.f_hat is None else reference - self.f_hat
        _, bits, _ = q.quantize(q.down(residual, s))
        one = bits.flatten(2).transpose(1, 2).float()  # (n, s^2, d): 1 where the keeping bit is 1
        free = 0.0 if maps is None else F.adaptive_max_pool2d(maps[:, None].to(one.device), s).flatten(1).clamp(0, 1)
        weight = keep * (1 - free) * one.new_ones(one.shape[:2])
        if tau is not None:  # before anything is drawn (scale 0) the distance is 1
            off = residual.norm(dim=1) / reference.norm(dim=1).clamp(min=1e-6)
            weight = weight * (F.adaptive_max_pool2d(off[:, None], s).flatten(1) < tau)
        return torch.stack([1 - one, one], -1) * weight[..., None, None]

    def add(self, k: int, bits) -> None:
        s = self.scales[k]
        b = bits.transpose(1, 2).reshape(self.n, -1, s, s)
        self.per_scale.append(b)
        q = self.model.tokenizer.quantizer
        contribution = q.contribution(q.codes(b), k, self.scales[-1])
        self.f_hat = contribution if self.f_hat is None else self.f_hat + contribution

    def bits(self) -> list:
        return self.per_scale

    def images(self) -> Tensor:
        """The images the bits decode to: the running reconstruction is their summed contributions already, added
        in `decode_bits`' order, so the tokenizer's decoder reads it as it is (`tokenizer.decode(bits)` exactly)."""
        return self.model.tokenizer.decode_latent(self.f_hat)


class _Raster:
    """Decoding state of the raster baseline: one token per step, its input the previous token's code."""

    def __init__(self, model: OmniModel, n: int):
        self.model, self.n, self.side = model, n, model.scales[0]
        self.sizes = [1] * self.side**2
        self.codes = torch.zeros(n, 0, model.tokenizer.config.bits, device=model.device)
        self.tokens: list = []

    def inputs(self, k: int):
        return self.model.scale_embed.raster(self.codes, k, k + 1)

    def add(self, k: int, bits) -> None:
        self.tokens.append(bits)
        self.codes = torch.cat([self.codes, self.model.tokenizer.quantizer.codes(bits)], 1)

    def bits(self) -> list:
        return [torch.cat(self.tokens, 1).transpose(1, 2).reshape(self.n, -1, self.side, self.side)]

    def images(self) -> Tensor:
        return self.model.tokenizer.decode(self.bits())
