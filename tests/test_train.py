"""Training: loss goes down, resume == uninterrupted, gradients reach the right places, demo and CLI run."""

import json

import pytest
import torch

from omniar import OmniDecoder, preset
from omniar.cli import main
from omniar.data.toy import corpus, is_grammatical
from omniar.stream import IGNORE
from omniar.tokenizers.bytes import ByteTokenizer
from omniar.train import TrainConfig, Trainer, weighted_cross_entropy
from omniar.train.text import text_batches

SMALL = dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)


def make_trainer(out=None, steps=12, optimizer="adamw"):
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = OmniDecoder(preset("text-tiny", vocab_size=tok.vocab_size, **SMALL))
    data = text_batches(corpus(500), tok, rows=4, seq_len=64)
    return Trainer(model, data, TrainConfig(steps=steps, warmup=3, log_every=1, optimizer=optimizer), out_dir=out,
                   progress=False)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_goes_down(optimizer):
    log = make_trainer(steps=40, optimizer=optimizer).fit()
    assert log[-1]["loss"] < 0.6 * log[0]["loss"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equals_uninterrupted(tmp_path, optimizer):
    straight = make_trainer(steps=12, optimizer=optimizer)
    straight.fit()
    first = make_trainer(tmp_path / "run", steps=12, optimizer=optimizer)
    first.fit(until=5)
    second = make_trainer(steps=12, optimizer=optimizer)
    second.resume(tmp_path / "run" / "checkpoint")
    assert second.step == 5
    second.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_with_another_optimizer_is_named(tmp_path):
    make_trainer(tmp_path / "run", steps=3, optimizer="adamw").fit()
    with pytest.raises(ValueError, match="trained with adamw; this trainer uses muon"):
        make_trainer(steps=3, optimizer="muon").resume(tmp_path / "run" / "checkpoint")


def test_resume_from_a_directory_without_trainer_state_is_named(tmp_path):
    t = make_trainer()
    t.model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        t.resume(tmp_path)


def test_weighted_cross_entropy_is_the_weighted_mean():
    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[1, IGNORE, 4]])
    w = torch.tensor([[1.0, 7.0, 3.0]])
    ce = torch.nn.functional.cross_entropy(logits[0], torch.tensor([1, 0, 4]), reduction="none")
    expected = (ce[0] * 1 + ce[2] * 3) / 4
    assert torch.allclose(weighted_cross_entropy(logits, labels, w), expected)


def test_toy_grammar_judge():
    assert all(is_grammatical(s) for s in corpus(200))
    assert not is_grammatical("a red circle is above")
    assert not is_grammatical("the red circle is big. the")


def test_byte_tokenizer_round_trip_and_errors(tmp_path):
    tok = ByteTokenizer()
    text = "a red ∆ circle"
    assert tok.decode(tok.encode(text, eos=True)) == text
    with pytest.raises(FileNotFoundError):
        ByteTokenizer.load(tmp_path)


def test_text_training_and_cli_run_end_to_end(tmp_path, capsys):
    main(["train", "text", "--out", str(tmp_path / "text"), "--steps", "3"])
    ckpt = tmp_path / "text" / "checkpoint"
    assert capsys.readouterr().out.startswith("checkpoint:")
    main(["generate", "text", "--model", str(ckpt), "a red", "--max-new-tokens", "5", "--temperature", "0"])
    assert capsys.readouterr().out.startswith("a red")
    main(["info", "--preset", "onecat-tiny"])
    info = json.loads(capsys.readouterr().out)
    assert info["active"] < info["total"]
    with pytest.raises(SystemExit, match="checkpoint directory not found"):
        main(["generate", "text", "--model", str(tmp_path / "missing"), "x"])
