"""Understanding distillation (OneCAT stage 1): the ViT-encoder teacher's features line up with the student's
understanding-image positions (dropped edit references included), the loss pulls the student towards them, and
a recipe that distils without a teacher is a named error. The ConvNet teacher: its grid cells are the student's
tokens in stream order, it learns presence labels, saves and loads back, and mismatches are named errors."""

import dataclasses

import pytest
import torch

from omniar.modality import Modality
from omniar.omni.model import OmniConfig, OmniModel
from omniar.omni.teacher import (
    PRESENCE,
    ConvTeacher,
    distill_config,
    load_teacher,
    presence_batch,
    train_conv_teacher,
)
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
    batch, bits, feats, _ = student.batch(exs, teacher=teacher)
    und = batch.meta.modality == Modality.IMAGE_UND
    assert feats.shape == (int(und.sum()), 32)
    assert torch.allclose(feats, teacher.und_features(pixels).reshape(-1, 32), atol=1e-6)  # stream order
    # every edit reference dropped: its features leave with it
    student.config.cfg_dropout = 1.0
    batch, bits, feats, _ = student.batch(exs, generator=torch.Generator().manual_seed(0), teacher=teacher)
    assert feats.shape[0] == int((batch.meta.modality == Modality.IMAGE_UND).sum()) == 2 * 16
    with pytest.raises(ValueError, match="2 teacher features for 32"):
        student.loss(batch, bits, feats[:2])


def test_distillation_loss_trains_the_student_towards_the_teacher():
    teacher = tiny_teacher(tiny_model())
    student = student_for(teacher).train()
    batch, bits, feats, _ = student.batch(examples(), teacher=teacher)
    _, parts = student.loss(batch, bits)
    assert "distill" not in parts
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        batch, bits, feats, _ = student.batch(examples(), teacher=teacher)  # the images' features are in the graph
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


def test_conv_teacher_cells_are_the_understanding_tokens_in_stream_order():
    student = tiny_model()
    torch.manual_seed(3)
    teacher = ConvTeacher(student.image_size, student.patch_embed.grid()[0])
    student = OmniModel(distill_config(student.config, teacher), student.text, student.tokenizer)
    assert student.config.distill_dim == teacher.und_width == 128
    exs = [ex for ex in examples() if ex.task in ("caption", "vqa")]
    pixels = torch.stack([ex.image for ex in exs])
    fmap = teacher.feature_map(pixels)  # (B, C, g, g)
    batch, bits, feats, _ = student.batch(exs, teacher=teacher)
    assert feats.shape == (int((batch.meta.modality == Modality.IMAGE_UND).sum()), 128)
    # token r * g + c of image b is cell (r, c) of image b's map
    g = teacher.grid
    b, r, c = 1, 2, 3
    assert torch.allclose(feats[b * g * g + r * g + c], fmap[b, :, r, c] / teacher.scale)
    # computed channels-last (the speed), it is the plain layout's map to float rounding, handed on contiguous
    plain = teacher.net(pixels * 2 - 1)
    assert plain.is_contiguous() and fmap.is_contiguous() and torch.allclose(fmap, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"reads \(B, 3, 32, 32\) images, got \(1, 3, 48, 48\)"):
        teacher.und_features(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match="power of two"):
        ConvTeacher(64, 6)


def test_conv_teacher_learns_presence_and_round_trips(tmp_path):
    images, labels = presence_batch([0, 1, 2], 32)
    assert images.shape == (3, 3, 32, 32) and labels.shape == (3, len(PRESENCE))
    assert ((labels[:, :4].sum(1) >= 1) & (labels[:, 4:].sum(1) >= 1)).all()  # every scene has a shape and a colour
    fixed, fixed_labels = presence_batch(list(range(100, 132)), 32)

    def loss(m):
        with torch.no_grad():
            return torch.nn.functional.binary_cross_entropy_with_logits(m(fixed), fixed_labels).item()

    torch.manual_seed(0)
    before = loss(ConvTeacher(32, 4))
    teacher = train_conv_teacher(tmp_path / "t", 80, image_size=32, grid=4, progress=False, lr=3e-3)
    assert loss(teacher) < 0.7 * before
    assert teacher.scale.item() != 1.0 and not teacher.training
    back = load_teacher(tmp_path / "t" / "checkpoint")
    assert isinstance(back, ConvTeacher) and back.grid == 4
    assert torch.equal(back.und_features(fixed), teacher.und_features(fixed))
    vit = tiny_teacher(tiny_model())
    vit.save_pretrained(tmp_path / "vit")
    assert isinstance(load_teacher(tmp_path / "vit"), OmniModel)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_teacher(tmp_path)


def test_a_teacher_of_another_grid_is_a_named_error(tmp_path):
    student = tiny_model()
    teacher = ConvTeacher(student.image_size, student.patch_embed.grid()[0] * 2)
    student = OmniModel(distill_config(student.config, teacher), student.text, student.tokenizer)
    recipe = Recipe(tasks={"caption": 1.0}, steps=1, examples_per_step=2, distill=1.0)
    with pytest.raises(ValueError, match="8 x 8 feature grid for 4 x 4 understanding tokens"):
        train_omni(student, tmp_path, recipe, progress=False, teacher=teacher)
