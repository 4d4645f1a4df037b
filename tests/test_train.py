"""Training: loss goes down, resume == uninterrupted (also after Ctrl-C, SIGTERM or a crash), checkpoints are
never torn, demo and CLI run."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from omniar import OmniDecoder, checkpoint, preset
from omniar.cli import main
from omniar.data.toy import corpus, is_grammatical
from omniar.stream import IGNORE
from omniar.tokenizers.bytes import ByteTokenizer
from omniar.train import TrainConfig, Trainer, weighted_cross_entropy
from omniar.train.text import text_batches

SMALL = dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)


def make_trainer(out=None, steps=12, optimizer="adamw", signals=(), fail_at=None, **config):
    """A small text trainer; `signals` sends itself each signal while building step `signals`' batch
    [(step, signal), ...], `fail_at` raises there (a crash)."""
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = OmniDecoder(preset("text-tiny", vocab_size=tok.vocab_size, **SMALL))
    data = text_batches(corpus(500), tok, rows=4, seq_len=64)

    def batch_for_step(step):
        for at, sig in signals:
            if at == step:
                os.kill(os.getpid(), sig)
        if step == fail_at:
            raise RuntimeError(f"crash at step {step}")
        return data(step)

    return Trainer(model, batch_for_step, TrainConfig(steps=steps, warmup=3, log_every=1, optimizer=optimizer,
                                                      **config), out_dir=out, progress=False)


def assert_same_weights(a, b):
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name


def resume_to_the_end(out, straight):
    """Resume out's checkpoint to step 12: the weights of the uninterrupted run `straight`, and every step logged
    once (those trained after the checkpoint and before the stop by the run that kept them)."""
    second = make_trainer(out, steps=12)
    second.resume(out / "checkpoint")
    second.fit()
    assert_same_weights(straight, second)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def saved_step(out):
    return json.loads((out / "checkpoint" / "trainer.json").read_text())["step"]


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
    assert_same_weights(straight, second)


@pytest.mark.parametrize("sig, stops", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(tmp_path, capsys, sig, stops):
    straight = make_trainer(steps=12)
    straight.fit()
    out = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(stops):
        make_trainer(out, steps=12, signals=[(4, sig)]).fit()
    assert saved_step(out) == 5  # step 4, under way when the signal came, was finished and saved
    assert "stopped at step 5 of 12" in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    resume_to_the_end(out, straight)


def test_a_signal_during_the_forward_pass_stops_after_that_step(tmp_path):
    out = tmp_path / "run"
    t = make_trainer(out, steps=12)
    loss_fn = t.loss_fn

    def loss_then_ctrl_c(model, batch):
        if t.step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return loss_fn(model, batch)

    t.loss_fn = loss_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert saved_step(out) == 5


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(out, steps=12, signals=[(4, signal.SIGINT), (4, signal.SIGINT)]).fit()
    assert not (out / "checkpoint").exists()


def test_checkpoints_on_the_way_keep_a_crashed_run(tmp_path):
    straight = make_trainer(steps=12)
    straight.fit()
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash at step 5"):
        make_trainer(out, steps=12, fail_at=5, save_every=3).fit()
    assert saved_step(out) == 3
    with pytest.raises(RuntimeError, match="crash at step 7"):  # by time: after every step here
        make_trainer(tmp_path / "timed", steps=12, fail_at=7, save_minutes=1e-9).fit()
    assert saved_step(tmp_path / "timed") == 7
    with pytest.raises(RuntimeError):  # the default: every 10 minutes, so none in this short run
        make_trainer(tmp_path / "default", steps=12, fail_at=5).fit()
    assert not (tmp_path / "default" / "checkpoint").exists()
    resume_to_the_end(out, straight)


def test_a_save_cut_short_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = make_trainer(out, steps=3)
    first.fit()
    before = {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()}

    def cut_short(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_training_state", cut_short)  # the new weights are written, then this fails
    again = make_trainer(out, steps=6)
    again.resume(out / "checkpoint")
    with pytest.raises(OSError, match="disk full"):
        again.fit()
    assert {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()} == before
    # a crash between the swap's two renames: the old version is put back when training starts again
    os.replace(out / "checkpoint", out / ".checkpoint.old")
    make_trainer(out, steps=3)
    assert saved_step(out) == 3


def test_resume_with_another_optimizer_is_named(tmp_path):
    make_trainer(tmp_path / "run", steps=3, optimizer="adamw").fit()
    with pytest.raises(ValueError, match="trained with adamw; this trainer uses muon"):
        make_trainer(steps=3, optimizer="muon").resume(tmp_path / "run" / "checkpoint")


def test_resume_from_a_directory_without_trainer_state_is_named(tmp_path):
    t = make_trainer()
    t.model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        t.resume(tmp_path)


def test_warmup_stable_decay_holds_the_rate_until_its_last_steps():
    from omniar.train.trainer import TrainConfig

    cosine = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    wsd = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1, decay_steps=30)
    assert [wsd.lr_at(s) for s in range(10)] == [cosine.lr_at(s) for s in range(10)]  # the same warm-up
    assert all(wsd.lr_at(s) == 1.0 for s in range(10, 71))
    tail = [wsd.lr_at(s) for s in range(70, 100)]
    assert all(a > b for a, b in zip(tail, tail[1:])) and tail[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(
        math.pi * 29 / 30)))
    # the decay is the plain cosine's shape over its own steps
    short = TrainConfig(steps=30, lr=1.0, warmup=0, min_lr_ratio=0.1)
    assert tail == pytest.approx([short.lr_at(s) for s in range(30)])
    # more decay steps than steps after the warm-up: the plain cosine
    longer = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1, decay_steps=500)
    assert [longer.lr_at(s) for s in range(100)] == [cosine.lr_at(s) for s in range(100)]


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
    main(["info", "--preset", "experts-tiny"])
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "OmniDecoder" and info["active"] < info["total"]
    main(["info", "--model", str(ckpt)])
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "OmniDecoder" and info["active"] == info["total"] and info["config"]["num_layers"] == 4
    with pytest.raises(SystemExit, match="unknown preset 'onecat-huge'; unified models .*onecat-tiny.*; bare "
                                         "decoders: .*experts-tiny"):
        main(["info", "--preset", "onecat-huge"])
    with pytest.raises(SystemExit, match="checkpoint directory not found"):
        main(["generate", "text", "--model", str(tmp_path / "missing"), "x"])


def test_ctrl_c_on_the_command_line_saves_and_the_command_resumes(tmp_path):
    out = tmp_path / "text"
    cmd = [sys.executable, "-m", "omniar.cli", "train", "text", "--out", str(out), "--steps", "100000"]
    run = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():  # step 10 is done
        assert run.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130
    step = json.loads((out / "checkpoint" / "trainer.json").read_text())["step"]
    assert step >= 10 and f"stopped at step {step} of 100000" in err
    again = subprocess.run(cmd[:-1] + [str(step + 2)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resuming {out / 'checkpoint'} at step {step}" in again.stderr
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == step + 2
