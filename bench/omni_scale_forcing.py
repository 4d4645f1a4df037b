"""Where next-scale generation loses its quality, scale by scale.

For N prompts of a ShapeWorld split, the true bits of each prompt's own image are kept for the first K scales
(`generate_images(prefix=...)`) and the model generates the rest; the GenEval-style judge scores the images.
K = 0 is plain generation, K = all scales is the tokenizer's reconstruction. The drop from K + 1 to K is what
generating scale K costs. Beside it, the tokenizer alone with scale K's bits replaced by random bits (later scales
true): how much that scale's exact bits matter to the decoder at all.

    python bench/omni_scale_forcing.py --model out/cache/train-stage3-*/stage3/checkpoint [--num 100]
"""

from __future__ import annotations

import argparse

import torch

from omniar.data.shapeworld.dataset import make_sample
from omniar.data.shapeworld.judge import score_images
from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import Scene
from omniar.generation.sampling import SamplingParams
from omniar.omni.generate import generate_images
from omniar.omni.model import OmniModel, as_images
from omniar.tokenizers.train_image import to_uint8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="OmniModel checkpoint directory (next-scale)")
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--split", default="val")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = OmniModel.from_pretrained(args.model)
    samples = [make_sample(args.split, i) for i in range(args.num)]
    prompts = [s["caption"] for s in samples]
    images = as_images([render(Scene.from_dict(s["scene"]), model.image_size) for s in samples], model.image_size)
    true = model.tokenizer.encode(images)
    params = SamplingParams(temperature=args.temperature)
    seeds = [args.seed + i for i in range(args.num)]

    def score(imgs: torch.Tensor) -> float:
        return score_images(prompts, to_uint8(imgs))["overall"]

    scales = model.scales
    print(f"model: {args.model} | {args.num} {args.split} prompts | cfg {args.cfg} | temperature {args.temperature}")
    print()
    print("| scale | true scales before it, the rest generated: overall | tokenizer, this scale's bits random |")
    print("|---:|---:|---:|")
    for k, s in enumerate(scales):
        gen = generate_images(model, prompts, cfg=args.cfg, params=params, seeds=seeds, prefix=true[:k])
        noisy = [b if j != k else torch.rand(b.shape) < 0.5 for j, b in enumerate(true)]
        print(f"| {s} | {score(gen):.3f} | {score(model.tokenizer.decode(noisy)):.3f} |", flush=True)
    print(f"| (all true) | {score(model.tokenizer.decode(true)):.3f} | |")


if __name__ == "__main__":
    main()
