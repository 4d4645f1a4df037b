"""Materialise ShapeWorld as files: a JSONL manifest beside PNG images and FLAC speech, in shard folders.

The format is the one a user gives for their own data (`omniar.data.manifest`), so one loader reads both.
Every sample is a pure function of (split, index): splits never overlap, any range can be made in parallel,
and a dataset can be grown or re-made identically. Speech files are content-addressed (text + voice), so an
utterance said twice is synthesised once, and re-making a dataset reuses them.

Held-out compositions: the (colour, shape) pairs of `HELD_OUT_PAIRS` and the (shape, relation, shape) triples
of `HELD_OUT_RELATIONS` never occur in train/val/test prompts; every prompt of the `heldout` split has one. Nor
are held-out pairs in those splits' images; only the text-free image pool (`pool_scenes`), which no prompt,
caption, question or label goes with, draws every pair.
"""

from __future__ import annotations

import hashlib
import json
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from tqdm.auto import tqdm

from omniar.data.shapeworld.language import Prompt
from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import Scene
from omniar.data.shapeworld.speech import Voice, sample_voice, speak
from omniar.data.shapeworld.tasks import KINDS, sample_edit, sample_prompt, sample_qa, scene_for_prompt

SPLITS = {"train": 0, "val": 1, "test": 2, "heldout": 3}
HELD_OUT_PAIRS = frozenset({("red", "star"), ("blue", "triangle"), ("yellow", "square"), ("purple", "circle")})
HELD_OUT_RELATIONS = frozenset({("circle", "above", "square"), ("star", "left of", "triangle")})
SHARD_SIZE = 1000


def is_held_out(prompt: Prompt) -> bool:
    if any((p.color, p.shape) in HELD_OUT_PAIRS for p in prompt.phrases):
        return True
    if prompt.relation is not None:
        return (prompt.phrases[0].shape, prompt.relation, prompt.phrases[1].shape) in HELD_OUT_RELATIONS
    return False


def mentions_held_out(text: str) -> bool:
    return any(f"{color} {shape}" in text for color, shape in HELD_OUT_PAIRS)


def sample_prompt_for_split(rng: random.Random, split: str) -> Prompt:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    while True:
        if split == "heldout":
            kind = rng.choice(KINDS)
            prompt = sample_prompt(rng, kind)
            if is_held_out(prompt):
                return prompt
        else:
            prompt = sample_prompt(rng, exclude=HELD_OUT_PAIRS)
            if not is_held_out(prompt):
                return prompt


def make_sample(split: str, index: int) -> dict:
    """The sample `index` of `split`: scene, prompt, QA, edit and voice, without media (pure function)."""
    rng = random.Random(f"shapeworld/{split}/{index}")
    prompt = sample_prompt_for_split(rng, split)
    exclude = () if split == "heldout" else HELD_OUT_PAIRS  # held-out pairs appear nowhere else, images included
    scene = scene_for_prompt(prompt, rng, exclude=exclude)
    qa = sample_qa(scene, rng)
    while exclude and mentions_held_out(qa.question):
        qa = sample_qa(scene, rng)
    edit = sample_edit(scene, rng, exclude=exclude)
    return {"id": f"{split}-{index:06d}", "split": split, "index": index, "kind": prompt.kind,
            "caption": prompt.text, "scene": scene.to_dict(), "question": qa.question, "answer": qa.answer,
            "qa_kind": qa.kind, "edit": None if edit is None else {
                "instruction": edit.instruction, "kind": edit.kind, "scene": edit.target.to_dict()},
            "voice": vars(sample_voice(rng))}


def pool_scenes(index: int) -> list[Scene]:
    """Scene `index` of the text-free image pool, with its edit's result where it has one: drawn as a train sample's
    scenes are, but with every (colour, shape) pair allowed, `HELD_OUT_PAIRS` included. The pool is for what reads
    images without text (the image tokenizer's decoder, `omni/decoder_post.py`): held-out compositions are never
    in a training prompt, and a decoder that has drawn every pair decodes a red star the model composes as a red
    star (BENCHMARKS.md "Held-out compositions: a decoder that has seen every pair")."""
    rng = random.Random(f"shapeworld/pool/{index}")
    scene = scene_for_prompt(sample_prompt(rng), rng)
    edit = sample_edit(scene, rng)
    return [scene] if edit is None else [scene, edit.target]


def more_questions(sample: dict, n: int) -> list[tuple[str, str]]:
    """Up to `n` further (question, answer) pairs about `sample`'s scene (a dict of `make_sample`), each different
    from the others and from the sample's own question, drawn like it (held-out pairs excluded outside `heldout`);
    a pure function of the sample, so training data stays reproducible."""
    from omniar.data.shapeworld.scene import Scene

    rng = random.Random(f"shapeworld/{sample['split']}/{sample['index']}/questions")
    scene, exclude = Scene.from_dict(sample["scene"]), sample["split"] != "heldout"
    seen, out = {sample["question"]}, []
    for _ in range(8 * n):  # small scenes have few distinct questions: give up after a few repeats
        if len(out) == n:
            break
        qa = sample_qa(scene, rng)
        if qa.question not in seen and not (exclude and mentions_held_out(qa.question)):
            seen.add(qa.question)
            out.append((qa.question, qa.answer))
    return out


def _speech(out: Path, text: str, voice: Voice) -> str:
    key = hashlib.sha1(f"{text}|{voice.name}|{voice.rate}|{voice.pitch}".encode()).hexdigest()[:16]
    rel = f"audio/{key[:2]}/{key}.flac"
    path = out / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        sf.write(tmp, speak(text, voice), 16000, format="FLAC", subtype="PCM_16")
        tmp.replace(path)
    return rel


def _materialise(args: tuple[str, str, int, int, int, bool]) -> list[dict]:
    """Write the media of samples [start, stop) of a split; return their manifest records."""
    from omniar.data.shapeworld.scene import Scene

    out_dir, split, start, stop, side, speech = args
    out = Path(out_dir)
    records = []
    for i in range(start, stop):
        s = make_sample(split, i)
        shard = f"{split}/shard-{i // SHARD_SIZE:05d}"
        (out / shard).mkdir(parents=True, exist_ok=True)
        s["image"] = f"{shard}/{i:06d}.png"
        Image.fromarray(render(Scene.from_dict(s["scene"]), side)).save(out / s["image"])
        if s["edit"] is not None:
            s["edit"]["target"] = f"{shard}/{i:06d}-edit.png"
            Image.fromarray(render(Scene.from_dict(s["edit"]["scene"]), side)).save(out / s["edit"]["target"])
        if speech:
            voice = Voice(**s["voice"])
            s["audio"] = [{"role": role, "transcript": s[role].rstrip("?"), "path": _speech(out, s[role], voice)}
                          for role in ("caption", "question", "answer")]
        records.append(s)
    return records


def make_dataset(out: str | Path, num: int, split: str = "train", side: int = 64, speech: bool = True,
                 workers: int = 2, start: int = 0, progress: bool = True) -> Path:
    """Write samples [start, start + num) of `split` under `out`; the manifest is `out/<split>.jsonl`."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    step = 250
    jobs = [(str(out), split, a, min(a + step, start + num), side, speech) for a in range(start, start + num, step)]
    manifest = out / f"{split}.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    bar = tqdm(total=num, disable=not progress, desc=f"shapeworld {split}", unit="sample")
    with tmp.open("w") as f:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for records in pool.map(_materialise, jobs):
                    f.writelines(json.dumps(r) + "\n" for r in records)
                    bar.update(len(records))
        else:
            for job in jobs:
                records = _materialise(job)
                f.writelines(json.dumps(r) + "\n" for r in records)
                bar.update(len(records))
    bar.close()
    tmp.replace(manifest)
    return manifest


def contact_sheet(records: list[dict], root: Path, columns: int = 8) -> Image.Image:
    """A grid of the records' images (edit targets beside their sources when present)."""
    images = [np.asarray(Image.open(root / r["image"]).convert("RGB")) for r in records]
    side = images[0].shape[0]
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * side, rows * side), (255, 255, 255))
    for k, img in enumerate(images):
        sheet.paste(Image.fromarray(img), ((k % columns) * side, (k // columns) * side))
    return sheet
