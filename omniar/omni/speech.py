"""Speech with an `OmniModel` (AR-Omni): text-to-speech (whole or streamed chunk by chunk while it is generated),
speech recognition, and spoken questions about images - batched, under finite-state decoding.

    audio = speak(model, ["a red circle", "two blue squares"])        # list of 1-D float clips at 16 kHz
    for chunk in speak_stream(model, "a red circle"):                 # audio while the codes are generated
        play(chunk)
    texts = transcribe(model, [wav1, wav2])                           # 16 kHz float clips -> text
    answers = answer_spoken(model, images, [wav1, wav2])              # spoken questions -> text answers
    replies = answer_spoken(model, images, [wav1], spoken=True)       # ... -> spoken answers (a conversation)

TTS prompts end with <boa>, so decoding starts in the speech mode: greedy over speech codes and <eoa> (AR-Omni's
rule; `rules` changes it), and a row ends at its <eoa>. ASR is a greedy task: the transcript is decoded greedily
up to <eos>. Streaming pushes each step's code to the codec's causal streaming decoder, so the audio it yields
equals the whole-utterance decode of the same codes within the codec's tolerance (`STREAM_TOLERANCE`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from omniar.generation.fsm import DecodingRules
from omniar.generation.sampling import Generators
from omniar.omni.decode import decode, steps
from omniar.omni.model import Example, OmniModel, as_images

MAX_SECONDS = 30.0  # the longest audio accepted as input


def _codec(model: OmniModel):
    if model.speech_codec is None:
        raise ValueError("this model has no speech codec: it was trained without speech")
    if model.device.type != "cpu":
        raise ValueError(f"speech runs on the CPU only for now; this model is on {model.device} (model.to('cpu'))")
    return model.speech_codec


def encode_speech(model: OmniModel, clips: Sequence, sample_rate: int = 16_000) -> list[Tensor]:
    """Codec codes of 1-D float clips, with named errors for wrong rates, empty, silent or over-long audio."""
    codec = _codec(model)
    rate = codec.config.sample_rate
    if sample_rate != rate:
        raise ValueError(f"speech must be {rate} Hz, got {sample_rate} Hz (resample it: omniar.audio.resample)")
    out = []
    for i, c in enumerate(clips):
        c = torch.as_tensor(np.asarray(c), dtype=torch.float32)
        if c.dim() != 1:
            raise ValueError(f"clip {i} must be mono 1-D samples, got shape {tuple(c.shape)}")
        if len(c) == 0:
            raise ValueError(f"clip {i} is empty")
        if len(c) > MAX_SECONDS * rate:
            raise ValueError(f"clip {i} is {len(c) / rate:.1f} s long; at most {MAX_SECONDS:.0f} s is accepted")
        if float(c.abs().max()) < 1e-4:
            raise ValueError(f"clip {i} is silent (peak below 1e-4 of full scale)")
        out.append(c)
    return codec.encode(out) if out else []


def _tts_samples(model: OmniModel, texts: Sequence[str]):
    if isinstance(texts, str) or not texts:
        raise ValueError("give a non-empty list of texts")
    if any(not t.strip() for t in texts):
        raise ValueError("every text to speak must be non-empty")
    _codec(model)
    return [model.sample(Example("tts", t), None, None) for t in texts]


def _max_tokens(model: OmniModel, seconds: float) -> int:
    return max(1, int(seconds * _codec(model).config.tokens_per_second))


@torch.inference_mode()
def speak_codes(model: OmniModel, texts: Sequence[str], rules: DecodingRules | None = None, max_seconds: float = 8.0,
                generator: Generators = None) -> list[Tensor]:
    """The speech codes of each text (up to its <eoa>, at most `max_seconds` of audio); `generator`: one, or one per
    text (sampled `rules.speech`)."""
    samples = _tts_samples(model, texts)
    eoa = model.ids["eoa"]
    ids = decode(model, samples, rules, greedy=[True] * len(samples), max_new_tokens=_max_tokens(model, max_seconds),
                 stops=[eoa, model.ids["eos"]], generator=generator)
    return [torch.tensor(row, dtype=torch.long) - model.speech_offset for row in ids]


def speak(model: OmniModel, texts: Sequence[str], **kw) -> list[Tensor]:
    """16 kHz float audio of each text (whole utterances; `speak_stream` streams)."""
    return _audio(model, speak_codes(model, texts, **kw))


def _audio(model: OmniModel, codes: list[Tensor]) -> list[Tensor]:
    """Audio of each row's codes, decoded as one batch; a row without codes is silence of length 0."""
    audio = [torch.zeros(0)] * len(codes)
    spoken = [i for i, c in enumerate(codes) if len(c)]
    if spoken:
        for i, a in zip(spoken, _codec(model).decode([codes[i] for i in spoken])):
            audio[i] = a
    return audio


@torch.inference_mode()
def speak_stream(model: OmniModel, text: str, rules: DecodingRules | None = None, max_seconds: float = 8.0,
                 chunk: int = 5, generator: torch.Generator | None = None, timings: dict | None = None
                 ) -> Iterator[Tensor]:
    """Yield 1-D audio chunks of `text` while its codes are generated: every `chunk` codes are decoded by the
    codec's causal streaming decoder. With `timings` (a dict), records the seconds to the first audio chunk and
    the compute seconds per second of audio (real-time factor) when the stream ends."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 token, got {chunk}")
    model.eval()
    codec = _codec(model)
    stream = codec.stream(1)
    start = time.perf_counter()
    pending: list[int] = []
    produced = 0
    first = None
    samples = _tts_samples(model, [text])
    eoa = model.ids["eoa"]
    busy = 0.0  # compute time spent in this generator (not in the consumer)
    t0 = time.perf_counter()

    def emit(audio: Tensor) -> Tensor:
        nonlocal produced, first
        produced += audio.shape[-1]
        if first is None and audio.shape[-1]:
            first = time.perf_counter() - start
        return audio[0]

    for token, finished, *_ in steps(model, samples, rules, [True], _max_tokens(model, max_seconds),
                                     stops=[eoa, model.ids["eos"]], generator=generator):
        tok = int(token[0])
        if not bool(finished[0]):
            pending.append(tok - model.speech_offset)
        if len(pending) >= chunk or (bool(finished[0]) and pending):
            audio = emit(stream.push(torch.tensor([pending])))
            pending = []
            busy += time.perf_counter() - t0
            yield audio
            t0 = time.perf_counter()
        if bool(finished[0]):
            break
    if pending:
        audio = emit(stream.push(torch.tensor([pending])))
        busy += time.perf_counter() - t0
        yield audio
        t0 = time.perf_counter()
    audio = emit(stream.flush())
    busy += time.perf_counter() - t0
    if audio.numel():
        yield audio
    if timings is not None:
        seconds = produced / codec.config.sample_rate
        timings.update(first_chunk_s=first, compute_s=busy, audio_s=seconds,
                       rtf=busy / seconds if seconds else float("inf"))


@torch.inference_mode()
def transcribe(model: OmniModel, clips: Sequence, sample_rate: int = 16_000, max_new_tokens: int = 48) -> list[str]:
    """Text of each 16 kHz clip (greedy)."""
    codes = encode_speech(model, clips, sample_rate)
    if not codes:
        raise ValueError("give at least one clip")
    samples = [model.sample(Example("asr", speech=c), None, None) for c in codes]
    ids = decode(model, samples, DecodingRules(may_open=()), greedy=[True] * len(samples),
                 max_new_tokens=max_new_tokens)  # a transcript is text: no speech or image span may open
    return [model.text.decode(row) for row in ids]


@torch.inference_mode()
def answer_spoken(model: OmniModel, images, clips: Sequence, sample_rate: int = 16_000,
                  rules: DecodingRules | None = None, max_new_tokens: int | None = None,
                  spoken: bool = False) -> list[str] | list[Tensor]:
    """Answers to spoken questions about images (one image per clip): text (the svqa layout), or with `spoken`
    16 kHz audio, the model speaking its answer in a turn-marked conversation (chat layout). Greedy unless
    `rules` say otherwise."""
    codes = encode_speech(model, clips, sample_rate)
    pixels = as_images(images, model.image_size)
    if len(pixels) == 1 and len(codes) > 1:
        pixels = pixels.expand(len(codes), -1, -1, -1)
    if len(pixels) != len(codes):
        raise ValueError(f"{len(codes)} spoken questions for {len(pixels)} images: give one image per question")
    und = model.und_features(pixels)
    task = "chat" if spoken else "svqa"
    samples = [model.sample(Example(task, speech=c, image=pixels[i]), und[i], None) for i, c in enumerate(codes)]
    rules = rules or DecodingRules(response=DecodingRules().instruction, may_open=("speech",) if spoken else ())
    ids = decode(model, samples, rules, max_new_tokens=max_new_tokens or (_max_tokens(model, 4.0) if spoken else 16))
    if not spoken:
        return [model.text.decode(row) for row in ids]
    return _audio(model, [torch.tensor([t - model.speech_offset for t in row if t >= model.speech_offset],
                                       dtype=torch.long) for row in ids])
