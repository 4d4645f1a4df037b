"""A plain training loop: AdamW (or Muon for the hidden matrices, train/muon.py), warm-up + cosine learning rate,
gradient clipping, progress bar, JSONL metrics, atomic checkpoints (model + optimizer + step, all safetensors/JSON)
and exact resume.

Nothing is lost when a run is cut short: `fit` saves a checkpoint every `save_minutes` of training (and every
`save_every` steps if set), and a first Ctrl-C (SIGINT) or SIGTERM lets the step in progress finish, saves, and then
stops with KeyboardInterrupt / SystemExit (train/interrupt.py); a second Ctrl-C stops at once. Running the same
command again resumes.

Data comes from `batch_for_step(step)`, a pure function of the step, so a resumed run sees exactly the batches the
uninterrupted run would have seen (resume == uninterrupted is a test). With `shards` > 1 a step's batch comes in
pieces, `batch_for_step(step, shard, shards)`, each its own forward and backward (gradient accumulation), and
with a `parallel` (`omniar.train.parallel.DataParallel`) the pieces are shared out among processes. The batch is
a `Batch` for a plain decoder (task-weighted cross-entropy), or anything a `loss_fn(model, batch) -> (loss,
{name: value})` understands, e.g. an `OmniModel`'s (batch, target bits).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from omniar.checkpoint import TRAINER_NAME, load_training_state, recover_directory, save_training_checkpoint
from omniar.model.decoder import OmniDecoder
from omniar.stream.collate import Batch
from omniar.train.interrupt import GracefulStop
from omniar.train.losses import weighted_cross_entropy
from omniar.train.metrics import MetricsLog
from omniar.train.muon import Muon
from omniar.train.parallel import DataParallel


def warm_cosine(step: int, steps: int, lr: float, warmup: int = 100, floor: float = 0.1) -> float:
    """The tokenizers' schedule: linear warm-up over `warmup` steps times a cosine from lr down to floor * lr over
    all `steps` (a function of the step, so resumed runs follow it exactly)."""
    warm = min(1.0, (step + 1) / warmup)
    return lr * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / steps)))


@dataclass
class TrainConfig:
    steps: int = 300
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # "adamw", or "muon": Muon for the 2-D weights inside the decoder blocks, AdamW for the rest (train/muon.py)
    optimizer: str = "adamw"
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints; 0: by time only
    save_minutes: float = 10.0  # minutes of training between checkpoints (0: none before the end)
    # None: the cosine spans the steps after the warm-up; n: the rate holds at lr until the last n steps, over
    # which the cosine runs (warmup-stable-decay)
    decay_steps: int | None = None

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        start = self.warmup if self.decay_steps is None else max(self.warmup, self.steps - self.decay_steps)
        if step < start:
            return self.lr
        progress = (step - start) / max(1, self.steps - start)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


OPTIMIZERS = ("adamw", "muon")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only; or Muon for the matrices inside the decoder blocks (the hidden
    weights: attention and expert FFNs) with AdamW for the rest. Frozen parameters stay out."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for _, p in named if p.dim() < 2]
    if config.optimizer == "adamw":
        decay = [p for _, p in named if p.dim() >= 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=config.lr, betas=config.betas, fused=False)
    if config.optimizer == "muon":
        hidden = [p for n, p in named if p.dim() == 2 and ".blocks." in f".{n}"]
        ids = {id(p) for p in hidden}
        other = [p for _, p in named if p.dim() >= 2 and id(p) not in ids]
        return Muon([{"params": hidden, "muon": True, "weight_decay": config.weight_decay},
                     {"params": other, "weight_decay": config.weight_decay},
                     {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def decoder_loss(model: OmniDecoder, batch: Batch) -> tuple[Tensor, dict]:
    """Task-weighted next-token cross-entropy of a plain decoder."""
    out = model(**batch.model_inputs())
    return weighted_cross_entropy(out.logits, batch.labels, batch.loss_weights), {}


class Trainer:
    def __init__(self, model: nn.Module, batch_for_step: Callable[[int], Any], config: TrainConfig,
                 out_dir: str | Path | None = None, progress: bool = True,
                 loss_fn: Callable[[nn.Module, Any], tuple[Tensor, dict]] | None = None,
                 shards: int = 1, parallel: DataParallel | None = None):
        self.model, self.batch_for_step, self.config = model, batch_for_step, config
        self.loss_fn = loss_fn or decoder_loss
        self.parallel, self.shards = parallel, shards
        rank, world = (parallel.rank, parallel.world) if parallel is not None else (0, 1)
        if shards < 1 or shards % world:
            raise ValueError(f"a step's {shards} shard(s) cannot be shared out evenly among {world} processes")
        self.local_shards = range(rank * shards // world, (rank + 1) * shards // world)
        self.is_main = rank == 0
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            recover_directory(self.out_dir / "checkpoint")  # a save cut short between its two renames
        self.progress = progress and self.is_main
        # frozen parts (a tokenizer) stay out of the optimizer and the gradient all-reduce
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if parallel is not None:
            parallel.broadcast_(model)  # every process starts from rank 0's weights
        self.optimizer = make_optimizer(model, config)
        self.step = 0

    def batches(self, step: int) -> list:
        """This process's pieces of step `step`'s batch."""
        if self.shards == 1:
            return [self.batch_for_step(step)]
        return [self.batch_for_step(step, shard, self.shards) for shard in self.local_shards]

    def train_step(self, batches: list, requests: tuple[bool, bool] = (False, False)) -> dict:
        """One optimizer step on this process's pieces of the batch (each piece's loss weighs 1 / shards). The
        logged loss (and each named part) is the mean over the pieces that have it, across all processes; the
        step's `tokens` are counted over all processes too. `requests` (save after this step, stop after it) come
        back in "save" and "stop", agreed by all processes (any one's request holds for all)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, list[float]] = {}
        tokens = 0
        for batch in batches:
            loss, parts = self.loss_fn(self.model, batch)
            (loss / self.shards).backward()
            for name, value in {"loss": loss.item(), **parts}.items():
                sums.setdefault(name, []).append(value)
            collated = batch[0] if isinstance(batch, tuple) else batch
            # stream positions; a batch without a stream (images, labels) counts its items
            tokens += int((collated.meta.doc >= 0).sum()) if isinstance(collated, Batch) else len(collated)
        if self.parallel is not None:
            self.parallel.sum_gradients_(self.trainable)
            gathered = self.parallel.gather((sums, tokens, requests))
            sums = {}
            for rank_sums, _, _ in gathered:
                for name, values in rank_sums.items():
                    sums.setdefault(name, []).extend(values)
            tokens = sum(t for _, t, _ in gathered)
            requests = tuple(any(r[i] for _, _, r in gathered) for i in range(2))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        lr = self.config.lr_at(self.step)
        self.step += 1
        means = {name: sum(v) / len(v) for name, v in sums.items()}
        return {"step": self.step, **means, "grad_norm": float(grad_norm), "lr": lr, "tokens": tokens,
                "save": requests[0], "stop": requests[1]}

    def fit(self, until: int | None = None) -> list[dict]:
        """Train to step `until` (default: config.steps); returns the logged metrics. With an `out_dir`, saves a
        checkpoint on the way (`save_minutes`, `save_every`) and at the end, and a first Ctrl-C or SIGTERM stops
        after the step in progress with a checkpoint (module docstring)."""
        until = self.config.steps if until is None else until
        log = []
        writes = self.out_dir is not None and self.is_main
        metrics_file = MetricsLog(self.out_dir / "metrics.jsonl", self.step) if writes else None
        bar = tqdm(total=until, initial=self.step, disable=not self.progress, desc="train", unit="step")
        tokens, t0 = 0, time.perf_counter()
        saved_at = t0
        stop, halted = GracefulStop(enabled=self.out_dir is not None), False
        with stop:
            try:
                while self.step < until:
                    due = (self.is_main and self.config.save_minutes > 0
                           and time.perf_counter() - saved_at >= 60 * self.config.save_minutes)
                    m = self.train_step(self.batches(self.step), (due, stop.signal is not None))
                    tokens += m.pop("tokens")
                    save, halt = m.pop("save"), m.pop("stop")
                    halt = halt or (self.parallel is None and stop.signal is not None)  # one that came mid-step
                    if self.step % self.config.log_every == 0 or self.step == until or halt:
                        m["tokens_per_s"] = tokens / (time.perf_counter() - t0)
                        log.append(m)
                        bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
                        if metrics_file is not None:
                            metrics_file.write(m)
                    bar.update(1)
                    if halt:
                        halted = True
                        break
                    if self.out_dir is not None and (save or self.config.save_every
                                                     and self.step % self.config.save_every == 0):
                        self.save(self.out_dir / "checkpoint")
                        saved_at = time.perf_counter()
            finally:
                bar.close()
                if metrics_file is not None:
                    metrics_file.close()
            if self.out_dir is not None:
                self.save(self.out_dir / "checkpoint")
        # stopped by a signal, saved (in a data-parallel run all processes stop at the step they agreed on)
        if halted or (self.parallel is None and stop.signal is not None):
            stop.stop(self.step, until, self.out_dir / "checkpoint", announce=self.is_main)
        return log

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Model (config.json + model.safetensors), optimizer.safetensors and trainer.json, written together into a
        directory beside `directory` and swapped in, so a save cut short leaves the previous checkpoint whole (by
        the main process; the others wait for it)."""
        directory = Path(directory)
        if self.is_main:
            save_training_checkpoint(directory, self.model, self.optimizer, self.step, config=asdict(self.config))
        if self.parallel is not None:
            self.parallel.barrier()
        return directory

    def resume(self, directory: str | Path) -> None:
        """Load model weights, optimizer state and step from `save`'s directory."""
        directory = Path(directory)
        meta = directory / TRAINER_NAME  # checkpoints from before the option were all AdamW's
        saved = (json.loads(meta.read_text()).get("config") or {}).get("optimizer", "adamw") if meta.is_file() else None
        if saved is not None and saved != self.config.optimizer:
            raise ValueError(f"{directory} was trained with {saved}; this trainer uses {self.config.optimizer} "
                             f"(set TrainConfig.optimizer / Recipe.optimizer to {saved!r} to resume it)")
        self.step = load_training_state(directory, self.optimizer)["step"]  # first: it names a non-training dir
        self.model.load_state_dict(type(self.model).from_pretrained(directory).state_dict())

