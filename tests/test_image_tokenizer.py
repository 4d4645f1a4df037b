"""The multi-scale bitwise image tokenizer: shapes, determinism, save/load, self-correction, resume, errors."""

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch

from omniar.checkpoint import TRAINER_NAME
from omniar.omni.teacher import ConvTeacher
from omniar.tokenizers import train_image
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, reconstruction_loss
from omniar.tokenizers.train_image import (
    evaluate_image_tokenizer,
    shapeworld_images,
    to_tensor,
    train_image_tokenizer,
)

SMALL = dict(channels=16, bits=8)


@pytest.fixture(scope="module")
def images():
    return to_tensor(shapeworld_images(6))


def test_encode_decode_shapes_and_determinism(images):
    tok = ImageTokenizer(ImageTokenizerConfig(**SMALL)).eval()
    bits = tok.encode(images)
    assert [tuple(b.shape) for b in bits] == [(6, 8, s, s) for s in (1, 2, 3, 4, 6, 8)]
    assert all(b.dtype == torch.bool for b in bits)
    assert tok.config.tokens_per_image == 130
    out = tok.decode(bits)
    assert out.shape == (6, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
    assert all(torch.equal(a, b) for a, b in zip(bits, tok.encode(images)))
    inputs = tok.ar_inputs(bits)
    assert [tuple(x.shape) for x in inputs] == [(6, 8, s, s) for s in (2, 3, 4, 6, 8)]


def test_bits_are_the_sign_of_the_latent_less_the_ar_input(images):
    """What `edit_reference` relies on: scale k's bits = sign(latent at scale k - the AR input of scale k)."""
    tok = ImageTokenizer(ImageTokenizerConfig(**SMALL)).eval()
    bits, latents = tok.encode(images), tok.latents(images)
    assert [tuple(f.shape) for f in latents] == [(6, 8, s, s) for s in (1, 2, 3, 4, 6, 8)]
    contexts = [torch.zeros_like(latents[0])] + tok.ar_inputs(bits)
    for b, f, c in zip(bits, latents, contexts):
        r = f - c
        assert torch.equal(b[r.abs() > 1e-5], (r >= 0)[r.abs() > 1e-5])


def test_raster_schedule_is_one_scale(images):
    tok = ImageTokenizer(ImageTokenizerConfig(scales=(8,), **SMALL)).eval()
    bits = tok.encode(images)
    assert len(bits) == 1 and bits[0].shape == (6, 8, 8, 8) and tok.ar_inputs(bits) == []


def test_self_correction_is_the_clean_path_at_p0_and_differs_above(images):
    torch.manual_seed(0)
    tok = ImageTokenizer(ImageTokenizerConfig(**SMALL)).eval()
    clean = tok.encode(images)
    inputs, targets = tok.self_correct(images, torch.zeros(6))
    assert all(torch.equal(a, b) for a, b in zip(targets, clean))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(inputs, tok.ar_inputs(clean)))
    assert torch.allclose(tok.decode(targets), tok.decode(clean))
    g = torch.Generator().manual_seed(1)
    noisy_inputs, noisy_targets = tok.self_correct(images, torch.full((6,), 0.3), generator=g)
    assert torch.equal(noisy_targets[0], clean[0])  # nothing before the first scale to corrupt
    assert any(not torch.equal(a, b) for a, b in zip(noisy_targets[1:], clean[1:]))  # later targets corrected
    assert not torch.allclose(noisy_inputs[-1], inputs[-1])


def test_save_load_round_trip(images, tmp_path):
    tok = ImageTokenizer(ImageTokenizerConfig(**SMALL)).eval()
    tok.save_pretrained(tmp_path)
    again = ImageTokenizer.from_pretrained(tmp_path)
    bits = tok.encode(images)
    assert torch.equal(tok.decode(bits), again.decode(bits))


@pytest.mark.parametrize("aligned", [False, True])
def test_resume_equals_uninterrupted(tmp_path, aligned):
    imgs = shapeworld_images(12)
    cfg = ImageTokenizerConfig(**SMALL, align_width=128 if aligned else 0)
    kw = dict(align_teacher=ConvTeacher(), align_weight=1.0) if aligned else {}
    straight = train_image_tokenizer(tmp_path / "a", imgs, cfg, steps=4, batch=4, progress=False, **kw)
    train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False, stop_at=2, **kw)
    resumed = train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False, **kw)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_ctrl_c_saves_the_step_reached_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    imgs = shapeworld_images(12)
    cfg = ImageTokenizerConfig(**SMALL)
    straight = train_image_tokenizer(tmp_path / "a", imgs, cfg, steps=4, batch=4, progress=False)
    calls = []

    def loss_then_ctrl_c(*args):  # Ctrl-C while step 2 (of 0..3) is computed
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return reconstruction_loss(*args)

    monkeypatch.setattr(train_image, "reconstruction_loss", loss_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False)
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer.json").read_text())["step"] == 2
    monkeypatch.undo()
    resumed = train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 3, 32, 32), "reads 64x64 images"),
    (torch.rand(2, 1, 64, 64), r"\(B, 3, 64, 64\)"),
    (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "float"),
])
def test_bad_images_are_named(bad, message):
    tok = ImageTokenizer(ImageTokenizerConfig(**SMALL))
    with pytest.raises(ValueError, match=message):
        tok.encode(bad)


def test_bad_bits_and_configs_are_named():
    tok = ImageTokenizer(ImageTokenizerConfig(**SMALL))
    with pytest.raises(ValueError, match="bits for 6 scales"):
        tok.decode([torch.zeros(1, 8, 1, 1, dtype=torch.bool)])
    with pytest.raises(ValueError, match="bits of scale 2"):
        tok.decode([torch.zeros(1, 8, s, s, dtype=torch.bool) for s in (1, 3, 3, 4, 6, 8)])
    with pytest.raises(ValueError, match="last scale must equal the latent side 8"):
        ImageTokenizerConfig(scales=(1, 2, 4))
    with pytest.raises(ValueError, match="unknown config key"):
        ImageTokenizerConfig.from_dict({"bitz": 3})
    assert np.isfinite(tok.quantizer.gain.detach().numpy()).all()


def test_cli_trains_and_reports(tmp_path, capsys):
    import json

    from omniar.cli import main

    main(["tokenizer", "train", "image", "--out", str(tmp_path), "--steps", "2", "--batch", "4", "--bits", "8",
          "--num-images", "8", "--eval-images", "4", "--rate-weight", "0.1", "--prior-width", "16"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= {"psnr", "parse_match", "bit_mean_min", "bit_mean_max", "tokens_per_image", "rate_per_scale"}
    assert (tmp_path / "reconstructions.png").is_file() and (tmp_path / "checkpoint" / "trainer.json").is_file()
    assert "tokenizer:" in capsys.readouterr().out


def test_cli_aligns_the_latent_to_a_teacher(tmp_path):
    import json

    from omniar.cli import main

    ConvTeacher().save_pretrained(tmp_path / "teacher")
    main(["tokenizer", "train", "image", "--out", str(tmp_path / "tok"), "--steps", "2", "--batch", "4", "--bits",
          "8", "--num-images", "8", "--eval-images", "4", "--align-teacher", str(tmp_path / "teacher")])
    assert json.loads((tmp_path / "tok" / "checkpoint" / "config.json").read_text())["align_width"] == 128
    assert "align" in json.loads((tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()[-1])
    with pytest.raises(SystemExit, match="--align-weight needs --align-teacher"):
        main(["tokenizer", "train", "image", "--out", str(tmp_path / "x"), "--steps", "1", "--align-weight", "1"])


def test_cli_defaults_and_optimizers_are_the_trainers(tmp_path, monkeypatch):
    """The CLI writes its choices out (its --help stays free of torch): every optimizer the trainer knows is a
    choice, and the default batch and optimizer are the trainer's."""
    import inspect

    from omniar.cli import main

    seen = []

    class Stop(Exception):
        pass

    def fake(out, images, config, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(train_image, "train_image_tokenizer", fake)
    monkeypatch.setattr(train_image, "shapeworld_images", lambda n: np.zeros((2, 64, 64, 3), np.uint8))
    args = ["tokenizer", "train", "image", "--out", str(tmp_path)]
    with pytest.raises(Stop):
        main(args)
    defaults = {k: p.default for k, p in inspect.signature(train_image_tokenizer).parameters.items()}
    assert seen[-1]["batch"] == train_image.BATCH == defaults["batch"]
    assert seen[-1]["optimizer"] == defaults["optimizer"]
    assert (seen[-1]["steps"], seen[-1]["lr"]) == (defaults["steps"], defaults["lr"])
    for name in train_image.OPTIMIZERS:
        with pytest.raises(Stop):
            main(args + ["--optimizer", name, "--batch", "3"])
        assert (seen[-1]["optimizer"], seen[-1]["batch"]) == (name, 3)


def test_bit_prior_rate_falls_when_trained_and_round_trips(tmp_path):
    imgs = shapeworld_images(16)
    cfg = ImageTokenizerConfig(prior_width=16, **SMALL)
    x = to_tensor(imgs)
    torch.manual_seed(0)
    before = ImageTokenizer(cfg).eval()  # the training run's starting point (it seeds 0 too)
    # (the rate term's recipe was measured under Adam, BENCHMARKS.md "The rate term")
    tok = train_image_tokenizer(tmp_path, imgs, cfg, steps=60, batch=4, rate_weight=5.0, progress=False,
                                optimizer="adam")
    rate0, rate1 = before.bit_rate(before.encode(x)), tok.bit_rate(tok.encode(x))
    assert len(rate1) == 6 and sum(rate1) < 0.85 * sum(rate0)  # untrained: ~ln 2 = 0.69 nats per bit
    again = ImageTokenizer.from_pretrained(tmp_path / "checkpoint")
    assert again.bit_rate(again.encode(x)) == rate1  # the prior is part of the checkpoint
    bits = tok.encode(x)  # contexts: the AR inputs are f_hat before each scale, downsampled
    ctx = tok.quantizer.contexts(bits)
    assert not ctx[0].any() and all(torch.allclose(tok.quantizer.down(c, s), a) for c, s, a in
                                    zip(ctx[1:], cfg.scales[1:], tok.ar_inputs(bits)))
    report = evaluate_image_tokenizer(tok, 4)
    assert len(report["rate_per_scale"]) == 6


def test_rate_weight_and_prior_go_together(tmp_path):
    imgs = shapeworld_images(4)
    with pytest.raises(ValueError, match="needs a bit prior"):
        train_image_tokenizer(tmp_path, imgs, ImageTokenizerConfig(**SMALL), steps=1, rate_weight=0.1, progress=False)
    with pytest.raises(ValueError, match="needs a bit prior"):
        train_image_tokenizer(tmp_path, imgs, ImageTokenizerConfig(prior_width=16, **SMALL), steps=1, progress=False)
    with pytest.raises(ValueError, match="has no bit prior"):
        ImageTokenizer(ImageTokenizerConfig(**SMALL)).bit_rate([])


def test_semantic_alignment_pulls_the_latent_towards_the_teacher_and_round_trips(tmp_path):
    imgs = shapeworld_images(16)
    x = to_tensor(imgs)
    torch.manual_seed(1)
    teacher = ConvTeacher().eval()  # untrained: its features still differ from cell to cell
    features = teacher.feature_map(x).detach()
    cfg = ImageTokenizerConfig(align_width=teacher.und_width, **SMALL)

    def alignment(tok):
        with torch.no_grad():
            return tok.alignment(tok.encoder(x * 2 - 1), features).item()

    torch.manual_seed(0)
    before = ImageTokenizer(cfg).eval()  # the training run's starting point (it seeds 0 too)
    tok = train_image_tokenizer(tmp_path / "aligned", imgs, cfg, steps=40, batch=4, align_teacher=teacher,
                                align_weight=5.0, progress=False)
    assert alignment(tok) < 0.8 * alignment(before)  # 0.93 -> 0.70 when written
    plain = ImageTokenizer(dataclasses.replace(cfg, align_width=0))
    assert plain.align is None and "align" not in plain(x)[2]
    again = ImageTokenizer.from_pretrained(tmp_path / "aligned" / "checkpoint")
    assert alignment(again) == alignment(tok)  # the head is part of the checkpoint
    assert torch.equal(again.decode(again.encode(x)), tok.decode(tok.encode(x)))


def test_alignment_needs_weight_width_and_teacher_together(tmp_path):
    imgs = shapeworld_images(4)
    teacher = ConvTeacher()
    with pytest.raises(ValueError, match="semantic alignment needs all three"):
        train_image_tokenizer(tmp_path, imgs, ImageTokenizerConfig(**SMALL), steps=1, align_teacher=teacher,
                              align_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="semantic alignment needs all three"):
        train_image_tokenizer(tmp_path, imgs, ImageTokenizerConfig(align_width=128, **SMALL), steps=1,
                              align_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="semantic alignment needs all three"):
        train_image_tokenizer(tmp_path, imgs, ImageTokenizerConfig(align_width=128, **SMALL), steps=1,
                              align_teacher=teacher, progress=False)
    tok = ImageTokenizer(ImageTokenizerConfig(align_width=128, **SMALL))
    latent = torch.zeros(2, 8, 8, 8)
    with pytest.raises(ValueError, match=r"alignment features must be \(2, 128, g, g\) with g >= 8"):
        tok.alignment(latent, torch.zeros(2, 64, 8, 8))
    with pytest.raises(ValueError, match="g >= 8"):
        tok.alignment(latent, torch.zeros(2, 128, 4, 4))
    with pytest.raises(ValueError, match="has no alignment head"):
        ImageTokenizer(ImageTokenizerConfig(**SMALL)).alignment(latent, torch.zeros(2, 128, 8, 8))
    with pytest.raises(ValueError, match=r"align_sizes must lie in \[1, 8\]"):
        ImageTokenizerConfig(align_width=16, align_sizes=(2, 16))


def test_muon_trains_the_hidden_filters_and_adam_the_rest():
    """The default optimizer: Muon for every k x k filter but the pixel-facing first and last convolutions, Adam
    (Muon's AdamW groups, no decay) for those, the 1 x 1 projections, norms, biases and gains."""
    model = ImageTokenizer(ImageTokenizerConfig(**SMALL, align_width=32))
    opt = train_image._optimizer(model, "muon", 1e-3)
    muon_group, adam_group = opt.param_groups
    assert muon_group["muon"] and muon_group["flatten"] and not adam_group["muon"]
    hidden = {id(p) for p in muon_group["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    assert "encoder.net.0.weight" not in names and "decoder.net.11.weight" not in names
    assert "encoder.net.9.weight" not in names and "align.weight" not in names  # 1 x 1
    assert {"encoder.net.1.body.2.weight", "decoder.net.0.weight", "quantizer.refine.weight"} <= names
    assert all(p.dim() == 4 for p in muon_group["params"])
    assert len(hidden) + len(adam_group["params"]) == len(list(model.parameters()))
    assert isinstance(train_image._optimizer(model, "adam", 1e-3), torch.optim.Adam)


def test_a_run_resumes_only_with_its_own_optimizer_and_batch(tmp_path):
    imgs = shapeworld_images(12)
    cfg = ImageTokenizerConfig(**SMALL)
    straight = train_image_tokenizer(tmp_path / "a", imgs, cfg, steps=4, batch=4, progress=False, optimizer="adam")
    train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False, stop_at=2, optimizer="adam")
    with pytest.raises(ValueError, match="trained with optimizer 'adam'; resume it with optimizer='adam'"):
        train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False)
    with pytest.raises(ValueError, match="trained with batch 4; resume it with batch=4"):
        train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=6, progress=False, optimizer="adam")
    resumed = train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False, optimizer="adam")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    meta_path = tmp_path / "b" / "checkpoint" / TRAINER_NAME  # from before the batch was recorded: 32 a step
    meta = json.loads(meta_path.read_text())
    del meta["batch"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained with batch 32; resume it with batch=32"):
        train_image_tokenizer(tmp_path / "b", imgs, cfg, steps=4, batch=4, progress=False, optimizer="adam")
    muon = train_image_tokenizer(tmp_path / "c", imgs, cfg, steps=4, batch=4, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(), muon.state_dict().values()))
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; known: muon, adam"):
        train_image_tokenizer(tmp_path / "d", imgs, cfg, steps=4, batch=4, progress=False, optimizer="sgd")
