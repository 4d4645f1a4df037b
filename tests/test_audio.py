"""Speech synthesis (espeak-ng), resampling, the grammar-constrained recognizer and WER."""

import numpy as np
import pytest

from omniar.audio.recognizer import word_error_rate, word_errors
from omniar.audio.resample import resample
from omniar.data.shapeworld.speech import Voice, recognizer, speak


def test_resample_keeps_a_tone_and_the_duration():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s of audio: bin index == frequency in Hz
    with pytest.raises(ValueError, match="positive"):
        resample(tone, 0, 16000)


def test_synthesized_speech_is_audible_and_plausibly_long():
    wav = speak("a red circle left of a blue square")
    assert wav.dtype == np.float32 and wav.ndim == 1
    seconds = len(wav) / 16000
    assert 1.0 < seconds < 4.0  # eight words at ~170 words per minute
    assert np.sqrt(np.mean(wav**2)) > 0.01
    slow = speak("a red circle left of a blue square", Voice("en-us", rate=120))
    assert len(slow) > 1.2 * len(wav)


@pytest.mark.parametrize("call, message", [
    (lambda: speak("   "), "empty text"),
    (lambda: speak("hello", Voice("xx-nope")), "unknown espeak-ng voice"),
    (lambda: speak("hello", Voice(rate=10)), "rate must be"),
])
def test_bad_speech_requests_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_recognizer_transcribes_the_worlds_sentences():
    texts = ["a red circle left of a blue square", "three green triangles", "what color is the star",
             "yes", "move the pink square up", "how many cyan objects are there"]
    hyps = [recognizer().transcribe(speak(t)) for t in texts]
    assert word_error_rate(texts, hyps) <= 0.1


def test_recognizer_rejects_bad_audio():
    rec = recognizer()
    with pytest.raises(ValueError, match="16000 Hz"):
        rec.transcribe(np.zeros(100, np.float32) + 0.1, sample_rate=22050)
    with pytest.raises(ValueError, match="empty or silent"):
        rec.transcribe(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="mono"):
        rec.transcribe(np.ones((2, 100), np.float32) * 0.1)


def test_word_error_rate():
    assert word_errors("a red circle", "a red circle") == (0, 3)
    assert word_errors("a red circle", "the circle") == (2, 3)
    assert word_error_rate(["a b", "c d e"], ["a b", "c e"]) == pytest.approx(1 / 5)
