"""Image generation speed: next-scale decoding (OneCAT / Infinity) vs the raster baseline (Chameleon / AR-Omni, one
token per forward pass) at the same resolution, in one run.

    python bench/omni_generation.py [--batches 1 16] [--repeats 6] [--cfg 3]
                                    [--next-scale CKPT --raster CKPT]   # trained models instead of random ones
                                    [--dtype bfloat16]                  # both decoders in bf16 (decode_in)
                                    [--raster-decoder onecat-tiny]      # raster with onecat-tiny's own decoder
                                    [--unguided-scales 1]               # next-scale's finest scale unguided

Both models are `onecat-tiny`-sized decoders (raster-tiny has no scale adapter, and neither the experts' own
attention nor the prompt expert; `--raster-decoder onecat-tiny` decodes raster tokens with `onecat-tiny`'s decoder
itself, its adapter off: the same model but for the tokenizer, as issue 5 words it); by default their weights and
tokenizers are random - the work per image does not depend on the weights - with 64 x 64 images, 16 bits per
token: next-scale over scales 1, 2, 3, 4, 6, 8 (130 tokens, 6 forward passes), raster over the 8 x 8 grid (64
tokens, 64 passes). Guidance rows (cfg != 1) ride in the same batch. Counts the decoder's forward passes per
call with a hook, times the two in interleaved rounds (ABBA) after a warm-up, and prints images/s (best round)
and the per-round ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from decode import paired_times  # bench/decode.py: interleaved (ABBA) rounds


def random_model(preset: str, scales: tuple[int, ...], raster: bool = False):
    """`preset` with random weights over an untrained tokenizer of `scales`; `raster`: its decoder made to decode
    raster tokens (one scale: no scale adapter)."""
    import dataclasses

    from omniar.data.shapeworld.corpus import world_text
    from omniar.omni.model import OmniModel, omni_preset
    from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
    from omniar.tokenizers.text import TextTokenizer

    torch.manual_seed(0)
    text = TextTokenizer.train(list(world_text(300)))
    config = omni_preset(preset, **({"scale_adapter_rank": 0} if raster else {}))
    config = dataclasses.replace(config, generation="raster") if raster else config
    return OmniModel(config, text, ImageTokenizer(ImageTokenizerConfig(scales=scales))).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--next-scale", help="trained next-scale OmniModel checkpoint")
    ap.add_argument("--raster", help="trained raster OmniModel checkpoint")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the decoders' arithmetic (OmniModel.decode_in), the same for both")
    ap.add_argument("--raster-decoder", choices=("raster-tiny", "onecat-tiny"), default="raster-tiny",
                    help="the random raster model: the raster-tiny preset, or onecat-tiny's decoder decoding raster")
    ap.add_argument("--unguided-scales", type=int, default=0, metavar="N",
                    help="next-scale draws its last N scales without guidance, their guidance rows dropped from "
                         "those passes (generate_images' unguided_scales); raster guides every token")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from omniar.data.shapeworld.dataset import make_sample
    from omniar.generation.sampling import SamplingParams
    from omniar.omni.generate import generate_images
    from omniar.omni.model import OmniModel

    models = {"next-scale": OmniModel.from_pretrained(args.next_scale) if args.next_scale else
              random_model("onecat-tiny", (1, 2, 3, 4, 6, 8)),
              "raster": OmniModel.from_pretrained(args.raster) if args.raster else
              random_model(args.raster_decoder, (8,), raster=args.raster_decoder != "raster-tiny")}
    for name, m in models.items():
        m.decode_in(getattr(torch, args.dtype))
        if m.image_size != models["next-scale"].image_size:
            raise SystemExit(f"{name} makes {m.image_size}px images, next-scale {models['next-scale'].image_size}px")
    params = SamplingParams(temperature=1.0)
    print(f"machine: {platform.machine()} | {torch.get_num_threads()} threads | torch {torch.__version__}")
    desc = [f"{k} {sum(p.numel() for p in m.decoder.parameters()) / 1e6:.2f}M decoder, scales {m.scales}"
            for k, m in models.items()]
    weights = "" if args.next_scale else ", random weights"
    unguided = f" (next-scale's last {args.unguided_scales} scale(s) unguided)" if args.unguided_scales else ""
    print(f"models: {'; '.join(desc)}; {args.dtype}; {m.image_size}px, cfg {args.cfg}{unguided}, per-bit sampling "
          f"(temperature 1), {args.repeats} rounds{weights}")
    print()
    print("| batch | next-scale passes | raster passes | next-scale img/s (best) | raster img/s (best) "
          "| ratio of bests | ratio per round: median [min, max] |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for b in args.batches:
        prompts = [make_sample("test", i)["caption"] for i in range(b)]
        passes = {}
        fns = []
        for name, m in models.items():
            kw = {"unguided_scales": args.unguided_scales} if name == "next-scale" else {}
            calls: list[int] = []
            hook = m.decoder.register_forward_hook(lambda mod, a, o, calls=calls: calls.append(1))
            with torch.inference_mode():
                generate_images(m, prompts, cfg=args.cfg, params=params, seeds=list(range(b)), **kw)
            hook.remove()
            passes[name] = len(calls)
            fns.append(lambda m=m, p=prompts, kw=kw: generate_images(m, p, cfg=args.cfg, params=params,
                                                                     seeds=list(range(len(p))), **kw))
        with torch.inference_mode():
            ns, ra = paired_times(fns, args.repeats)
        ratios = [r / n for n, r in zip(ns, ra)]
        print(f"| {b} | {passes['next-scale']} | {passes['raster']} | {b / min(ns):.1f} | {b / min(ra):.1f} | "
              f"{min(ra) / min(ns):.2f}x | {statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}] |")


if __name__ == "__main__":
    main()
