"""Decoder post-training (omni/decoder_post.py): only the image decoder changes, it learns to turn the model's
redraws of the finest scale into the images, the result saves and loads, and misuse is named."""

import numpy as np
import pytest
import torch

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
    with pytest.raises(ValueError, match="must be >= 1"):
        DecoderPostTraining(steps=0)
    with pytest.raises(ValueError, match="decoder post-training needs fp32 weights"):
        post_train_decoder(tiny_model().decode_in(torch.bfloat16), tmp_path / "b", SMALL, progress=False)
    assert not (tmp_path / "k").exists() and not (tmp_path / "b").exists()


def test_command_line(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "m")
    main(["train", "decoder", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "post"), "--images", "6",
          "--steps", "3", "--batch", "4"])
    out = capsys.readouterr().out
    assert "decoder post-trained on 6 redrawn images (3 scales kept), 3 steps" in out
    before = OmniModel.from_pretrained(tmp_path / "m").state_dict()
    changed = changed_weights(before, OmniModel.from_pretrained(tmp_path / "post" / "checkpoint").state_dict())
    assert changed and all(k.startswith("tokenizer.decoder.") for k in changed)
