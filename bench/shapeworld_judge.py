"""ShapeWorld: scene generation + rendering throughput, and the scene parser's accuracy (the judge of later issues).

    python bench/shapeworld_judge.py [--scenes 2000] [--side 64]

Accuracy is the fraction of test scenes (seed 123) whose parse has exactly the right (shape, colour, size)
objects, nothing more; on clean renders, and on renders blurred (Gaussian sigma 1 px at 64 px) then JPEG-compressed
at quality 50. Position error is the largest |centre error| among correctly parsed objects, as a fraction of the side.
Then the GenEval-style judge on ground-truth images, against their own prompts and against shuffled ones.
"""

from __future__ import annotations

import argparse
import random
import time

from omniar.data.shapeworld import parse_image, render, sample_scene
from omniar.data.shapeworld.judge import score_images
from omniar.data.shapeworld.language import KINDS
from omniar.data.shapeworld.render import degrade
from omniar.data.shapeworld.tasks import sample_prompt, scene_for_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--prompts-per-kind", type=int, default=200)
    args = ap.parse_args()
    rng = random.Random(123)
    t = time.perf_counter()
    scenes = [sample_scene(rng) for _ in range(args.scenes)]
    images = [render(s, args.side) for s in scenes]
    make_rate = len(scenes) / (time.perf_counter() - t)
    print(f"scene generation + rendering at {args.side}x{args.side}: {make_rate:,.0f} scenes/s (1 process)")
    print()
    print("| renders | scenes exact | objects | max position error | parse speed |")
    print("|---|---:|---:|---:|---:|")
    for name, fn in (("clean", lambda x: x), ("blur 1 px + JPEG 50", degrade)):
        exact, max_err, n_obj = 0, 0.0, 0
        t = time.perf_counter()
        for scene, img in zip(scenes, images):
            got = parse_image(fn(img))
            n_obj += len(scene.objects)
            if sorted((o.shape, o.color, o.size) for o in got) == sorted((o.shape, o.color, o.size) for o in
                                                                          scene.objects):
                exact += 1
                for o in scene.objects:
                    m = next(p for p in got if (p.shape, p.color) == (o.shape, o.color))
                    max_err = max(max_err, abs(m.cx - o.cx), abs(m.cy - o.cy))
        rate = len(scenes) / (time.perf_counter() - t)
        print(f"| {name} | {exact / len(scenes):.2%} ({exact}/{len(scenes)}) | {n_obj} | {max_err:.4f} | "
              f"{rate:,.0f} scenes/s |")

    # GenEval-style judge on ground truth: each image against its own prompt, and against another's
    prng = random.Random(321)
    prompts = [sample_prompt(prng, kind) for kind in KINDS for _ in range(args.prompts_per_kind)]
    images = [render(scene_for_prompt(p, prng), args.side) for p in prompts]
    own = score_images(prompts, images)
    shuffled = score_images(prompts[1:] + prompts[:1], images)
    print()
    print(f"GenEval-style judge, {args.prompts_per_kind} ground-truth images per kind")
    print()
    print("| prompts | " + " | ".join(KINDS) + " | overall |")
    print("|---|" + "---:|" * (len(KINDS) + 1))
    for name, sc in (("own", own), ("shuffled", shuffled)):
        print(f"| {name} | " + " | ".join(f"{sc[k]:.3f}" for k in KINDS) + f" | {sc['overall']:.3f} |")


if __name__ == "__main__":
    main()
