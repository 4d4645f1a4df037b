"""The ShapeWorld benchmark over a predictions file: any model's outputs, scored by the independent judges.

A predictions file is JSONL (paths relative to it), one record per test item:
  {"task": "t2i",     "prompt": "a red circle left of a blue square", "image": "gen/0.png"}
  {"task": "vqa",     "question": "what color is the star?", "answer": "red", "prediction": "red"}
  {"task": "caption", "scene": {...}, "prediction": "a red star"}           (scene: ground-truth description)
  {"task": "edit",    "instruction": "remove the red star", "source": "a.png", "edited": "b.png"}
  {"task": "tts",     "text": "three green triangles", "audio": "tts/0.flac"}    (optional "reference_audio":
                      the same text's ground-truth speech; then the WER of those and the ratio are reported too)
  {"task": "asr",     "text": "three green triangles", "prediction": "three green triangles"}
  {"task": "svqa",    "question": "...", "answer": "red", "prediction": "red"}  (the question was spoken)
`write_reference` writes such a file from the ground truth of the test split (the ceiling, and the format).
Models produce their predictions through their own issues' generation code and are scored here.
"""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf
from PIL import Image

from omniar.audio.recognizer import word_error_rate
from omniar.data.manifest import ManifestError, load_audio, load_image, read_manifest
from omniar.data.shapeworld.dataset import make_sample
from omniar.data.shapeworld.judge import caption_correct, score_answers, score_edits, score_images
from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import Scene
from omniar.data.shapeworld.speech import Voice, recognizer, speak

TASKS = ("t2i", "vqa", "caption", "edit", "tts", "asr", "svqa")
_FIELDS = {"t2i": ("prompt", "image"), "vqa": ("question", "answer", "prediction"), "caption": ("scene", "prediction"),
           "edit": ("instruction", "source", "edited"), "tts": ("text", "audio"), "asr": ("text", "prediction"),
           "svqa": ("question", "answer", "prediction")}


def evaluate(path: str | Path) -> dict:
    """Scores per task present in the predictions file."""
    path = Path(path)
    root = path.parent
    by_task: dict[str, list[tuple[str, dict]]] = {}
    for n, r in read_manifest(path):
        where = f"{path}:{n}: "
        task = r.get("task")
        if task not in _FIELDS:
            raise ManifestError(f"{where}unknown task {task!r}; known: {', '.join(TASKS)}")
        missing = [f for f in _FIELDS[task] if f not in r]
        if missing:
            raise ManifestError(f"{where}{task} record lacks {', '.join(missing)}")
        by_task.setdefault(task, []).append((where, r))
    scores: dict[str, dict] = {}
    if "t2i" in by_task:
        rows = by_task["t2i"]
        images = [load_image(root / r["image"], w) for w, r in rows]
        scores["t2i"] = score_images([r["prompt"] for _, r in rows], images)
    for task in ("vqa", "svqa"):
        if task in by_task:
            rows = [r for _, r in by_task[task]]
            scores[task] = {"exact_match": score_answers([r["prediction"] for r in rows], [r["answer"] for r in rows]),
                            "count": len(rows)}
    if "caption" in by_task:
        rows = [r for _, r in by_task["caption"]]
        ok = [caption_correct(r["prediction"], Scene.from_dict(r["scene"]).objects) for r in rows]
        scores["caption"] = {"correct": sum(ok) / len(ok), "count": len(ok)}
    if "edit" in by_task:
        rows = by_task["edit"]
        scores["edit"] = score_edits([r["instruction"] for _, r in rows], [load_image(root / r["source"], w)
                                     for w, r in rows], [load_image(root / r["edited"], w) for w, r in rows])
    if "tts" in by_task:
        rows = by_task["tts"]
        texts = [r["text"] for _, r in rows]
        hyps = [_hear(load_audio(root / r["audio"], where=w)) for w, r in rows]
        scores["tts"] = {"wer": word_error_rate(texts, hyps), "count": len(rows)}
        refs = [(w, r) for w, r in rows if "reference_audio" in r]
        if refs and len(refs) == len(rows):  # the recognizer's WER on ground-truth speech of the same texts
            ref = word_error_rate(texts, [_hear(load_audio(root / r["reference_audio"], where=w)) for w, r in rows])
            scores["tts"].update(wer_reference=ref, wer_ratio=scores["tts"]["wer"] / max(ref, 1e-9))
    if "asr" in by_task:
        rows = [r for _, r in by_task["asr"]]
        scores["asr"] = {"wer": word_error_rate([r["text"] for r in rows], [r["prediction"] for r in rows]),
                         "count": len(rows)}
    return scores


def _hear(wav) -> str:
    """The speech judge's transcript; '' for audio it refuses (silence, or too short to hold a word)."""
    try:
        return recognizer().transcribe(wav)
    except ValueError:
        return ""


def write_reference(out: str | Path, num: int = 50, split: str = "test") -> Path:
    """A predictions file whose outputs are the ground truth of `num` samples of `split`, for every task."""
    out = Path(out)
    (out / "media").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num):
        s = make_sample(split, i)
        scene = Scene.from_dict(s["scene"])
        image = f"media/{i:05d}.png"
        Image.fromarray(render(scene)).save(out / image)
        lines.append({"task": "t2i", "prompt": s["caption"], "image": image})
        lines.append({"task": "vqa", "question": s["question"], "answer": s["answer"], "prediction": s["answer"]})
        lines.append({"task": "caption", "scene": s["scene"], "prediction": s["caption"]})
        if s["edit"] is not None:
            edited = f"media/{i:05d}-edit.png"
            Image.fromarray(render(Scene.from_dict(s["edit"]["scene"]))).save(out / edited)
            lines.append({"task": "edit", "instruction": s["edit"]["instruction"], "source": image, "edited": edited})
        audio = f"media/{i:05d}.flac"
        sf.write(out / audio, speak(s["caption"], Voice(**s["voice"])), 16000, format="FLAC", subtype="PCM_16")
        lines.append({"task": "tts", "text": s["caption"], "audio": audio})
        lines.append({"task": "asr", "text": s["caption"], "prediction": s["caption"]})
    path = out / "predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def format_scores(scores: dict) -> str:
    rows = ["| task | metric | value | items |", "|---|---|---:|---:|"]
    for task, sc in scores.items():
        for metric, value in sc.items():
            if metric != "count":
                rows.append(f"| {task} | {metric} | {value:.3f} | {sc.get('count', '')} |")
    return "\n".join(rows)
