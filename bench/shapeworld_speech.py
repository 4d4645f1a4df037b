"""The speech judge's ceiling: WER of the grammar-constrained recognizer on ground-truth espeak-ng speech.

    python bench/shapeworld_speech.py [--captions 300]

Test captions (seed 2, all prompt kinds) are spoken by each voice of ShapeWorld (default rate and pitch) and by the
world's random voice sampler, then transcribed; any TTS model is compared with this ceiling.
"""

from __future__ import annotations

import argparse
import random
import time

from omniar.audio.recognizer import word_error_rate
from omniar.data.shapeworld.speech import VOICES, Voice, recognizer, sample_voice, speak
from omniar.data.shapeworld.tasks import sample_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(2)
    captions = [sample_prompt(rng).text for _ in range(args.captions)]
    rec = recognizer()
    print(f"{len(captions)} test captions, {sum(len(c.split()) for c in captions)} words")
    print()
    print("| voice | WER | synthesis + recognition |")
    print("|---|---:|---:|")
    voices = [(name, lambda name=name: Voice(name)) for name in VOICES]
    voices.append(("random voice, rate 150-185, pitch 40-60", lambda: sample_voice(rng)))
    for label, make in voices:
        t = time.perf_counter()
        hyps = [rec.transcribe(speak(c, make())) for c in captions]
        per = (time.perf_counter() - t) / len(captions) * 1e3
        print(f"| {label} | {word_error_rate(captions, hyps):.2%} | {per:.0f} ms/caption |")


if __name__ == "__main__":
    main()
