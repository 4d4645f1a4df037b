"""Grammar-constrained speech recognition with pocketsphinx (its wheel ships an English acoustic model), and WER.

Constraining the recognizer to the world's grammar (JSGF) makes it an accurate, model-independent judge of
spoken output: it can only answer with sentences the world can say.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 16_000
PAD_SECONDS = 0.3  # silence added around an utterance: the recognizer's endpointing wants some
DITHER = 0.002  # digital silence upsets cepstral mean normalisation; a whisper of noise does not


class GrammarRecognizer:
    def __init__(self, jsgf: str):
        from pocketsphinx import Config, Decoder, get_model_path

        model = get_model_path()
        self._grammar = tempfile.NamedTemporaryFile("w", suffix=".gram", delete=False)
        self._grammar.write(jsgf)
        self._grammar.close()
        config = Config(hmm=os.path.join(model, "en-us", "en-us"), samprate=SAMPLE_RATE, loglevel="FATAL",
                        dict=os.path.join(model, "en-us", "cmudict-en-us.dict"), jsgf=self._grammar.name)
        self.decoder = Decoder(config)

    def __del__(self) -> None:
        if getattr(self, "_grammar", None) is not None:
            try:
                os.unlink(self._grammar.name)
            except OSError:
                pass

    def transcribe(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
        """Text of one utterance (mono float in [-1, 1] at 16 kHz); '' when nothing in the grammar fits."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the recognizer needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected mono audio (samples,), got shape {wav.shape}")
        if len(wav) == 0 or float(np.abs(wav).max()) < 1e-4:
            raise ValueError("empty or silent audio")
        pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), dtype=np.float32)
        wav = np.concatenate([pad, wav, pad])
        wav = wav + DITHER * np.random.default_rng(len(wav)).standard_normal(len(wav)).astype(np.float32)
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(Levenshtein distance over words, reference length)."""
    ref, hyp = reference.lower().split(), hypothesis.lower().split()
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1]))
    return row[len(hyp)], len(ref)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits / total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = [word_errors(r, h) for r, h in zip(references, hypotheses)]
    return sum(e for e, _ in errors) / max(1, sum(n for _, n in errors))
