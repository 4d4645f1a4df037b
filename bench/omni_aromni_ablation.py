"""AR-Omni's two training mechanisms, each with and without, same steps, data and seed, scored by the ShapeWorld
judges on the validation split.

    python bench/omni_aromni_ablation.py perceptual --text-tokenizer DIR --image-tokenizer RASTER/checkpoint
    python bench/omni_aromni_ablation.py reweight --text-tokenizer DIR --image-tokenizer RASTER/checkpoint \\
        --speech-codec SPEECH/checkpoint

perceptual: `ar-omni-tiny` text-to-image only, perceptual_weight 0 vs 1 (OmniConfig.perceptual_weight); the score
is GenEval-style overall. reweight: captioning + ASR (+ VQA beside them), plain CE vs the last 4 response tokens
of captioning and ASR weighted 2.0 (Recipe.reweight); the scores are caption parse-correct and ASR WER. Prints
seconds per step and the scores of each run (with ~100 items a difference under ~0.05 is noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["perceptual", "reweight"])
    ap.add_argument("--text-tokenizer", required=True)
    ap.add_argument("--image-tokenizer", required=True, help="a single-scale (raster) image tokenizer")
    ap.add_argument("--speech-codec", help="speech codec checkpoint (reweight: for ASR)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--num", type=int, default=100, help="validation items per task")
    ap.add_argument("--tail", type=int, default=4)
    args = ap.parse_args()

    from omniar.omni.evaluate import ImageSampling, evaluate_model
    from omniar.omni.model import OmniConfig, OmniModel, Reweighting, omni_preset
    from omniar.omni.train import Recipe, train_omni
    from omniar.tokenizers.image import ImageTokenizer
    from omniar.tokenizers.speech import SpeechCodec
    from omniar.tokenizers.text import TextTokenizer

    text = TextTokenizer.load(args.text_tokenizer)
    image = ImageTokenizer.from_pretrained(args.image_tokenizer)
    base = omni_preset("ar-omni-tiny")
    if args.what == "perceptual":
        runs = [("off", base, Reweighting()), ("weight 1", OmniConfig.from_dict(
            {**dataclasses.asdict(base), "perceptual_weight": 1.0}), Reweighting())]
        tasks, evals = {"t2i": 1.0}, ("t2i",)
        print(f"ar-omni-tiny, t2i only, {args.steps} steps x 16, {args.num} validation prompts, cfg 3\n")
        print("| perceptual alignment | s/step | overall | single | colors | counting | two objects | colour attr "
              "| position |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        if not args.speech_codec:
            raise SystemExit("reweight needs --speech-codec (ASR is one of the reweighted tasks)")
        runs = [("plain CE", base, Reweighting()),
                (f"last {args.tail} x 2.0", base, Reweighting(tail=args.tail, tail_weight=2.0))]
        tasks, evals = {"caption": 0.4, "asr": 0.4, "vqa": 0.2}, ("caption", "asr")
        print(f"ar-omni-tiny, caption 0.4 / asr 0.4 / vqa 0.2, {args.steps} steps x 16, {args.num} validation "
              f"items\n")
        print("| reweighting | s/step | caption parse-correct | ASR WER |")
        print("|---|---:|---:|---:|")
    codec = SpeechCodec.from_pretrained(args.speech_codec) if args.speech_codec else None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, config, reweight) in enumerate(runs):
            torch.manual_seed(0)
            model = OmniModel(config, text, image, codec)
            t0 = time.perf_counter()
            train_omni(model, f"{tmp}/{i}", Recipe(tasks=tasks, steps=args.steps, reweight=reweight), progress=False)
            per_step = (time.perf_counter() - t0) / args.steps
            s = evaluate_model(model, f"{tmp}/{i}/eval", num=args.num, tasks=evals, split="val",
                               sampling=ImageSampling(cfg=3.0), progress=False)["scores"]
            if args.what == "perceptual":
                t = s["t2i"]
                print(f"| {name} | {per_step:.3f} | {t['overall']:.3f} | {t['single_object']:.2f} | "
                      f"{t['colors']:.2f} | {t['counting']:.2f} | {t['two_object']:.2f} | {t['color_attr']:.2f} | "
                      f"{t['position']:.2f} |")
            else:
                print(f"| {name} | {per_step:.3f} | {s['caption']['correct']:.3f} | {s['asr']['wer']:.3f} |")


if __name__ == "__main__":
    main()
