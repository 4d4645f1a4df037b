"""Training and evaluation of the image tokenizer on ShapeWorld renders (or a manifest's images).

Resumable: `out/checkpoint` holds the tokenizer, the optimizer state and the step (safetensors + JSON); the data
order and the learning rate are functions of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from omniar.checkpoint import TRAINER_NAME, load_training_state, recover_directory, save_training_checkpoint
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, reconstruction_loss
from omniar.train.interrupt import GracefulStop
from omniar.train.metrics import MetricsLog
from omniar.train.muon import Muon
from omniar.train.trainer import warm_cosine

# the tokenizer's optimizers (`train_image_tokenizer`): Muon for the hidden filters, or Adam for everything
OPTIMIZERS = ("muon", "adam")
# the semantic alignment's weight when a teacher is given (BENCHMARKS.md, "A latent that knows shapes")
ALIGN_WEIGHT = 2.0
# images a step: under Muon a step of 8 costs 0.37x one of 32, and in the same minutes the smaller batch reconstructs
# sharper (BENCHMARKS.md, "Muon for the filters": fewer images a step); checkpoints from before the batch was recorded
# were trained at 32
BATCH = 8


def shapeworld_images(num: int, split: str = "train", side: int = 64) -> np.ndarray:
    """(num, side, side, 3) uint8 renders of the split's scenes (and their edit targets), deterministic; split
    "pool": the text-free image pool, every colour-shape pair (`dataset.pool_scenes`)."""
    from omniar.data.shapeworld.dataset import make_sample, pool_scenes
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    out, i = [], 0
    while len(out) < num:
        if split == "pool":
            scenes = pool_scenes(i)
        else:
            s = make_sample(split, i)
            scenes = [Scene.from_dict(s["scene"])] + ([Scene.from_dict(s["edit"]["scene"])] if s["edit"] else [])
        out += [render(scene, side) for scene in scenes[: num - len(out)]]
        i += 1
    return np.stack(out)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, S, S) in [0, 1] -> uint8 (N, S, S, 3), the inverse of `to_tensor`."""
    return (images.detach().permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def train_image_tokenizer(out: str | Path, images: np.ndarray, config: ImageTokenizerConfig | None = None,
                          steps: int = 3500, batch: int = BATCH, lr: float = 2e-3, seed: int = 0,
                          commit_weight: float = 0.0, balance_weight: float = 0.01, rate_weight: float = 0.0,
                          align_teacher: torch.nn.Module | None = None, align_weight: float = 0.0,
                          progress: bool = True, resume: bool = True, stop_at: int | None = None,
                          optimizer: str = "muon") -> ImageTokenizer:
    """Train for `steps` (learning-rate schedule over `steps`); `stop_at` ends early with a checkpoint, from which
    a later call with `resume=True` continues exactly.

    Loss: reconstruction (L1 + L2 + image gradients) + commit_weight * commitment + balance_weight * bit balance
    + rate_weight * rate (the bits' nats under the config's bit prior given the earlier scales, bit_prior.py)
    + align_weight * align (semantic alignment of the latent with `align_teacher.feature_map(images)`, a frozen
    vision model such as the ConvNet teacher; the config's `align_width` = its feature width; image.py).
    No commitment by default (BENCHMARKS.md): it pulls each normalised residual onto its own sign pattern, so the
    encoder settles near its random initial hash (with weight 4.0 the full run reached 21.4 dB instead of 34.6).

    `optimizer` (`OPTIMIZERS`): "muon" (the default) orthogonalises the updates of the hidden convolutions' filters,
    each flattened to a matrix of (output channels, input channels x kernel) - as the CIFAR-10 speedruns do - and
    keeps Adam for the first and last convolutions, the 1 x 1 projections, norms and biases; "adam" trains them all
    with Adam. 1,350 steps of 32 reconstruct at 33.0 dB with 99.8% of test scenes parsed under Muon, against 31.0 dB
    and 97.8% under Adam, in the same time; under Muon `batch` 8 (`BATCH`) gives 3,200 steps in those minutes and
    33.6 dB (BENCHMARKS.md, "Muon for the filters"). A run resumes only with its own optimizer and batch."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    stop_at = steps if stop_at is None else min(stop_at, steps)
    out = Path(out)
    ckpt = out / "checkpoint"
    torch.manual_seed(seed)
    model = ImageTokenizer(config or ImageTokenizerConfig(image_size=images.shape[1]))
    if rate_weight < 0 or (rate_weight > 0) != (model.prior is not None):
        raise ValueError(f"rate_weight {rate_weight} and prior_width {model.config.prior_width}: the rate term needs "
                         "a bit prior and a bit prior trains only through a positive rate_weight (e.g. 64 and 0.02)")
    aligned = align_weight > 0
    if align_weight < 0 or aligned != (model.align is not None) or aligned != (align_teacher is not None):
        raise ValueError(f"align_weight {align_weight}, align_width {model.config.align_width} and align_teacher "
                         f"{'given' if align_teacher is not None else 'None'}: semantic alignment needs all three "
                         "(e.g. 2.0, the teacher's feature width and the teacher), and none of them alone")
    if align_teacher is not None:
        align_teacher.requires_grad_(False).eval()
    opt = _optimizer(model, optimizer, lr)
    step = 0
    recover_directory(ckpt)
    if resume and (ckpt / TRAINER_NAME).is_file():
        model.load_state_dict(ImageTokenizer.from_pretrained(ckpt).state_dict())
        # checked before the optimizer's state is loaded, which would fail on the other optimizer's groups
        meta = json.loads((ckpt / TRAINER_NAME).read_text())
        saved = {"optimizer": meta.get("optimizer_name", "adam"), "batch": meta.get("batch", 32)}
        for name, value in {"optimizer": optimizer, "batch": batch}.items():
            if saved[name] != value:
                raise ValueError(f"{ckpt} was trained with {name} {saved[name]!r}; resume it with "
                                 f"{name}={saved[name]!r} (or train anew in another directory with {value!r})")
        step = load_training_state(ckpt, opt)["step"]
    data = to_tensor(images)
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out / "metrics.jsonl", step)
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="image tokenizer", unit="step")
    t0 = time.perf_counter()
    model.train()
    stop = GracefulStop()
    with stop:
        while step < stop_at:
            rng = np.random.default_rng(seed * 1_000_003 + step)
            x = data[torch.from_numpy(rng.integers(0, len(data), batch))]
            for g in opt.param_groups:
                g["lr"] = warm_cosine(step, steps, lr, floor=0.1)
            features = None
            if align_teacher is not None:
                with torch.no_grad():
                    features = align_teacher.feature_map(x)
            recon, _, parts = model(x, features)
            rec = reconstruction_loss(recon, x)
            loss = rec + commit_weight * parts["commit"] + balance_weight * parts["balance"]
            if "rate" in parts:
                loss = loss + rate_weight * parts["rate"]
            if "align" in parts:
                loss = loss + align_weight * parts["align"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == stop_at:
                m = {"step": step, "loss": loss.item(), "recon": rec.item(), **{k: v.item() for k, v in parts.items()},
                     "seconds": round(time.perf_counter() - t0, 1)}
                bar.set_postfix(loss=f"{m['loss']:.4f}")
                metrics.write(m)
            if step % 500 == 0 or step == stop_at or stop.signal is not None:
                save_training_checkpoint(ckpt, model, opt, step, optimizer_name=optimizer, batch=batch)
            if stop.signal is not None:
                break
    bar.close()
    metrics.close()
    if stop.signal is not None:
        stop.stop(step, steps, ckpt)
    return model.eval()


def _optimizer(model: ImageTokenizer, name: str, lr: float) -> torch.optim.Optimizer:
    """`train_image_tokenizer`'s optimizer: Adam, or Muon for the hidden filters (`hidden_filters`) and Adam for the
    rest (Muon's other groups are AdamW, here without weight decay: Adam)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    hidden = hidden_filters(model)
    ids = {id(p) for p in hidden}
    return Muon([{"params": hidden, "muon": True, "flatten": True},
                 {"params": [p for p in model.parameters() if id(p) not in ids]}], lr=lr, betas=(0.9, 0.99))


def hidden_filters(model: ImageTokenizer) -> list[torch.nn.Parameter]:
    """The convolution filters Muon trains: every k x k (k > 1) filter but the first, which reads pixels, and the
    last, which writes them."""
    first, last = model.encoder.net[0].weight, model.decoder.net[-2].weight
    return [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1 and p is not first and p is not last]


@torch.no_grad()
def evaluate_image_tokenizer(model: ImageTokenizer, num: int = 500, split: str = "test") -> dict:
    """PSNR, judge parse match of reconstructions, bit usage, on `num` renders of `split`."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.parse import parse_image
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    scenes = [Scene.from_dict(make_sample(split, i)["scene"]) for i in range(num)]
    x = to_tensor(np.stack([render(s, model.config.image_size) for s in scenes]))
    psnrs, matches, bit_sum, bit_count, rates = [], 0, 0, 0, []
    for a in range(0, num, 50):
        xb = x[a : a + 50]
        bits = model.encode(xb)
        recon = model.decode(bits)
        if model.prior is not None:  # nats per bit of each scale under the prior: what a generator must guess
            rates.append(model.bit_rate(bits))
        mse = ((recon - xb) ** 2).mean(dim=(1, 2, 3))
        psnrs += (10 * torch.log10(1 / mse.clamp(min=1e-10))).tolist()
        flat = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, model.config.bits) for b in bits]).float()
        bit_sum = bit_sum + flat.sum(0)
        bit_count += len(flat)
        imgs = to_uint8(recon)
        for img, scene in zip(imgs, scenes[a : a + 50]):
            got = sorted((o.shape, o.color, o.size) for o in parse_image(img))
            matches += got == sorted((o.shape, o.color, o.size) for o in scene.objects)
    usage = (bit_sum / bit_count).tolist()
    report = {"psnr": float(np.mean(psnrs)), "parse_match": matches / num, "bit_mean_min": min(usage),
              "bit_mean_max": max(usage), "tokens_per_image": model.config.tokens_per_image,
              "bits_per_token": model.config.bits, "images": num}
    if rates:
        report["rate_per_scale"] = [round(r, 4) for r in np.mean(rates, 0).tolist()]
    return report
