"""The understanding-distillation teacher of OneCAT's stage 1, at ShapeWorld scale: a small ViT-encoder captioner.

OneCAT distils a ViT-based MLLM into its encoder-free decoder: while the student learns captions, its hidden
states at the image positions are pulled towards the teacher's vision features (feature MSE + cosine,
`OmniModel.loss`), which gives the patch-embedded path a head start. Our teacher is the `vit-teacher-tiny` preset:
the same patch embedding followed by a ViT encoder (`OmniConfig.vision_layers`), read by a small dense decoder,
trained on captions and questions of the same data (`train_teacher`). Its encoder outputs are the targets; the
student needs `OmniConfig.distill_dim` = the teacher's width (`distill_config`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omniar.omni.model import OmniConfig, OmniModel, omni_preset
from omniar.omni.train import Recipe, train_omni
from omniar.tokenizers.image import ImageTokenizer
from omniar.tokenizers.text import TextTokenizer

TEACHER_PRESET = "vit-teacher-tiny"
TEACHER_RECIPE = Recipe(tasks={"caption": 0.5, "vqa": 0.5}, lr=2e-3, min_lr_ratio=0.1, warmup=30)


def train_teacher(out: str | Path, text_tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer, steps: int,
                  seed: int = 0, progress: bool = True, examples_per_step: int = 16, **decoder_overrides) -> OmniModel:
    """Train the teacher captioner for `steps` (resumable: out/checkpoint); returns it frozen, in eval mode."""
    model = OmniModel(omni_preset(TEACHER_PRESET, **decoder_overrides), text_tokenizer, image_tokenizer)
    recipe = dataclasses.replace(TEACHER_RECIPE, steps=steps, examples_per_step=examples_per_step,
                                 warmup=min(TEACHER_RECIPE.warmup, max(1, steps // 10)))
    train_omni(model, out, recipe, seed=seed, progress=progress)
    return model.requires_grad_(False).eval()


def distill_config(config: OmniConfig, teacher: OmniModel) -> OmniConfig:
    """`config` with the distillation head sized for `teacher`'s features."""
    if teacher.vision is None:
        raise ValueError("the teacher has no vision encoder (OmniConfig.vision_layers = 0): nothing to distil")
    return dataclasses.replace(config, distill_dim=teacher.decoder.config.hidden_size)
