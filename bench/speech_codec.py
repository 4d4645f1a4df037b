"""The speech codec against the speech judge: WER on espeak-ng test speech before and after the codec.

    python bench/speech_codec.py [--model DIR | --out DIR] [--captions 300] [--chunk 5]

Without --model, trains the codec with the defaults of `omniar tokenizer train speech` (ShapeWorld train speech,
synthesized) into --out first, and reports the training time. Then: 300 test captions (seed 2, random voices, as in
bench/shapeworld_speech.py) are encoded, streamed back through the decoder `--chunk` tokens at a time (batch 1,
torch threads as set), and transcribed by the grammar-constrained recognizer, as are the originals.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from omniar.tokenizers.speech import STREAM_TOLERANCE, SpeechCodec
from omniar.tokenizers.train_speech import evaluate_speech_codec, shapeworld_speech, train_speech_codec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained codec (checkpoint directory); default: train one")
    ap.add_argument("--out", default="out/speech_codec", help="where to train (without --model)")
    ap.add_argument("--captions", type=int, default=300)
    ap.add_argument("--chunk", type=int, default=5, help="tokens per streaming push (5 = 100 ms)")
    args = ap.parse_args()
    minutes = None
    if args.model:
        codec = SpeechCodec.from_pretrained(args.model)
    else:
        t = time.perf_counter()
        codec = train_speech_codec(args.out, shapeworld_speech(2000, progress=True))
        minutes = (time.perf_counter() - t) / 60
    r = evaluate_speech_codec(codec, args.captions, chunk=args.chunk, progress=True)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"{r['captions']} test captions ({r['audio_seconds']} s), {r['parameters'] / 1e6:.2f}M parameters")
    print()
    print("| WER original | WER resynthesized | delta | codebook usage | tokens/s (bits/s) | streaming RTF "
          f"({args.chunk} tokens/push) | max abs chunked - whole | training |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    trained = "loaded" if minutes is None else f"{minutes:.1f} min"
    print(f"| {r['wer_original']:.2%} | {r['wer_resynthesized']:.2%} | {r['wer_delta'] * 100:+.2f} pt "
          f"| {r['codebook_usage']:.1%} of {r['codebook_size']} | {r['tokens_per_second']:.0f} "
          f"({r['bits_per_second']:.0f}) | {r['streaming_rtf']:.4f} | {r['chunked_vs_whole_max_abs']:.1e} "
          f"(tolerance {STREAM_TOLERANCE:.0e}) | {trained} |")


if __name__ == "__main__":
    main()
