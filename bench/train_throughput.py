"""Training throughput: a 6-layer, 256-wide decoder with 3 modality experts vs the same model dense.

    python bench/train_throughput.py [--rows 8] [--seq 256] [--steps 10]

Each step is forward + backward + AdamW on rows whose positions are a third text, a third image-understanding and
a third image-generation tokens (so the expert model really routes). Achieved GFLOP/s counts 6 x (active matmul
parameters, head included) + 12 x layers x hidden x seq per token (PaLM's estimate), and is compared with the
fp32 matmul peak measured in the same run (best 2048^3 matmul).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from omniar import OmniDecoder, PositionMeta, preset
from omniar.modality import Modality
from omniar.train import weighted_cross_entropy


def matmul_peak() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e9


def matmul_params(model: OmniDecoder) -> int:
    """Parameters a token multiplies by: active linears of every block, plus the output head."""
    per_token = 0
    for block in model.blocks:
        per_token += sum(p.numel() for p in block.mixer.parameters() if p.dim() == 2)
        per_token += max(sum(p.numel() for p in e.parameters()) for e in block.ffn.experts)
    return per_token + model.config.vocab_size * model.config.hidden_size


def measure(model: OmniDecoder, rows: int, seq: int, steps: int) -> float:
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (rows, seq))
    meta = PositionMeta.text(rows, seq)
    third = seq // 3
    meta.modality = torch.full((rows, seq), int(Modality.TEXT))
    meta.modality[:, third : 2 * third] = int(Modality.IMAGE_UND)
    meta.modality[:, 2 * third :] = int(Modality.IMAGE_GEN)
    labels = torch.roll(ids, -1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = weighted_cross_entropy(model(ids, meta=meta).logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return rows * seq * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    peak = matmul_peak()
    print(f"machine: {platform.machine()} | {os.cpu_count()} cpus | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | fp32 matmul peak {peak:.0f} GFLOP/s (2048^3)")
    print(f"batch: {args.rows} rows x {args.seq} tokens, forward + backward + AdamW, {args.steps} timed steps")
    print()
    print("| model | params total | params active | tokens/s | GFLOP/s | % of peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, kw in (("dense", dict(experts=("shared",), routing={})), ("3 experts", {})):
        model = OmniDecoder(preset("experts-tiny", **kw))
        counts = model.num_parameters()
        tps = measure(model, args.rows, args.seq, args.steps)
        c = model.config
        flops_per_token = 6 * matmul_params(model) + 12 * c.num_layers * c.hidden_size * args.seq
        gflops = tps * flops_per_token / 1e9
        print(f"| {name} | {counts['total'] / 1e6:.2f}M | {counts['active'] / 1e6:.2f}M | {tps:,.0f} | "
              f"{gflops:.1f} | {100 * gflops / peak:.0f}% |")


if __name__ == "__main__":
    main()
