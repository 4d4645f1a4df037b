"""Which words of a text-to-image prompt does the generator use? Teacher-forced bits with the prompt's words swapped.

For N scenes of a ShapeWorld split that hold one object and are described by a one-object prompt ("a big red
circle", "a red circle"), the image's bits are scored teacher-forced under the true prompt, under the prompt with
its shape word swapped for another shape, with its colour word swapped, and under the empty prompt (the
unconditional branch of guidance). Printed: the cross-entropy (nats per bit) of each scale's tokens that the object
covers (more than 5% of their area), per prompt, and the extra nats per image that each swap costs over those
tokens - the log-likelihood ratio by which the model tells the true word from a wrong one (a model that ignores a
word costs nothing when it is swapped; guidance can only amplify a ratio the model has learned).

    python bench/omni_prompt_words.py --model out/cache/train-stage3-*/stage3/checkpoint [--num 150]
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from omniar.data.shapeworld.dataset import make_sample
from omniar.data.shapeworld.language import article
from omniar.data.shapeworld.render import coverage, render
from omniar.data.shapeworld.scene import Scene
from omniar.data.shapeworld.world import COLORS, SHAPES
from omniar.omni.model import Example, OmniModel

PROMPTS = ("true", "shape swapped", "colour swapped", "empty")


def swap(prompt: str, old: str, new: str) -> str:
    """`prompt` with the word `old` replaced by `new` (the article fixed: "a orange" -> "an orange")."""
    words = [new if w == old else w for w in prompt.split()]
    if words[0] in ("a", "an") and len(words) > 1:
        words[0] = article(words[1])
    return " ".join(words)


def scenes(num: int, split: str, seed: int) -> list[tuple[Scene, dict[str, str]]]:
    """`num` one-object scenes of `split` with their prompts: true, shape / colour swapped (random), empty."""
    rng, out, i = random.Random(seed), [], 0
    while len(out) < num:
        s = make_sample(split, i)
        i += 1
        scene = Scene.from_dict(s["scene"])
        if s["kind"] not in ("single_object", "colors") or len(scene.objects) != 1:
            continue
        o = scene.objects[0]
        shape = rng.choice([x for x in SHAPES if x != o.shape])
        color = rng.choice([x for x in COLORS if x != o.color])
        out.append((scene, {"true": s["caption"], "shape swapped": swap(s["caption"], o.shape, shape),
                            "colour swapped": swap(s["caption"], o.color, color), "empty": ""}))
    return out


@torch.no_grad()
def object_token_losses(model: OmniModel, scene: Scene, prompts: list[str]) -> tuple[list[list[float]], list[int]]:
    """Per prompt and scale: the summed bit cross-entropy (nats) of the tokens the object covers (all prompts in
    one batch, the image's bits teacher-forced under each); and per scale the number of those bits."""
    image = render(scene, model.image_size)
    batch, bits, *_ = model.batch([Example("t2i", p, image=image) for p in prompts])
    out = model.decoder(**batch.model_inputs())
    gen = batch.meta.modality == model.gen_modality  # right-padded rows: each prompt's tokens in stream order
    logits = model.bit_head(out.hidden[gen], bits)
    ce = F.cross_entropy(logits.reshape(-1, 2).float(), bits.reshape(-1).long(), reduction="none")
    ce = ce.view(len(prompts), -1, bits.shape[-1])
    o = scene.objects[0]
    cover = torch.from_numpy(coverage(o.shape, o.size, o.cx, o.cy, model.image_size))[None, None]
    sums, counts, start = [[] for _ in prompts], [], 0
    for s in model.scales:
        mask = F.adaptive_avg_pool2d(cover, s).flatten() > 0.05
        part = ce[:, start:start + s * s][:, mask]
        for row, total in zip(sums, part.sum((1, 2)).tolist()):
            row.append(total)
        counts.append(part[0].numel())
        start += s * s
    return sums, counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="an OmniModel checkpoint (next-scale generation)")
    p.add_argument("--num", type=int, default=150, help="one-object scenes")
    p.add_argument("--split", default="val")
    p.add_argument("--seed", type=int, default=0, help="which wrong words replace the true ones")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = OmniModel.from_pretrained(args.model).eval()
    if len(model.scales) < 2:
        raise SystemExit("this diagnostic reads next-scale models (a raster model has one scale)")
    k = len(model.scales)
    total = {name: [0.0] * k for name in PROMPTS}
    bits = [0] * k
    for scene, prompts in scenes(args.num, args.split, args.seed):
        sums, counts = object_token_losses(model, scene, [prompts[name] for name in PROMPTS])
        for name, row in zip(PROMPTS, sums):
            total[name] = [a + b for a, b in zip(total[name], row)]
        bits = [a + b for a, b in zip(bits, counts)]
    print(f"{args.model}: {args.num} one-object {args.split} scenes; object tokens' bit cross-entropy (nats per bit)"
          " per scale, and the nats per image a swapped word costs there\n")
    print("| prompt | " + " | ".join(f"scale {s}" for s in model.scales) + " | extra nats per image |")
    print("|---|" + "---:|" * (k + 1))
    for name in PROMPTS:
        per_bit = " | ".join(f"{t / max(b, 1):.3f}" for t, b in zip(total[name], bits))
        extra = "" if name == "true" else f"{(sum(total[name]) - sum(total['true'])) / args.num:+.2f}"
        print(f"| {name} | {per_bit} | {extra} |")


if __name__ == "__main__":
    main()
