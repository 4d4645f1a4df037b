"""Where an OmniModel training step's time goes, per device: building the batch (images encoded by the frozen
tokenizer, the stream collated), forward, backward (with clipping) and the optimizer step (Muon: Newton-Schulz for
the hidden matrices, in bf16 where its matmuls are native, AdamW for the rest).

    python bench/omni_train_step.py [--preset onecat-tiny] [--mix stage2|stage1|t2i] [--examples 16] [--steps 8]
                                    [--devices cpu cuda] [--variants base expert_attention=true ...]
                                    [--linear auto onednn mkl] [--rounds 1]

Untrained tokenizers (the work per step does not depend on their weights); the ShapeWorld examples are rendered
before timing (rendering is the data loader's work, not the model's). Each device trains 2 warm-up steps, then
times `--steps` more; the table gives the mean milliseconds of each phase, the stream positions per step, examples
per second, and each row's step time against the first row's, measured in the same run. `--variants` times
decoder configurations side by side (`key=value`, the value as JSON; `base`: the preset as it is), each on every
device. `--linear` times the CPU's linear layers in training through oneDNN's matmul or MKL's (`F.linear`), or
`auto`: the package's choice for this CPU (`omniar.model.linear.ONEDNN_TRAINING`). With `--rounds` every row is
timed that many times, the rows in turn, and each phase averaged over the rounds (this machine's speed drifts).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import omniar.model.linear as linear_module
from omniar.cli import parse_pairs
from omniar.data.shapeworld.corpus import world_text
from omniar.omni.model import OmniModel, omni_preset
from omniar.omni.train import STAGES, Recipe, examples_for_step
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from omniar.tokenizers.text import TextTokenizer
from omniar.train.trainer import TrainConfig, make_optimizer

MIXES = {"stage1": STAGES["stage1"].tasks, "stage2": STAGES["stage2"].tasks, "t2i": {"t2i": 1.0}}
PHASES = ("batch", "forward", "backward", "optimizer")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_variant(spec: str) -> dict:
    """`base` -> {}; `key=value[,key=value]` -> decoder overrides (values as JSON, else strings)."""
    return {} if spec == "base" else parse_pairs(spec.split(","))


def time_device(device: torch.device, preset: str, text: TextTokenizer, examples: list, steps: int,
                overrides: dict | None = None) -> dict:
    torch.manual_seed(0)
    model = OmniModel(omni_preset(preset, **(overrides or {})), text,
                      ImageTokenizer(ImageTokenizerConfig())).to(device).train()
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3))
    totals = dict.fromkeys(PHASES, 0.0)
    positions = 0
    for i, step_examples in enumerate(examples):
        marks = [time.perf_counter()]
        batch = model.batch(step_examples, generator=torch.Generator().manual_seed(i), pack=True)
        sync(device)
        marks.append(time.perf_counter())
        loss, _ = model.loss(*batch)
        sync(device)
        marks.append(time.perf_counter())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        sync(device)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        marks.append(time.perf_counter())
        if i >= len(examples) - steps:  # the first ones warm up
            for name, a, b in zip(PHASES, marks, marks[1:]):
                totals[name] += (b - a) / steps
            positions += int((batch[0].meta.doc >= 0).sum())
    return {**totals, "positions": positions // steps, "step": sum(totals.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="onecat-tiny")
    ap.add_argument("--mix", choices=sorted(MIXES), default="stage2", help="the task mix of the examples")
    ap.add_argument("--examples", type=int, default=16, help="examples per step")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--devices", nargs="+", default=["cpu"])
    ap.add_argument("--variants", nargs="+", default=["base"],
                    help="decoder configurations to time: base, or key=value[,key=value] overrides")
    ap.add_argument("--linear", nargs="+", choices=("auto", "onednn", "mkl"), default=["auto"],
                    help="the CPU's linear layers in training: oneDNN's matmul, MKL's, or this CPU's default")
    ap.add_argument("--rounds", type=int, default=1, help="times each row is timed, the rows in turn")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"error: --rounds must be >= 1, got {args.rounds}")
    if "onednn" in args.linear and not linear_module.ONEDNN:
        raise SystemExit("error: --linear onednn, but this torch build (or CPU) has no oneDNN matmul")
    devices = [torch.device(d) for d in args.devices]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit("error: --devices names cuda, but this torch sees no CUDA device")
    text = TextTokenizer.train(list(world_text(2000)), vocab_size=400)
    recipe = Recipe(tasks=MIXES[args.mix], examples_per_step=args.examples, questions=4)
    examples = [examples_for_step(recipe, i, ImageTokenizerConfig().image_size) for i in range(2 + args.steps)]
    variants = {v: parse_variant(v) for v in args.variants}
    default = linear_module.ONEDNN_TRAINING
    # the CPU's matmul choice means nothing on another device: one row there, its linear column "-"
    configs = [(d, v, lin) for d in devices for v in variants for lin in (args.linear if d.type == "cpu" else ["-"])]
    sums: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for d, v, lin in configs:
            linear_module.ONEDNN_TRAINING = {"auto": default, "onednn": True, "mkl": False}.get(lin, default)
            r = time_device(d, args.preset, text, examples, args.steps, variants[v])
            acc = sums.setdefault((d, v, lin), dict.fromkeys(r, 0))
            for key, value in r.items():
                acc[key] += value / args.rounds
    linear_module.ONEDNN_TRAINING = default
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"{platform.processor() or platform.machine()} ({cpu}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}"
          f"; {args.preset}, mix {args.mix}, {args.examples} examples a step, {args.steps} timed steps, "
          f"{args.rounds} round(s); linear auto = {'onednn' if default else 'mkl'}\n")
    print("| device | variant | linear | batch ms | forward ms | backward ms | optimizer ms | step ms "
          "| positions / step | examples/s | step time vs first |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = sums[configs[0]]["step"]
    for (device, variant, lin), r in sums.items():
        print(f"| {device} | {variant} | {lin} | " + " | ".join(f"{1000 * r[p]:.0f}" for p in PHASES)
              + f" | {1000 * r['step']:.0f} | {int(r['positions'])} | {args.examples / r['step']:.1f} "
              f"| {r['step'] / first:.2f}x |")


if __name__ == "__main__":
    main()
