"""The understanding-distillation teachers of OneCAT's stage 1, at ShapeWorld scale.

OneCAT distils a ViT-based MLLM into its encoder-free decoder: while the student learns captions, its hidden
states at the image positions are pulled towards the teacher's vision features (feature MSE + cosine,
`OmniModel.loss`), which gives the patch-embedded path a head start. Two teachers, each with `und_features(images)
-> (B, T, width)` (one vector per understanding token, row-major) and `und_width`:

- `vit`: OneCAT's kind, the `vit-teacher-tiny` preset: the same patch embedding followed by a ViT encoder
  (`OmniConfig.vision_layers`), read by a small dense decoder, trained on captions and questions of the same data
  (`train_teacher`). Its encoder outputs are the targets.
- `conv`: `ConvTeacher`, a plain ConvNet trained to say which shapes and colours a scene holds
  (`train_conv_teacher`); its last feature map, one cell per understanding token, is the target. A ConvNet learns
  what a shape looks like in ~1,000 steps where attention over patches does not (BENCHMARKS.md, "Who learns shapes
  fast"), and distilled into the student's image positions it gives them that knowledge.

The student needs `OmniConfig.distill_dim` = the teacher's width (`distill_config`); `load_teacher` reads either
kind back.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniar.checkpoint import WEIGHTS_NAME, load_state_strict, read_config, read_tensors, save_checkpoint
from omniar.data.shapeworld.world import COLORS, SHAPES
from omniar.omni.model import MODEL_TYPE, OmniConfig, OmniModel, as_images, omni_preset
from omniar.omni.train import Recipe, train_omni
from omniar.tokenizers.image import ImageTokenizer
from omniar.tokenizers.text import TextTokenizer

TEACHERS = ("conv", "vit")
TEACHER_PRESET = "vit-teacher-tiny"
CONV_TEACHER_TYPE = "omniar-conv-teacher"
PRESENCE = (*SHAPES, *COLORS)  # the ConvTeacher's labels: is there a circle, ..., a red object, ...
TEACHER_RECIPE = Recipe(tasks={"caption": 0.5, "vqa": 0.5}, lr=2e-3, min_lr_ratio=0.1, warmup=30)


def train_teacher(out: str | Path, text_tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer, steps: int,
                  seed: int = 0, progress: bool = True, examples_per_step: int = 16, **decoder_overrides) -> OmniModel:
    """Train the teacher captioner for `steps` (resumable: out/checkpoint); returns it frozen, in eval mode."""
    model = OmniModel(omni_preset(TEACHER_PRESET, **decoder_overrides), text_tokenizer, image_tokenizer)
    recipe = dataclasses.replace(TEACHER_RECIPE, steps=steps, examples_per_step=examples_per_step,
                                 warmup=min(TEACHER_RECIPE.warmup, max(1, steps // 10)))
    train_omni(model, out, recipe, seed=seed, progress=progress)
    return model.requires_grad_(False).eval()


def distill_config(config: OmniConfig, teacher: OmniModel | ConvTeacher) -> OmniConfig:
    """`config` with the distillation head sized for `teacher`'s features."""
    if isinstance(teacher, OmniModel) and teacher.vision is None:
        raise ValueError("the teacher has no vision encoder (OmniConfig.vision_layers = 0): nothing to distil")
    return dataclasses.replace(config, distill_dim=teacher.und_width)


class ConvTeacher(nn.Module):
    """A plain ConvNet (3 x 3 convolutions, ReLU, 2 x 2 max-pooling down to the token grid) that reads which of
    the shapes and colours of `PRESENCE` a scene holds (max over the grid, then a linear head). Its feature map,
    divided by `scale` (their standard deviation on training scenes, set after training), gives the targets:
    cell (r, c) for understanding token r * grid + c."""

    def __init__(self, image_size: int = 64, grid: int = 8):
        super().__init__()
        pools = math.log2(image_size / grid) if grid > 0 else -1
        if pools < 0 or pools != int(pools):
            raise ValueError(f"image_size / grid must be a power of two, got {image_size} / {grid}")
        self.image_size, self.grid = image_size, grid
        widths = (3, *(min(32 << i, 128) for i in range(int(pools) + 1)))
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1), nn.ReLU()]
            if i < pools:
                layers.append(nn.MaxPool2d(2))
        self.net, self.head = nn.Sequential(*layers), nn.Linear(widths[-1], len(PRESENCE))
        self.register_buffer("scale", torch.ones(()))

    @property
    def und_width(self) -> int:
        return self.head.in_features

    def feature_map(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) in [0, 1], S = image_size -> (B, width, grid, grid)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (
                3, self.image_size, self.image_size):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"the teacher reads (B, 3, {self.image_size}, {self.image_size}) images, got {shape}")
        # channels-last: the same numbers (to float rounding) in ~0.65x the time on the CPU, where oneDNN's
        # convolutions and max-pooling run on it without reorders (BENCHMARKS.md "Demo")
        x = (images * 2 - 1).contiguous(memory_format=torch.channels_last)
        return self.net(x).contiguous()

    def forward(self, images: Tensor) -> Tensor:
        """Presence logits (B, len(PRESENCE))."""
        return self.head(self.feature_map(images).amax((2, 3)))

    def und_features(self, images: Tensor) -> Tensor:
        """(B, grid * grid, width): the distillation targets of the understanding tokens, in stream order."""
        return self.feature_map(images).flatten(2).transpose(1, 2) / self.scale

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_checkpoint(directory, {"model_type": CONV_TEACHER_TYPE, "image_size": self.image_size,
                                           "grid": self.grid}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ConvTeacher:
        directory = Path(directory)
        d = read_config(directory, CONV_TEACHER_TYPE, "convolutional teacher (ConvTeacher)")
        model = cls(int(d["image_size"]), int(d["grid"]))
        load_state_strict(model, read_tensors(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))
        return model.eval()


def presence_batch(indices: list[int], side: int, split: str = "train") -> tuple[Tensor, Tensor]:
    """ShapeWorld samples `indices` of `split`: their images (B, 3, side, side) and presence labels (B, 12)."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    images, labels = [], torch.zeros(len(indices), len(PRESENCE))
    for row, i in enumerate(indices):
        scene = Scene.from_dict(make_sample(split, i)["scene"])
        images.append(render(scene, side))
        for o in scene.objects:
            labels[row, PRESENCE.index(o.shape)] = labels[row, PRESENCE.index(o.color)] = 1
    return as_images(images, side), labels


def presence_scores(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Exact match of all shape bits and of all colour bits of presence `logits` (N, 12) against `labels`."""
    right = (logits > 0) == labels.bool()
    return {"shapes": right[:, :len(SHAPES)].all(1).float().mean().item(),
            "colours": right[:, len(SHAPES):].all(1).float().mean().item()}


@torch.no_grad()
def presence_accuracy(teacher: ConvTeacher, num: int = 500, split: str = "val") -> dict[str, float]:
    """`presence_scores` of `teacher` on the first `num` samples of `split`."""
    images, labels = presence_batch(list(range(num)), teacher.image_size, split)
    return presence_scores(torch.cat([teacher.eval()(x) for x in images.split(250)]), labels)


def train_conv_teacher(out: str | Path, steps: int, image_size: int = 64, grid: int = 8, seed: int = 0,
                       batch: int = 16, lr: float = 1e-3, progress: bool = True, pool: int = 1_000_000) -> ConvTeacher:
    """Train a `ConvTeacher` on presence labels of ShapeWorld train scenes (binary cross-entropy; resumable:
    out/checkpoint), set its feature scale, and return it frozen, in eval mode."""
    from omniar.train.trainer import TrainConfig, Trainer

    torch.manual_seed(seed)
    model = ConvTeacher(image_size, grid)

    def batch_for_step(step: int) -> tuple[Tensor, Tensor]:
        rng = random.Random(f"conv-teacher/{seed}/{step}")
        return presence_batch([rng.randrange(pool) for _ in range(batch)], image_size)

    config = TrainConfig(steps=steps, lr=lr, warmup=min(50, max(1, steps // 10)), weight_decay=0.01,
                         betas=(0.9, 0.999), min_lr_ratio=1.0)
    trainer = Trainer(model, batch_for_step, config, out_dir=out, progress=progress,
                      loss_fn=lambda m, b: (F.binary_cross_entropy_with_logits(m(b[0]), b[1]), {}))
    if (Path(out) / "checkpoint" / "trainer.json").is_file():
        trainer.resume(Path(out) / "checkpoint")
    trainer.fit()
    images = torch.cat([batch_for_step(steps)[0], batch_for_step(steps + 1)[0]])  # batches it has not trained on
    with torch.no_grad():
        model.scale.fill_(model.feature_map(images).std().clamp(min=1e-6))
    model.save_pretrained(Path(out) / "checkpoint")
    return model.requires_grad_(False).eval()


def load_teacher(directory: str | Path) -> OmniModel | ConvTeacher:
    """Either kind of teacher from its checkpoint directory."""
    try:
        read_config(directory, CONV_TEACHER_TYPE, "convolutional teacher (ConvTeacher)")
    except ValueError:
        read_config(directory, MODEL_TYPE, "distillation teacher (ConvTeacher or vit-teacher-tiny OmniModel)")
        return OmniModel.from_pretrained(directory).requires_grad_(False)
    return ConvTeacher.from_pretrained(directory).requires_grad_(False)
