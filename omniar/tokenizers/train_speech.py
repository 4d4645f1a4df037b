"""Training and evaluation of the speech codec on ShapeWorld speech (or a manifest's audio).

Resumable: `out/checkpoint` holds the codec (codebook and its EMA statistics included), the optimizer state and the
step; the crops, the learning rate and the quantiser's restarts are functions of the step, so a resumed run
continues exactly. Losses: multi-resolution STFT (spectral convergence + log magnitude, Parallel WaveGAN §2.3) and
log-mel L1 on the waveform, plus the VQ commitment loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from omniar.checkpoint import load_training_state, recover_directory, save_training_checkpoint
from omniar.tokenizers.speech import SpeechCodec, SpeechCodecConfig, magnitude
from omniar.train.interrupt import GracefulStop
from omniar.train.metrics import MetricsLog
from omniar.train.trainer import warm_cosine

STFT_RESOLUTIONS = ((128, 32), (256, 64), (512, 128), (1024, 256))  # (n_fft, hop)


def shapeworld_speech(num: int, split: str = "train", progress: bool = False) -> list[np.ndarray]:
    """`num` utterances of `split`: caption, question, answer and edit instruction of samples 0, 1, ... in each
    sample's own voice (deterministic)."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.speech import Voice, speak

    out, i = [], 0
    bar = tqdm(total=num, disable=not progress, desc=f"speaking shapeworld {split}", unit="utt")
    while len(out) < num:
        s = make_sample(split, i)
        texts = [s["caption"], s["question"], s["answer"]] + ([s["edit"]["instruction"]] if s["edit"] else [])
        for text in texts[: num - len(out)]:
            out.append(speak(text, Voice(**s["voice"])))
            bar.update(1)
        i += 1
    bar.close()
    return out


def manifest_speech(path: str | Path) -> list[np.ndarray]:
    """Every audio clip of a manifest, or of a dataset directory (its train.jsonl, else all its *.jsonl)."""
    from omniar.data.manifest import ManifestError, iter_samples, manifest_files

    files = manifest_files(path)
    clips = [a["wav"] for f in files for s in iter_samples(f, load=("audio",)) for a in s.get("audio", [])]
    if not clips:
        raise ManifestError(f"no audio in {', '.join(map(str, files))}")
    return clips


def multi_resolution_stft_loss(y: Tensor, x: Tensor) -> Tensor:
    """Mean over resolutions of spectral convergence + L1 of log magnitudes, reconstruction y vs target x."""
    total = y.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft)
        sy, sx = (magnitude(torch.stft(s, n_fft, hop, window=window, return_complex=True)) for s in (y, x))
        total = total + torch.linalg.norm(sy - sx) / torch.linalg.norm(sx) + F.l1_loss(sy.log(), sx.log())
    return total / len(STFT_RESOLUTIONS)


def codec_losses(codec: SpeechCodec, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(multi-resolution STFT loss, log-mel L1) on the part of the crop that every synthesis frame covers."""
    keep = x.shape[1] - codec.config.lookahead_samples  # the last samples miss their later frames
    y, x = y[:, :keep], x[:, :keep]
    return multi_resolution_stft_loss(y, x), F.l1_loss(codec.encoder.mel(y), codec.encoder.mel(x))


def _crops(stream: Tensor, rng: np.random.Generator, batch: int, length: int) -> Tensor:
    starts = torch.from_numpy(rng.integers(0, len(stream) - length + 1, batch))
    return stream[starts[:, None] + torch.arange(length)]


def train_speech_codec(out: str | Path, clips: list[np.ndarray], config: SpeechCodecConfig | None = None,
                       steps: int = 2500, batch: int = 16, crop_seconds: float = 1.0, lr: float = 2e-3,
                       mel_weight: float = 1.0, commit_weight: float = 0.25, seed: int = 0, progress: bool = True,
                       resume: bool = True, stop_at: int | None = None) -> SpeechCodec:
    """Train on random crops of `clips` (16 kHz float arrays) for `steps` (cosine schedule over `steps`); `stop_at`
    ends early with a checkpoint, from which a later call with `resume=True` continues exactly."""
    stop_at = steps if stop_at is None else min(stop_at, steps)
    out = Path(out)
    ckpt = out / "checkpoint"
    torch.manual_seed(seed)
    codec = SpeechCodec(config or SpeechCodecConfig())
    cfg = codec.config
    opt = torch.optim.AdamW(codec.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.01)
    step = 0
    recover_directory(ckpt)
    if resume and (ckpt / "trainer.json").is_file():
        saved = SpeechCodec.from_pretrained(ckpt)
        if saved.config != cfg:
            changed = [k for k, v in dataclasses.asdict(cfg).items() if getattr(saved.config, k) != v]
            raise ValueError(f"cannot resume {ckpt}: it was trained with another config ({', '.join(changed)} "
                             f"differ); use a new output directory or resume=False")
        codec.load_state_dict(saved.state_dict())
        step = load_training_state(ckpt, opt)["step"]
    stream = torch.from_numpy(np.concatenate(clips).astype(np.float32))  # crops may span clip boundaries
    length = round(crop_seconds * cfg.sample_rate) // cfg.token_hop * cfg.token_hop
    if len(stream) < length:
        raise ValueError(f"{len(stream) / cfg.sample_rate:.2f} s of training audio is shorter than one crop "
                         f"({crop_seconds} s)")
    codec.train()
    if not codec.quantizer.initialised:  # k-means on the untrained encoder's outputs, >= 4 vectors per code
        rng = np.random.default_rng([seed, 1])
        n = math.ceil(4 * cfg.codebook_size / (length // cfg.token_hop))
        with torch.no_grad():
            z = torch.cat([codec.encoder(_crops(stream, rng, batch, length)) for _ in range(math.ceil(n / batch))])
        codec.quantizer.kmeans_init(z, generator=torch.Generator().manual_seed(seed))
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out / "metrics.jsonl", step)
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="speech codec", unit="step")
    t0 = time.perf_counter()
    stop = GracefulStop()
    with stop:
        while step < stop_at:
            rng = np.random.default_rng([seed, 0, step])
            x = _crops(stream, rng, batch, length)
            for g in opt.param_groups:
                g["lr"] = warm_cosine(step, steps, lr, floor=0.05)
            y, ids, commit = codec(x, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))
            stft, mel = codec_losses(codec, y, x)
            loss = stft + mel_weight * mel + commit_weight * commit
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == stop_at:
                m = {"step": step, "loss": loss.item(), "stft": stft.item(), "mel": mel.item(), "commit": commit.item(),
                     "batch_usage": ids.unique().numel() / cfg.codebook_size,
                     "seconds": round(time.perf_counter() - t0, 1)}
                bar.set_postfix(loss=f"{m['loss']:.3f}", mel=f"{m['mel']:.3f}")
                metrics.write(m)
            if step % 500 == 0 or step == stop_at or stop.signal is not None:
                save_training_checkpoint(ckpt, codec, opt, step)
            if stop.signal is not None:
                break
    bar.close()
    metrics.close()
    if stop.signal is not None:
        stop.stop(step, steps, ckpt)
    return codec.eval()


def speech_test_set(num: int) -> tuple[list[str], list[np.ndarray]]:
    """The speech judge's test set (bench/shapeworld_speech.py): captions of seed 2, each in a random voice."""
    from omniar.data.shapeworld.speech import sample_voice, speak
    from omniar.data.shapeworld.tasks import sample_prompt

    rng = random.Random(2)
    captions = [sample_prompt(rng).text for _ in range(num)]
    return captions, [speak(c, sample_voice(rng)) for c in captions]


def _transcribe(rec, wav: np.ndarray) -> str:
    """The recognizer's text; '' for audio it refuses (silence, e.g. from an untrained codec)."""
    try:
        return rec.transcribe(wav)
    except ValueError:
        return ""


@torch.no_grad()
def streaming_decode(codec: SpeechCodec, tokens: Tensor, chunk: int) -> tuple[Tensor, float]:
    """Decode (1, N) tokens `chunk` at a time: (audio, seconds of compute)."""
    t = time.perf_counter()
    stream = codec.stream(len(tokens))
    parts = [stream.push(tokens[:, a : a + chunk]) for a in range(0, tokens.shape[1], chunk)]
    parts.append(stream.flush())
    return torch.cat(parts, 1), time.perf_counter() - t


@torch.no_grad()
def evaluate_speech_codec(codec: SpeechCodec, num: int = 300, chunk: int = 5, out: str | Path | None = None,
                          wavs: int = 4, extra: dict | None = None, progress: bool = False) -> dict:
    """On `num` test captions spoken by espeak-ng: the grammar recognizer's WER on the original and on the
    resynthesized (streamed, `chunk` tokens at a time) audio, codebook usage, tokens/s, streaming real-time factor
    (batch 1, torch threads as set by the caller), and max |chunked - whole| decode (chunks of `chunk` and of 1).
    With `out`, writes report.json (with `extra` fields added) and the first `wavs` originals and resyntheses as
    WAV files there."""
    import soundfile as sf

    from omniar.audio.recognizer import word_error_rate
    from omniar.data.shapeworld.speech import recognizer

    codec.eval()
    cfg = codec.config
    captions, originals = speech_test_set(num)
    counts, resynth = torch.zeros(cfg.codebook_size), []
    compute, seconds, diff = 0.0, 0.0, 0.0
    for i, wav in enumerate(tqdm(originals, disable=not progress, desc="codec round trips", unit="utt")):
        tokens = codec.encode(torch.from_numpy(wav)[None])
        counts += torch.bincount(tokens.flatten(), minlength=cfg.codebook_size)
        audio, dt = streaming_decode(codec, tokens, chunk)
        compute, seconds = compute + dt, seconds + tokens.shape[1] / cfg.tokens_per_second
        if i < 20:  # the chunked == whole check, also at one token per push
            whole = codec.decode(tokens)
            diff = max(diff, (audio - whole).abs().max().item(),
                       (streaming_decode(codec, tokens, 1)[0] - whole).abs().max().item())
        resynth.append(np.clip(audio[0, : len(wav)].numpy(), -1, 1))
    # one pass per set: the recognizer's cepstral mean carries over from one utterance to the next
    rec = recognizer()
    wer_orig, wer_codec = (word_error_rate(captions, [_transcribe(rec, w) for w in tqdm(
        clips, disable=not progress, desc=f"recognizing {what}", unit="utt")])
        for clips, what in ((originals, "originals"), (resynth, "resyntheses")))
    probs = counts[counts > 0] / counts.sum()
    report = {"wer_original": wer_orig, "wer_resynthesized": wer_codec, "wer_delta": wer_codec - wer_orig,
              "codebook_usage": (counts > 0).float().mean().item(),
              "codebook_perplexity": math.exp(-(probs * probs.log()).sum().item()),
              "tokens_per_second": cfg.tokens_per_second, "codebook_size": cfg.codebook_size,
              "bits_per_second": cfg.tokens_per_second * math.log2(cfg.codebook_size),
              "streaming_rtf": compute / seconds, "stream_chunk_tokens": chunk,
              "torch_threads": torch.get_num_threads(),
              "chunked_vs_whole_max_abs": diff, "captions": num, "audio_seconds": round(seconds, 1),
              "parameters": sum(p.numel() for p in codec.parameters()), **(extra or {})}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        for i in range(min(wavs, num)):
            sf.write(out / f"sample{i}_original.wav", originals[i], cfg.sample_rate)
            sf.write(out / f"sample{i}_codec.wav", resynth[i], cfg.sample_rate)
    return report
