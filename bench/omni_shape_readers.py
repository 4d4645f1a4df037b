"""Which image readers learn what shapes look like, and how fast? A presence probe on ShapeWorld scenes.

Each reader maps a rendered scene (64 x 64, 1-3 objects) to 12 logits: is there a circle / square / triangle /
star, and is there an object of each of the 8 colours (binary cross-entropy, max-pooled over positions). Scored on
held-out scenes as exact match of all 4 shape bits ("shapes") and of all 8 colour bits ("colours").

Readers:
- `cnn`: a plain 4-layer 3x3 ConvNet (the reference: local filters, translation equivariant);
- `patch+decoder L`: omniar's understanding path - OneCAT's patch embedding (`PatchEmbed`) into our
  `OmniDecoder` with L layers, the image read bidirectionally, exactly as `onecat-tiny` reads it (same width,
  heads, FFN and initialisation).

    python bench/omni_shape_readers.py [--steps 1000] [--layers 1 2 4]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import sample_scene
from omniar.data.shapeworld.world import COLORS, SHAPES
from omniar.model.config import DecoderConfig
from omniar.model.decoder import OmniDecoder
from omniar.model.patch_embed import PatchEmbed
from omniar.omni.model import as_images, omni_preset
from omniar.stream.collate import collate
from omniar.stream.segment import Sample, Segment

LABELS = len(SHAPES) + len(COLORS)


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n rendered scenes (n, 3, 64, 64) in [0, 1] and their presence labels (n, 12)."""
    rng, colors = random.Random(seed), list(COLORS)
    images, labels = [], torch.zeros(n, LABELS)
    for i in range(n):
        scene = sample_scene(rng)
        images.append(render(scene, 64))
        for o in scene.objects:
            labels[i, SHAPES.index(o.shape)] = labels[i, len(SHAPES) + colors.index(o.color)] = 1
    return as_images(images, 64), labels


class ConvReader(nn.Module):
    def __init__(self):
        super().__init__()
        widths = (3, 32, 64, 128, 128)
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.net, self.head = nn.Sequential(*layers), nn.Linear(widths[-1], LABELS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(images * 2 - 1).amax((2, 3)))


class DecoderReader(nn.Module):
    """onecat-tiny's understanding path with `layers` decoder layers (one shared FFN: only image tokens here)."""

    def __init__(self, layers: int):
        super().__init__()
        preset = omni_preset("onecat-tiny")
        dec = {k: v for k, v in preset.decoder.items() if k not in ("experts", "routing", "scale_adapter_rank",
                                                                    "num_scales")}
        D = dec["hidden_size"]
        self.patch = PatchEmbed(D, preset.patch, preset.patch_channels, 64)
        self.decoder = OmniDecoder(DecoderConfig.from_dict(
            dict(dec, num_layers=layers, vocab_size=8, feature_dims={"image_und": D})))
        self.head = nn.Linear(D, LABELS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.patch(images)
        batch = collate([Sample([Segment("image_und", features=f, grid=self.patch.grid())]) for f in feats])
        hidden = self.decoder(**batch.model_inputs()).hidden
        return self.head(hidden.amax(1))


def run(name: str, model: nn.Module, data, test, steps: int, lr: float, every: int, batch: int) -> list[tuple]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rows, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        i = torch.randint(0, len(data[0]), (batch,))
        loss = F.binary_cross_entropy_with_logits(model(data[0][i]), data[1][i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                pred = torch.cat([model(x) for x in test[0].split(250)]) > 0
            right = pred == test[1].bool()
            shapes = right[:, :len(SHAPES)].all(1).float().mean().item()
            colours = right[:, len(SHAPES):].all(1).float().mean().item()
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
    ap.add_argument("--train", type=int, default=20_000, help="train scenes (drawn with replacement)")
    ap.add_argument("--test", type=int, default=1_000)
    args = ap.parse_args()
    if args.steps < 1 or args.every < 1 or min(args.layers) < 1:
        ap.error("--steps, --every and --layers must be >= 1")
    data, test = scenes(args.train, seed=1), scenes(args.test, seed=2)
    readers = [("cnn", ConvReader)] + [(f"patch+decoder {n}", lambda n=n: DecoderReader(n)) for n in args.layers]
    rows = []
    for name, make in readers:
        torch.manual_seed(0)
        rows += run(name, make(), data, test, args.steps, args.lr, args.every, args.batch)
    threads = torch.get_num_threads()
    print(f"\npresence of shapes / colours, exact match on {args.test} held-out scenes; batch {args.batch}, "
          f"AdamW lr {args.lr}, {threads} thread{'s' if threads > 1 else ''}\n")
    print("| reader | step | shapes | colours | s/step |\n|---|---:|---:|---:|---:|")
    for name, step, shapes, colours, sps in rows:
        print(f"| {name} | {step} | {shapes:.3f} | {colours:.3f} | {sps:.3f} |")


if __name__ == "__main__":
    main()
