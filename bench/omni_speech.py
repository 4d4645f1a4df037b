"""Streaming text-to-speech with the unified model: first-audio latency and real-time factor at batch 1.

    python bench/omni_speech.py [--model CKPT] [--seconds 2 4] [--repeats 5] [--chunk 5]

`speak_stream` decodes the codes chunk by chunk with the codec's causal streaming decoder while the decoder
generates them; the baseline, measured in the same run, is the whole utterance: `speak` generates every code and
then decodes the audio, so its first audio arrives at the end. By default the model is a random `ar-omni-tiny`
with the default speech codec (the work per code does not depend on the weights) and is made to speak exactly
`seconds` of audio (the <eoa> is held back until then: DecodingRules.min_speech_tokens). Prints, per length, the
median over rounds of: time to first audio (streamed) and to all audio (whole), the compute real-time factor of
each (seconds of compute per second of audio), and the largest difference between streamed and whole audio.
Targets (issue 6): first chunk <= 200 ms and RTF <= 0.5 at batch 1 for the tiny preset.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def random_model():
    from omniar.data.shapeworld.corpus import world_text
    from omniar.omni.model import OmniModel, omni_preset
    from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
    from omniar.tokenizers.speech import SpeechCodec, SpeechCodecConfig
    from omniar.tokenizers.text import TextTokenizer

    torch.manual_seed(0)
    text = TextTokenizer.train(list(world_text(300)))
    image = ImageTokenizer(ImageTokenizerConfig(scales=(8,)))
    return OmniModel(omni_preset("ar-omni-tiny"), text, image, SpeechCodec(SpeechCodecConfig())).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="trained OmniModel checkpoint with a speech codec (default: random ar-omni-tiny)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=5, help="codes per streamed chunk (5 = 100 ms)")
    ap.add_argument("--text", default="a small yellow triangle left of two blue circles")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from omniar.generation.fsm import DecodingRules
    from omniar.omni.model import OmniModel
    from omniar.omni.speech import speak, speak_stream

    model = OmniModel.from_pretrained(args.model) if args.model else random_model()
    if model.speech_codec is None:
        raise SystemExit(f"{args.model} has no speech codec")
    codec = model.speech_codec
    n_dec = sum(p.numel() for p in model.decoder.parameters()) / 1e6
    n_codec = sum(p.numel() for p in codec.parameters()) / 1e6
    print(f"machine: {platform.machine()} | {torch.get_num_threads()} threads | torch {torch.__version__}")
    print(f"model: {args.model or 'random ar-omni-tiny'} ({n_dec:.2f}M decoder, {n_codec:.2f}M codec, "
          f"{codec.config.tokens_per_second:.0f} codes/s), chunk {args.chunk} codes, batch 1, median of "
          f"{args.repeats} rounds\n")
    print("| audio s | first audio streamed (ms) | all audio, whole (ms) | ratio | RTF streamed | RTF whole | "
          "max abs streamed - whole |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for seconds in args.seconds:
        n = int(seconds * codec.config.tokens_per_second)
        rules = DecodingRules(min_speech_tokens=n) if not args.model else None
        speak_stream_kw = dict(rules=rules, max_seconds=seconds, chunk=args.chunk)
        list(speak_stream(model, args.text, **speak_stream_kw))  # warm-up
        first, rtf_s, whole_t, rtf_w, diff = [], [], [], [], 0.0
        for _ in range(args.repeats):
            timings: dict = {}
            streamed = torch.cat(list(speak_stream(model, args.text, timings=timings, **speak_stream_kw)))
            first.append(timings["first_chunk_s"])
            rtf_s.append(timings["rtf"])
            t0 = time.perf_counter()
            whole = speak(model, [args.text], rules=rules, max_seconds=seconds)[0]
            t = time.perf_counter() - t0
            whole_t.append(t)
            rtf_w.append(t / (len(whole) / codec.config.sample_rate))
            diff = max(diff, float((streamed - whole).abs().max()))
        f, w = statistics.median(first), statistics.median(whole_t)
        print(f"| {len(whole) / codec.config.sample_rate:.2f} | {1000 * f:.0f} | {1000 * w:.0f} | {w / f:.1f}x | "
              f"{statistics.median(rtf_s):.3f} | {statistics.median(rtf_w):.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
