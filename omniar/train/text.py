"""Recipe: train a text-only decoder on a list of lines (the toy corpus, or a user's text file)."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path

from omniar.model.config import preset
from omniar.model.decoder import OmniDecoder
from omniar.stream.collate import Batch, collate
from omniar.stream.segment import Sample, Segment
from omniar.tokenizers.bytes import ByteTokenizer
from omniar.train.trainer import TrainConfig, Trainer


def text_batches(lines: Sequence[str], tokenizer: ByteTokenizer, rows: int, seq_len: int, seed: int = 0):
    """`batch_for_step`: each step packs random lines (<bos> text <eos>) into `rows` rows of at most `seq_len`."""
    encoded = [tokenizer.encode(line, bos=True, eos=True)[:seq_len] for line in lines]
    if not encoded:
        raise ValueError("no training text")
    mean_len = sum(map(len, encoded)) / len(encoded)
    per_step = max(1, int(rows * seq_len / mean_len * 0.95))

    def batch_for_step(step: int) -> Batch:
        rng = random.Random(seed * 1_000_003 + step)
        picks = [encoded[rng.randrange(len(encoded))] for _ in range(per_step)]
        return collate([Sample([Segment("text", ids, loss=True)]) for ids in picks], max_len=seq_len,
                       pad_id=tokenizer.pad)

    return batch_for_step


def train_text(lines: Sequence[str], out: str | Path, preset_name: str = "text-tiny", steps: int = 300,
               rows: int = 16, seq_len: int = 128, lr: float = 3e-3, seed: int = 0, progress: bool = True,
               **overrides) -> tuple[OmniDecoder, ByteTokenizer, list[dict]]:
    """Train from scratch, or resume out/checkpoint; writes out/checkpoint (model, optimizer, trainer state),
    tokenizer.json, metrics.jsonl."""
    import torch

    torch.manual_seed(seed)
    tokenizer = ByteTokenizer()
    model = OmniDecoder(preset(preset_name, vocab_size=tokenizer.vocab_size, **overrides))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, text_batches(lines, tokenizer, rows, seq_len, seed), TrainConfig(steps=steps, lr=lr),
                      out_dir=out, progress=progress)
    if (out / "checkpoint" / "trainer.json").is_file():
        trainer.resume(out / "checkpoint")
        if progress:
            print(f"resuming {out / 'checkpoint'} at step {trainer.step}", file=sys.stderr)
    log = trainer.fit()
    tokenizer.save(out / "checkpoint")
    return model.eval(), tokenizer, log
