"""Which image readers learn what shapes look like, and how fast? A presence probe on ShapeWorld scenes.

Each reader maps a rendered ShapeWorld sample (64 x 64, 1-3 objects) to 12 logits: is there a circle / square /
triangle / star, and is there an object of each of the 8 colours (binary cross-entropy, max-pooled over
positions). Scored on validation samples as exact match of all 4 shape bits ("shapes") and of all 8 colour bits
("colours").

Readers:
- `cnn`: a plain 4-layer 3x3 ConvNet, `ConvTeacher` (the reference: local filters, translation equivariant);
- `patch+decoder L`: omniar's understanding path - OneCAT's patch embedding (`PatchEmbed`) into our
  `OmniDecoder` with L layers, the image read bidirectionally, exactly as `onecat-tiny` reads it (same width,
  heads, FFN and initialisation);
- `... + distilled cnn`: the same, with understanding distillation from the trained `cnn` as the teacher (its
  8 x 8 feature map matched at the 64 image tokens through a linear head, MSE + 1 - cosine, weight 1), as
  `OmniModel.loss` does it.

    python bench/omni_shape_readers.py [--steps 1000] [--layers 1 2 4] [--distill-layers 4]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from omniar.model.config import DecoderConfig
from omniar.model.decoder import OmniDecoder
from omniar.model.patch_embed import PatchEmbed
from omniar.omni.model import omni_preset
from omniar.omni.teacher import PRESENCE, ConvTeacher, presence_batch, presence_scores
from omniar.stream.collate import collate
from omniar.stream.segment import Sample, Segment
from omniar.train.losses import feature_distillation

LABELS = len(PRESENCE)


class DecoderReader(nn.Module):
    """onecat-tiny's understanding path with `layers` decoder layers (one shared FFN: only image tokens here); with
    a `teacher`, its loss adds the distillation term."""

    def __init__(self, layers: int, teacher: ConvTeacher | None = None):
        super().__init__()
        self.teacher = [teacher.requires_grad_(False).eval()] if teacher is not None else []  # not a submodule
        preset = omni_preset("onecat-tiny")
        dec = {k: v for k, v in preset.decoder.items() if k not in ("experts", "routing", "scale_adapter_rank",
                                                                    "num_scales")}
        D = dec["hidden_size"]
        self.patch = PatchEmbed(D, preset.patch, preset.patch_channels, 64)
        self.decoder = OmniDecoder(DecoderConfig.from_dict(
            dict(dec, num_layers=layers, vocab_size=8, feature_dims={"image_und": D})))
        self.head = nn.Linear(D, LABELS)
        self.distill = nn.Linear(D, teacher.und_width) if teacher is not None else None

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.patch(images)
        batch = collate([Sample([Segment("image_und", features=f, grid=self.patch.grid())]) for f in feats])
        return self.decoder(**batch.model_inputs()).hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(images).amax(1))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(images)
        loss = F.binary_cross_entropy_with_logits(self.head(hidden.amax(1)), labels)
        if self.distill is not None:
            with torch.no_grad():
                target = self.teacher[0].und_features(images)
            loss = loss + feature_distillation(self.distill(hidden), target)
        return loss


def run(name: str, model: nn.Module, data, test, steps: int, lr: float, every: int, batch: int) -> list[tuple]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rows, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        i = torch.randint(0, len(data[0]), (batch,))
        if isinstance(model, DecoderReader):
            loss = model.loss(data[0][i], data[1][i])
        else:
            loss = F.binary_cross_entropy_with_logits(model(data[0][i]), data[1][i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                scores = presence_scores(torch.cat([model(x) for x in test[0].split(250)]), test[1])
            shapes, colours = scores["shapes"], scores["colours"]
            rows.append((name, step, shapes, colours, (time.perf_counter() - t0) / step))
            print(f"  {name} step {step}: shapes {shapes:.3f} colours {colours:.3f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--distill-layers", type=int, nargs="*", default=[4],
                    help="decoder depths also trained with the trained cnn distilled into them")
    ap.add_argument("--train", type=int, default=20_000, help="train samples (drawn with replacement)")
    ap.add_argument("--test", type=int, default=1_000, help="validation samples")
    args = ap.parse_args()
    if args.steps < 1 or args.every < 1 or min(args.layers + args.distill_layers, default=1) < 1:
        ap.error("--steps, --every, --layers and --distill-layers must be >= 1")
    data = presence_batch(list(range(args.train)), 64, "train")
    test = presence_batch(list(range(args.test)), 64, "val")
    torch.manual_seed(0)
    cnn = ConvTeacher(64, 8)
    rows = run("cnn", cnn, data, test, args.steps, args.lr, args.every, args.batch)
    with torch.no_grad():  # distillation targets of unit standard deviation, as train_conv_teacher sets them
        cnn.scale.fill_(cnn.feature_map(data[0][:512]).std())
    readers = [(f"patch+decoder {n}", n, None) for n in args.layers]
    readers += [(f"patch+decoder {n} + distilled cnn", n, cnn) for n in args.distill_layers]
    for name, layers, teacher in readers:
        torch.manual_seed(0)
        rows += run(name, DecoderReader(layers, teacher), data, test, args.steps, args.lr, args.every, args.batch)
    threads = torch.get_num_threads()
    print(f"\npresence of shapes / colours, exact match on {args.test} validation samples; batch {args.batch}, "
          f"AdamW lr {args.lr}, {threads} thread{'s' if threads > 1 else ''}\n")
    print("| reader | step | shapes | colours | s/step |\n|---|---:|---:|---:|---:|")
    for name, step, shapes, colours, sps in rows:
        print(f"| {name} | {step} | {shapes:.3f} | {colours:.3f} | {sps:.3f} |")


if __name__ == "__main__":
    main()
