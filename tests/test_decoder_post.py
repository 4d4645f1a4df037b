"""Decoder post-training (omni/decoder_post.py): only the image decoder changes, it learns to turn the model's
redraws of the finest scale into the images, the result saves and loads, and misuse is named."""

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch

import omniar.omni.decoder_post as decoder_post
from omniar.checkpoint import read_tensors
from omniar.cli import main
from omniar.omni.decoder_post import DecoderPostTraining, post_train_decoder, redrawn_codes
from omniar.omni.model import OmniModel
from omniar.omni.train import shapeworld_example
from omniar.tokenizers.image import reconstruction_loss
from omniar.tokenizers.train_image import to_tensor
from tests.test_omni_model import tiny_model

SMALL = DecoderPostTraining(images=24, steps=40, batch=8, lr=3e-3, chunk=12)


def pairs(model, n=12, keep=3, seed=0):
    """(bits drawn, the images' own bits, images) for the first `n` training scenes, as post-training draws them."""
    examples = [shapeworld_example("t2i", i, model.image_size) for i in range(n)]
    images = to_tensor(np.stack([ex.image for ex in examples]))
    drawn, own = redrawn_codes(model, [ex.text for ex in examples], images, keep, [seed + i for i in range(n)])
    return drawn, own, images


def decoded_loss(model, bits, images):
    with torch.no_grad():
        return reconstruction_loss(model.tokenizer.decoder(model.tokenizer.quantizer.decode_bits(bits)) * 0.5 + 0.5,
                                   images).item()


def changed_weights(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_only_the_decoder_changes_and_it_learns_the_redraws(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drawn, own, images = pairs(model)
    loss_before = decoded_loss(model, drawn, images)
    summary = post_train_decoder(model, tmp_path / "post", SMALL, progress=False)
    changed = changed_weights(before, model.state_dict())
    assert changed and all(k.startswith("tokenizer.decoder.") for k in changed), changed
    assert summary["keep"] == 3 and summary["images"] == 24 and summary["loss_last"] < summary["loss_first"]
    # the redraws of images it trained on (the first 12 of its 24, the same seeds) now decode closer to the images
    assert decoded_loss(model, drawn, images) < 0.8 * loss_before
    assert not any(p.requires_grad for p in model.tokenizer.parameters()) and not model.tokenizer.training
    loaded = OmniModel.from_pretrained(tmp_path / "post" / "checkpoint")
    bits = model.tokenizer.encode(images)
    assert torch.equal(loaded.tokenizer.decode(bits), model.tokenizer.decode(bits))
    assert (tmp_path / "post" / "metrics.jsonl").read_text().count("\n") == 1  # 40 steps: logged at the end


def decoder_weights(directory):
    return {k: v for k, v in read_tensors(directory / "checkpoint" / "model.safetensors").items()
            if k.startswith("tokenizer.decoder.")}


def logged_losses(directory):
    return [(m["step"], m["loss"]) for m in map(json.loads, (directory / "metrics.jsonl").read_text().splitlines())]


def test_the_encoded_share_comes_from_the_image_pool_or_the_redrawn_images(tmp_path):
    """With `true_share` 1 the decoder trains on encoded images alone: the pool's renders (every colour-shape pair,
    the default source) or the redrawn training scenes themselves ("train"); each fits its own images best."""
    from omniar.tokenizers.train_image import shapeworld_images

    pool = to_tensor(shapeworld_images(12, "pool", tiny_model().image_size))
    train = to_tensor(np.stack([shapeworld_example("t2i", i, pool.shape[-1]).image for i in range(12)]))
    fitted = {}
    for source in ("pool", "train"):
        model = tiny_model()
        post_train_decoder(model, tmp_path / source, dataclasses.replace(
            SMALL, images=12, steps=60, true_share=1.0, true_source=source), progress=False)
        fitted[source] = {name: decoded_loss(model, model.tokenizer.encode(x), x)
                          for name, x in (("pool", pool), ("train", train))}
    assert fitted["pool"]["pool"] < fitted["train"]["pool"] and fitted["train"]["train"] < fitted["pool"]["train"]


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """Stopped while drawing (SIGINT), then drawing on with more images than the run asks, then stopped mid-training:
    the same decoder to the bit, the same losses, as one run never stopped."""
    small = dataclasses.replace(SMALL, steps=60)
    monkeypatch.setattr(decoder_post, "SAVE_STEPS", 20)
    whole = post_train_decoder(tiny_model(), tmp_path / "whole", small, progress=False)

    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C while the second chunk is drawn
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return redrawn_codes(*args, **kwargs)

    monkeypatch.setattr(decoder_post, "redrawn_codes", interrupted)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        post_train_decoder(tiny_model(), out, small, progress=False)
    assert json.loads((out / "draws" / "draws.json").read_text())["images"] == 24  # both chunks kept
    assert not (out / "checkpoint").exists()
    monkeypatch.undo()
    monkeypatch.setattr(decoder_post, "SAVE_STEPS", 20)
    # more images than drawn: the saved draws are reused and the rest drawn, as the whole run drew them
    post_train_decoder(tiny_model(), out, dataclasses.replace(small, images=36), progress=False, stop_at=0)
    assert json.loads((out / "draws" / "draws.json").read_text())["images"] == 36
    cut = post_train_decoder(tiny_model(), out, small, progress=False, stop_at=30)
    assert cut["steps"] == 30 and json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == 30
    resumed = post_train_decoder(tiny_model(), out, small, progress=False)
    assert resumed["steps"] == 60 and resumed["loss_first"] == whole["loss_first"]
    assert resumed["loss_last"] == whole["loss_last"]
    a, b = decoder_weights(tmp_path / "whole"), decoder_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_losses(out) == logged_losses(tmp_path / "whole") and len(logged_losses(out)) == 2  # 50, 60
    # a finished run asked again trains nothing and loads its decoder
    model = tiny_model()
    again = post_train_decoder(model, out, small, progress=False)
    assert again["steps"] == 60 and again["loss_last"] == whole["loss_last"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in a.items())


def test_redraws_keep_the_coarse_scales_and_follow_their_seeds():
    model = tiny_model()
    for keep in (1, 3):
        drawn, own, _ = pairs(model, n=4, keep=keep)
        again, _, _ = pairs(model, n=4, keep=keep)
        other, _, _ = pairs(model, n=4, keep=keep, seed=100)
        assert all(torch.equal(d, o) for d, o in zip(drawn[:keep], own[:keep]))  # the image's own coarse scales
        assert not all(torch.equal(d, o) for d, o in zip(drawn[keep:], own[keep:]))  # the rest drawn
        assert all(torch.equal(d, a) for d, a in zip(drawn, again))  # seeded
        assert not all(torch.equal(d, o) for d, o in zip(drawn[keep:], other[keep:]))


def test_misuse_is_named(tmp_path):
    with pytest.raises(ValueError, match="raster tokens"):
        post_train_decoder(tiny_model(raster=True), tmp_path / "r", SMALL, progress=False)
    model = tiny_model()
    for keep in (0, 4):
        with pytest.raises(ValueError, match=r"keep must lie in \[1, 3\]"):
            post_train_decoder(model, tmp_path / "k", DecoderPostTraining(images=2, steps=1, keep=keep),
                               progress=False)
    with pytest.raises(ValueError, match="true_share"):
        DecoderPostTraining(true_share=1.5)
    with pytest.raises(ValueError, match="unknown true_source 'test'; known: pool, train"):
        DecoderPostTraining(true_source="test")
    with pytest.raises(ValueError, match="must be >= 1"):
        DecoderPostTraining(steps=0)
    with pytest.raises(ValueError, match="decoder post-training needs fp32 weights"):
        post_train_decoder(tiny_model().decode_in(torch.bfloat16), tmp_path / "b", SMALL, progress=False)
    assert not (tmp_path / "k").exists() and not (tmp_path / "b").exists()
    # a run directory belongs to one model, seed and config
    post_train_decoder(tiny_model(), tmp_path / "o", SMALL, progress=False, stop_at=2)
    with pytest.raises(ValueError, match="cannot resume .*post-trained with another seed; use a new output"):
        post_train_decoder(tiny_model(), tmp_path / "o", SMALL, seed=1, progress=False)
    with pytest.raises(ValueError, match="post-trained with another model and config"):
        post_train_decoder(tiny_model(seed=1), tmp_path / "o", dataclasses.replace(SMALL, steps=41), progress=False)
    post_train_decoder(tiny_model(), tmp_path / "d", SMALL, progress=False, stop_at=0)  # draws only
    with pytest.raises(ValueError, match=r"cannot draw on from .*draws: its draws were made with another keep "
                                         r"\(3 here, 2 asked\)"):
        post_train_decoder(tiny_model(), tmp_path / "d", dataclasses.replace(SMALL, keep=2), progress=False)


def test_command_line(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "m")
    main(["train", "decoder", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "post"), "--images", "6",
          "--steps", "3", "--batch", "4"])
    out = capsys.readouterr().out
    assert "decoder post-trained on 6 redrawn images (3 scales kept), 3 steps" in out
    before = OmniModel.from_pretrained(tmp_path / "m").state_dict()
    changed = changed_weights(before, OmniModel.from_pretrained(tmp_path / "post" / "checkpoint").state_dict())
    assert changed and all(k.startswith("tokenizer.decoder.") for k in changed)
