"""Self-training (omni/self_train.py): the best candidate of each prompt by the caption score and the top share of each
prompt kind are kept, only the generation side learns (the captioner that grades stays exactly what it was), it learns
the kept drawings, a stopped run goes on to the same weights, and misuse is named."""

import dataclasses
import fnmatch
import json
import os
import signal

import numpy as np
import pytest
import torch

import omniar.omni.self_train as self_train_module
from omniar.checkpoint import read_tensors
from omniar.cli import main
from omniar.data.shapeworld.language import KINDS
from omniar.generation.sampling import SamplingParams
from omniar.omni.generate import generate_images
from omniar.omni.model import Example, OmniModel
from omniar.omni.rerank import caption_scores
from omniar.omni.self_train import GENERATION_SIDE, SelfTraining, choose, self_train
from tests.test_omni_model import tiny_model

SMALL = SelfTraining(prompts=12, candidates=2, steps=30, batch=8, lr=3e-3, chunk=6, skip_kinds=())


def test_choose_keeps_each_prompts_best_candidate_and_the_top_share_of_each_kind():
    scores = np.array([[-5.0, -1.0], [-2.0, -3.0], [-9.0, -8.0], [-4.0, -4.5], [-7.0, -0.5]])
    kinds = ["single", "single", "single", "two", "two"]
    best, kept = choose(scores, kinds, top=0.5)
    assert best.tolist() == [1, 0, 1, 0, 1]
    # singles' best scores -1, -2, -8: the top half (2 of 3, rounded up) are -1 and -2; twos' -4, -0.5: -0.5
    assert kept.tolist() == [True, True, False, False, True]
    assert choose(scores, kinds, top=1.0)[1].all()
    assert choose(scores, kinds, top=0.01)[1].sum() == 2  # at least one of each kind
    assert choose(scores, kinds, top=1.0, skip=("two",))[1].tolist() == [True, True, True, False, False]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def kept_loss(model, out):
    """The model's t2i loss on the drawings its run kept (no condition dropout or self-correction)."""
    tensors = read_tensors(out / "draws" / "drawn.safetensors")
    from omniar.data.shapeworld.dataset import make_sample

    samples = [make_sample("train", SMALL.first + i) for i in range(SMALL.prompts)]
    _, kept = choose(tensors["scores"].numpy(), [s["kind"] for s in samples], SMALL.top, SMALL.skip_kinds)
    examples = [Example("t2i", samples[i]["caption"], image=tensors["images"][i].numpy()) for i in np.flatnonzero(kept)]
    with torch.no_grad():
        return model.loss(*model.batch(examples))[0].item()


def test_only_the_generation_side_learns_and_it_learns_the_kept_drawings(tmp_path):
    model = tiny_model(prompt_expert=True, expert_attention=True)  # as onecat-tiny: each expert its own attention
    before = state(model)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a red circle", "two blue squares", "a green star left of a red circle"]
    graded = caption_scores(model, pixels, texts)
    summary = self_train(model, tmp_path / "run", SMALL, progress=False)
    assert summary["steps"] == 30 and summary["prompts"] == 12 and 6 <= summary["kept"] < 12
    assert summary["score_kept"] > summary["score_all"] and summary["loss_last"] < summary["loss_first"]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    experts = {name: i for i, name in enumerate(model.decoder.config.experts)}
    held = [p.format(**experts) for p in GENERATION_SIDE]
    assert changed and not any(fnmatch.fnmatchcase(k, p) for k in changed for p in held)
    assert any(f".experts.{experts['gen']}." in k for k in changed)  # the generation expert learnt
    assert not any(k.startswith("tokenizer.") for k in changed)
    assert torch.equal(caption_scores(model, pixels, texts), graded)  # the grader is untouched
    assert not model.training and all(p.requires_grad for n, p in model.named_parameters()
                                      if not n.startswith("tokenizer."))  # what was held is trainable again
    loaded = OmniModel.from_pretrained(tmp_path / "run" / "checkpoint")
    untrained = tiny_model(prompt_expert=True, expert_attention=True)
    assert kept_loss(loaded, tmp_path / "run") < kept_loss(untrained, tmp_path / "run")
    drawn = generate_images(model, texts, params=SamplingParams(temperature=1.0), cfg=2.0, seeds=[1, 2, 3])
    assert torch.equal(generate_images(loaded, texts, params=SamplingParams(temperature=1.0), cfg=2.0, seeds=[1, 2, 3]),
                       drawn)


def test_a_batch_holds_edits_renders_and_drawings_in_their_shares(tmp_path, monkeypatch):
    """edit_share of the examples are the train split's edits (the generation side draws them too), real_share of
    the rest the prompts' own renders, the others the kept drawings."""
    seen = []
    real_batch = OmniModel.batch

    def counting(model, examples, *args, **kwargs):
        seen.extend(examples)
        return real_batch(model, examples, *args, **kwargs)

    monkeypatch.setattr(OmniModel, "batch", counting)
    config = dataclasses.replace(SMALL, steps=40, edit_share=0.25, real_share=0.5)
    self_train(tiny_model(), tmp_path / "run", config, progress=False)
    drawn = read_tensors(tmp_path / "run" / "draws" / "drawn.safetensors")["images"].numpy()
    edits = sum(ex.task == "edit" for ex in seen)
    mine = sum(ex.task == "t2i" and any(np.array_equal(ex.image, d) for d in drawn) for ex in seen)
    assert len(seen) == 320 and all(ex.task in ("edit", "t2i") for ex in seen)
    assert 50 < edits < 110 and 80 < mine < 160 and 80 < len(seen) - edits - mine < 160  # 80 / 120 / 120 expected
    seen.clear()
    self_train(tiny_model(), tmp_path / "t2i", dataclasses.replace(config, edit_share=0.0, real_share=0.0),
               progress=False)
    drawn = read_tensors(tmp_path / "t2i" / "draws" / "drawn.safetensors")["images"].numpy()
    assert all(ex.task == "t2i" and any(np.array_equal(ex.image, d) for d in drawn) for ex in seen)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """Stopped while drawing (SIGINT), then stopped mid-training, then run again: the same weights to the bit and
    the same losses as one run never stopped."""
    whole = self_train(tiny_model(), tmp_path / "whole", SMALL, progress=False)
    calls = []
    real = self_train_module.generate_best_of

    def interrupted(*args, **kwargs):  # Ctrl-C while the second chunk of prompts is drawn for
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(self_train_module, "generate_best_of", interrupted)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        self_train(tiny_model(), out, SMALL, progress=False)
    assert json.loads((out / "draws" / "draws.json").read_text())["prompts"] == 12  # both chunks kept
    assert not (out / "checkpoint").exists()
    monkeypatch.undo()
    cut = self_train(tiny_model(), out, SMALL, progress=False, stop_at=20)
    assert cut["steps"] == 20
    resumed = self_train(tiny_model(), out, SMALL, progress=False)
    assert resumed["steps"] == 30 and resumed["kept"] == whole["kept"]
    a = read_tensors(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    b = read_tensors(out / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (tmp_path / "whole", out)]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_misuse_is_named(tmp_path):
    for bad, words in [(dict(top=0.0), "top"), (dict(top=1.5), "top"), (dict(real_share=1.0), "real_share"),
                       (dict(candidates=0), "candidates"), (dict(lr=0.0), "lr"), (dict(edit_share=1.0), "edit_share"),
                       (dict(skip_kinds=("counts",)), "unknown kind"),
                       (dict(skip_kinds=KINDS), "every kind skipped")]:
        with pytest.raises(ValueError, match=words):
            dataclasses.replace(SMALL, **bad)
    small = dataclasses.replace(SMALL, steps=2)
    self_train(tiny_model(), tmp_path / "run", small, progress=False)
    with pytest.raises(ValueError, match="another config"):
        self_train(tiny_model(), tmp_path / "run", dataclasses.replace(small, steps=3), progress=False)
    with pytest.raises(ValueError, match="another seed"):
        self_train(tiny_model(), tmp_path / "run", small, seed=1, progress=False)
    # draws left by another model are not taken for this one's
    other = tmp_path / "other"
    self_train(tiny_model(seed=1), other, small, progress=False)
    (other / "self_training.json").unlink()
    with pytest.raises(ValueError, match="another model"):
        self_train(tiny_model(), other, small, progress=False)
    from omniar.data.shapeworld.dataset import make_sample

    first = next(i for i in range(100) if make_sample("train", i)["kind"] == "counting")
    with pytest.raises(ValueError, match="no drawing kept"):
        self_train(tiny_model(), tmp_path / "counting", dataclasses.replace(small, prompts=1, first=first,
                                                                            skip_kinds=("counting",)), progress=False)
    with pytest.raises(ValueError, match="self-training needs fp32"):
        self_train(tiny_model().decode_in(torch.bfloat16), tmp_path / "bf16", small, progress=False)


def test_command_line(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "model")
    main(["train", "self", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "run"), "--prompts", "6",
          "--candidates", "2", "--steps", "3", "--batch", "4"])
    out = capsys.readouterr().out
    assert "self-trained on" in out and "3 steps" in out and "checkpoint:" in out
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
