"""Self-training: the model draws images for training prompts, its own understanding path keeps the best, and the
generation side learns from them (rejection-sampling fine-tuning: RAFT, Dong et al. 2023; ReST, Gulcehre et al.
2023).

A unified model can grade its own drawings. For each of `prompts` training prompts the model draws `candidates`
images at the benchmark's sampling, and scores each by the log-likelihood of the prompt as its caption
(`rerank.caption_scores`: "would you have described this image with these words?"); the best candidate of a prompt
is its drawing, and of each prompt kind (single object, counting, two objects, ...) the `top` share of prompts whose
drawing scored highest is kept - where the captioner is most sure, it is most often right (BENCHMARKS.md
"Self-training"). The generation side then fine-tunes on those drawings, with `real_share` of the text-to-image
examples the prompts' own renders, which keep what the captioner does not check well (how many objects there are),
and `edit_share` of each batch edits, which the generation side draws too and would otherwise forget.

Training data are the model's own samples, so what it learns is to draw more often what it already draws when it
draws well: the distribution sharpens towards its good modes instead of spreading over every image the prompt
allows. Nothing outside the model is consulted: the prompts are the train split's (no held-out composition), the
judge never sees a drawing, and only the generation side learns (`GENERATION_SIDE`: the parameters every task shares,
the understanding path and the text expert are held), so the captioner that grades the drawings, and every answer
and caption, stay exactly what they were (where each expert has attention projections of its own, as in
`onecat-tiny`; with shared attention they move a little).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omniar.checkpoint import read_tensors, recover_directory, weights_digest, write_directory, write_tensors
from omniar.generation.sampling import SamplingParams
from omniar.omni.generate import T2I_CFG, T2I_TEMPERATURE
from omniar.omni.model import Example, OmniModel
from omniar.omni.rerank import generate_best_of
from omniar.omni.train import SHARED, TEXT_EXPERT, UNDERSTANDING, held_parameters, shapeworld_example
from omniar.train.interrupt import GracefulStop, run_in_chunks
from omniar.train.trainer import TrainConfig, Trainer

DRAWS, DRAWS_NAME, DRAWS_META = "draws", "drawn.safetensors", "draws.json"  # out/draws: the drawings so far
RUN_NAME = "self_training.json"  # out/: the settings a run was started with
SAVE_DRAWS = 500  # prompts drawn for between saves of the draws
EDIT_POOL = 1_000_000  # the train split's samples the edits come from (as the stages')
# what self-training holds: the edits stage's (omni/train.py), so that only the generation side learns
GENERATION_SIDE = SHARED + UNDERSTANDING + TEXT_EXPERT


@dataclass
class SelfTraining:
    prompts: int = 3000  # training prompts the model draws for
    candidates: int = 4  # drawings per prompt; its best by the caption score is the prompt's drawing
    top: float = 0.5  # of each prompt kind, the share of prompts kept: those whose drawing scored highest
    real_share: float = 0.5  # of a batch's text-to-image examples: the prompts' own renders (the rest: drawings)
    # of a batch: edits (the train split's, as the edits stage trains them): the generation side draws them too, and
    # without them it forgets them (text-to-image alone took one demo model's edits 0.749 / 0.879 -> 0.639 / 0.581)
    edit_share: float = 0.3
    # prompt kinds whose drawings are not learnt (their renders still are): the caption score finds a drawing with
    # the right count no more often than one sample does (3,000 train prompts: 0.425 against 0.411), and learning
    # its picks took counting 0.42 -> 0.25 (BENCHMARKS.md "Self-training")
    skip_kinds: tuple[str, ...] = ("counting",)
    steps: int = 400
    batch: int = 16
    lr: float = 5e-4  # Muon and AdamW as the stages (warm-up 10, cosine to a tenth)
    first: int = 500_000  # the train split's sample index of the first prompt
    chunk: int = 50  # prompts drawn for per call

    def __post_init__(self) -> None:
        if min(self.prompts, self.candidates, self.steps, self.batch, self.chunk) < 1 or self.first < 0:
            raise ValueError(f"prompts, candidates, steps, batch and chunk must be >= 1 and first >= 0, got "
                             f"{self.prompts}, {self.candidates}, {self.steps}, {self.batch}, {self.chunk}, "
                             f"{self.first}")
        if not 0 < self.top <= 1:
            raise ValueError(f"top (the share of each prompt kind kept) must lie in (0, 1], got {self.top}")
        if not 0 <= self.real_share < 1 or not 0 <= self.edit_share < 1:
            raise ValueError(f"real_share and edit_share must lie in [0, 1) (1 would train on no drawing), got "
                             f"{self.real_share} and {self.edit_share}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        from omniar.data.shapeworld.language import KINDS as PROMPT_KINDS

        self.skip_kinds = tuple(self.skip_kinds)
        unknown = [k for k in self.skip_kinds if k not in PROMPT_KINDS]
        if unknown or len(self.skip_kinds) == len(PROMPT_KINDS):
            raise ValueError(f"skip_kinds {self.skip_kinds}: " + (f"unknown kind(s) {unknown}; known: "
                             f"{', '.join(PROMPT_KINDS)}" if unknown else "every kind skipped leaves no drawing"))


def choose(scores: np.ndarray, kinds: list[str], top: float, skip: tuple[str, ...] = ()) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """(best, kept): for caption scores (prompts, candidates), each prompt's best candidate and, per kind of
    prompt, whether its best score is among the `top` share of that kind's (the ceiling of it: at least one); no
    prompt of a kind in `skip` is kept."""
    scores = np.asarray(scores)
    best = scores.argmax(1)
    value = scores[np.arange(len(scores)), best]
    kinds = np.asarray(kinds)
    kept = np.zeros(len(scores), bool)
    for kind in dict.fromkeys(k for k in kinds.tolist() if k not in skip):
        members = np.flatnonzero(kinds == kind)
        n = int(np.ceil(top * len(members)))
        kept[members[np.argsort(-value[members], kind="stable")[:n]]] = True
    return best, kept


def draw_best(model: OmniModel, prompts: list[str], candidates: int, seeds: list[int]) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Each prompt's best of `candidates` drawings at the benchmark's sampling (uint8 (P, S, S, 3)), the drawings of
    prompt i from `seeds[i]`, and the candidates' caption scores (P, candidates)."""
    from omniar.tokenizers.train_image import to_uint8

    chosen, scores = generate_best_of(model, prompts, candidates, params=SamplingParams(temperature=T2I_TEMPERATURE),
                                      cfg=T2I_CFG, seeds=seeds, return_scores=True)
    return to_uint8(chosen), scores.float().cpu().numpy()


def _draw(model: OmniModel, prompts: list[str], key: dict, config: SelfTraining, directory: Path, progress: bool,
          stop: GracefulStop) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's best drawing (uint8 (P, S, S, 3)) and its candidates' caption scores (P, candidates): those
    saved in `directory` by an earlier call with the same `key` (model, seed, candidates, first), the rest drawn
    `config.chunk` prompts at a time (`draw_best`) and saved every `SAVE_DRAWS` prompts and on a signal."""
    recover_directory(directory)
    images, scores = [], []
    if (directory / DRAWS_META).is_file():
        saved = json.loads((directory / DRAWS_META).read_text())
        changed = [k for k in key if saved.get(k) != key[k]]
        if changed:
            differ = ", ".join(f"{saved.get(k)} here, {key[k]} asked" for k in changed)
            raise ValueError(f"cannot draw on from {directory}: its drawings were made with another "
                             f"{', '.join(changed)} ({differ}); use a new output directory")
        tensors = read_tensors(directory / DRAWS_NAME)
        images, scores = [tensors["images"][: len(prompts)].numpy()], [tensors["scores"][: len(prompts)].numpy()]
    done = len(images[0]) if images else 0

    def save(done: int) -> None:
        def write(staging: Path) -> None:
            write_tensors(staging / DRAWS_NAME, {"images": torch.from_numpy(np.concatenate(images)),
                                                 "scores": torch.from_numpy(np.concatenate(scores))})
            (staging / DRAWS_META).write_text(json.dumps({**key, "prompts": done}, indent=2))

        write_directory(directory, write)

    def draw(start: int, end: int) -> None:
        seeds = [key["seed"] * 1_000_003 + config.first + i for i in range(start, end)]
        chosen, s = draw_best(model, prompts[start:end], config.candidates, seeds)
        images.append(chosen)
        scores.append(s)

    run_in_chunks(stop, len(prompts), done, config.chunk, SAVE_DRAWS, draw, save, directory, progress,
                  "self-training: draws", "prompt")
    return np.concatenate(images), np.concatenate(scores)


def self_train(model: OmniModel, out: str | Path, config: SelfTraining | None = None, seed: int = 0,
               progress: bool = True, stop_at: int | None = None) -> dict:
    """Self-train `model` in place (module docstring) and save it to `out/checkpoint` (with the optimizer state and
    the step); `out/metrics.jsonl` logs the loss. Returns a summary.

    Resumable like every training loop here: the drawings are saved to `out/draws` as they are made (every
    `SAVE_DRAWS` prompts) and the training by the trainer, both on Ctrl-C or SIGTERM too; the same call again draws
    on and trains on from where it stopped (a batch is a function of the step). `stop_at` ends the training early,
    with a checkpoint (for tests)."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    config = config or SelfTraining()
    model._require_fp32("self-training")
    out = Path(out)
    samples = [make_sample("train", config.first + i) for i in range(config.prompts)]
    prompts = [s["caption"] for s in samples]
    # what a resume must match (as JSON has it: tuples are lists there)
    run = json.loads(json.dumps({"seed": seed, "config": dataclasses.asdict(config)}))
    if (out / RUN_NAME).is_file():
        saved = json.loads((out / RUN_NAME).read_text())
        changed = [k for k in run if saved.get(k) != run[k]]
        if changed:
            raise ValueError(f"cannot go on with {out}: it was self-trained with another {' and '.join(changed)}; "
                             "use a new output directory")
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_NAME).write_text(json.dumps(run, indent=2))
    t0 = time.perf_counter()
    # the model as given (a resumed run's weights come from its checkpoint after the draws)
    key = {"model": weights_digest(model), "seed": seed, "candidates": config.candidates, "first": config.first}
    stop = GracefulStop()
    with stop:
        drawn, scores = _draw(model, prompts, key, config, out / DRAWS, progress, stop)
    draw_seconds = time.perf_counter() - t0
    _, kept = choose(scores, [s["kind"] for s in samples], config.top, config.skip_kinds)
    side = model.image_size
    mine = [Example("t2i", prompts[i], image=drawn[i]) for i in np.flatnonzero(kept)]
    if not mine:
        raise ValueError(f"no drawing kept: the {config.prompts} prompt(s) are all of the kinds skipped "
                         f"({', '.join(config.skip_kinds)}); draw for more prompts")
    real = [Example("t2i", s["caption"], image=render(Scene.from_dict(s["scene"]), side)) for s in samples] \
        if config.real_share > 0 else []

    def batch_for_step(step: int, shard: int = 0, shards: int = 1):
        rng = np.random.default_rng([seed, step])
        own = rng.integers(0, len(mine), config.batch)
        renders = rng.random(config.batch) < config.real_share
        pick = rng.integers(0, max(1, len(real)), config.batch)
        edits = rng.random(config.batch) < config.edit_share
        scenes = rng.integers(0, EDIT_POOL, config.batch)
        examples = [shapeworld_example("edit", int(scenes[j]), side) if edits[j] else real[pick[j]] if renders[j]
                    else mine[own[j]] for j in range(config.batch)]
        return model.batch(examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + step), pack=True)

    held = held_parameters(model, GENERATION_SIDE)
    for p in held:
        p.requires_grad_(False)
    try:
        train = TrainConfig(steps=config.steps, lr=config.lr, warmup=min(10, config.steps // 10), min_lr_ratio=0.1,
                            log_every=10, optimizer="muon")
        trainer = Trainer(model, batch_for_step, train, out_dir=out, progress=progress,
                          loss_fn=lambda m, b: m.loss(*b))
        if (out / "checkpoint" / "trainer.json").is_file():
            trainer.resume(out / "checkpoint")
        logs = trainer.fit(stop_at)
    finally:
        for p in held:
            p.requires_grad_(True)
        model.eval()
    tenth = max(1, len(logs) // 10)
    return {"prompts": config.prompts, "kept": int(kept.sum()), "steps": trainer.step,
            "score_kept": float(scores[kept].max(1).mean()), "score_all": float(scores.mean()),
            "loss_first": float(np.mean([m["loss"] for m in logs[:tenth]])) if logs else None,
            "loss_last": float(np.mean([m["loss"] for m in logs[-tenth:]])) if logs else None,
            "draw_seconds": round(draw_seconds, 1), "seconds": round(time.perf_counter() - t0, 1)}
