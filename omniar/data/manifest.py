"""Datasets described by a JSONL manifest: one JSON object per line, media paths relative to the manifest.

    {"image": "a.png", "caption": "a red circle"}
    {"audio": [{"path": "a.wav", "transcript": "a red circle"}]}
    {"image": "b.png", "question": "what color is the circle?", "answer": "red"}
    {"image": "c.png", "edit": {"instruction": "remove the red circle", "target": "c2.png"}}

ShapeWorld writes the same format. Every error names the manifest, the line and the file at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

SAMPLE_RATE = 16_000


class ManifestError(ValueError):
    pass


def load_image(path: str | Path, where: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{where}image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ManifestError(f"{where}cannot read image {path}: {e}") from None


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, where: str = "") -> np.ndarray:
    """Mono float32 at `sample_rate`; a file at another rate is an error (resample it first)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{where}audio file not found: {path}")
    try:
        wav, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ManifestError(f"{where}cannot read audio {path}: {e}") from None
    if rate != sample_rate:
        raise ManifestError(f"{where}audio {path} is {rate} Hz, expected {sample_rate} Hz")
    return wav.mean(axis=1)


def read_manifest(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-empty line; a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: malformed manifest line: {e}") from None
            if not isinstance(record, dict):
                raise ManifestError(f"{path}:{n}: a manifest line must be a JSON object, got {type(record).__name__}")
            yield n, record


def iter_samples(path: str | Path, load: tuple[str, ...] = ("image", "audio", "edit")) -> Iterator[dict]:
    """Records with their media loaded: `image` (array), `audio` (list of dicts with `wav`), `edit.target_image`."""
    path = Path(path)
    root = path.parent
    for n, record in read_manifest(path):
        where = f"{path}:{n}: "
        sample = dict(record)
        if "image" in load and "image" in record:
            sample["image"] = load_image(root / record["image"], where)
        if "audio" in load and "audio" in record:
            if not isinstance(record["audio"], list):
                raise ManifestError(f"{where}'audio' must be a list of {{path, transcript}} objects")
            sample["audio"] = []
            for a in record["audio"]:
                if not isinstance(a, dict) or "path" not in a:
                    raise ManifestError(f"{where}every audio entry needs a 'path'")
                sample["audio"].append({**a, "wav": load_audio(root / a["path"], where=where)})
        if "edit" in load and isinstance(record.get("edit"), dict) and "target" in record["edit"]:
            sample["edit"] = {**record["edit"], "target_image": load_image(root / record["edit"]["target"], where)}
        yield sample


TEXT_FIELDS = ("caption", "question", "answer", "text", "prediction")


def manifest_files(path: str | Path) -> list[Path]:
    """The manifests a training `--data` names: the file itself, or in a dataset directory its train.jsonl (else
    every *.jsonl in it)."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise ManifestError(f"manifest not found: {path}")
        return [path]
    files = [path / "train.jsonl"] if (path / "train.jsonl").is_file() else sorted(path.glob("*.jsonl"))
    if not files:
        raise ManifestError(f"no *.jsonl manifest in {path}")
    return files


def manifest_texts(path: str | Path) -> Iterator[str]:
    """Every text of a manifest (captions, questions, answers, edit instructions, transcripts), or of a plain text
    file (one text per line), or of a dataset directory's manifests (`manifest_files`)."""
    path = Path(path)
    if path.is_dir():
        for f in manifest_files(path):
            yield from manifest_texts(f)
        return
    if path.suffix != ".jsonl":
        if not path.is_file():
            raise ManifestError(f"text file not found: {path}")
        yield from (line for line in path.read_text().splitlines() if line.strip())
        return
    for _, r in read_manifest(path):
        yield from (r[k] for k in TEXT_FIELDS if isinstance(r.get(k), str))
        if isinstance(r.get("edit"), dict) and isinstance(r["edit"].get("instruction"), str):
            yield r["edit"]["instruction"]
        for a in r.get("audio", []) if isinstance(r.get("audio"), list) else []:
            if isinstance(a, dict) and isinstance(a.get("transcript"), str):
                yield a["transcript"]
