"""ShapeWorld datasets on disk and the JSONL manifest loader (also for users' own data)."""

import json

import numpy as np
import pytest
import soundfile as sf

from omniar.cli import main
from omniar.data.manifest import ManifestError, iter_samples, load_audio, load_image, read_manifest
from omniar.data.shapeworld import Scene, parse_image
from omniar.data.shapeworld.dataset import (
    HELD_OUT_PAIRS,
    is_held_out,
    make_dataset,
    make_sample,
    mentions_held_out,
    pool_scenes,
)
from omniar.data.shapeworld.judge import prompt_satisfied
from omniar.data.shapeworld.language import parse_prompt


def test_samples_are_pure_functions_of_split_and_index():
    assert make_sample("train", 7) == make_sample("train", 7)
    assert make_sample("train", 7) != make_sample("test", 7)


def test_the_test_splits_questions_are_pinned():
    """The benchmark's questions and answers stay what they were when its scores were recorded (a change to the
    samplers, e.g. a new option for training questions, must not move them)."""
    import hashlib

    h = hashlib.sha256()
    for i in range(300):
        s = make_sample("test", i)
        h.update(f"{s['question']}|{s['answer']}\n".encode())
    assert h.hexdigest()[:16] == "146ef835c0e63212"


def test_held_out_compositions_never_reach_the_other_splits():
    for split in ("train", "val", "test"):
        for i in range(400):
            s = make_sample(split, i)
            assert not is_held_out(parse_prompt(s["caption"])), s["caption"]
            assert not mentions_held_out(s["question"])
            assert not any((o["color"], o["shape"]) in HELD_OUT_PAIRS for o in s["scene"]["objects"])
            if s["edit"]:
                assert not mentions_held_out(s["edit"]["instruction"])
                assert not any((o["color"], o["shape"]) in HELD_OUT_PAIRS for o in s["edit"]["scene"]["objects"])
    assert all(is_held_out(parse_prompt(make_sample("heldout", i)["caption"])) for i in range(200))


def test_the_image_pool_draws_every_pair_deterministically():
    """The text-free image pool (for the image decoder) is a pure function of its index, draws the held-out pairs
    too - about as often as the others - and not the train split's scenes; `shapeworld_images` renders it."""
    from omniar.data.shapeworld.world import COLORS, SHAPES
    from omniar.tokenizers.train_image import shapeworld_images

    assert pool_scenes(3) == pool_scenes(3) and pool_scenes(3) != pool_scenes(4)
    pairs = [(o.color, o.shape) for i in range(600) for scene in pool_scenes(i) for o in scene.objects]
    held = sum(p in HELD_OUT_PAIRS for p in pairs) / len(pairs)
    assert set(pairs) == {(c, s) for c in COLORS for s in SHAPES}
    assert 0.5 < held / (len(HELD_OUT_PAIRS) / (len(COLORS) * len(SHAPES))) < 1.5, held
    train = {json.dumps(make_sample("train", i)["scene"], sort_keys=True) for i in range(600)}
    assert not any(json.dumps(scene.to_dict(), sort_keys=True) in train for i in range(600) for scene in pool_scenes(i))
    images = shapeworld_images(7, "pool", side=32)
    assert images.shape == (7, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, shapeworld_images(7, "pool", side=32))
    assert not np.array_equal(images, shapeworld_images(7, "train", side=32))


def test_make_dataset_writes_a_manifest_the_loader_reads_back(tmp_path):
    manifest = make_dataset(tmp_path, 6, split="test", workers=1, progress=False)
    samples = list(iter_samples(manifest))
    assert [s["id"] for s in samples] == [f"test-{i:06d}" for i in range(6)]
    for s in samples:
        assert s["image"].shape == (64, 64, 3)
        assert prompt_satisfied(s["caption"], parse_image(s["image"]))  # the image shows its caption
        assert prompt_satisfied(s["caption"], Scene.from_dict(s["scene"]).objects)
        assert [a["role"] for a in s["audio"]] == ["caption", "question", "answer"]
        assert all(len(a["wav"]) > 1600 for a in s["audio"])
        if s["edit"]:
            assert s["edit"]["target_image"].shape == (64, 64, 3)
    again = make_dataset(tmp_path / "again", 6, split="test", workers=2, progress=False)
    assert [json.loads(x) for x in again.read_text().splitlines()] == [
        json.loads(x) for x in manifest.read_text().splitlines()]


def test_cli_makes_and_shows_a_dataset(tmp_path, capsys):
    main(["data", "make", "shapeworld", "--out", str(tmp_path), "--num", "3", "--no-speech", "--workers", "1"])
    main(["data", "show", str(tmp_path), "--num", "3"])
    assert (tmp_path / "show" / "train_contact_sheet.png").is_file()
    assert "contact sheet" in capsys.readouterr().out


def test_manifest_errors_name_the_file_and_line(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    sf.write(tmp_path / "22k.wav", np.zeros(2205, np.float32), 22050)
    m = tmp_path / "m.jsonl"
    cases = [
        ('{"image": "missing.png"}', "m.jsonl:1: image file not found"),
        ('{"image": "bad.png"}', "m.jsonl:1: cannot read image"),
        ('{"audio": [{"path": "22k.wav"}]}', "m.jsonl:1: audio .*22k.wav is 22050 Hz, expected 16000"),
        ('{"image": "ok.png"}\n{"image": ', "m.jsonl:2: malformed manifest line"),
        ('[1, 2]', "m.jsonl:1: a manifest line must be a JSON object"),
        ('{"audio": "x.wav"}', "'audio' must be a list"),
    ]
    for text, message in cases:
        m.write_text(text + "\n")
        with pytest.raises(ManifestError, match=message):
            list(iter_samples(m))
    with pytest.raises(ManifestError, match="manifest not found"):
        list(read_manifest(tmp_path / "none.jsonl"))
    assert load_image(tmp_path / "ok.png").shape == (8, 8, 3)
    with pytest.raises(ManifestError, match="audio file not found"):
        load_audio(tmp_path / "none.wav")


def test_benchmark_scores_reference_predictions_and_catches_wrong_ones(tmp_path, capsys):
    from omniar.data.shapeworld.benchmark import evaluate, write_reference

    path = write_reference(tmp_path, num=8)
    scores = evaluate(path)
    assert scores["t2i"]["overall"] == 1.0 and scores["vqa"]["exact_match"] == 1.0
    assert scores["caption"]["correct"] == 1.0 and scores["edit"]["satisfied"] == 1.0
    assert scores["asr"]["wer"] == 0.0 and scores["tts"]["wer"] <= 0.15
    records = [json.loads(line) for line in path.read_text().splitlines()]
    t2i = [r for r in records if r["task"] == "t2i"]
    wrong = [dict(r, image=t2i[(i + 1) % len(t2i)]["image"]) for i, r in enumerate(t2i)]  # someone else's image
    wrong += [dict(r, prediction="purple") for r in records if r["task"] == "vqa"]
    (tmp_path / "wrong.jsonl").write_text("".join(json.dumps(r) + "\n" for r in wrong))
    bad = evaluate(tmp_path / "wrong.jsonl")
    assert bad["t2i"]["overall"] < 0.5 and bad["vqa"]["exact_match"] < 0.5
    main(["eval", "shapeworld", "--predictions", str(path), "--json", str(tmp_path / "s.json")])
    assert "| t2i | overall | 1.000 |" in capsys.readouterr().out
    (tmp_path / "e.jsonl").write_text('{"task": "t2i", "prompt": "a red circle"}\n')
    with pytest.raises(ManifestError, match="e.jsonl:1: t2i record lacks image"):
        evaluate(tmp_path / "e.jsonl")
    (tmp_path / "e.jsonl").write_text('{"task": "dance"}\n')
    with pytest.raises(ManifestError, match="unknown task 'dance'"):
        evaluate(tmp_path / "e.jsonl")
