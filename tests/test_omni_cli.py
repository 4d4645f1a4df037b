"""The OmniModel command line: train omni (and resume), train teacher, generate image (t2i and edit), ask, info;
named errors."""

import dataclasses

import pytest
import torch
from PIL import Image

from omniar.cli import main
from omniar.omni.generate import EDIT_KEEP
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
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2 and not out.err
    # words the model's tokenizer has no token for are named (the answer is still given)
    main(["ask", "--model", ckpt, "--image", str(run / "g-0.png"), "is there a colour circle?", "Is it a hexagon?"])
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2
    assert out.err.splitlines() == [
        "warning: question 'is there a colour circle?': 'colour' is in none of the texts the model's tokenizer was "
        "trained on (most likely never read by the model): the output may mean nothing",
        "warning: question 'Is it a hexagon?': 'Is', 'it', 'hexagon' are in none of the texts the model's tokenizer "
        "was trained on (most likely never read by the model): the output may mean nothing"]
    main(["generate", "image", "--model", ckpt, "a red hexagon", "a blue circle", "-o", str(run / "h.png")])
    assert capsys.readouterr().err.splitlines() == [
        "warning: prompt 'a red hexagon': 'hexagon' is in none of the texts the model's tokenizer was trained on "
        "(most likely never read by the model): the output may mean nothing"]


def test_generate_writes_each_images_drawing_scale_by_scale(run, tmp_path, capsys):
    """--scales: NAME-scales.png beside each image, one column a scale (4 here) 2 white pixels apart, the last
    column the image itself; edits too; with --best-of a named error before the model loads."""
    import numpy as np

    ckpt = str(run / "run" / "checkpoint")
    main(["generate", "image", "--model", ckpt, "a red circle", "two blue squares", "--scales", "-o",
          str(tmp_path / "g.png")])
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in ("g-0.png", "g-0-scales.png", "g-1.png",
                                                                            "g-1-scales.png")]
    for i in (0, 1):
        strip = np.asarray(Image.open(tmp_path / f"g-{i}-scales.png"))
        assert strip.shape == (32, 4 * 32 + 3 * 2, 3)
        assert (strip[:, 32:34] == 255).all()
        assert np.array_equal(strip[:, -32:], np.asarray(Image.open(tmp_path / f"g-{i}.png")))
    main(["edit", "--model", ckpt, "--image", str(tmp_path / "g-0.png"), "make the circle blue", "--scales", "-o",
          str(tmp_path / "e.png")])
    assert np.asarray(Image.open(tmp_path / "e-scales.png")).shape == (32, 134, 3)
    with pytest.raises(SystemExit, match="--scales shows one drawing"):
        main(["generate", "image", "--model", str(tmp_path / "missing"), "a red circle", "--scales", "--best-of",
              "2", "-o", str(tmp_path / "b.png")])


def test_generate_samples_per_prompt_and_their_grid(run, tmp_path, capsys):
    """--samples N: N images a prompt in one batch, NAME-<prompt>-<sample>.png (one prompt: NAME-<sample>.png) and
    NAME-grid.png with a row a prompt; the first sample of each prompt is the image drawn without --samples, the
    others differ; greedy edits (their default) are refused by name before the model loads."""
    import numpy as np

    ckpt = str(run / "run" / "checkpoint")
    prompts = ["a red circle", "two blue squares"]
    main(["generate", "image", "--model", ckpt, *prompts, "-o", str(tmp_path / "p.png")])
    main(["generate", "image", "--model", ckpt, *prompts, "--samples", "3", "-o", str(tmp_path / "g.png")])
    names = [f"g-{i}-{j}.png" for i in range(2) for j in range(3)] + ["g-grid.png"]
    assert capsys.readouterr().out.split()[2:] == [str(tmp_path / n) for n in names]
    grid = np.asarray(Image.open(tmp_path / "g-grid.png"))
    assert grid.shape == (2 * 32 + 2, 3 * 32 + 2 * 2, 3)
    assert (grid[32:34] == 255).all() and (grid[:, 32:34] == 255).all()
    cells = [[np.asarray(Image.open(tmp_path / f"g-{i}-{j}.png")) for j in range(3)] for i in range(2)]
    for i in range(2):
        assert np.array_equal(cells[i][0], np.asarray(Image.open(tmp_path / f"p-{i}.png")))  # seed + i, as before
        assert not np.array_equal(cells[i][1], cells[i][2])
        for j in range(3):
            assert np.array_equal(grid[34 * i:34 * i + 32, 34 * j:34 * j + 32], cells[i][j])
    main(["generate", "image", "--model", ckpt, "a red circle", "--samples", "2", "-o", str(tmp_path / "one.png")])
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in ("one-0.png", "one-1.png", "one-grid.png")]
    main(["edit", "--model", ckpt, "--image", str(tmp_path / "p-0.png"), "make the circle blue", "--samples", "2",
          "--temperature", "1", "-o", str(tmp_path / "e.png")])
    assert np.asarray(Image.open(tmp_path / "e-grid.png")).shape == (32, 66, 3)
    with pytest.raises(SystemExit, match="--samples 2 draws 2 images per instruction, but the bits are chosen "
                                         "greedily \\(temperature 0, the default for edits\\)"):
        main(["edit", "--model", str(tmp_path / "missing"), "--image", str(tmp_path / "p-0.png"), "x", "--samples",
              "2", "-o", str(tmp_path / "f.png")])
    with pytest.raises(SystemExit, match="--samples must be at least 1, got 0"):
        main(["generate", "image", "--model", ckpt, "a red circle", "--samples", "0"])


def test_generate_with_the_finest_scales_unguided(run, tmp_path):
    """--unguided-scales N: the last N scales drawn without guidance (another image than the default's); a negative
    N is refused before the model loads, more than the model's scales by name."""
    import numpy as np
    from PIL import Image

    ckpt = str(run / "run" / "checkpoint")
    main(["generate", "image", "--model", ckpt, "a red circle", "-o", str(tmp_path / "a.png")])
    main(["generate", "image", "--model", ckpt, "a red circle", "--unguided-scales", "1",
          "-o", str(tmp_path / "b.png")])
    a, b = (np.asarray(Image.open(tmp_path / f"{x}.png")) for x in "ab")
    assert a.shape == b.shape and not np.array_equal(a, b)
    with pytest.raises(SystemExit, match="--unguided-scales must be >= 0, got -1"):
        main(["generate", "image", "--model", str(tmp_path / "missing"), "x", "--unguided-scales", "-1"])
    with pytest.raises(SystemExit, match="unguided_scales must be between 0 and the model's"):
        main(["generate", "image", "--model", ckpt, "a red circle", "--unguided-scales", "99",
              "-o", str(tmp_path / "c.png")])


def test_several_images_ask_and_edit_in_one_batch(run, capsys, monkeypatch):
    """--image repeated: one question (or none: captions) for every image, or as many questions as images paired in
    order, in one batched call, each answer after its image's path; edits the same, one file per image; any other
    count is an error that names both."""
    import omniar.omni.understand as understand
    from omniar.data.manifest import load_image
    from omniar.omni.model import OmniModel

    ckpt, a, b = str(run / "run" / "checkpoint"), str(run / "s-0.png"), str(run / "s-1.png")
    main(["generate", "image", "--model", ckpt, "a red circle", "two blue squares", "-o", str(run / "s.png")])
    calls, real = [], understand.describe
    monkeypatch.setattr(understand, "describe", lambda model, images, questions=None, **kw: (
        calls.append((len(images), questions)), real(model, images, questions, **kw))[1])
    capsys.readouterr()
    main(["ask", "--model", ckpt, "--image", a, "--image", b, "is there a circle?"])
    main(["ask", "--model", ckpt, "--image", a, "--image", b])
    q, q2 = "is there a circle?", "how many squares are there?"
    main(["ask", "--model", ckpt, "--image", a, "--image", b, q, q2])
    lines = capsys.readouterr().out.splitlines()
    assert calls == [(2, [q] * 2), (2, None), (2, [q, q2])]
    assert [line.split(": ")[0] for line in lines] == [a, b] * 3
    model = OmniModel.from_pretrained(ckpt)
    alone = [real(model, [load_image(image)], asked)[0] for image, asked in ((a, [q]), (b, None), (b, [q2]))]
    assert [lines[0], lines[3], lines[5]] == [f"{a}: {alone[0]}", f"{b}: {alone[1]}", f"{b}: {alone[2]}"]
    main(["edit", "--model", ckpt, "--image", a, "--image", b, "make the circle blue", "-o", str(run / "m.png")])
    assert Image.open(run / "m-0.png").size == Image.open(run / "m-1.png").size == (32, 32)
    with pytest.raises(SystemExit, match="2 images and 3 questions: give one image, one of the questions, or as many"):
        main(["ask", "--model", ckpt, "--image", a, "--image", b, "x?", "y?", "z?"])
    with pytest.raises(SystemExit, match="2 images and 3 instructions"):
        main(["edit", "--model", ckpt, "--image", a, "--image", b, "x", "y", "z", "-o", str(run / "n.png")])
    with pytest.raises(SystemExit, match="image file not found"):
        main(["ask", "--model", ckpt, "--image", a, "--image", str(run / "nope.png")])
    Image.new("RGB", (40, 30)).save(run / "big.png")
    big = str(run / "big.png")
    for command in (["ask", "--image", a, "--image", big], ["edit", "--image", big, "x", "-o", str(run / "o.png")],
                    ["generate", "image", "--image", a, "--image", big, "x", "-o", str(run / "o.png")]):
        with pytest.raises(SystemExit, match=f"{big} is 40 x 30 pixels; this model reads 32 x 32 images"):
            main([*command, "--model", ckpt])


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
    main(["train", "teacher", "--out", str(run / "conv"), "--steps", "2", "--image-size", "32", "--grid", "4",
          "--eval", "8"])
    main(["train", "omni", "--out", str(run / "student2"), "--set", *TINY, "--teacher",
          str(run / "conv" / "checkpoint"), "--tasks", "caption=1", *common])
    metrics = [json.loads(line) for line in (run / "student2" / "metrics.jsonl").read_text().splitlines()]
    assert "distill" in metrics[-1]
    with pytest.raises(SystemExit, match="trained from preset 'onecat-tiny', not 'raster-tiny'"):
        main(["train", "omni", "--out", str(run / "run"), "--preset", "raster-tiny", *common])


def test_guidance_defaults_and_flags_reach_each_task(run, tmp_path, monkeypatch):
    """Text-to-image and edits are guided and sampled by settings of their own: the benchmark's defaults (cfg 10
    ramped, temperature 1; edits cfg 1.5 constant, greedy) unless the command line says otherwise, in `eval model`
    as in `generate`; --best-of draws its candidates in one call."""
    import omniar.omni.evaluate as evaluate
    import omniar.omni.generate as generate
    import omniar.omni.rerank as rerank

    seen = []

    def spy(model, prompts, *, sources=None, cfg=1.0, cfg_schedule="linear", params=None, **kw):
        seen.append(("edit" if sources is not None else "t2i", cfg, cfg_schedule, params.temperature,
                     kw.get("keep", 0.0)))
        rows.append(len(prompts))
        return real(model, prompts, sources=sources, cfg=cfg, cfg_schedule=cfg_schedule, params=params, **kw)

    real, rows = generate.generate_images, []
    for module in (evaluate, generate, rerank):
        monkeypatch.setattr(module, "generate_images", spy)
    ckpt = str(run / "run" / "checkpoint")
    common = ["eval", "model", "--model", ckpt, "--tasks", "t2i", "edit", "--num", "1", "--split", "val"]
    main([*common, "--out", str(tmp_path / "a")])
    main([*common, "--out", str(tmp_path / "b"), "--cfg", "4", "--edit-cfg", "2", "--edit-cfg-schedule", "linear",
          "--edit-temperature", "0.5", "--edit-keep", "1.5"])
    main(["generate", "image", "--model", ckpt, "a red circle", "-o", str(tmp_path / "g.png")])
    main(["edit", "--model", ckpt, "--image", str(tmp_path / "g.png"), "remove the circle",
          "-o", str(tmp_path / "e.png")])
    main(["edit", "--model", ckpt, "--image", str(tmp_path / "g.png"), "remove the circle", "--keep", "2",
          "-o", str(tmp_path / "k.png")])
    main(["generate", "image", "--model", ckpt, "a red circle", "--cfg", "5", "--cfg-schedule", "constant",
          "--temperature", "0", "-o", str(tmp_path / "h.png")])
    t2i, edit = ("t2i", 10.0, "linear", 1.0, 0.0), ("edit", 1.5, "constant", 0.0, EDIT_KEEP)
    assert seen == [t2i, edit, ("t2i", 4.0, "linear", 1.0, 0.0), ("edit", 2.0, "linear", 0.5, 1.5), t2i, edit,
                    ("edit", 1.5, "constant", 0.0, 2.0), ("t2i", 5.0, "constant", 0.0, 0.0)]
    main(["generate", "image", "--model", ckpt, "a red circle", "a blue star", "--best-of", "3",
          "-o", str(tmp_path / "b.png")])
    main([*common[:5], "t2i", *common[7:], "--out", str(tmp_path / "c"), "--best-of", "2"])
    assert seen[8:] == [t2i] * 2 and rows[8:] == [2 * 3, 1 * 2]
    assert (tmp_path / "b-1.png").is_file() and not (tmp_path / "b-2.png").exists()  # one image per prompt
    with pytest.raises(SystemExit, match="best-of-N needs sampled bits"):
        main(["generate", "image", "--model", ckpt, "a red circle", "--best-of", "2", "--temperature", "0",
              "-o", str(tmp_path / "x.png")])
    dtypes = []
    for module in (generate, rerank):
        monkeypatch.setattr(module, "generate_images", lambda model, *a, **kw: (
            dtypes.append(model.decoder.embed.weight.dtype), real(model, *a, **kw))[1])
    main(["generate", "image", "--model", ckpt, "a red circle", "--dtype", "bfloat16", "-o", str(tmp_path / "d.png")])
    main(["generate", "image", "--model", ckpt, "a red circle", "-o", str(tmp_path / "f.png")])
    assert dtypes == [torch.bfloat16, torch.float32] and (tmp_path / "d.png").is_file()


def test_info_counts_a_unified_model_by_preset_and_by_checkpoint(run, capsys):
    """`omniar info` on an OmniModel: the trained parameters, those a token passes through (one expert a layer),
    the frozen tokenizer's, and each part's; the preset the demo trains (6.9M trained, 2.2M active, BENCHMARKS.md)."""
    import json

    from omniar.omni.model import OmniModel

    main(["info", "--model", str(run / "run" / "checkpoint")])
    info = json.loads(capsys.readouterr().out)
    model = OmniModel.from_pretrained(run / "run" / "checkpoint")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert info["kind"] == "OmniModel" and info["total"] == trained and info["config"] == json.loads(
        json.dumps(dataclasses.asdict(model.config)))
    assert info["frozen"] == sum(p.numel() for p in model.tokenizer.parameters()) == info["parts"]["tokenizer"]
    assert info["total"] + info["frozen"] == sum(info["parts"].values()) == sum(p.numel() for p in model.parameters())
    (block,) = model.decoder.blocks  # TINY: one layer; each expert with its FFN and attention projections
    sizes = [sum(p.numel() for m in modules for p in m.parameters())
             for modules in zip(block.ffn.experts, block.mixer.qkv, block.mixer.o)]
    assert len(sizes) == 4 and info["active"] == info["total"] - (sum(sizes) - max(sizes))
    main(["info", "--preset", "onecat-tiny"])
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["preset"] == "onecat-tiny" and round(info["total"] / 1e5) == 69
    assert round(info["active"] / 1e5) == 22 and info["parts"]["decoder"] > 0.9 * info["total"]
    main(["info", "--preset", "onecat-base"])  # a GPU size, counted on the meta device
    info = json.loads(capsys.readouterr().out)
    assert round(info["total"] / 1e6) == 317 and round(info["active"] / 1e6) == 94


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
    ckpt = str(run / "run" / "checkpoint")
    for name in ("x.xyz", "x"):  # refused before anything is generated
        with pytest.raises(SystemExit, match=f"cannot write an image as '{name}': .*.png"):
            main(["generate", "image", "--model", ckpt, "a red circle", "-o", str(run / name)])
    with pytest.raises(SystemExit, match="cannot write audio as 'a.mp9': .*.wav"):
        main(["speak", "--model", ckpt, "a red circle", "-o", str(run / "a.mp9")])
    main(["generate", "image", "--model", ckpt, "a red circle", "-o", str(run / "new" / "dir" / "g.png")])
    assert (run / "new" / "dir" / "g.png").is_file()  # the folder is made
    for task, num, heldout in (("t2i", -1, 0), ("t2i", 0, 0), ("t2i", 2, -3), ("vqa", 0, 5)):
        with pytest.raises(SystemExit, match="the benchmark needs items"):
            main(["eval", "model", "--model", ckpt, "--tasks", task, "--num", str(num), "--heldout", str(heldout),
                  "--out", str(run / "e")])


def test_speech_commands_train_speak_stream_transcribe_and_ask_by_voice(run, tmp_path, capsys):
    import soundfile as sf

    from omniar.tokenizers.speech import SpeechCodec, SpeechCodecConfig

    SpeechCodec(SpeechCodecConfig(channels=16, codebook_size=32, code_dim=8, encoder_blocks=1,
                                  decoder_blocks=1)).save_pretrained(tmp_path / "codec")
    ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=16, bits=8, downsample=2,
                                        scales=(8,))).save_pretrained(tmp_path / "raster")
    main(["train", "omni", "--out", str(tmp_path / "run"), "--preset", "ar-omni-tiny", "--set", *TINY[:-1],
          "--text-tokenizer", str(run / "tok"), "--image-tokenizer", str(tmp_path / "raster"), "--speech-codec",
          str(tmp_path / "codec"), "--tasks", "tts=0.4,asr=0.3,svqa=0.3,t2i=0.2", "--batch", "3", "--steps", "2",
          "--speech-pool", "4", "--config", "perceptual_weight=1.0", "speech_vocab=decoupled"])
    ckpt = str(tmp_path / "run" / "checkpoint")
    capsys.readouterr()
    main(["speak", "--model", ckpt, "a red circle", "two", "-o", str(tmp_path / "s.wav"), "--max-seconds", "0.3"])
    wav, rate = sf.read(tmp_path / "s-0.wav")
    assert rate == 16000 and 0 < len(wav) <= 0.3 * 16000
    main(["speak", "--model", ckpt, "a red circle", "--stream", "-o", str(tmp_path / "t.wav"), "--max-seconds", "0.3"])
    assert "first chunk" in capsys.readouterr().out
    streamed, _ = sf.read(tmp_path / "t.wav")
    assert abs(len(streamed) - len(wav)) == 0
    sf.write(tmp_path / "q.wav", (wav + 0.01)[:, None].repeat(2, 1), 16000, subtype="FLOAT")  # stereo: averaged
    from omniar.omni.model import OmniModel
    from omniar.omni.speech import answer_spoken

    model = OmniModel.from_pretrained(ckpt)
    assert model.config.perceptual_weight == 1.0 and model.config.speech_vocab == "decoupled"
    mono = (wav + 0.01).astype("float32")
    main(["transcribe", "--model", ckpt, str(tmp_path / "q.wav")])
    assert capsys.readouterr().out == model.transcribe(mono)[0] + "\n"
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    image.save(tmp_path / "i.png")
    main(["ask", "--model", ckpt, "--image", str(tmp_path / "i.png"), "--audio", str(tmp_path / "q.wav")])
    import numpy as np

    assert capsys.readouterr().out == answer_spoken(model, np.array(image), [mono])[0] + "\n"
    main(["eval", "model", "--model", ckpt, "--out", str(tmp_path / "ev"), "--tasks", "asr", "svqa", "--num", "2"])
    printed = capsys.readouterr().out
    assert "| asr | wer |" in printed and "| svqa | exact_match |" in printed
    sf.write(tmp_path / "low.wav", wav + 0.01, 8000)
    with pytest.raises(SystemExit, match="must be 16000 Hz, got 8000 Hz"):
        main(["transcribe", "--model", ckpt, str(tmp_path / "low.wav")])
    with pytest.raises(SystemExit, match="audio file not found"):
        main(["transcribe", "--model", ckpt, str(tmp_path / "none.wav")])
    with pytest.raises(SystemExit, match="has no speech codec"):
        main(["speak", "--model", str(run / "run" / "checkpoint"), "a red circle"])
    with pytest.raises(SystemExit, match="speech_pool must be >= 1, got 0"):
        main(["train", "omni", "--out", str(tmp_path / "y"), "--speech-pool", "0", "--text-tokenizer",
              str(run / "tok"), "--image-tokenizer", str(tmp_path / "raster"), "--preset", "ar-omni-tiny"])
    with pytest.raises(SystemExit, match="unknown config key.*'perceptual'"):
        main(["train", "omni", "--out", str(tmp_path / "x"), "--config", "perceptual=1", "--text-tokenizer",
              str(run / "tok"), "--image-tokenizer", str(tmp_path / "raster"), "--preset", "ar-omni-tiny"])


def test_python_m_omniar_runs_the_omniar_command():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "omniar", "generate", "image", "--help"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: omniar generate image")
    assert "--unguided-scales" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "omniar", "draw"], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'draw'" in bad.stderr


def test_train_omni_defaults_follow_the_recipe(monkeypatch):
    """The CLI's defaults are written out (its --help stays free of torch): they must be the recipe's, and a
    --stage's recipe is STAGES' with the flags given over it."""
    import dataclasses

    import omniar.cli as cli
    from omniar.demo import DEMO_DISTILL
    from omniar.omni.train import STAGES, Recipe
    from omniar.train.trainer import OPTIMIZERS

    seen = {}
    monkeypatch.setattr(cli, "_train_omni", lambda args: seen.update(args=args))
    main(["train", "omni", "--out", "x", "--text-tokenizer", "t", "--image-tokenizer", "i"])
    assert seen["args"].distill == DEMO_DISTILL["onecat-tiny"]
    recipe, seed = cli._omni_recipe(seen["args"], 1, distill=False)
    assert (recipe, seed) == (dataclasses.replace(Recipe(), questions=4), 0)  # the demo's four questions a scene
    for name in OPTIMIZERS:  # the written-out --optimizer choices take every optimizer the trainer knows
        main(["train", "omni", "--out", "x", "--text-tokenizer", "t", "--image-tokenizer", "i", "--optimizer", name])
        assert cli._omni_recipe(seen["args"], 1, distill=False)[0].optimizer == name
    assert cli.OMNI_STAGES == tuple(STAGES)
    main(["train", "omni", "--out", "x", "--init", "c", "--stage", "relations", "--lr", "3e-4", "--steps", "40",
          "--seed", "2"])
    recipe, seed = cli._omni_recipe(seen["args"], 1, distill=False)
    stage = STAGES["relations"]
    assert (recipe.lr, recipe.steps, recipe.warmup) == (3e-4, 40, 4)  # the warm-up at most a tenth of the steps
    assert (recipe.tasks, recipe.relations, recipe.freeze, recipe.examples_per_step, recipe.decay_steps) == (
        stage.tasks, stage.relations, stage.freeze, stage.examples_per_step, stage.decay_steps)
    assert seed == 2 * 100 + list(STAGES).index("relations")  # train_stages' seed for the stage


def test_stages_one_command_at_a_time_are_train_stages(run, tmp_path):
    """`omniar train omni --stage stage1`, then `--stage stage2 --init <stage 1>`, trains exactly the model that
    `train_stages` trains in one call: each stage's recipe, seed and fresh optimizer, weights bit for bit."""
    import dataclasses

    import torch

    from omniar.checkpoint import read_tensors
    from omniar.omni.model import OmniModel
    from omniar.omni.train import STAGES, train_stages

    steps = ["--steps", "3", "--batch", "3", "--seed", "1"]
    main(["train", "omni", "--out", str(tmp_path / "s1"), "--stage", "stage1", "--set", *TINY, "--text-tokenizer",
          str(run / "tok"), "--image-tokenizer", str(run / "img"), *steps])
    main(["train", "omni", "--out", str(tmp_path / "s2"), "--stage", "stage2", "--init",
          str(tmp_path / "s1" / "checkpoint"), *steps])
    torch.manual_seed(1)
    model = OmniModel(omni_preset("onecat-tiny", **{k: int(v) for k, v in (p.split("=") for p in TINY)}),
                      TextTokenizer.load(run / "tok"), ImageTokenizer.from_pretrained(run / "img"))
    stages = {name: dataclasses.replace(r, examples_per_step=3) for name, r in STAGES.items()}
    train_stages(model, tmp_path / "py", {"stage1": 3, "stage2": 3}, seed=1, progress=False, stages=stages)
    for stage in ("s1", "s2"):
        cli = read_tensors(tmp_path / stage / "checkpoint" / "model.safetensors")
        ref = read_tensors(tmp_path / "py" / ("stage1" if stage == "s1" else "stage2") / "checkpoint"
                           / "model.safetensors")
        assert cli.keys() == ref.keys()
        assert all(torch.equal(cli[k], ref[k]) for k in ref), stage
    first = read_tensors(tmp_path / "s1" / "checkpoint" / "model.safetensors")
    assert any(not torch.equal(first[k], cli[k]) for k in cli)  # stage 2 trained on from stage 1's weights


def test_train_omni_named_errors_of_init_and_stage(run, tmp_path, capsys):
    ckpt = str(run / "run" / "checkpoint")
    with pytest.raises(SystemExit, match="a new run needs --text-tokenizer and --image-tokenizer"):
        main(["train", "omni", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="drop --set, --text-tokenizer"):
        main(["train", "omni", "--out", str(tmp_path / "a"), "--init", ckpt, "--set", "num_layers=2",
              "--text-tokenizer", str(run / "tok")])
    with pytest.raises(SystemExit, match="holds a 'onecat-tiny' model, not 'raster-tiny'"):
        main(["train", "omni", "--out", str(tmp_path / "a"), "--init", ckpt, "--preset", "raster-tiny"])
    with pytest.raises(SystemExit, match="not a unified model"):
        main(["train", "omni", "--out", str(tmp_path / "a"), "--init", str(run / "img")])
    main(["train", "teacher", "--out", str(tmp_path / "conv"), "--steps", "1", "--image-size", "32", "--grid", "4",
          "--eval", "4"])
    with pytest.raises(SystemExit, match="distils features of width none, the teacher gives"):
        main(["train", "omni", "--out", str(tmp_path / "a"), "--init", ckpt, "--teacher",
              str(tmp_path / "conv" / "checkpoint")])
    with pytest.raises(SystemExit, match="shards must be between 1 and examples_per_step"):
        main(["train", "omni", "--out", str(tmp_path / "a"), "--init", ckpt, "--stage", "edits", "--shards", "20"])
    with pytest.raises(SystemExit):
        main(["train", "omni", "--out", str(tmp_path / "a"), "--init", ckpt, "--stage", "stage4"])
    assert "invalid choice: 'stage4'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing was started
