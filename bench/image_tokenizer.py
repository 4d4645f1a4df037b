"""The image tokenizer against the ShapeWorld judge, and the ablation behind its training recipe.

    python bench/image_tokenizer.py --model DIR [--images 500]     # evaluate a trained tokenizer
    python bench/image_tokenizer.py --ablate [--steps 300]          # short runs of the recipe's variants

--model: PSNR and judge parse of reconstructions on test renders, bit usage, tokens per image, bits per token and
encode + decode throughput (batch 50). --ablate: each variant trains `--steps` steps (of the trainer's BATCH) on
4,000 train renders from the same seed and is scored by PSNR on 200 test renders, all in this one run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from omniar.tokenizers.image import ImageTokenizer
from omniar.tokenizers.train_image import (
    BATCH,
    evaluate_image_tokenizer,
    shapeworld_images,
    to_tensor,
    train_image_tokenizer,
)

VARIANTS = {  # name: keyword arguments of train_image_tokenizer
    "default (no commitment, balance 0.01, lr 2e-3)": {},
    "+ commitment 0.25 (Infinity's weight)": {"commit_weight": 0.25},
    "+ commitment 4.0 (the first run's weight)": {"commit_weight": 4.0},
    "balance 0.1": {"balance_weight": 0.1},
    "lr 5e-4": {"lr": 5e-4},
}


def evaluate(model_dir: str, images: int) -> None:
    model = ImageTokenizer.from_pretrained(model_dir)
    report = evaluate_image_tokenizer(model, images)
    x = to_tensor(shapeworld_images(50, "test"))
    t = time.perf_counter()
    for _ in range(3):
        model.decode(model.encode(x))
    per_s = 150 / (time.perf_counter() - t)
    print("| test renders | PSNR | judge parse exact | bit means | tokens/image | bits/token | encode+decode |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    print(f"| {report['images']} | {report['psnr']:.2f} dB | {report['parse_match']:.1%} "
          f"| {report['bit_mean_min']:.3f}-{report['bit_mean_max']:.3f} | {report['tokens_per_image']} "
          f"| {report['bits_per_token']} | {per_s:.0f} images/s |")


def ablate(steps: int) -> None:
    train = shapeworld_images(4000)
    test = to_tensor(shapeworld_images(200, "test"))
    print(f"{steps} steps x batch {BATCH} on 4,000 train renders; PSNR on 200 test renders")
    print()
    print("| variant | PSNR | train time |")
    print("|---|---:|---:|")
    for name, kwargs in VARIANTS.items():
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            model = train_image_tokenizer(out, train, steps=steps, progress=False, **kwargs)
            seconds = time.perf_counter() - t
        with torch.no_grad():
            recon = model.decode(model.encode(test))
        psnr = (10 * torch.log10(1 / ((recon - test) ** 2).mean(dim=(1, 2, 3)))).mean().item()
        print(f"| {name} | {psnr:.2f} dB | {seconds:.0f} s |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained tokenizer (checkpoint directory)")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    if not args.model and not args.ablate:
        ap.error("give --model DIR and/or --ablate")
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print()
    if args.model:
        evaluate(args.model, args.images)
        print()
    if args.ablate:
        ablate(args.steps)


if __name__ == "__main__":
    main()
