"""`make demo` for now: a text-only train-and-generate run on the built-in toy corpus, with a report.

Makes the corpus, trains the `text-tiny` decoder on 2 CPU cores in a couple of minutes, measures held-out loss,
generates continuations with the KV cache, judges them against the corpus grammar, and writes a report.
The multimodal ShapeWorld demo replaces this in a later issue.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from omniar.data.toy import corpus, is_grammatical
from omniar.generation import SamplingParams, generate
from omniar.stream.collate import collate
from omniar.stream.segment import Sample, Segment
from omniar.train.losses import weighted_cross_entropy
from omniar.train.text import train_text

PROMPTS = ["a big red", "there are", "the blue", "a green star and", "a small yellow circle is", "the white"]


def held_out_loss(model, tokenizer, lines: list[str]) -> float:
    batch = collate([Sample([Segment("text", tokenizer.encode(t, eos=True), loss=True)]) for t in lines],
                    pad_id=tokenizer.pad)
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    return weighted_cross_entropy(logits, batch.labels, batch.loss_weights).item()


def run_demo(out: str | Path = "out/demo", steps: int = 400, seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    train_lines, val_lines = corpus(20_000, seed=seed), corpus(256, seed=seed + 1)
    model, tokenizer, log = train_text(train_lines, out, steps=steps, seed=seed, progress=progress)
    train_s = time.perf_counter() - t0

    prompts = PROMPTS * 4
    ids = [tokenizer.encode(p) for p in prompts]
    t1 = time.perf_counter()
    greedy = generate(model, ids[: len(PROMPTS)], 48, SamplingParams(temperature=0.0), eos_id=tokenizer.eos,
                      pad_id=tokenizer.pad)
    sampled = generate(model, ids, 48, SamplingParams(temperature=0.8, top_p=0.95), eos_id=tokenizer.eos,
                       pad_id=tokenizer.pad, generator=torch.Generator().manual_seed(seed))
    gen_s = time.perf_counter() - t1
    rows = []
    for kind, outs, ps in (("greedy", greedy, PROMPTS), ("sampled", sampled, prompts)):
        for p, o in zip(ps, outs):
            text = p + tokenizer.decode(o)
            rows.append({"mode": kind, "prompt": p, "text": text, "grammatical": is_grammatical(text)})
    grammatical = sum(r["grammatical"] for r in rows if r["mode"] == "sampled") / len(prompts)
    report = {
        "model": model.num_parameters(),
        "train_steps": steps,
        "train_seconds": round(train_s, 1),
        "train_tokens_per_s": round(log[-1]["tokens_per_s"]) if log else None,
        "final_train_loss": round(log[-1]["loss"], 4) if log else None,
        "held_out_loss": round(held_out_loss(model, tokenizer, val_lines), 4),
        "grammatical_sampled": grammatical,
        "grammatical_greedy": sum(r["grammatical"] for r in rows if r["mode"] == "greedy") / len(PROMPTS),
        "generate_seconds": round(gen_s, 2),
        "samples": rows,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lines = ["# omniar demo (text-only toy corpus)", "",
             f"- model: {report['model']['total']:,} parameters; {steps} steps in {report['train_seconds']} s "
             f"({report['train_tokens_per_s']} tokens/s)",
             f"- loss: train {report['final_train_loss']}, held-out {report['held_out_loss']} (nats/byte)",
             f"- grammatical continuations: sampled {grammatical:.0%}, greedy {report['grammatical_greedy']:.0%}",
             "", "| mode | text | grammatical |", "|---|---|---|"]
    lines += [f"| {r['mode']} | {r['text']} | {'yes' if r['grammatical'] else 'no'} |" for r in rows]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report
