"""`make demo`: OneCAT end to end on ShapeWorld within a time budget - data, tokenizers, the staged training of
`onecat-tiny`, the benchmark with the independent judges, and an HTML report. With `speech` (AR-Omni), a speech
codec is trained too, every stage mixes in text-to-speech, speech recognition and spoken questions, and the
benchmark and report cover them (`omniar demo --speech [--preset ar-omni-tiny]`).

The budget (minutes, default 45) is turned into step counts by `DemoPlan.for_budget`. `omniar demo` first times a
training step of each stage, an image-tokenizer step and a teacher step on the machine at hand (`calibrate`, ~40 s,
kept in the cache so a second run plans the same) and gives the model's three stages what the budget leaves after
the tokenizers, the teacher and the benchmark; without a measured step (`--reference-rates`, and the speech demo)
the plan comes from rates measured on a reference 2-core machine (BENCHMARKS.md). A measured plan is paced as it
runs (`pace_stages`): before each of the three stages, the stages left get the time the plan has left at the pace the
ones before ran, so a machine slower than its timing trains fewer steps rather than run past the budget. Either way
a run is a pure function of (budget, seed, step times, and the seconds its parts took) and its products can be
cached: every step's output lives in
cache/<step>-<hash of its settings and of its inputs' hashes>/ and is reused when its `done.json` is there (an
interrupted training step resumes from its last checkpoint: one is written on Ctrl-C or SIGTERM and every 10 minutes,
train/interrupt.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from omniar.omni.train import Recipe
    from omniar.tokenizers.image import ImageTokenizerConfig

# Rates on 2 CPU cores (BENCHMARKS.md, "make demo"): image-tokenizer steps (TOKENIZER_BATCH images; 120 a minute of
# 32, a step of 8 costing 0.37x one of 32) and onecat-tiny steps (16 mixed examples) per minute, and the benchmark's
# cost per evaluated item (all four tasks) in minutes.
TOKENIZER_STEPS_PER_MIN = 325
CODEC_STEPS_PER_MIN = 240  # speech codec steps (16 one-second crops), BENCHMARKS.md "Speech: streaming codec"
MODEL_STEPS_PER_MIN = 110
CONV_TEACHER_STEPS_PER_MIN = 560  # ConvTeacher steps (16 scenes), BENCHMARKS.md "Distilling a ConvNet"
EVAL_MIN_PER_ITEM = 0.012
# A measured plan (`for_budget(..., step_seconds=s)`): the steps that do not train the model keep the reference
# plan's counts (and so their cache keys), or more image-tokenizer steps where they are cheap (`TOKENIZER_MINUTES`);
# the image tokenizer's and ConvTeacher's steps are timed too (`calibrate`)
# or else counted in training steps of the preset (ratios measured on two 2-core machines, BENCHMARKS.md "Demo",
# rounded up: on a third, an AVX2 EPYC, they were 0.51 and 0.09), the benchmark always is, and the budget's rest
# trains the model.
TOKENIZER_STEP_COST = 0.25  # an image-tokenizer step (8 images): 0.37x one of 32, which cost 0.59 and 0.44 steps
TEACHER_STEP_COST = 0.25  # a ConvTeacher step (16 scenes): 0.22 and 0.08
BENCHMARK_COST = 100  # the benchmark (200 items a task, 500 held-out prompts): 32 and 51
# data, text tokenizer, the timing itself, the tokenizer's renders and evaluation, loading and saving, the report:
# ~75 s on the Intel machines, ~150 s on an AVX2 EPYC (BENCHMARKS.md "Demo")
FIXED_SECONDS = 90
# where an image-tokenizer step is cheap (of 32 images: 0.14 s on a Zen 5 EPYC, against 0.34 s on the Intel machines),
# a plan that timed it gives the tokenizer this many minutes of a 45-minute budget (in proportion for others) instead
# of the reference count, at most TOKENIZER_MAX_STEPS: under Adam, 3,000 steps of 32 there, whose round trip keeps
# 99.8% of the objects of 1,000 validation scenes against 1,350's 98.1% (small circles come back as squares), and the
# demo's model, on 17% fewer stage steps, scores higher on every image task (BENCHMARKS.md "Demo")
TOKENIZER_MINUTES = 7.0
# the image tokenizer's optimizer and images a step (train_image.py): Muon reaches at 1,350 steps of 32 the sharpness
# Adam reached at 3,000, and steps of 8 go further in the same minutes (BENCHMARKS.md "Muon for the filters"); part
# of its cache key
TOKENIZER_OPTIMIZER = "muon"
TOKENIZER_BATCH = 8
TOKENIZER_MAX_STEPS = 14_000
# at most this share of a measured plan's time for the model (the budget's less the benchmark and fixed work) goes to
# the image tokenizer and ConvTeacher: where their reference step counts would take more (an AVX2 EPYC on a slow day:
# 32 + 6 of the 36 minutes, BENCHMARKS.md "Demo"), the tokenizer gets fewer steps (the teacher too if need be)
PREP_SHARE = 0.5
# the relations curriculum (omni/train.py, STAGES["relations"]) after stage 3: 1,800 steps teach the trained model
# the four position relations, which the mixed stages never learn, and only the text expert and the understanding
# path change, so its drawing stays what it was (the reference plan's model: VQA 0.905 -> 0.975; in 1,000 steps
# another demo's model stayed at chance on "below", BENCHMARKS.md "Relations"). Its time comes out of the three
# stages' in proportion; a plan where it would take more than `RELATION_SHARE` of the training time (a model too
# little trained to learn them: from a stage 1 of 2,394 steps "left of" was not learnt in 250), the speech demo and
# presets without an und expert train without it
RELATION_STEPS = 1800
# a relations step in stage steps, where not timed (Zen 5, the understanding path learning too: 0.24 s against the
# stages' 0.31; 0.20 / 0.34 with the text expert alone)
RELATION_STEP_COST = 0.75
# (0.25 when its step cost 0.6; a demo that timed its steps on a slow minute of the Zen 5 machine, 0.38 / 0.36 /
# 0.36 s, relations 0.29, then planned neither it nor the edits stage at 0.3)
RELATION_SHARE = 0.35
# the edits stage (STAGES["edits"]) after it: 1,000 steps of edits and some text-to-image on the generation side
# alone, the rest held (two demo models: edits 0.785 / 0.931 -> 0.902 / 0.949 and 0.830 / 0.941 -> 0.899 / 0.953,
# text-to-image the same within the noise; BENCHMARKS.md "Edits stage"), where the two stages together take at
# most `AFTER_SHARE` of the training time; fewer steps where that share holds fewer, at least `EDIT_MIN_STEPS`
# (600 steps: 0.787 -> 0.856 satisfied on 1,000 validation edits, 1,000: 0.894), rather than none. (0.4 when the
# relations stage cost 0.6 stage steps a step: on the Zen 5 machine 0.5 leaves the edits their 1,000 steps again,
# and 817 at the slow timing above)
EDIT_STEPS = 1000
EDIT_MIN_STEPS = 500
EDIT_STEP_COST = 1.0  # an edits step in stage steps, where not timed (Zen 5: 0.38 s against the stages' mean 0.37)
AFTER_SHARE = 0.5
# the stages after stage 3, in order: steps, a step's cost in the stages' mean steps where not timed, the most of
# the training time it may take with the ones before it, and the fewest steps it runs with where its share holds
# fewer than its steps (the relations curriculum's phases are counted in steps: all or nothing); the two come together
# or not at all (`_stages`)
AFTER_STAGES = {"relations": (RELATION_STEPS, RELATION_STEP_COST, RELATION_SHARE, RELATION_STEPS),
                "edits": (EDIT_STEPS, EDIT_STEP_COST, AFTER_SHARE, EDIT_MIN_STEPS)}
# where a plan holds neither of those (a slow machine), the answers stage (STAGES["answers"]: the relations stage a
# third as long, the text expert alone learning) comes after stage 3 in their place, on the decoder post-training's
# time (unless `decoder_images` is given) and, where that is short, some of the stages': on a Zen 3 EPYC, from a
# stage 3 of 1,614 mixed steps, its 600 steps (254 s) took captions 0.752 -> 0.912 and VQA 0.637 -> 0.690 with edits
# and text-to-image unchanged, where decoder post-training's 301 s took text-to-image 0.264 -> 0.309 (BENCHMARKS.md
# "Demo"). Whole or absent (its curriculum counts in steps), at most `ANSWER_SHARE` of the training time; a step's
# cost as timed (`calibrate`; fewer parameters learning make it cheaper than a relations step of the same mix and
# batch: 0.37 s against 0.54 on the Zen 3), else as the relations stage's
ANSWER_STEPS = 600
ANSWER_SHARE = 0.3
# after it, the edits stage (the generation side alone: what the answers stage trains, the text expert, is held, and
# the understanding path an edit reads its reference by stays as the mixed stages left it) where the two take at
# most `ANSWER_EDIT_SHARE` of the training time, with `EDIT_MIN_STEPS` or more, else the answers stage alone: on a
# Zen 4 EPYC, whose 45 minutes fall short of the relations stage, 500 edits steps (4.4 minutes) after its demo took
# edits 0.761 / 0.938 -> 0.829 / 0.976 on 1,000 test items, text-to-image 0.395 -> 0.409, held-out 0.335 -> 0.318,
# answers and captions the same, and a second demo there with it planned (558 steps) edited 0.793 / 0.961
# (BENCHMARKS.md "Demo"). A plan where the two would take more keeps the mixed steps: on an AVX2 EPYC they would take
# 43%, and there ~450 mixed steps were worth ~0.08 of VQA (BENCHMARKS.md "What the Zen 3's 45 minutes leave out")
ANSWER_EDIT_SHARE = 0.25
ANSWER_STAGES = {"answers": (ANSWER_STEPS, RELATION_STEP_COST, ANSWER_SHARE, ANSWER_STEPS),
                 "edits": (EDIT_STEPS, EDIT_STEP_COST, ANSWER_EDIT_SHARE, EDIT_MIN_STEPS)}
LATE_STAGES = {**AFTER_STAGES, **ANSWER_STAGES}  # every stage a plan may hold after stage 3
# decoder post-training (omni/decoder_post.py) after the last stage, next-scale presets only: the model redraws the
# finest scale of this many training images (in proportion for other budgets) and the image decoder learns to turn
# those codes into the images - the demo's model on 1,000 test prompts: text-to-image 0.415 -> 0.487, edits, answers
# and captions the same (BENCHMARKS.md "Decoder post-training"); 0.15 decoder steps of 32 an image. Its cost, draws
# and steps, in the costliest stage's training steps a redrawn image (Zen 5: 143 s for 8,000 at 0.32 s a step)
DECODER_IMAGES = 8000
DECODER_STEPS_PER_IMAGE = 0.15
DECODER_POST_COST = 0.06
DECODER_SHARE = 0.1  # at most this share of a measured plan's time for the model (fewer images where they are dear)
# self-training (omni/self_train.py) after decoder post-training: the model draws 4 images for each of this many
# training prompts (in proportion for other budgets), keeps its best by its own caption score, and its generation side
# learns them for `SELF_STEPS` steps with renders and edits beside - one demo's model (the first Xeon demo's, its
# decoder post-trained): test text-to-image 0.439 -> 0.493, held-out compositions 0.344 -> 0.403, edits 0.749 / 0.879
# -> 0.766 / 0.893, every answer and caption the same (BENCHMARKS.md "Self-training"). Where the plan holds the
# stages after stage 3 with it (a model that answers and edits well enough to grade and keep them), else not at all:
# those stages come first. Its cost: a prompt's drawing as timed ("self-draw"), else `SELF_DRAW_COST` of the
# costliest stage's training steps, and its steps as edits steps; at most `SELF_SHARE` of a measured plan's time for
# the model, with prompts and steps cut in proportion where it is dear, down to `SELF_LEAST` of them, else none
SELF_PROMPTS = 3000
SELF_STEPS = 400
# a prompt drawn for, where not timed (Zen 3: 0.066-0.096 s against a stage step of 0.81-0.88; Xeon: ~0.075
# against 0.35-0.45)
SELF_DRAW_COST = 0.2
SELF_SHARE = 0.15
SELF_LEAST = 0.25
# of the budget is planned: real steps have run up to 30% away from their timing (Zen 5: stages 2 and 3 at 0.36 s
# against 0.31 in a run that took 44.7 of its 45 minutes at 0.93; Zen 3: 0.78 against 0.61-0.64), which pacing
# (`pace_stages`) makes up for in the stages after them as the run goes (0.9 before it); the rest is for the stages
# after stage 3, whose time is forecast at the mixed stages' pace, and the set-up outside the plan (BENCHMARKS.md
# "Demo")
MARGIN = 0.93
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
    decoder_images: int = 0  # > 0: post-train the image decoder on the model's redraws of this many images
    decoder_steps: int = 0
    self_prompts: int = 0  # > 0: self-train the generation side on its best drawings for this many prompts
    self_steps: int = 0
    # each stage's training step as measured on this machine, which sized the stages (None: the reference rates)
    step_seconds: dict[str, float] | None = None

    def __post_init__(self) -> None:
        for a, b, part in (("decoder_images", "decoder_steps", "decoder post-training"),
                           ("self_prompts", "self_steps", "self-training")):
            if (getattr(self, a) > 0) != (getattr(self, b) > 0):
                raise ValueError(f"{a} {getattr(self, a)} and {b} {getattr(self, b)}: {part} needs both (or neither)")
        if self.decoder_images and not _post_trainable(self.preset, self.speech):
            raise ValueError(f"decoder_images {self.decoder_images}: decoder post-training redraws the finest scale "
                             f"of next-scale codes, and {self.preset}{' with speech' if self.speech else ''} decodes "
                             "raster tokens (or speaks): give 0")
        if self.self_prompts and not _self_trainable(self.preset, self.speech):
            raise ValueError(f"self_prompts {self.self_prompts}: self-training draws next-scale images and holds the "
                             f"understanding path, and {self.preset}{' with speech' if self.speech else ''} "
                             "decodes raster tokens, has no und expert or speaks: give 0")
        if self.align < 0 or (self.align > 0 and self.teacher != "conv"):
            raise ValueError(f"align {self.align} with teacher {self.teacher!r}: the image tokenizer's semantic "
                             "alignment is a weight >= 0 and reads the ConvNet teacher (teacher='conv')")

    @classmethod
    def for_budget(cls, minutes: float = 45.0, step_seconds: dict[str, float] | None = None, **kw) -> DemoPlan:
        """Step counts that fit `minutes`. From the reference machine's rates (2 CPU cores): ~25% image tokenizer,
        ~8% benchmark, ~2% data and text tokenizer, the rest training (stages 45 / 40 / 15%); with speech, 12% of
        the training share goes to the speech codec. With `step_seconds` (each stage's training step timed on this
        machine, `calibrate`, and optionally "relations", "image-tokenizer" and "teacher": the seconds of their
        steps): the same teacher and benchmark, the image tokenizer the same or, where its steps are cheap,
        `TOKENIZER_MINUTES` of them (fewer where they are dear: `PREP_SHARE`), and the stages (45 / 40 / 15% of
        the steps) get the time they leave. Where the plan trains long enough, the relations curriculum
        (`RELATION_STEPS`) and then the edits stage (`EDIT_STEPS`) run last, on time taken from the stages in
        proportion (`AFTER_STAGES`); where a measured plan holds neither, the answers stage (`ANSWER_STEPS`) comes
        in their place, on the decoder post-training's time unless `decoder_images` is given, and after it the edits
        stage where the two take at most `ANSWER_EDIT_SHARE` of the training time (`ANSWER_STAGES`).
        Self-training (`SELF_PROMPTS` prompts drawn for, `SELF_STEPS` steps, in proportion to the budget; at most
        `SELF_SHARE` of a measured plan's time for the model) comes last where the plan holds the relations and
        edits stages with it, unless `self_prompts` is given; elsewhere the plan is made without it.
        Without a `distill` or `align` weight, the preset's recipe decides (`DEMO_DISTILL`, `DEMO_ALIGN`)."""
        if minutes <= 0:
            raise ValueError(f"the budget must be a positive number of minutes, got {minutes}")
        if step_seconds is not None and (kw.get("speech") or not set(_SPLIT) <= set(step_seconds) <= {
                *_SPLIT, *LATE_STAGES, *OTHER_STEPS} or not all(s > 0 for s in step_seconds.values())):
            raise ValueError(f"step_seconds {step_seconds}: a measured plan needs a positive step time for each of "
                             f"stage1, stage2 and stage3 (and may time "
                             f"{', '.join((*LATE_STAGES, *OTHER_STEPS[:-1]))} "
                             f"and {OTHER_STEPS[-1]}), and "
                             "covers the image demo only (the speech demo plans from the reference rates)")
        asked = dict(kw)  # as given: a plan without self-training is made from them again
        decoder_given = kw.get("decoder_images") is not None
        self_given = kw.get("self_prompts") is not None
        if kw.get("distill") is None:
            kw["distill"] = DEMO_DISTILL.get(kw.get("preset", cls.preset), 0.0)
        if kw.get("align") is None:  # the alignment reads the ConvNet teacher's features
            conv = kw.get("teacher", cls.teacher) == "conv"
            kw["align"] = DEMO_ALIGN.get(kw.get("preset", cls.preset), 0.0) if conv else 0.0
        tok = min(TOKENIZER_MAX_STEPS, max(10, round(0.25 * minutes * TOKENIZER_STEPS_PER_MIN)))
        num = min(200, max(4, round(0.08 * minutes / EVAL_MIN_PER_ITEM / 1.5)))
        share = 0.73
        if kw.get("speech"):
            kw.setdefault("codec_steps", min(2500, max(10, round(0.12 * minutes * CODEC_STEPS_PER_MIN))))
            share -= 0.12
        if kw.get("decoder_images") is None:
            kw["decoder_images"] = _decoder_images_for(kw.get("preset", cls.preset), kw.get("speech"), minutes)
        if kw.get("decoder_steps") is None:
            kw["decoder_steps"] = max(1, round(DECODER_STEPS_PER_IMAGE * kw["decoder_images"])) \
                if kw["decoder_images"] else 0
        if kw.get("self_prompts") is None:
            kw["self_prompts"] = _self_prompts_for(kw.get("preset", cls.preset), kw.get("speech"), minutes)
        if kw.get("self_steps") is None:
            kw["self_steps"] = max(1, round(SELF_STEPS * kw["self_prompts"] / SELF_PROMPTS)) \
                if kw["self_prompts"] else 0
        after = _after_costs(None, kw.get("preset", cls.preset), kw.get("speech"))
        train = (share * minutes - 1.5 * num * EVAL_MIN_PER_ITEM) * MODEL_STEPS_PER_MIN \
            - DECODER_POST_COST * kw["decoder_images"]
        own = _self_stage_steps(kw["self_prompts"], kw["self_steps"])
        stages = _stages(max(6, round(train - own)), after)
        plan = cls(budget=minutes, tokenizer_steps=tok, tokenizer_images=_tokenizer_images(tok),
                   stage_steps=stages, eval_num=num, heldout_num=round(2.5 * num), **kw)
        vit = False
        if (plan.distill > 0 or plan.align > 0) and not plan.teacher_steps:  # its time comes out of stage 1's
            from omniar.omni.teacher import TEACHERS

            if plan.teacher not in TEACHERS:
                raise ValueError(f"unknown teacher {plan.teacher!r}; known: {', '.join(TEACHERS)}")
            vit = plan.teacher == "vit"  # a quarter of the final plan's stage 1 (reference or measured), below
            if not vit:  # a ConvNet learns shapes in ~1,000 steps, whatever the budget; at most a quarter of stage 1
                rate = CONV_TEACHER_STEPS_PER_MIN / MODEL_STEPS_PER_MIN
                # (of stage 1 as it would be without self-training: the teacher's steps, and with them the image
                # tokenizer's key, do not depend on it)
                first = _stages(max(6, round(train)), after)["stage1"] if own else stages["stage1"]
                plan.teacher_steps = max(1, min(1200, round(0.25 * first * rate)))
                plan.stage_steps["stage1"] -= round(plan.teacher_steps / rate)
        if step_seconds is not None:  # the other steps' costs: timed, or in the costliest stage's steps
            conv = plan.teacher == "conv"  # a ViT teacher's steps come out of stage 1's, below
            tokenizer, teacher, benchmark = _other_seconds(step_seconds)
            teacher = teacher if conv else 0.0
            rest = MARGIN * minutes * 60 - FIXED_SECONDS - benchmark
            if plan.decoder_images:  # at most DECODER_SHARE of the time: fewer images where they are dear
                fit = math.floor(DECODER_SHARE * rest / _decoder_seconds(1, step_seconds))
                if fit < plan.decoder_images:
                    plan.decoder_images = max(8, fit)
                    plan.decoder_steps = max(1, round(DECODER_STEPS_PER_IMAGE * plan.decoder_images))
                rest -= _decoder_seconds(plan.decoder_images, step_seconds)
            if plan.self_prompts:  # at most SELF_SHARE of the time: fewer prompts and steps where they are dear
                fit = SELF_SHARE * rest / _self_seconds(plan.self_prompts, plan.self_steps, step_seconds)
                if fit < SELF_LEAST:
                    plan.self_prompts = plan.self_steps = 0
                elif fit < 1:
                    plan.self_prompts = max(1, math.floor(fit * plan.self_prompts))
                    plan.self_steps = max(1, math.floor(fit * plan.self_steps))
                rest -= _self_seconds(plan.self_prompts, plan.self_steps, step_seconds)
            prep = PREP_SHARE * rest
            timed = "image-tokenizer" in step_seconds
            afford = round(TOKENIZER_MINUTES * minutes / 45 * 60 / tokenizer) if timed else 0
            if afford > plan.tokenizer_steps:  # a cheap tokenizer step, timed: more of them (and their images)
                plan.tokenizer_steps = min(TOKENIZER_MAX_STEPS, afford)
                plan.tokenizer_images = _tokenizer_images(plan.tokenizer_steps)
            if tokenizer * plan.tokenizer_steps + teacher * plan.teacher_steps > prep:  # a slow machine
                # the teacher keeps its steps where it can (a ConvNet reads shapes only after ~1,000: 568 steps read
                # 0.55 of them, 1,200 0.99) and the tokenizer gets the rest, at least 10 steps
                plan.tokenizer_steps = max(10, math.floor((prep - teacher * plan.teacher_steps) / tokenizer))
                plan.tokenizer_images = _tokenizer_images(plan.tokenizer_steps)
                if teacher * plan.teacher_steps > prep - tokenizer * plan.tokenizer_steps:
                    plan.teacher_steps = max(1, math.floor((prep - tokenizer * plan.tokenizer_steps) / teacher))
            rest -= tokenizer * plan.tokenizer_steps + teacher * plan.teacher_steps
            per_step = _mean_step(step_seconds)
            if rest < 6 * per_step:
                raise ValueError(f"a {minutes}-minute budget leaves no time to train the model at "
                                 f"{max(step_seconds[name] for name in _SPLIT)} s a step "
                                 "after the tokenizers, teacher and benchmark: give a larger budget")
            plan.step_seconds = dict(step_seconds)
            after = _after_costs(step_seconds, plan.preset, plan.speech)
            plan.stage_steps = _stages(math.floor(rest / per_step), after)
            if after and not set(AFTER_STAGES) & set(plan.stage_steps):  # the answers stage in their place
                freed = 0.0 if decoder_given else _decoder_seconds(plan.decoder_images, step_seconds)
                answers = _stages(math.floor((rest + freed) / per_step),
                                  {name: _after_cost(name, step_seconds) for name in ANSWER_STAGES}, ANSWER_STAGES,
                                  whole=False)
                if "answers" in answers:
                    plan.stage_steps = answers
                    if freed:
                        plan.decoder_images = plan.decoder_steps = 0
        if vit:
            plan.teacher_steps = round(0.25 * plan.stage_steps["stage1"])
            plan.stage_steps["stage1"] -= plan.teacher_steps
        if kw["self_prompts"] and not self_given and not (plan.self_prompts
                                                          and set(AFTER_STAGES) <= set(plan.stage_steps)):
            # the relations and edits stages come first: a plan too short for them with self-training (or one that
            # has no time for it) is made without it
            return cls.for_budget(minutes, step_seconds, **{**asked, "self_prompts": 0})
        return plan

    def schedule(self) -> list[tuple[str, int | None, float]]:
        """What the plan expects of each part: (part, steps, seconds), from the steps timed here (`step_seconds`)
        as `for_budget` counted them, else from the reference machine's rates; last the benchmark and the fixed work
        (data, text tokenizer, the timing, renders, saving, the report), whose steps are None."""
        conv = self.teacher == "conv"
        if self.step_seconds is not None:
            tokenizer, teacher, benchmark = _other_seconds(self.step_seconds)
            per = {"image tokenizer": tokenizer, "teacher": teacher if conv else self.step_seconds["stage1"],
                   **{name: self.step_seconds[name] for name in _SPLIT},
                   **{name: _after_cost(name, self.step_seconds) * _mean_step(self.step_seconds)
                      for name in LATE_STAGES}}
            rest = {"benchmark": benchmark, "data, text tokenizer, report": FIXED_SECONDS}
            decoder = _decoder_seconds(self.decoder_images, self.step_seconds)
            own = _self_seconds(self.self_prompts, self.self_steps, self.step_seconds)
        else:
            per = {"image tokenizer": 60 / TOKENIZER_STEPS_PER_MIN, "speech codec": 60 / CODEC_STEPS_PER_MIN,
                   "teacher": 60 / (CONV_TEACHER_STEPS_PER_MIN if conv else MODEL_STEPS_PER_MIN),
                   **dict.fromkeys(_SPLIT, 60 / MODEL_STEPS_PER_MIN),
                   **{name: cost * 60 / MODEL_STEPS_PER_MIN
                      for name, (_, cost, *_) in LATE_STAGES.items()}}
            rest = {"benchmark": 60 * 1.5 * self.eval_num * EVAL_MIN_PER_ITEM,
                    "data, text tokenizer, report": 0.02 * 60 * self.budget}
            decoder = DECODER_POST_COST * self.decoder_images * 60 / MODEL_STEPS_PER_MIN
            own = _self_stage_steps(self.self_prompts, self.self_steps) * 60 / MODEL_STEPS_PER_MIN
        steps = {"image tokenizer": self.tokenizer_steps, "speech codec": self.codec_steps,
                 "teacher": self.teacher_steps, **self.stage_steps}
        rows = [(part, n, n * per[part]) for part, n in steps.items() if n]
        if self.decoder_steps:
            rows.append(("decoder post-training", self.decoder_steps, decoder))
        if self.self_steps:
            rows.append(("self-training", self.self_steps, own))
        return rows + [(part, None, seconds) for part, seconds in rest.items()]


_SPLIT = {"stage1": 0.45, "stage2": 0.4, "stage3": 0.15}  # the stages' shares of the training steps
# timed beside the stages (`measure_other_seconds`; "decoder": a redrawn image of decoder post-training; "self-draw":
# a prompt's drawings and their caption scores in self-training)
OTHER_STEPS = ("image-tokenizer", "teacher", "decoder", "self-draw")


def _other_seconds(step_seconds: dict[str, float]) -> tuple[float, float, float]:
    """A measured plan's image-tokenizer step, ConvTeacher step and benchmark in seconds: the steps as timed, or
    else, like the benchmark, counted in the costliest stage's training steps."""
    unit = max(step_seconds[name] for name in _SPLIT)
    return (step_seconds.get("image-tokenizer", TOKENIZER_STEP_COST * unit),
            step_seconds.get("teacher", TEACHER_STEP_COST * unit), unit * BENCHMARK_COST)


def _post_trainable(preset: str, speech: bool | None) -> bool:
    """Whether a plan of `preset` can post-train its image decoder: next-scale generation (a raster preset has one
    scale, nothing coarser to keep), not the speech demo."""
    from omniar.omni.model import omni_preset

    return not speech and omni_preset(preset).generation == "next_scale"


def _decoder_images_for(preset: str, speech: bool | None, minutes: float) -> int:
    """The images a plan's decoder post-training redraws: `DECODER_IMAGES` in 45 minutes, in proportion for other
    budgets; none where the preset cannot (`_post_trainable`)."""
    return max(8, round(DECODER_IMAGES * minutes / 45)) if _post_trainable(preset, speech) else 0


def _decoder_seconds(images: int, step_seconds: dict[str, float]) -> float:
    """A measured plan's decoder post-training in seconds: as timed ("decoder", seconds a redrawn image), or else
    counted in the costliest stage's training steps."""
    return images * step_seconds.get("decoder", DECODER_POST_COST * max(step_seconds[name] for name in _SPLIT))


def _self_trainable(preset: str, speech: bool | None) -> bool:
    """Whether a plan of `preset` can self-train: it draws next-scale images (`_post_trainable`; the raster
    baseline's drawings were not measured) and holds the understanding path that grades them (`_after_stages_for`)."""
    return _post_trainable(preset, speech) and _after_stages_for(preset, speech)


def _self_prompts_for(preset: str, speech: bool | None, minutes: float) -> int:
    """The prompts a plan's self-training draws for: `SELF_PROMPTS` in 45 minutes, in proportion for other budgets;
    none where the preset cannot (`_self_trainable`)."""
    return max(8, round(SELF_PROMPTS * minutes / 45)) if _self_trainable(preset, speech) else 0


def _self_stage_steps(prompts: int, steps: int) -> float:
    """A reference plan's self-training in stage steps: `SELF_DRAW_COST` a prompt drawn for, its steps as edits
    steps."""
    return SELF_DRAW_COST * prompts + EDIT_STEP_COST * steps


def _self_seconds(prompts: int, steps: int, step_seconds: dict[str, float]) -> float:
    """A measured plan's self-training in seconds: its drawings as timed ("self-draw", seconds a prompt), or else
    counted in the costliest stage's training steps, and its steps as the edits stage's."""
    draw = step_seconds.get("self-draw", SELF_DRAW_COST * max(step_seconds[name] for name in _SPLIT))
    return prompts * draw + steps * _after_cost("edits", step_seconds) * _mean_step(step_seconds)


def _tokenizer_images(steps: int) -> int:
    """The renders a plan's image tokenizer trains on: a batch for each step, at most 20,000."""
    return min(20_000, TOKENIZER_BATCH * steps)


def budget_for_after_stages(minutes: float, step_seconds: dict[str, float], **kw) -> float | None:
    """Where a measured plan of `minutes` (`DemoPlan.for_budget(minutes, step_seconds, **kw)`) leaves out the stages
    after stage 3 that its preset could hold (`AFTER_STAGES`: a slow machine), the fewest whole minutes whose plan
    holds them (`math.inf` where ten times `minutes` does not); None where it holds them, or the preset cannot."""
    plan = DemoPlan.for_budget(minutes, step_seconds=step_seconds, **kw)
    if not _after_stages_for(plan.preset, plan.speech):
        return None
    return _fewest_minutes(minutes, step_seconds, kw, lambda p: set(AFTER_STAGES) <= set(p.stage_steps))


def budget_for_self_training(minutes: float, step_seconds: dict[str, float], **kw) -> float | None:
    """Where a measured plan of `minutes` leaves out the self-training its preset could do (the relations and edits
    stages fit only without it, or not at all), the fewest whole minutes whose plan holds it (`math.inf` where ten
    times `minutes` does not); None where it holds it, the preset cannot, or `self_prompts` is given."""
    plan = DemoPlan.for_budget(minutes, step_seconds=step_seconds, **kw)
    if kw.get("self_prompts") is not None or not _self_trainable(plan.preset, plan.speech):
        return None
    return _fewest_minutes(minutes, step_seconds, kw, lambda p: p.self_prompts > 0)


def _fewest_minutes(minutes: float, step_seconds: dict[str, float], kw: dict,
                    holds: Callable[[DemoPlan], bool]) -> float | None:
    """None where the measured plan of `minutes` `holds`, else the fewest whole minutes up to ten times as many whose
    plan does (`math.inf` where none does)."""
    for more in (minutes, *range(math.floor(minutes) + 1, math.floor(10 * minutes) + 1)):
        if holds(DemoPlan.for_budget(more, step_seconds=step_seconds, **kw)):
            return None if more == minutes else float(more)
    return math.inf


def _after_stages_for(preset: str, speech: bool | None) -> bool:
    """Whether a plan may hold the stages after stage 3 (`AFTER_STAGES`): they train one expert side with the rest
    held, so the preset needs an und expert to hold; the speech demo keeps its measured stages."""
    from omniar.omni.model import omni_preset

    return not speech and "und" in (omni_preset(preset).decoder.get("experts") or ())


def _mean_step(step_seconds: dict[str, float]) -> float:
    """The seconds of the stages' mean training step (45 / 40 / 15% of the steps)."""
    return sum(share * step_seconds[name] for name, share in _SPLIT.items())


def _after_cost(name: str, step_seconds: dict[str, float]) -> float:
    """A step of the stage `name` after stage 3 in the stages' mean steps: as timed (the answers stage, where it is
    not: as the relations stage's), else its `AFTER_STAGES` (`ANSWER_STAGES`) cost."""
    timed = "relations" if name == "answers" and name not in step_seconds else name
    if timed in step_seconds:
        return step_seconds[timed] / _mean_step(step_seconds)
    return LATE_STAGES[name][1]


def _after_costs(step_seconds: dict[str, float] | None, preset: str, speech: bool | None) -> dict[str, float]:
    """The stages after stage 3 that a plan of `preset` may hold, with a step's cost in the stages' mean steps."""
    if not _after_stages_for(preset, speech):
        return {}
    return {name: _after_cost(name, step_seconds or {}) for name in AFTER_STAGES}


def _stages(train: int, after: dict[str, float] | None = None, table: dict | None = None,
            whole: bool = True) -> dict[str, int]:
    """`train` steps' worth of the stages in their order: 45 / 40 / 15%, and then those of `after` (name: a step's
    cost in the stages' mean steps; None: all of `AFTER_STAGES` at their costs), in `AFTER_STAGES`' order, each
    while it and the ones before it cost at most its share of `train` (with fewer steps, down to its least, where
    the share holds fewer), paid from the stages' steps in proportion - all of them or none (an edit reads its
    reference through the understanding path the relations stage moves: one model's edits kept 0.769 of the
    untouched objects before it and 0.498 after it, until the edits stage; BENCHMARKS.md "Demo"). `table`: the
    stages to plan instead of `AFTER_STAGES` (`ANSWER_STAGES`); `whole=False`: the first that does not fit ends
    them, and those before it stay."""
    table = AFTER_STAGES if table is None else table
    after = {name: cost for name, (_, cost, *_) in table.items()} if after is None else after
    paid, held = 0, {}
    for name, (steps, _, share, least) in table.items():
        fit = min(steps, math.floor((share * train - paid) / after[name])) if name in after else 0
        if fit < least:
            if whole:  # all or none: the relations stage moves the understanding path that an edit reads its
                paid, held = 0, {}  # reference by, and the edits stage after it is what fits the drawing to it again
            break
        paid += round(fit * after[name])
        held[name] = fit
    stages = {"stage1": round(_SPLIT["stage1"] * (train - paid)), "stage2": round(_SPLIT["stage2"] * (train - paid))}
    stages["stage3"] = train - paid - sum(stages.values())
    return {**stages, **held}


# the demo's steps (`run_demo`) that pacing counts, by their names in `DemoPlan.schedule` (and "train-<stage>")
PACED_PARTS = {"image-tokenizer": "image tokenizer", "speech-codec": "speech codec", "teacher": "teacher",
               "decoder-post": "decoder post-training", "self-train": "self-training"}
# the most pacing may shrink or stretch the steps of the stages left (`pace_stages`): a machine that runs four times
# slower than it timed still trains a quarter of the plan, one that runs twice as fast gets at most twice the steps
PACE_LIMITS = (0.25, 2.0)


def pace_stages(plan: DemoPlan, spent: dict[str, float],
                steps: dict[str, int] | None = None) -> tuple[dict[str, int], float]:
    """A measured plan's stage steps re-planned while it runs, so that its timed parts (`schedule`'s rows with steps)
    end when the plan said they would. `plan`: the plan as made (`for_budget`); `spent`: the seconds each part
    done so far took, by `schedule`'s names ("image tokenizer", "teacher", "stage1", ...); `steps`: the stage steps
    as run so far (default: the plan's). The mixed stages not yet run (of stage 1, 2, 3) get the time the plan has
    left after the parts after them (whole stages: the answers, relations and edits stages, decoder
    post-training, self-training), at the pace of the mixed stages already run (their real seconds over their timed
    ones; 1 before any): the plan's steps scaled in proportion, within `PACE_LIMITS` of them. Returns (the stage
    steps, that pace). A pure function of the plan and the seconds, so a run whose parts come from the cache (their
    `done.json` keeps the seconds they took) plans the same steps again."""
    if plan.step_seconds is None:
        raise ValueError("only a measured plan (step_seconds) can be paced: its parts have a time to keep")
    steps = dict(plan.stage_steps if steps is None else steps)
    left = [name for name in _SPLIT if name not in spent]
    if not left:
        return steps, 1.0
    done = [name for name in _SPLIT if name in spent]
    pace = (sum(spent[n] for n in done) / sum(steps[n] * plan.step_seconds[n] for n in done)) if done else 1.0
    rows = [(part, s) for part, n, s in plan.schedule() if n is not None]
    after = sum(s for part, s in rows if part not in spent and part not in left)
    mixed = sum(plan.stage_steps[n] * plan.step_seconds[n] for n in left)
    scale = ((sum(s for _, s in rows) - sum(spent.values())) / pace - after) / mixed
    scale = min(max(scale, PACE_LIMITS[0]), PACE_LIMITS[1])
    steps.update({n: max(1, round(plan.stage_steps[n] * scale)) for n in left})
    return steps, pace


SCALE_STRIPS = 6  # held-out prompts the report shows drawn scale by scale (next-scale presets)

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


def stage_batch(recipe: Recipe, examples_per_step: int) -> int:
    """A stage's examples per step in a plan of `examples_per_step`: the recipe's own, scaled by the plan's batch
    against `Recipe`'s default (16), so a stage that asks more (the relations curriculum) keeps its ratio."""
    from omniar.omni import train

    return max(1, round(recipe.examples_per_step * examples_per_step / train.Recipe.examples_per_step))


def image_tokenizer_config(config) -> ImageTokenizerConfig:
    """The image tokenizer the demo trains for an `OmniConfig`: single-scale for raster generation (decoded token by
    token), the multi-scale default otherwise."""
    from omniar.tokenizers.image import ImageTokenizerConfig

    return ImageTokenizerConfig(scales=(8,)) if config.generation == "raster" else ImageTokenizerConfig()


def seconds_per_step(run: Callable[[int], object], steps: int) -> float:
    """Seconds per step of `run(n)` (n steps of some training): a run of `steps // 4` steps and one of `steps` are
    timed and the step is their difference over the difference of their lengths, so what a run costs once (set-up,
    resuming, the checkpoint at its end) cancels; the long run alone where the two came out the wrong way round."""
    took = []
    for n in (max(1, steps // 4), steps):
        t0 = time.perf_counter()
        run(n)
        took.append(time.perf_counter() - t0)
    return (took[1] - took[0]) / (steps - max(1, steps // 4)) if took[1] > took[0] else took[1] / steps


def measure_step_seconds(preset: str = "onecat-tiny", overrides: dict | None = None, examples_per_step: int = 16,
                         distill: float = 0.0, stages: tuple[str, ...] = ("stage1", "stage2", "stage3"),
                         distill_stages: tuple[str, ...] = ("stage1", "stage2", "stage3"), steps: int = 16,
                         warmup: int = 3, text_samples: int = 2000, decoder: bool = False,
                         self_draw: bool = False, device: str | torch.device = "cpu",
                         seed: int = 0) -> dict[str, float]:
    """Seconds per training step of `preset` here in each of `stages`, as the demo trains them: the stage's mix,
    Muon, examples rendered on the fly, distillation from a ConvNet teacher in `distill_stages` when `distill` > 0
    (`DemoPlan.distill_stages`). After `warmup`
    steps, `steps // 4` and `steps` more are timed, each run resuming the last (`seconds_per_step`). Stages of one
    mix that hold the same parameters fixed are timed once (the answers stage is the relations stage's mix with only
    the text expert learning: its own time). The tokenizers and teacher are untrained: the work does not depend on
    their weights. With `decoder`, also "decoder": the seconds of decoder post-training per redrawn image, its share
    of the decoder's steps included (runs of 50 and 200 images, `seconds_per_step`). With `self_draw`, also
    "self-draw": the seconds of self-training's drawing per prompt (its candidates drawn at the benchmark's sampling
    and scored by the caption score; runs of 4 and 16 prompts, after one to warm up)."""
    import torch

    from omniar.data.shapeworld.corpus import world_text
    from omniar.model.patch_embed import token_grid
    from omniar.omni.model import OmniModel, omni_preset
    from omniar.omni.teacher import ConvTeacher, distill_config
    from omniar.omni.train import STAGES, train_omni
    from omniar.tokenizers.image import ImageTokenizer
    from omniar.tokenizers.text import TextTokenizer

    torch.manual_seed(seed)
    config = omni_preset(preset, **(overrides or {}))
    image = image_tokenizer_config(config)
    teacher = ConvTeacher(image.image_size, token_grid(image.image_size, config.patch)) if distill > 0 else None
    model = OmniModel(distill_config(config, teacher) if teacher is not None else config,
                      TextTokenizer.train(list(world_text(text_samples))), ImageTokenizer(image)).to(device)
    seconds, by_mix = {}, {}
    for name in stages:
        recipe = dataclasses.replace(STAGES[name], examples_per_step=stage_batch(STAGES[name], examples_per_step),
                                     steps=warmup + max(1, steps // 4) + steps,
                                     distill=distill if name in distill_stages else 0.0)
        # what a step costs: its mix, its batch, and what it holds fixed (no gradients for frozen experts)
        mix = json.dumps([recipe.tasks, recipe.questions, recipe.distill, recipe.examples_per_step, recipe.freeze],
                         sort_keys=True)
        if mix not in by_mix:
            with tempfile.TemporaryDirectory() as tmp:
                done = [warmup]  # each timed run resumes the last: resuming and saving cost every run the same

                def more(n: int, tmp=tmp, recipe=recipe, done=done) -> None:
                    done[0] += n
                    with warnings.catch_warnings():  # a timing run is short by design: no curriculum to finish
                        warnings.simplefilter("ignore", UserWarning)
                        train_omni(model, tmp, recipe, seed=seed, progress=False, until=done[0], teacher=teacher)

                more(0)
                by_mix[mix] = seconds_per_step(more, steps)
        seconds[name] = by_mix[mix]
    if decoder:
        from omniar.omni.decoder_post import DecoderPostTraining, post_train_decoder

        def post(n: int) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                config = DecoderPostTraining(images=n, steps=max(1, round(DECODER_STEPS_PER_IMAGE * n)))
                post_train_decoder(model, tmp, config, seed=seed, progress=False)

        seconds["decoder"] = seconds_per_step(post, 200)
    if self_draw:
        from omniar.data.shapeworld.dataset import make_sample
        from omniar.omni.self_train import SelfTraining, draw_best

        config = SelfTraining()
        prompts = [make_sample("train", config.first + i)["caption"] for i in range(16)]
        model.eval()

        def draw(n: int) -> None:
            draw_best(model, prompts[:n], config.candidates, list(range(n)))

        draw(1)
        seconds["self-draw"] = seconds_per_step(draw, 16)
    return seconds


def measure_other_seconds(image_config: ImageTokenizerConfig, teacher_grid: int | None = None, align: float = 0.0,
                          batch: int = 16, steps: int = 8, seed: int = 0) -> dict[str, float]:
    """Seconds per step here of the image tokenizer (`TOKENIZER_BATCH` images; aligned to an untrained ConvTeacher
    with `align`) and, with `teacher_grid`, of the ConvTeacher (`batch` scenes), on the CPU where the demo trains
    them: each trained from scratch for `steps // 4` and for `steps` steps (the teacher 5x as many: its step is
    short), `seconds_per_step`."""
    import torch

    from omniar.omni.teacher import ConvTeacher, train_conv_teacher
    from omniar.tokenizers.train_image import shapeworld_images, train_image_tokenizer

    def fresh(train: Callable[[Path, int], object]) -> Callable[[int], object]:
        def run(n: int) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                train(Path(tmp), n)
        return run

    if align > 0 and teacher_grid is None:
        raise ValueError("an aligned image tokenizer reads the ConvTeacher: give its teacher_grid")
    torch.manual_seed(seed)
    side = image_config.image_size
    images = shapeworld_images(64, side=side)
    teacher = ConvTeacher(side, teacher_grid).requires_grad_(False).eval() if align > 0 else None
    config = dataclasses.replace(image_config, align_width=teacher.und_width) if teacher is not None else image_config
    seconds = {"image-tokenizer": seconds_per_step(fresh(lambda d, n: train_image_tokenizer(
        d, images, config, steps=n, batch=TOKENIZER_BATCH, progress=False, align_teacher=teacher, align_weight=align,
        optimizer=TOKENIZER_OPTIMIZER)), steps)}
    if teacher_grid is not None:
        seconds["teacher"] = seconds_per_step(fresh(lambda d, n: train_conv_teacher(
            d, n, side, teacher_grid, seed=seed, batch=batch, progress=False)), 5 * steps)
    return seconds


def calibrate(cache: str | Path, plan: DemoPlan, device: str | torch.device = "cpu", again: bool = False,
              log: Callable[[str], None] = print) -> dict[str, float]:
    """`plan`'s training step per stage in seconds on this machine (`measure_step_seconds`), and the image
    tokenizer's and ConvTeacher's steps (`measure_other_seconds`), rounded up to 10 ms, kept in
    cache/calibration-<hash of what it timed>.json so that the next run plans the same steps and finds its
    products in the cache; `again`: measure anew."""
    from omniar.model.patch_embed import token_grid
    from omniar.omni.model import omni_preset
    from omniar.omni.train import STAGES

    # what is timed: the stages' mixes, the model (the preset's whole config: a changed preset measures again), the
    # batch; and how (a changed timing measures again)
    preset = omni_preset(plan.preset, **plan.overrides)
    image = image_tokenizer_config(preset)
    conv = plan.teacher == "conv" and (plan.distill > 0 or plan.align > 0)  # the demo trains a ConvTeacher
    # the stages after stage 3 too where the preset can hold them: a measured plan may have them where this one does not
    timed = tuple(plan.stage_steps)
    if _after_stages_for(plan.preset, plan.speech):
        timed += tuple(name for name in LATE_STAGES if name not in timed)
    self_draw = _self_trainable(plan.preset, plan.speech)  # likewise self-training's drawing
    key = {"preset": plan.preset, "config": dataclasses.asdict(preset), "overrides": plan.overrides,
           "batch": plan.examples_per_step, "distill": plan.distill > 0, "device": str(device),
           "timing": f"difference of a 4- and a 16-step run; image tokenizer ({TOKENIZER_OPTIMIZER}, "
                     f"{TOKENIZER_BATCH} images) 2 / 8 steps, "
                     "ConvTeacher 10 / 40; "
                     "decoder post-training 50 / 200 images, its encoded share from the image pool; "
                     "self-training's drawing 4 / 16 prompts",
           "decoder": plan.decoder_images > 0, "self": self_draw,
           "mixes": {name: [STAGES[name].tasks, STAGES[name].questions, STAGES[name].freeze] for name in timed},
           "image": dataclasses.asdict(image), "align": plan.align, "conv_teacher": conv}
    path = Path(cache) / f"calibration-{_digest(key)}.json"
    if path.is_file() and not again:
        seconds = json.loads(path.read_text())["step_seconds"]
        log(f"[demo] a step takes {seconds} s here (measured before: {path})")
        return seconds
    log("[demo] timing training, tokenizer and teacher steps on this machine ...")
    measured = measure_step_seconds(plan.preset, plan.overrides, plan.examples_per_step, plan.distill,
                                    timed, plan.distill_stages, text_samples=plan.text_samples,
                                    decoder=plan.decoder_images > 0, self_draw=self_draw, device=device)
    grid = token_grid(image.image_size, preset.patch)
    measured.update(measure_other_seconds(image, grid if conv else None, plan.align if conv else 0.0,
                                          plan.examples_per_step))
    # steps to 10 ms, decoder post-training (seconds a redrawn image) and self-training's drawing (a prompt) to 1 ms
    per = {name: 1000 if name in ("decoder", "self-draw") else 100 for name in measured}
    seconds = {name: math.ceil(s * per[name]) / per[name] for name, s in measured.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**key, "step_seconds": seconds}, indent=2))
    tmp.replace(path)
    log(f"[demo] a step takes {seconds} s here")
    return seconds


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps({**key, "version": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:12]


class Cache:
    """Step products under root/<name>-<digest>/, complete when done.json is there."""

    def __init__(self, root: str | Path, enabled: bool = True):
        self.root, self.enabled = Path(root), enabled

    def run(self, name: str, key: dict, build: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
        """(directory, build's summary, whether it came from the cache). The summary's "seconds" count every
        attempt at the step: a build cut short (Ctrl-C, an error) leaves its time in spent.json for the next."""
        d = self.root / f"{name}-{_digest(key)}"
        done, spent = d / "done.json", d / "spent.json"
        if self.enabled and done.is_file():
            return d, json.loads(done.read_text()), True
        d.mkdir(parents=True, exist_ok=True)
        (d / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True))
        before = json.loads(spent.read_text())["seconds"] if self.enabled and spent.is_file() else 0.0
        t0 = time.perf_counter()
        try:
            summary = build(d)
        except BaseException:
            spent.write_text(json.dumps({"seconds": round(before + time.perf_counter() - t0, 1)}))
            raise
        summary = {**summary, "seconds": round(before + time.perf_counter() - t0, 1)}
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(done)
        spent.unlink(missing_ok=True)
        return d, summary, False


def run_demo(out: str | Path = "out/demo", plan: DemoPlan | None = None, cache: str | Path | None = None,
             use_cache: bool = True, progress: bool = True, log: Callable[[str], None] = print,
             device: str | torch.device = "cpu", pace: bool = True) -> dict:
    """Run the whole pipeline; writes out/report.html, out/report.json and out/eval/. Returns the report.
    `device`: where the three stages train and the benchmark runs (data, tokenizers and teacher are made on the
    CPU; a stage's cache key does not name the device). `pace`: before each of the three stages, a measured plan
    gives the stages left the time its timed parts have left (`pace_stages`: a machine slower than its timing trains
    fewer steps rather than run past the budget); False trains the planned steps."""
    import torch

    from omniar.modality import Modality
    from omniar.model.patch_embed import token_grid
    from omniar.omni.evaluate import EVAL_TASKS, SPEECH_EVAL_TASKS, draw_scales, evaluate_model
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
    from omniar.tokenizers.image import ImageTokenizer
    from omniar.tokenizers.speech import SpeechCodec
    from omniar.tokenizers.text import TextTokenizer

    plan = plan or DemoPlan.for_budget()
    # pacing re-plans a measured plan's stages as they run (`pace_stages`), in a copy: the report has their steps
    planned, plan = plan, dataclasses.replace(plan, stage_steps=dict(plan.stage_steps))
    pace = pace and plan.step_seconds is not None
    paces: list[dict] = []
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
    image_config = image_tokenizer_config(preset)
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
                                      steps=plan.tokenizer_steps, batch=TOKENIZER_BATCH, progress=progress,
                                      align_teacher=teacher if plan.align > 0 else None, align_weight=plan.align,
                                      optimizer=TOKENIZER_OPTIMIZER)
        return evaluate_image_tokenizer(model, min(500, 5 * plan.eval_num))

    image_key = {"steps": plan.tokenizer_steps, "images": plan.tokenizer_images, "seed": plan.seed,
                 "optimizer": TOKENIZER_OPTIMIZER, "batch": TOKENIZER_BATCH}
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
    stages = {name: dataclasses.replace(recipe, examples_per_step=stage_batch(recipe, plan.examples_per_step),
                                        distill=plan.distill if name in plan.distill_stages and teacher is not None
                                        else 0.0)
              for name, recipe in (with_speech(STAGES) if plan.speech else STAGES).items()}
    previous, key = None, base_key
    for name in list(plan.stage_steps):
        if pace and name in _SPLIT:  # the stages left get the time the plan has left
            spent = {PACED_PARTS.get(part, part.removeprefix("train-")): s["seconds"] for part, s in steps.items()
                     if part in PACED_PARTS or part.removeprefix("train-") in plan.stage_steps}
            paced, rate = pace_stages(planned, spent, plan.stage_steps)
            changed = {n: [plan.stage_steps[n], k] for n, k in paced.items() if k != plan.stage_steps[n]}
            if changed:
                log(f"[demo] pacing: the timed parts so far took {sum(spent.values()):.0f} s against "
                    f"{sum(s for p, _, s in plan.schedule() if p in spent):.0f} s timed"
                    + (f", the stages at {rate:.2f}x their timed steps" if rate != 1.0 else "")
                    + f": {', '.join(f'{n} {a} -> {b}' for n, (a, b) in changed.items())} steps, to end at the "
                    "plan's time")
                paces.append({"before": name, "pace": round(rate, 3), "steps": changed})
                plan.stage_steps = paced
        n = plan.stage_steps[name]
        # the stage's recipe is in its key: a changed task mix, rate or reweighting retrains from that stage on
        # (an option left at None is left out, so a new option keeps the stages that do not use it cached)
        recipe = {k: v for k, v in dataclasses.asdict(stages[name]).items() if k != "steps" and v is not None}
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

    # 5-6. parts that take the model so far and write theirs to <part>/checkpoint, each keyed by its config and the
    # part before it: `run(model, out, config, seed=, progress=)`
    def model_step(name: str, config, run: Callable) -> None:
        nonlocal previous, key
        key = {**dataclasses.asdict(config), "seed": plan.seed, "after": _digest(key)}

        def build(d: Path, previous=previous) -> dict:
            torch.manual_seed(plan.seed)
            return run(OmniModel.from_pretrained(previous).to(device), d, config, seed=plan.seed, progress=progress)

        previous = step(name, key, build) / "checkpoint"

    # 5. the image decoder post-trained on the model's own redraws of the finest scale (omni/decoder_post.py)
    if plan.decoder_images:
        from omniar.omni.decoder_post import DecoderPostTraining, post_train_decoder

        model_step("decoder-post", DecoderPostTraining(images=plan.decoder_images, steps=plan.decoder_steps),
                   post_train_decoder)
    # 6. self-training: the generation side learns the model's best drawings of training prompts by its own caption
    # score (omni/self_train.py)
    if plan.self_prompts:
        from omniar.omni.self_train import SelfTraining, self_train

        model_step("self-train", SelfTraining(prompts=plan.self_prompts, steps=plan.self_steps), self_train)
    model = OmniModel.from_pretrained(previous).to(device)

    # 7. the benchmark (test split + held-out compositions), judged independently
    eval_dir = out / "eval"
    t0 = time.perf_counter()
    tasks = EVAL_TASKS + (SPEECH_EVAL_TASKS if plan.speech else ())
    result = evaluate_model(model, eval_dir, num=plan.eval_num, heldout=plan.heldout_num, tasks=tasks,
                            progress=progress)
    scales = []  # the first held-out prompts drawn scale by scale, for the report
    if model.gen_modality == Modality.IMAGE_GEN and plan.heldout_num:
        scales = draw_scales(model, eval_dir / "heldout", num=min(SCALE_STRIPS, plan.heldout_num))
    steps["benchmark"] = {"seconds": round(time.perf_counter() - t0, 1), "cached": False, "dir": str(eval_dir)}

    report = {
        "plan": dataclasses.asdict(plan),
        "parameters": {k: int(v) for k, v in model.decoder.num_parameters().items()},
        "steps": steps,
        "scores": result["scores"],
        "heldout": result.get("heldout"),
        "sampling": result["sampling"],
        "paced": paces,
        "scales": scales,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "data": str(data_dir),
        "checkpoint": str(previous),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_report(out / "report.html", report, eval_dir, data_dir,
                 metrics=[Path(steps[f"train-{n}"]["dir"]) / n / "metrics.jsonl" for n in plan.stage_steps])
    return report
