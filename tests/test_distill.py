"""Understanding distillation (OneCAT stage 1): the ViT-encoder teacher's features line up with the student's
understanding-image positions (dropped edit references included), the loss pulls the student towards them, and
a recipe that distils without a teacher is a named error."""

import dataclasses

import pytest
import torch

from omniar.modality import Modality
from omniar.omni.model import OmniConfig, OmniModel
from omniar.omni.teacher import distill_config
from omniar.omni.train import Recipe, train_omni

from .test_omni_model import examples, tiny_model


def tiny_teacher(student: OmniModel) -> OmniModel:
    torch.manual_seed(1)
    config = OmniConfig(decoder=dict(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64),
                        vision_layers=1, patch=4, patch_channels=8)
    return OmniModel(config, student.text, student.tokenizer).eval()


def student_for(teacher: OmniModel) -> OmniModel:
    base = tiny_model()
    torch.manual_seed(2)
    return OmniModel(distill_config(base.config, teacher), base.text, base.tokenizer)


def test_teacher_features_follow_the_understanding_positions():
    teacher = tiny_teacher(tiny_model())
    student = student_for(teacher)
    exs = examples()
    pixels = torch.stack([ex.source if ex.task == "edit" else ex.image for ex in exs if ex.task in
                          ("caption", "vqa", "edit")])
    assert not torch.allclose(teacher.und_features(pixels), teacher.patch_embed(pixels))  # the ViT is applied
    batch, bits, feats = student.batch(exs, teacher=teacher)
    und = batch.meta.modality == Modality.IMAGE_UND
    assert feats.shape == (int(und.sum()), 32)
    assert torch.allclose(feats, teacher.und_features(pixels).reshape(-1, 32), atol=1e-6)  # stream order
    # every edit reference dropped: its features leave with it
    student.config.cfg_dropout = 1.0
    batch, bits, feats = student.batch(exs, generator=torch.Generator().manual_seed(0), teacher=teacher)
    assert feats.shape[0] == int((batch.meta.modality == Modality.IMAGE_UND).sum()) == 2 * 16
    with pytest.raises(ValueError, match="2 teacher features for 32"):
        student.loss(batch, bits, feats[:2])


def test_distillation_loss_trains_the_student_towards_the_teacher():
    teacher = tiny_teacher(tiny_model())
    student = student_for(teacher).train()
    batch, bits, feats = student.batch(examples(), teacher=teacher)
    _, parts = student.loss(batch, bits)
    assert "distill" not in parts
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        batch, bits, feats = student.batch(examples(), teacher=teacher)  # the images' features are in the graph
        loss, parts = student.loss(batch, bits, feats, distill_weight=1.0)
        first = parts["distill"] if first is None else first
        opt.zero_grad()
        loss.backward()
        assert student.patch_embed.conv.weight.grad.abs().sum() > 0
        opt.step()
    assert parts["distill"] < 0.7 * first
    with pytest.raises(ValueError, match="distill_dim"):
        tiny_model().loss(batch, bits, feats)


def test_distilling_needs_a_teacher_and_a_teacher_needs_a_vision_encoder(tmp_path):
    with pytest.raises(ValueError, match="give a teacher"):
        train_omni(tiny_model(), tmp_path, Recipe(tasks={"caption": 1.0}, steps=1, distill=1.0), progress=False)
    with pytest.raises(ValueError, match="no vision encoder"):
        distill_config(tiny_model().config, tiny_model())
    teacher = tiny_teacher(tiny_model())
    student = student_for(teacher)
    recipe = dataclasses.replace(Recipe(tasks={"caption": 0.5, "vqa": 0.5}, steps=2, examples_per_step=4, warmup=1),
                                 distill=1.0)
    log = train_omni(student, tmp_path, recipe, progress=False, teacher=teacher)
    assert log and "distill" in log[-1]
