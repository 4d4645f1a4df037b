"""OneCAT training throughput on the CPU: one process vs data-parallel processes.

    python bench/train_parallel.py [--steps 30] [--examples 16] [--rounds 2]

`onecat-tiny` on the demo's stage-2 task mix (16 examples a step), untrained tokenizers (the work per step does
not depend on their weights). Three ways to run the same steps, interleaved over `rounds`:
  1 process, all threads, the step in one piece      (the baseline)
  1 process, all threads, the step in 2 pieces       (gradient accumulation: what data parallelism computes)
  2 processes x (threads / 2), one piece each        (omniar.train.parallel over gloo)
Each run trains 5 warm-up steps (not timed), then resumes from that checkpoint and times `--steps` more; tokens/s
counts the non-padding positions of every piece. The ratio column is against the baseline of the same round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from omniar.data.shapeworld.corpus import world_text
from omniar.omni.model import OmniModel, omni_preset
from omniar.omni.train import STAGES, train_omni
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from omniar.tokenizers.text import TextTokenizer
from omniar.train.parallel import DataParallel, launch


def build(tokenizers: Path) -> OmniModel:
    torch.manual_seed(0)
    return OmniModel(omni_preset("onecat-tiny"), TextTokenizer.load(tokenizers / "text"),
                     ImageTokenizer.from_pretrained(tokenizers / "image"))


def run(out: Path, tokenizers: Path, recipe, steps: int, parallel: DataParallel | None = None) -> tuple:
    """(tokens/s, seconds) of `steps` timed steps after 5 warm-up steps."""
    model = build(tokenizers)
    train_omni(model, out, recipe, progress=False, until=5, parallel=parallel)
    t = time.perf_counter()
    log = train_omni(model, out, recipe, progress=False, until=5 + steps, parallel=parallel)
    return log[-1]["tokens_per_s"], time.perf_counter() - t


def _worker(out: str, tokenizers: str, recipe, steps: int, result: str) -> None:
    parallel = DataParallel()
    tok_s, seconds = run(Path(out), Path(tokenizers), recipe, steps, parallel)
    if parallel.is_main:
        Path(result).write_text(json.dumps({"tokens_per_s": tok_s, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        TextTokenizer.train(list(world_text(2000))).save(tmp / "tok" / "text")
        torch.manual_seed(0)
        ImageTokenizer(ImageTokenizerConfig()).save_pretrained(tmp / "tok" / "image")
        base = dataclasses.replace(STAGES["stage2"], examples_per_step=args.examples, steps=5 + args.steps)
        modes = [("1 process, 1 piece", 1, 1), ("1 process, 2 pieces", 1, 2), ("2 processes, 1 piece each", 2, 2)]
        for r in range(args.rounds):
            for name, world, shards in modes:
                recipe = dataclasses.replace(base, shards=shards)
                out = tmp / f"run-{r}-{world}-{shards}"
                if world == 1:
                    res = run(out, tmp / "tok", recipe, args.steps)
                else:
                    launch(_worker, world, str(out), str(tmp / "tok"), recipe, args.steps, str(out) + ".json",
                           threads=max(1, args.threads // world))
                    d = json.loads(Path(str(out) + ".json").read_text())
                    res = (d["tokens_per_s"], d["seconds"])
                results.setdefault(name, []).append(res)
                print(f"round {r} {name}: {res[0]:,.0f} tok/s, {res[1] / args.steps:.3f} s/step", flush=True)
    print(f"\nmachine: {platform.machine()} | {os.cpu_count()} cpus | torch {torch.__version__} | "
          f"threads {args.threads}")
    print(f"onecat-tiny, stage-2 task mix, {args.examples} examples/step, {args.steps} timed steps, "
          f"{args.rounds} rounds (interleaved)\n")
    print("| run | tokens/s (best) | s/step (best) | ratio to 1 process, 1 piece: per round |")
    print("|---|---:|---:|---|")
    base_runs = results[modes[0][0]]
    for name, *_ in modes:
        runs = results[name]
        ratios = [a[0] / b[0] for a, b in zip(runs, base_runs)]
        print(f"| {name} | {max(r[0] for r in runs):,.0f} | {min(r[1] for r in runs) / args.steps:.3f} | "
              f"{', '.join(f'{x:.2f}x' for x in ratios)} (median {statistics.median(ratios):.2f}x) |")


if __name__ == "__main__":
    main()
