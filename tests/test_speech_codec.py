"""The streaming speech codec: shapes and token rate, determinism, batching, chunked == whole decode, save/load,
resume == uninterrupted, the quantiser's k-means start and dead-code restarts, and named errors."""

import json
import os
import signal

import numpy as np
import pytest
import soundfile as sf
import torch

from omniar.tokenizers import train_speech
from omniar.tokenizers.speech import STREAM_TOLERANCE, SpeechCodec, SpeechCodecConfig
from omniar.tokenizers.train_speech import codec_losses, manifest_speech, train_speech_codec
from omniar.tokenizers.vq import VectorQuantizer

TINY = dict(n_mels=16, channels=32, mult=2, kernel=3, encoder_blocks=1, decoder_blocks=2, codebook_size=16,
            code_dim=8)


def tone_clips(lengths, seed=0):
    """Speech-like test audio: a few harmonics under a moving pitch, with noise, one clip per length."""
    rng = np.random.default_rng(seed)
    clips = []
    for n in lengths:
        t = np.arange(n) / 16000
        f0 = rng.uniform(90, 200) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.1 + 0.01 * rng.standard_normal(n)
        clips.append(wav.astype(np.float32))
    return clips


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    c = SpeechCodec(SpeechCodecConfig(**TINY))
    c.quantizer.kmeans_init(c.encoder(torch.from_numpy(np.stack(tone_clips([16000] * 4)))))
    return c.eval()


def test_encode_decode_shapes_and_token_rate(codec):
    assert SpeechCodecConfig().tokens_per_second == 50 and codec.config.token_hop == 320
    wav = torch.from_numpy(np.stack(tone_clips([16000, 16000])))
    tokens = codec.encode(wav)
    assert tokens.shape == (2, 50) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < 16
    audio = codec.decode(tokens)
    assert audio.shape == (2, 16000) and audio.dtype == torch.float32 and torch.isfinite(audio).all()
    assert codec.encode(wav[:, :1000]).shape == (2, 4)  # partial last token: ceil(1000 / 320)


def test_encoding_is_deterministic_and_causal(codec):
    wav = torch.from_numpy(np.stack(tone_clips([9600, 9600], seed=1)))
    tokens = codec.encode(wav)
    assert torch.equal(tokens, codec.encode(wav))
    assert torch.equal(codec.encode(wav[:, :3200]), tokens[:, :10])  # a prefix's tokens ignore the future
    assert len(tokens.unique()) > 1


def test_batch_equals_one_by_one(codec):
    clips = tone_clips([5000, 16000, 700], seed=2)
    batch = codec.encode(clips)
    single = [codec.encode(torch.from_numpy(c)[None])[0] for c in clips]
    assert [len(t) for t in batch] == [16, 50, 3]
    assert all(torch.equal(a, b) for a, b in zip(batch, single))
    audio = codec.decode(batch)
    for a, t in zip(audio, single):
        assert a.shape == (len(t) * 320,)
        torch.testing.assert_close(a, codec.decode(t[None])[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2, 7, 50])
def test_streaming_decode_equals_whole_decode(codec, chunk):
    tokens = codec.encode(torch.from_numpy(np.stack(tone_clips([16000, 16000], seed=3))))
    whole = codec.decode(tokens)
    stream = codec.stream(batch=2)
    parts = [stream.push(tokens[:, a : a + chunk]) for a in range(0, 50, chunk)]
    lookahead = codec.config.lookahead_samples
    assert sum(p.shape[1] for p in parts) == 50 * 320 - lookahead  # audio lags the tokens by the OLA tail
    parts.append(stream.flush())
    out = torch.cat(parts, 1)
    assert out.shape == whole.shape
    assert (out - whole).abs().max() <= STREAM_TOLERANCE
    with pytest.raises(RuntimeError, match="flushed"):
        stream.push(tokens[:, :1])


def test_save_load_round_trip(codec, tmp_path):
    codec.save_pretrained(tmp_path)
    again = SpeechCodec.from_pretrained(tmp_path)
    assert again.config == codec.config
    wav = torch.from_numpy(np.stack(tone_clips([8000], seed=4)))
    tokens = codec.encode(wav)
    assert torch.equal(again.encode(wav), tokens)
    assert torch.equal(again.decode(tokens), codec.decode(tokens))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "omniar-speech-codec"


def test_sigterm_saves_the_step_reached_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    clips = tone_clips([8000] * 6, seed=5)
    kw = dict(config=SpeechCodecConfig(**TINY, restart_after=1), steps=4, batch=4, crop_seconds=0.2,
              progress=False)
    straight = train_speech_codec(tmp_path / "a", clips, **kw)
    calls = []

    def losses_then_sigterm(*args):  # SIGTERM while step 1 (of 0..3) is computed
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return codec_losses(*args)

    monkeypatch.setattr(train_speech, "codec_losses", losses_then_sigterm)
    with pytest.raises(SystemExit):
        train_speech_codec(tmp_path / "b", clips, **kw)
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer.json").read_text())["step"] == 2
    monkeypatch.undo()
    resumed = train_speech_codec(tmp_path / "b", clips, **kw)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_equals_uninterrupted(tmp_path):
    clips = tone_clips([8000] * 6, seed=5)
    kw = dict(config=SpeechCodecConfig(**TINY, restart_after=1), steps=4, batch=4, crop_seconds=0.2,
              progress=False)
    straight = train_speech_codec(tmp_path / "a", clips, **kw)
    train_speech_codec(tmp_path / "b", clips, stop_at=2, **kw)
    resumed = train_speech_codec(tmp_path / "b", clips, **kw)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.quantizer.initialised
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    other = SpeechCodecConfig(**{**TINY, "codebook_size": 8, "restart_after": 1})
    with pytest.raises(ValueError, match="another config \\(codebook_size differ\\)"):
        train_speech_codec(tmp_path / "b", clips, **{**kw, "config": other})


def test_dead_code_restarts_and_kmeans_start_spread_usage():
    torch.manual_seed(0)
    centres = torch.randn(8, 4) * 5
    data = centres[torch.arange(800) % 8] + 0.1 * torch.randn(800, 4)

    def collapsed(restart_after):  # one code at the data's mean, seven far away: only code 0 is ever chosen
        vq = VectorQuantizer(8, 4, restart_after=restart_after).train()
        vq.codebook.copy_(torch.cat([data.mean(0, keepdim=True), 100 + torch.randn(7, 4)]))
        vq.embed_sum.copy_(vq.codebook)
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            vq(data, generator=g)
        return len(vq.encode(data).unique())

    assert collapsed(restart_after=1000) == 1
    assert collapsed(restart_after=2) == 8  # dead codes restart on data points, then settle on the clusters
    fresh = VectorQuantizer(8, 4)
    fresh.kmeans_init(data, generator=torch.Generator().manual_seed(0))
    assert len(fresh.encode(data).unique()) == 8 and fresh.initialised
    torch.testing.assert_close(fresh.codebook[fresh.encode(centres)], centres, atol=0.1, rtol=0)


def test_gradients_reach_encoder_and_decoder_through_the_quantiser():
    codec = SpeechCodec(SpeechCodecConfig(**TINY)).train()
    x = torch.from_numpy(np.stack(tone_clips([3200, 3200], seed=6)))
    y, ids, commit = codec(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and ids.shape == (2, 10)
    stft, mel = codec_losses(codec, y, x)
    (stft + mel + commit).backward()
    for name, p in codec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_manifest_audio(tmp_path):
    clips = tone_clips([4000, 3000], seed=7)
    for i, c in enumerate(clips):
        sf.write(tmp_path / f"{i}.flac", c, 16000)
    lines = [{"caption": "a red circle", "audio": [{"path": "0.flac"}, {"path": "1.flac"}]}, {"caption": "no audio"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for where in (tmp_path, tmp_path / "train.jsonl"):
        got = manifest_speech(where)
        assert [len(c) for c in got] == [4000, 3000]
        np.testing.assert_allclose(got[0], clips[0], atol=1e-4)  # 16-bit FLAC
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.jsonl manifest"):
        manifest_speech(tmp_path / "empty")
    (tmp_path / "empty" / "x.jsonl").write_text('{"caption": "silent"}\n')
    with pytest.raises(ValueError, match="no audio in"):
        manifest_speech(tmp_path / "empty")


@pytest.mark.parametrize("call, message", [
    (lambda c: c.encode(torch.zeros(1, 16000), sample_rate=22050), "works at 16000 Hz, got 22050 Hz"),
    (lambda c: c.encode(torch.zeros(1, 16000, dtype=torch.int16)), "float samples"),
    (lambda c: c.encode(torch.zeros(16000)), r"\(batch, samples\)"),
    (lambda c: c.encode(torch.zeros(1, 0)), "empty audio"),
    (lambda c: c.encode([np.zeros(100, np.float32), np.zeros(0, np.float32)]), "clip 1 is empty"),
    (lambda c: c.encode("speech.wav"), "float tensor or array"),
    (lambda c: c.decode(torch.tensor([[0, 16]])), r"token ids must be in \[0, 16\), got ids in \[0, 16\]"),
    (lambda c: c.decode(torch.tensor([[-1, 3]])), r"in \[0, 16\)"),
    (lambda c: c.decode(torch.zeros(1, 3)), "integer code ids"),
    (lambda c: c.decode(torch.zeros(3, dtype=torch.long)), r"\(batch, tokens\)"),
    (lambda c: c.stream(2).push(torch.zeros(1, 3, dtype=torch.long)), "batch of 2"),
])
def test_bad_inputs_are_named(codec, call, message):
    with pytest.raises(ValueError, match=message):
        call(codec)


def test_bad_checkpoints_are_named(codec, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SpeechCodec.from_pretrained(tmp_path)
    codec.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt checkpoint file"):
        SpeechCodec.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="weights not found"):
        SpeechCodec.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "codebok_size": 8}))
    with pytest.raises(ValueError, match="did you mean 'codebook_size'"):
        SpeechCodec.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "omniar-image-tokenizer"}))
    with pytest.raises(ValueError, match="not a speech codec config"):
        SpeechCodec.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SpeechCodec.from_pretrained(tmp_path)
    other = SpeechCodec(SpeechCodecConfig(**{**TINY, "codebook_size": 32}))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "other" / "config.json").read_text()
                                                     .replace('"codebook_size": 32', '"codebook_size": 16'))
    with pytest.raises(ValueError, match="quantizer.codebook"):
        SpeechCodec.from_pretrained(tmp_path / "other")


def test_cli_trains_and_reports(tmp_path, capsys):
    from omniar.cli import main

    main(["tokenizer", "train", "speech", "--out", str(tmp_path), "--steps", "1", "--batch", "2", "--utterances", "4",
          "--eval-captions", "1"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= {"wer_original", "wer_resynthesized", "codebook_usage", "streaming_rtf",
                           "chunked_vs_whole_max_abs", "train_minutes"}
    assert report["tokens_per_second"] == 50 and report["chunked_vs_whole_max_abs"] <= STREAM_TOLERANCE
    assert (tmp_path / "sample0_codec.wav").is_file() and (tmp_path / "checkpoint" / "trainer.json").is_file()
    assert "codec:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="manifest not found"):
        main(["tokenizer", "train", "speech", "--out", str(tmp_path), "--data", str(tmp_path / "missing.jsonl")])
