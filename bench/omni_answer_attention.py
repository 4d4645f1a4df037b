"""Does the answer find the object the question names? Attention at the answer position, per layer and head.

For N scenes of a ShapeWorld split with two or more objects, one question about the first object (its colour
named by its shape, its shape named by its colour, or its place - "where is the red circle?", answered as one of 9
regions) is laid out as in training and run once through the decoder, recording every head's attention
probabilities. At the position that predicts the answer, the image tokens are split into the named object's (grid
cells within its half-extent plus half a cell of its centre), the other objects' and the background's. The
*selectivity* of a head is the mean weight per named-object token over the mean weight per other-object token
(geometric mean over scenes): 1 means the head does not prefer the named object. Beside it: the answers' exact
match on the same questions, and the share of wrong answers that fit another object of the scene.

    python bench/omni_answer_attention.py --model out/cache/train-stage3-*/stage3/checkpoint [--question color]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from omniar.data.shapeworld.dataset import make_sample
from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import Obj, Scene
from omniar.modality import Modality
from omniar.omni.model import Example, OmniModel
from omniar.stream.collate import IGNORE


def region(o: Obj) -> str:
    """One of 9 regions of the image: top / middle / bottom x left / middle / right, by the object's centre."""
    col = "left" if o.cx < 1 / 3 else "right" if o.cx > 2 / 3 else "middle"
    row = "top" if o.cy < 1 / 3 else "bottom" if o.cy > 2 / 3 else "middle"
    return f"{row} {col}"


def question(kind: str, scene: Scene) -> tuple[str, str, list[str]] | None:
    """(question, answer, the answers that fit the other objects) about the first object, or None when the
    scene cannot name it unambiguously that way."""
    o, rest = scene.objects[0], scene.objects[1:]
    if kind == "color" and not any(p.shape == o.shape for p in rest):
        return f"what color is the {o.shape}?", o.color, [p.color for p in rest]
    if kind == "shape" and not any(p.color == o.color for p in rest):
        return f"what shape is the {o.color} object?", o.shape, [p.shape for p in rest]
    if kind == "where" and not any(p.shape == o.shape and p.color == o.color for p in rest):
        return f"where is the {o.color} {o.shape}?", region(o), [region(p) for p in rest]
    return None


@contextlib.contextmanager
def recorded_attention():
    """Every scaled_dot_product_attention call inside the block also stores its probabilities (B, H, Lq, Lk)."""
    probs, sdpa = [], F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        kk = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        s = q @ kk.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)
        if is_causal:
            attn_mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        if attn_mask is not None:
            s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
        probs.append(s.softmax(-1))
        return sdpa(q, k, v, attn_mask=attn_mask if not is_causal else None, dropout_p=dropout_p,
                    is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = recording
    try:
        yield probs
    finally:
        F.scaled_dot_product_attention = sdpa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="OmniModel checkpoint directory")
    ap.add_argument("--question", choices=("color", "shape", "where"), default="color")
    ap.add_argument("--num", type=int, default=100, help="scenes (with two or more objects) to ask about")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    if args.num < 1:
        ap.error("--num must be >= 1")
    torch.manual_seed(0)
    model = OmniModel.from_pretrained(args.model).eval()
    scenes, examples, others = [], [], []
    index = 0
    while len(examples) < args.num:
        scene = Scene.from_dict(make_sample(args.split, index)["scene"])
        index += 1
        qa = question(args.question, scene) if len(scene.objects) > 1 else None
        if qa is not None:
            scenes.append(scene)
            examples.append(Example("vqa", qa[0], answer=qa[1], image=render(scene, model.image_size)))
            others.append(qa[2])
    answers = [a.strip() for a in model.answer([e.image for e in examples], [e.text for e in examples])]
    right = [a == e.answer for a, e in zip(answers, examples)]
    wrong_other = [a in o for a, o, r in zip(answers, others, right) if not r]

    batch, _, *_ = model.batch(examples)
    with torch.inference_mode(), recorded_attention() as probs:
        model.decoder(**batch.model_inputs())
    rows, cols = model.patch_embed.grid()
    cell = torch.arange(rows * cols)
    cy, cx = (cell // cols + 0.5) / rows, (cell % cols + 0.5) / cols

    def covered(o: Obj) -> torch.Tensor:
        return ((cy - o.cy).abs() <= o.r + 0.5 / rows) & ((cx - o.cx).abs() <= o.r + 0.5 / cols)

    table = []  # per layer: (H,) selectivity
    for p in probs:
        logs = []
        for b, scene in enumerate(scenes):
            image = (batch.meta.modality[b] == Modality.IMAGE_UND).nonzero().flatten()
            at = int((batch.labels[b] != IGNORE).nonzero()[0])  # predicts the answer's first token
            named = covered(scene.objects[0])
            rest = torch.zeros_like(named)
            for o in scene.objects[1:]:
                rest |= covered(o)
            rest &= ~named
            if not named.any() or not rest.any():
                continue
            w = p[b, :, at, image].float()
            logs.append(((w[:, named].mean(1) + 1e-6) / (w[:, rest].mean(1) + 1e-6)).log())
        table.append(torch.stack(logs).mean(0).exp())

    print(f"{args.question} questions about the first object of {len(examples)} {args.split} scenes with two or "
          f"more objects: exact match {np.mean(right):.3f}; wrong answers that fit another object "
          f"{np.mean(wrong_other) if wrong_other else 0:.2f} of {len(wrong_other)}\n")
    heads = len(table[0])
    print("| layer | " + " | ".join(f"head {h}" for h in range(heads)) + " | max |")
    print("|---:|" + "---:|" * (heads + 1))
    for layer, sel in enumerate(table):
        print(f"| {layer} | " + " | ".join(f"{float(x):.2f}" for x in sel) + f" | {float(sel.max()):.2f} |")


if __name__ == "__main__":
    main()
