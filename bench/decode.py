"""Decode throughput: omniar's cached greedy decoding vs transformers' `generate()` on the same Qwen2 weights.

    python bench/decode.py [--new-tokens 256] [--batches 1 8] [--repeats 8]

Builds a random Qwen2ForCausalLM shaped like the `qwen2-bench` preset (hidden 256, 6 layers, GQA 8/2, vocab
4096), saves it, loads it into omniar, checks both produce the same greedy tokens, then times both in
`--repeats` interleaved rounds after a warm-up, and prints best tokens/s and the per-round ratio (median and
range: this shared 2-core machine is noisy). transformers is a dev extra.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def paired_times(fns, repeats: int) -> list[list[float]]:
    """Wall times of each function per round. Runs are interleaved in alternating order (ABBA...), so a noisy
    neighbour, or whatever one run leaves in the caches, hits all of them alike; ratios are taken per round."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = list(enumerate(fns))
        for i, fn in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    from omniar import SamplingParams, generate
    from omniar.hf import load_qwen2
    from omniar.model.config import PRESETS

    hf_logging.set_verbosity_error()
    p = PRESETS["qwen2-bench"]
    torch.manual_seed(0)
    hf_cfg = Qwen2Config(vocab_size=p["vocab_size"], hidden_size=p["hidden_size"], num_hidden_layers=p["num_layers"],
                         num_attention_heads=p["num_heads"], num_key_value_heads=p["num_kv_heads"],
                         intermediate_size=p["intermediate_size"], rope_theta=p["rope_theta"],
                         tie_word_embeddings=p["tie_embeddings"], max_position_embeddings=4096)
    hf = Qwen2ForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_qwen2(d)
    greedy = SamplingParams(temperature=0.0)

    print(f"machine: {platform.machine()} {platform.processor() or ''} | {os.cpu_count()} cpus | torch "
          f"{torch.__version__} | threads {torch.get_num_threads()}")
    print(f"model: qwen2-bench, {sum(t.numel() for t in ours.parameters()) / 1e6:.2f}M params, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, {args.repeats} rounds")
    print()
    print("| batch | transformers tok/s (best) | omniar tok/s (best) | ratio of bests "
          "| ratio per round: median [min, max] |")
    print("|---:|---:|---:|---:|---|")
    for B in args.batches:
        prompt = torch.randint(0, p["vocab_size"], (B, args.prompt_len))

        def run_hf(prompt=prompt):
            with torch.no_grad():
                return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)[:, args.prompt_len:]

        def run_ours(prompt=prompt):
            return generate(ours, prompt, args.new_tokens, greedy)

        same = torch.equal(run_hf(), run_ours())
        hf_t, ours_t = paired_times([run_hf, run_ours], args.repeats)
        ratios = sorted(h / o for h, o in zip(hf_t, ours_t))
        n = B * args.new_tokens
        print(f"| {B} | {n / min(hf_t):,.0f} | {n / min(ours_t):,.0f} | {min(hf_t) / min(ours_t):.2f}x | "
              f"{statistics.median(ratios):.2f}x [{ratios[0]:.2f}, {ratios[-1]:.2f}] |" + ("" if same else
              " (tokens differ!)"))


if __name__ == "__main__":
    main()
