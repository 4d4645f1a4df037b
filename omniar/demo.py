"""`make demo`: OneCAT end to end on ShapeWorld within a time budget - data, tokenizers, the staged training of
`onecat-tiny`, the benchmark with the independent judges, and an HTML report. With `speech` (AR-Omni), a speech
codec is trained too, every stage mixes in text-to-speech, speech recognition and spoken questions, and the
benchmark and report cover them (`omniar demo --speech [--preset ar-omni-tiny]`).

The budget (minutes on 2 CPU cores, default 45) is turned into step counts by `DemoPlan.for_budget` from rates
measured on such a machine (BENCHMARKS.md), so a run is a pure function of (budget, seed) and its products can be
cached: every step's output lives in cache/<step>-<hash of its settings and of its inputs' hashes>/ and is reused
when its `done.json` is there (an interrupted training step resumes from its checkpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Rates on 2 CPU cores (BENCHMARKS.md, "make demo"): image-tokenizer steps (32 images) and onecat-tiny steps (16
# mixed examples) per minute, and the benchmark's cost per evaluated item (all four tasks) in minutes.
TOKENIZER_STEPS_PER_MIN = 120
CODEC_STEPS_PER_MIN = 240  # speech codec steps (16 one-second crops), BENCHMARKS.md "Speech: streaming codec"
MODEL_STEPS_PER_MIN = 110
CONV_TEACHER_STEPS_PER_MIN = 560  # ConvTeacher steps (16 scenes), BENCHMARKS.md "Distilling a ConvNet"
EVAL_MIN_PER_ITEM = 0.012
CACHE_VERSION = 2  # bump when a change to the code makes cached products stale


@dataclass
class DemoPlan:
    budget: float = 45.0  # minutes
    seed: int = 0
    preset: str = "onecat-tiny"
    overrides: dict = field(default_factory=dict)  # decoder config overrides (tests use tiny ones)
    text_samples: int = 2000
    tokenizer_steps: int = 1500
    tokenizer_images: int = 20_000
    stage_steps: dict[str, int] = field(default_factory=lambda: {"stage1": 1200, "stage2": 1000, "stage3": 400})
    eval_num: int = 200  # test samples per task
    # held-out compositions (text-to-image); their overall is a mean over six kinds of very different counts (100
    # prompts hold 3 single-object ones), so it needs more prompts than the test split's tasks (BENCHMARKS.md)
    heldout_num: int = 500
    examples_per_step: int = 16
    distill: float = 0.0  # > 0: train a teacher first and distil it into `distill_stages` with this weight
    teacher: str = "conv"  # the teacher's kind (omni/teacher.py): conv (ConvTeacher) or vit (vit-teacher-tiny)
    teacher_steps: int = 0
    distill_stages: tuple[str, ...] = ("stage1", "stage2", "stage3")
    align: float = 0.0  # > 0: the image tokenizer's latent is aligned to the ConvNet teacher's features, this weight
    speech: bool = False  # AR-Omni's speech: a codec, speech tasks in every stage, speech in the benchmark
    codec_steps: int = 0
    codec_utterances: int = 2000

    def __post_init__(self) -> None:
        if self.align < 0 or (self.align > 0 and self.teacher != "conv"):
            raise ValueError(f"align {self.align} with teacher {self.teacher!r}: the image tokenizer's semantic "
                             "alignment is a weight >= 0 and reads the ConvNet teacher (teacher='conv')")

    @classmethod
    def for_budget(cls, minutes: float = 45.0, **kw) -> DemoPlan:
        """Step counts that fit `minutes` on 2 CPU cores: ~25% image tokenizer, ~8% benchmark, ~2% data and text
        tokenizer, the rest training (stages 45 / 40 / 15%); with speech, 12% of the training share goes to the
        speech codec. Without a `distill` or `align` weight, the preset's recipe decides (`DEMO_DISTILL`,
        `DEMO_ALIGN`)."""
        if minutes <= 0:
            raise ValueError(f"the budget must be a positive number of minutes, got {minutes}")
        if kw.get("distill") is None:
            kw["distill"] = DEMO_DISTILL.get(kw.get("preset", cls.preset), 0.0)
        if kw.get("align") is None:  # the alignment reads the ConvNet teacher's features
            conv = kw.get("teacher", cls.teacher) == "conv"
            kw["align"] = DEMO_ALIGN.get(kw.get("preset", cls.preset), 0.0) if conv else 0.0
        tok = min(3500, max(10, round(0.25 * minutes * TOKENIZER_STEPS_PER_MIN)))
        num = min(200, max(4, round(0.08 * minutes / EVAL_MIN_PER_ITEM / 1.5)))
        share = 0.73
        if kw.get("speech"):
            kw.setdefault("codec_steps", min(2500, max(10, round(0.12 * minutes * CODEC_STEPS_PER_MIN))))
            share -= 0.12
        train = max(6, round((share * minutes - 1.5 * num * EVAL_MIN_PER_ITEM) * MODEL_STEPS_PER_MIN))
        stages = {"stage1": round(0.45 * train), "stage2": round(0.4 * train)}
        stages["stage3"] = train - sum(stages.values())
        plan = cls(budget=minutes, tokenizer_steps=tok, tokenizer_images=min(20_000, tok * 32),
                   stage_steps=stages, eval_num=num, heldout_num=round(2.5 * num), **kw)
        if (plan.distill > 0 or plan.align > 0) and not plan.teacher_steps:  # its time comes out of stage 1's
            from omniar.omni.teacher import TEACHERS

            if plan.teacher not in TEACHERS:
                raise ValueError(f"unknown teacher {plan.teacher!r}; known: {', '.join(TEACHERS)}")
            if plan.teacher == "vit":  # a quarter of stage 1
                plan.teacher_steps = round(0.25 * stages["stage1"])
                plan.stage_steps["stage1"] -= plan.teacher_steps
            else:  # a ConvNet learns shapes in ~1,000 steps, whatever the budget; at most a quarter of stage 1
                rate = CONV_TEACHER_STEPS_PER_MIN / MODEL_STEPS_PER_MIN
                plan.teacher_steps = max(1, min(1200, round(0.25 * stages["stage1"] * rate)))
                plan.stage_steps["stage1"] -= round(plan.teacher_steps / rate)
        return plan


# the demo's distillation weight per preset: OneCAT's recipe distils a teacher into the image positions (with the
# ConvNet teacher at weight 1: captions 0.06 -> 0.41 at the default budget; weight 3: 0.50 -> 0.69 on 600
# validation images, BENCHMARKS.md). AR-Omni's paper distils nothing, but without a teacher its image positions
# never learn shapes here, so the AR-Omni demo distils the same ConvNet (captions 0.295 -> 0.68, spoken VQA
# 0.56 -> 0.625); the raster baseline does not
DEMO_DISTILL = {"onecat-tiny": 3.0, "ar-omni-tiny": 3.0}
# the image tokenizer's semantic alignment weight per preset (ImageTokenizerConfig.align_width, the ConvNet teacher's
# features): text-to-image alone, 600 steps, 1,000 validation prompts: 0.113 plain, 0.184 / 0.195 / 0.191 at
# weight 0.5 / 2 / 6 (BENCHMARKS.md, "A latent that knows shapes"); the other presets were not measured with it
DEMO_ALIGN = {"onecat-tiny": 2.0}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps({**key, "version": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:12]


class Cache:
    """Step products under root/<name>-<digest>/, complete when done.json is there."""

    def __init__(self, root: str | Path, enabled: bool = True):
        self.root, self.enabled = Path(root), enabled

    def run(self, name: str, key: dict, build: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
        """(directory, build's summary, whether it came from the cache)."""
        d = self.root / f"{name}-{_digest(key)}"
        done = d / "done.json"
        if self.enabled and done.is_file():
            return d, json.loads(done.read_text()), True
        d.mkdir(parents=True, exist_ok=True)
        (d / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True))
        t0 = time.perf_counter()
        summary = {**build(d), "seconds": round(time.perf_counter() - t0, 1)}
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(done)
        return d, summary, False


def run_demo(out: str | Path = "out/demo", plan: DemoPlan | None = None, cache: str | Path | None = None,
             use_cache: bool = True, progress: bool = True, log: Callable[[str], None] = print,
             device: str | torch.device = "cpu") -> dict:
    """Run the whole pipeline; writes out/report.html, out/report.json and out/eval/. Returns the report.
    `device`: where the three stages train and the benchmark runs (data, tokenizers and teacher are made on the
    CPU; a stage's cache key does not name the device)."""
    import torch

    from omniar.model.patch_embed import token_grid
    from omniar.omni.evaluate import EVAL_TASKS, SPEECH_EVAL_TASKS, evaluate_model
    from omniar.omni.model import OmniModel, omni_preset
    from omniar.omni.report import write_report
    from omniar.omni.teacher import (
        distill_config,
        load_teacher,
        presence_accuracy,
        train_conv_teacher,
        train_teacher,
    )
    from omniar.omni.train import STAGES, train_stages, with_speech
    from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
    from omniar.tokenizers.speech import SpeechCodec
    from omniar.tokenizers.text import TextTokenizer

    plan = plan or DemoPlan.for_budget()
    device = torch.device(device)
    if plan.speech and device.type != "cpu":
        raise ValueError(f"the speech demo runs on the CPU only for now (device {device})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = Cache(cache if cache is not None else out.parent / "cache", enabled=use_cache)
    steps: dict[str, dict] = {}
    t_start = time.perf_counter()

    def step(name: str, key: dict, build: Callable[[Path], dict]) -> Path:
        log(f"[demo] {name} ...")
        d, summary, cached = store.run(name, key, build)
        steps[name] = {**summary, "cached": cached, "dir": str(d)}
        took = "cached" if cached else f"{summary['seconds']} s"
        log(f"[demo] {name}: {took} -> {d}")
        return d

    # 1. data: the evaluation splits as a ShapeWorld dataset on disk - the report shows its renders beside the
    # answers and captions (training samples are drawn on the fly, the benchmark regenerates its samples)
    def make_data(d: Path) -> dict:
        from omniar.data.shapeworld.dataset import make_dataset

        for split, num in (("test", plan.eval_num), ("heldout", plan.heldout_num)):
            make_dataset(d, num, split, speech=False, workers=1, progress=progress)
        return {"test": plan.eval_num, "heldout": plan.heldout_num}

    data_key = {"eval_num": plan.eval_num, "heldout_num": plan.heldout_num}
    data_dir = step("data", data_key, make_data)

    # 2. tokenizers
    def text_tokenizer(d: Path) -> dict:
        from omniar.data.shapeworld.corpus import world_text

        tok = TextTokenizer.train(list(world_text(plan.text_samples)))
        tok.save(d)
        return {"vocab_size": tok.vocab_size}

    text_key = {"samples": plan.text_samples}
    text_dir = step("text-tokenizer", text_key, text_tokenizer)

    preset = omni_preset(plan.preset, **plan.overrides)
    raster = preset.generation == "raster"  # a single-scale tokenizer, decoded token by token
    image_config = ImageTokenizerConfig(scales=(8,)) if raster else ImageTokenizerConfig()
    side = image_config.image_size

    # 3. the teacher of understanding distillation (a ConvNet or a ViT-encoder captioner) and of the image
    # tokenizer's semantic alignment (the ConvNet: it reads pixels, so it comes first; the ViT reads the tokenizer's
    # patches, so it comes after)
    teacher = None
    teacher_key = {"kind": plan.teacher, "steps": plan.teacher_steps, "seed": plan.seed,
                   "batch": plan.examples_per_step}
    if plan.teacher == "vit":
        teacher_key["text"] = _digest(text_key)
    else:  # its feature grid is the preset's understanding-token grid
        teacher_key.update(patch=preset.patch, side=side)

    def teach(d: Path) -> dict:
        torch.manual_seed(plan.seed)
        if plan.teacher == "vit":
            train_teacher(d, TextTokenizer.load(text_dir), ImageTokenizer.from_pretrained(image_dir / "checkpoint"),
                          plan.teacher_steps, seed=plan.seed, progress=progress,
                          examples_per_step=plan.examples_per_step)
            return {"steps": plan.teacher_steps}
        conv = train_conv_teacher(d, plan.teacher_steps, side, token_grid(side, preset.patch), seed=plan.seed,
                                  batch=plan.examples_per_step, progress=progress)
        return {"steps": plan.teacher_steps, **presence_accuracy(conv, min(500, 5 * plan.eval_num))}

    if plan.teacher == "conv" and (plan.distill > 0 or plan.align > 0):
        teacher = load_teacher(step("teacher", teacher_key, teach) / "checkpoint")

    def image_tokenizer(d: Path) -> dict:
        from omniar.tokenizers.train_image import evaluate_image_tokenizer, shapeworld_images, train_image_tokenizer

        torch.manual_seed(plan.seed)
        config = dataclasses.replace(image_config, align_width=teacher.und_width) if plan.align > 0 else image_config
        model = train_image_tokenizer(d, shapeworld_images(plan.tokenizer_images), config,
                                      steps=plan.tokenizer_steps, progress=progress,
                                      align_teacher=teacher if plan.align > 0 else None, align_weight=plan.align)
        return evaluate_image_tokenizer(model, min(500, 5 * plan.eval_num))

    image_key = {"steps": plan.tokenizer_steps, "images": plan.tokenizer_images, "seed": plan.seed}
    if raster:
        image_key["scales"] = list(image_config.scales)
    if plan.align > 0:
        image_key.update(align=plan.align, teacher=_digest(teacher_key))
    image_dir = step("image-tokenizer", image_key, image_tokenizer)

    codec_dir, codec_key = None, {"steps": plan.codec_steps, "utterances": plan.codec_utterances, "seed": plan.seed}
    if plan.speech:
        def speech_codec(d: Path) -> dict:
            from omniar.tokenizers.train_speech import evaluate_speech_codec, shapeworld_speech, train_speech_codec

            torch.manual_seed(plan.seed)
            codec = train_speech_codec(d, shapeworld_speech(plan.codec_utterances, progress=progress),
                                       steps=plan.codec_steps, seed=plan.seed, progress=progress)
            return evaluate_speech_codec(codec, min(300, plan.eval_num), out=d)

        codec_dir = step("speech-codec", codec_key, speech_codec) / "checkpoint"

    if plan.teacher == "vit" and plan.distill > 0:
        teacher_key["image"] = _digest(image_key)
        teacher = load_teacher(step("teacher", teacher_key, teach) / "checkpoint")
    if plan.distill <= 0:  # a teacher trained only for the tokenizer's alignment distils nothing
        teacher = None

    # 4. the staged training of the model, one cached step per stage (its key includes the previous stage's)
    # the preset's whole config, so a changed preset retrains (the tokenizers' and teacher's keys do not hold it)
    base_key = {"preset": plan.preset, "config": dataclasses.asdict(preset), "text": _digest(text_key),
                "image": _digest(image_key), "seed": plan.seed, "batch": plan.examples_per_step}
    if teacher is not None:
        base_key.update(teacher=_digest(teacher_key), distill=plan.distill)
    if plan.speech:
        base_key.update(speech=_digest(codec_key))
    stages = {name: dataclasses.replace(recipe, examples_per_step=plan.examples_per_step,
                                        distill=plan.distill if name in plan.distill_stages and teacher is not None
                                        else 0.0)
              for name, recipe in (with_speech(STAGES) if plan.speech else STAGES).items()}
    previous, key = None, base_key
    for name, n in plan.stage_steps.items():
        # the stage's recipe is in its key: a changed task mix, rate or reweighting retrains from that stage on
        recipe = {k: v for k, v in dataclasses.asdict(stages[name]).items() if k != "steps"}
        key = {**base_key, "stage": name, "steps": n, "recipe": recipe, "after": _digest(key)}

        def train(d: Path, name=name, n=n, previous=previous) -> dict:
            torch.manual_seed(plan.seed)
            if previous is None:
                config = distill_config(preset, teacher) if teacher is not None else preset
                model = OmniModel(config, TextTokenizer.load(text_dir),
                                  ImageTokenizer.from_pretrained(image_dir / "checkpoint"),
                                  SpeechCodec.from_pretrained(codec_dir) if codec_dir is not None else None)
            else:
                model = OmniModel.from_pretrained(previous)
            metrics = train_stages(model.to(device), d, {name: n}, seed=plan.seed, progress=progress, stages=stages,
                                   teacher=teacher if stages[name].distill else None).get(name) or [{}]
            return {"steps": n, "loss": metrics[-1].get("loss"), "tokens_per_s": metrics[-1].get("tokens_per_s")}

        previous = step(f"train-{name}", key, train) / name / "checkpoint"
    model = OmniModel.from_pretrained(previous).to(device)

    # 5. the benchmark (test split + held-out compositions), judged independently
    eval_dir = out / "eval"
    t0 = time.perf_counter()
    tasks = EVAL_TASKS + (SPEECH_EVAL_TASKS if plan.speech else ())
    result = evaluate_model(model, eval_dir, num=plan.eval_num, heldout=plan.heldout_num, tasks=tasks,
                            progress=progress)
    steps["benchmark"] = {"seconds": round(time.perf_counter() - t0, 1), "cached": False, "dir": str(eval_dir)}

    report = {
        "plan": dataclasses.asdict(plan),
        "parameters": {k: int(v) for k, v in model.decoder.num_parameters().items()},
        "steps": steps,
        "scores": result["scores"],
        "heldout": result.get("heldout"),
        "sampling": result["sampling"],
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "data": str(data_dir),
        "checkpoint": str(previous),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_report(out / "report.html", report, eval_dir, data_dir,
                 metrics=[Path(steps[f"train-{n}"]["dir"]) / n / "metrics.jsonl" for n in plan.stage_steps])
    return report
