"""The OmniModel command line: train omni (and resume), generate image (t2i and edit), ask; named errors."""

import pytest
from PIL import Image

from omniar.cli import main
from omniar.omni.model import OMNI_PRESETS, omni_preset
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from omniar.tokenizers.text import TextTokenizer
from tests.test_omni_model import TEXTS

TINY = ["hidden_size=48", "num_layers=1", "num_heads=4", "num_kv_heads=2", "intermediate_size=64", "num_scales=4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("omni")
    TextTokenizer.train(TEXTS, vocab_size=300).save(root / "tok")
    ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=16, bits=8, downsample=2,
                                        scales=(1, 2, 4, 8))).save_pretrained(root / "img")
    args = ["train", "omni", "--out", str(root / "run"), "--set", *TINY, "--text-tokenizer", str(root / "tok"),
            "--image-tokenizer", str(root / "img"), "--batch", "3"]
    main(args + ["--steps", "2"])
    main(args + ["--steps", "3", "--workers", "2"])  # resumes from step 2, in two data-parallel processes
    return root


def test_train_resume_generate_edit_and_ask(run, capsys):
    import json

    trainer = json.loads((run / "run" / "checkpoint" / "trainer.json").read_text())
    assert trainer["step"] == 3
    ckpt = str(run / "run" / "checkpoint")
    main(["generate", "image", "--model", ckpt, "a red circle", "two blue squares", "-o", str(run / "g.png")])
    assert Image.open(run / "g-0.png").size == (32, 32) and (run / "g-1.png").is_file()
    main(["generate", "image", "--model", ckpt, "make the circle blue", "--image", str(run / "g-0.png"),
          "--image-cfg", "1.5", "-o", str(run / "e.png")])
    assert Image.open(run / "e.png").size == (32, 32)
    main(["edit", "--model", ckpt, "--image", str(run / "g-0.png"), "make the circle blue", "-o", str(run / "f.png")])
    assert Image.open(run / "f.png").size == (32, 32)
    capsys.readouterr()
    main(["ask", "--model", ckpt, "--image", str(run / "g-0.png"), "how many circles are there?", "two"])
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_teacher_distillation_and_preset_mismatch_on_resume(run):
    import json

    common = ["--text-tokenizer", str(run / "tok"), "--image-tokenizer", str(run / "img"), "--batch", "3",
              "--steps", "2"]
    main(["train", "omni", "--out", str(run / "teacher"), "--preset", "vit-teacher-tiny", "--set", "num_layers=1",
          "--tasks", "caption=0.5,vqa=0.5", *common])
    main(["train", "omni", "--out", str(run / "student"), "--set", *TINY, "--teacher",
          str(run / "teacher" / "checkpoint"), "--tasks", "caption=1", *common])
    metrics = [json.loads(line) for line in (run / "student" / "metrics.jsonl").read_text().splitlines()]
    assert "distill" in metrics[-1]
    with pytest.raises(SystemExit, match="trained from preset 'onecat-tiny', not 'raster-tiny'"):
        main(["train", "omni", "--out", str(run / "run"), "--preset", "raster-tiny", *common])


def test_named_errors(run):
    with pytest.raises(ValueError, match="unknown preset"):
        omni_preset("onecat-huge")
    assert set(OMNI_PRESETS) >= {"onecat-tiny"}
    with pytest.raises(SystemExit, match="image file not found"):
        main(["ask", "--model", str(run / "run" / "checkpoint"), "--image", str(run / "nope.png")])
    with pytest.raises(SystemExit, match="not a unified model"):
        main(["generate", "image", "--model", str(run / "img"), "a red circle"])
    with pytest.raises(SystemExit, match="--set takes key=value"):
        main(["train", "omni", "--out", str(run / "x"), "--set", "hidden_size", "--text-tokenizer",
              str(run / "tok"), "--image-tokenizer", str(run / "img")])
    with pytest.raises(SystemExit, match="--shards 3 must be a multiple of --workers 2"):
        main(["train", "omni", "--out", str(run / "x"), "--workers", "2", "--shards", "3", "--text-tokenizer",
              str(run / "tok"), "--image-tokenizer", str(run / "img")])
