"""Does the model look at the image? VQA exact match per question kind, image kept, blanked or swapped.

The same N questions of a ShapeWorld split are answered three times: with their own image, with a flat grey image
(the same for all), and with the next sample's image. A kind whose score does not drop without the true image is
answered from the question alone (the answer prior); the gap between "own" and "grey" is what the model reads
from the pixels. "blind prior" is what an answerer that ignores the image reaches by always giving the most
frequent answer to the same question text in the train split (an estimate of the best blind score).

    python bench/omni_vqa_probe.py --model out/cache/train-stage3-*/stage3/checkpoint [--num 300]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import numpy as np
import torch

from omniar.data.shapeworld.dataset import make_sample
from omniar.data.shapeworld.judge import answer_correct
from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import Scene
from omniar.omni.model import OmniModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="OmniModel checkpoint directory")
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--split", default="val")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--prior", type=int, default=20_000, help="train samples behind the blind answerer")
    args = ap.parse_args()
    if args.num < 2:
        ap.error("--num must be >= 2 (the swapped column gives each question another sample's image)")
    model = OmniModel.from_pretrained(args.model)
    samples = [make_sample(args.split, i) for i in range(args.num)]
    questions = [s["question"] for s in samples]
    own = [render(Scene.from_dict(s["scene"]), model.image_size) for s in samples]
    grey = [np.full_like(own[0], 128)] * len(own)
    swapped = own[1:] + own[:1]
    kinds = sorted({s["qa_kind"] for s in samples})

    def scores(images: list) -> dict[str, float]:
        answers = []
        for i in range(0, len(samples), args.batch):
            answers += model.answer(images[i:i + args.batch], questions[i:i + args.batch])
        hit = defaultdict(list)
        for s, a in zip(samples, answers):
            hit[s["qa_kind"]].append(answer_correct(a, s["answer"]))
        return {k: float(np.mean(hit[k])) for k in kinds} | {"all": float(np.mean(sum(hit.values(), [])))}

    # the blind answerer: the most frequent answer to the same question text among the train split's first
    # `--prior` samples (the kind's most frequent answer for a question never seen there)
    by_question, by_kind = defaultdict(Counter), defaultdict(Counter)
    for i in range(args.prior):
        s = make_sample("train", i)
        by_question[s["question"]][s["answer"]] += 1
        by_kind[s["qa_kind"]][s["answer"]] += 1
    prior_hit = defaultdict(list)
    for s in samples:
        seen = by_question.get(s["question"]) or by_kind[s["qa_kind"]]
        prior_hit[s["qa_kind"]].append(seen.most_common(1)[0][0] == s["answer"])
    prior = {k: float(np.mean(prior_hit[k])) for k in kinds} | {
        "all": float(np.mean(sum(prior_hit.values(), [])))}

    with torch.inference_mode():
        rows = {"own image": scores(own), "grey image": scores(grey), "another sample's image": scores(swapped)}
    rows["blind prior"] = prior
    count = Counter(s["qa_kind"] for s in samples)
    print(f"model: {args.model} | {args.num} {args.split} questions | greedy answers")
    print()
    print("| images | " + " | ".join(f"{k} ({count[k]})" for k in kinds) + " | all |")
    print("|---|" + "---:|" * (len(kinds) + 1))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.2f}" for k in kinds) + f" | {r['all']:.3f} |")


if __name__ == "__main__":
    main()
