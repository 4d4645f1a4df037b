"""Training an `OmniModel` on ShapeWorld: mixed-task batches with configurable task ratios.

Every step draws its examples from a generator seeded by the step (tasks by `Recipe.tasks` ratios, ShapeWorld
train samples by index, condition dropout and bitwise self-correction), so a resumed run equals an
uninterrupted one. With `Recipe.shards` > 1 a step's examples are dealt into that many pieces of about equal
work, each with its own generator: gradient accumulation in one process, or one process's share under
data parallelism (`omniar.train.parallel`); the same update either way. The loss weights: the recipe's
`reweight` (AR-Omni's task-aware reweighting of token targets), the model config's `bit_loss_weight` on generated
bits. Speech tasks (tts, asr, svqa) need a model with a speech codec; their speech is synthesized on the fly.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import random
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from omniar.omni.model import SPEECH_TASKS, TASKS, Example, OmniModel, Reweighting
from omniar.tokenizers.speech import SpeechCodec
from omniar.train.parallel import DataParallel
from omniar.train.trainer import OPTIMIZERS, TrainConfig, Trainer


@dataclass(frozen=True)
class RelationCurriculum:
    """Position questions ("is the red circle left of the blue square?") taught one relation at a time, by the
    recipe's step: "left of" alone until step `above`, then "above" beside it, then from step `mirrors` on "right
    of" and "below" ramped in until they are half of the questions at step `full`. Taught all four at once, or
    inside the mixed stages, the model stays at chance (answering "yes" or "no" to every question); taught in this
    order to a trained model's text expert, 1,800 steps reach 0.92-0.97 of them (BENCHMARKS.md, "Relations"); in 1,000
    steps (phases 150 / 300 / 550) one demo's model stayed at chance on "below", with either of two seeds. With
    `counts` a relation example asks how many of a shape there are as its second turn: counting on validation goes
    0.82 -> 0.94 and 0.93 -> 0.97 on two demo models (BENCHMARKS.md, "Counting")."""

    above: int = 300
    mirrors: int = 600
    full: int = 1050
    share: float = 1.0  # of the vqa examples ask a relation question; the others their sample's own questions
    # of the relation examples also ask, as a second turn, how many of a shape there are - a shape in the scene half
    # of the time (the mixed stages' questions answer "zero" to 71% of their counts, and the model says "zero")
    counts: float = 0.0
    # of the relation examples also ask, as a further turn, the colour of a shape or the shape of a colour in the
    # scene ("what color is the star?", `binding_question`): what the mixed stages sometimes leave half learnt
    bindings: float = 0.0
    # of the relation examples also ask, as their last turn, how many objects of a colour there are (a colour in the
    # scene half of the time): taught beside the shape counts it needs the understanding path learning too (with the
    # text expert alone the two counts get mixed up; BENCHMARKS.md "Bindings")
    colour_counts: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.above <= self.mirrors <= self.full:
            raise ValueError(f"the curriculum's phases must satisfy 0 <= above <= mirrors <= full, got "
                             f"{self.above}, {self.mirrors}, {self.full}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share (of the vqa examples asking a relation) must be in (0, 1], got {self.share}")
        if not 0 <= self.counts <= 1:
            raise ValueError(f"counts (of the relation examples asking a count too) must be in [0, 1], got "
                             f"{self.counts}")
        if not 0 <= self.bindings <= 1:
            raise ValueError(f"bindings (of the relation examples asking a colour or a shape too) must be in [0, 1], "
                             f"got {self.bindings}")
        if not 0 <= self.colour_counts <= 1:
            raise ValueError(f"colour_counts (of the relation examples asking a colour's count too) must be in "
                             f"[0, 1], got {self.colour_counts}")

    def relations(self, step: int, draw: float) -> tuple[str, ...]:
        """The relations one question may ask about at `step`, `draw` uniform in [0, 1)."""
        if step < self.above:
            return ("left of",)
        if step < self.mirrors:
            return ("left of", "above")
        mirrored = 0.5 * min(1.0, (step - self.mirrors) / max(self.full - self.mirrors, 1e-9))
        return ("right of", "below") if draw < mirrored else ("left of", "above")


@dataclass
class Recipe:
    """A training stage: task ratios and optimisation (stage presets are instances of this)."""

    # the unified mix of stages 2 and 3: text-to-image has plateaued after stage 1 and captions are learnt with a
    # small share, so VQA, which learns as long as it is shown questions, gets the room (0.2 / 0.15 / 0.35 / 0.25 /
    # 0.05 before: the demo's VQA 0.67 -> 0.83, captions 0.965 -> 0.945; BENCHMARKS.md "Demo")
    tasks: dict[str, float] = field(default_factory=lambda: {"t2i": 0.15, "caption": 0.1, "vqa": 0.45,
                                                              "edit": 0.25, "text": 0.05})
    examples_per_step: int = 16
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup: int = 50
    # Muon for the decoder blocks' matrices, AdamW for the rest (train/muon.py); "adamw": AdamW for everything.
    # Muon learns understanding several times faster here (VQA alone, 1,000 steps: 0.74 -> 0.91, BENCHMARKS.md)
    optimizer: str = "muon"
    pack: bool = True  # short examples share rows (documents isolated by the mask): less padding
    distill: float = 0.0  # weight of understanding distillation (needs a teacher; omni/teacher.py)
    # None: a cosine over the steps after the warm-up; n: lr held until the last n steps, the cosine over those
    decay_steps: int | None = None
    # questions per vqa image: the sample's own, then further ones about the same scene as later turns (each read
    # image then teaches several answers for ~10 positions more per question)
    questions: int = 1
    shards: int = 1  # pieces per step (accumulated, or shared out among data-parallel processes)
    reweight: Reweighting = field(default_factory=Reweighting)  # task-aware weights of the token targets
    # speech tasks draw from the first `speech_pool` samples: each utterance is synthesized and encoded once per
    # process (~30 ms) when first drawn and then served from memory. Too small a pool is memorized: 4,000
    # utterances heard ~14 times each took the TTS loss to 0.008 and doubled the test WER (BENCHMARKS.md)
    speech_pool: int = 20_000
    # not None: vqa examples ask one position question about their image (`share` of them), by this curriculum
    relations: RelationCurriculum | None = None
    # parameters held fixed in this stage: fnmatch patterns of their names, e.g. "decoder.embed.*", where {und}
    # stands for the index of the expert named und
    freeze: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= self.examples_per_step:
            raise ValueError(f"shards must be between 1 and examples_per_step ({self.examples_per_step}), "
                             f"got {self.shards}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown} in the recipe; known: {', '.join(TASKS)}")
        if self.questions < 1:
            raise ValueError(f"questions (per vqa image) must be >= 1, got {self.questions}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.decay_steps is not None and self.decay_steps < 1:  # more than the steps: all of them decay
            raise ValueError(f"decay_steps must be >= 1 (or None), got {self.decay_steps}")
        if self.speech_pool < 1:
            raise ValueError(f"speech_pool must be >= 1, got {self.speech_pool}")
        if not self.tasks or min(self.tasks.values()) < 0 or sum(self.tasks.values()) <= 0:
            raise ValueError(f"task ratios must be >= 0 with a positive sum, got {self.tasks}")


# the parameters every task reads: the token embeddings (tied to the text head) and the norms
SHARED = ("decoder.embed.*", "decoder.norm.*", "decoder.blocks.*_norm.*")
# the understanding path, which edits read their reference image by: the patch embedding and the und expert
UNDERSTANDING = ("patch_embed.*", "decoder.feature_proj.image_und.*", "decoder.blocks.*.mixer.qkv.{und}.*",
                 "decoder.blocks.*.mixer.o.{und}.*", "decoder.blocks.*.ffn.experts.{und}.*")
# the text expert, which answers and captions are written by
TEXT_EXPERT = ("decoder.blocks.*.mixer.qkv.{text}.*", "decoder.blocks.*.mixer.o.{text}.*",
               "decoder.blocks.*.ffn.experts.{text}.*")

# OneCAT's staged recipe on ShapeWorld (each stage starts from the previous stage's weights with a fresh optimizer):
# stage 1 pretrains generation with captioning and some VQA beside it (the understanding path learns to read images
# and to find the objects a question names); stage 2 is unified mid-training on every task; stage 3 fine-tunes on
# the same mixture at a lower learning rate. Every stage asks four questions per VQA image (VQA alone, 1,000 steps:
# 0.625 -> 0.73, BENCHMARKS.md). "relations" (after stage 3; after the mixed stages in this dict so that they keep
# their seeds, which follow the order here) teaches the position questions by their curriculum, most of each step's
# images asking one (and then how many of a shape there are, the colour of a shape or the shape of a colour, and
# how many of a colour there are: one demo's mixed stages had left colour questions at 0.60, its relations stage took
# them to 0.83 without the binding turn and to 0.975 with it; another's left colour counts answered "zero";
# BENCHMARKS.md "Bindings"), the rest the sample's own questions or a caption so that the other answers stay; the
# parameters every task shares (token embeddings, norms) are held, so text-to-image draws what it drew before, bit
# for bit, while the text expert and the understanding path learn (with the text expert alone the colour counts cost
# the shape counts, and answers stayed below 0.95 on one demo model of three; BENCHMARKS.md "Relations",
# "Bindings"). "edits" is its mirror image for drawing: edits (and some text-to-image) with the
# shared parameters, the understanding path and the text expert held, so that only the generation side learns and
# answers and captions stay exactly what they were; 1,000 steps after the relations stage took one demo model's
# edits from 0.785 / 0.931 to 0.902 / 0.949 with text-to-image the same (0.386 -> 0.389; BENCHMARKS.md "Edits
# stage"); the demo runs it after the relations stage. "answers" is the relations stage a third as long (its
# curriculum's phases and decay too, for 600 steps) with the text expert alone learning, so that edits and
# text-to-image stay exactly what they were: the demo runs it where the two stages above do not fit (a slow machine;
# on one, 600 steps in 254 s took a model of 1,614 mixed steps from captions 0.752 to 0.912 and VQA 0.637 to 0.690,
# BENCHMARKS.md "Demo"), and the edits stage after it where that fits. `steps` here are placeholders:
# `train_stages` (and `omniar demo --budget`) set them; stages 2 and 3 use the default mix.
STAGES: dict[str, Recipe] = {
    "stage1": Recipe(tasks={"t2i": 0.5, "caption": 0.25, "vqa": 0.15, "text": 0.1}, lr=2e-3, min_lr_ratio=0.5,
                     warmup=50, questions=4),
    "stage2": Recipe(lr=1.5e-3, min_lr_ratio=0.2, warmup=20, questions=4),
    "stage3": Recipe(lr=5e-4, min_lr_ratio=0.1, warmup=10, questions=4),
    "relations": Recipe(tasks={"vqa": 0.85, "caption": 0.15}, examples_per_step=24, lr=1e-3, min_lr_ratio=0.1,
                        warmup=10, decay_steps=300, questions=4,
                        relations=RelationCurriculum(share=0.8, counts=1.0, bindings=1.0, colour_counts=1.0),
                        freeze=SHARED),
    "edits": Recipe(tasks={"edit": 0.8, "t2i": 0.2}, lr=5e-4, min_lr_ratio=0.1, warmup=10,
                    freeze=SHARED + UNDERSTANDING + TEXT_EXPERT),
    "answers": Recipe(tasks={"vqa": 0.85, "caption": 0.15}, examples_per_step=24, lr=1e-3, min_lr_ratio=0.1,
                      warmup=10, decay_steps=100, questions=4,
                      relations=RelationCurriculum(above=100, mirrors=200, full=350, share=0.8, counts=1.0,
                                                   bindings=1.0, colour_counts=1.0),
                      freeze=SHARED + UNDERSTANDING),
}


# AR-Omni's reweighting: the last 4 target tokens of captioning and speech recognition weighted 2.0
AR_OMNI_REWEIGHT = Reweighting(tail=4, tail_weight=2.0)


def with_speech(stages: dict[str, Recipe], share: float = 0.3,
                reweight: Reweighting | None = AR_OMNI_REWEIGHT) -> dict[str, Recipe]:
    """The stage recipes with AR-Omni's speech tasks mixed in at `share` of each stage's examples: text-to-speech
    and recognition (and, after stage 1, spoken questions), the other tasks scaled down to make room (a relations
    curriculum, or a stage that holds parameters fixed, is left as it is); with AR-Omni's task-aware `reweight` (by
    default the last 4 target tokens of captioning and recognition weighted 2.0, which more than doubled correct
    captions in its ablation, BENCHMARKS.md), or None to keep each recipe's own."""
    out = {}
    for i, (name, recipe) in enumerate(stages.items()):
        if recipe.relations is not None or recipe.freeze:  # a curriculum stays one; a frozen part stays frozen
            out[name] = recipe
            continue
        total = sum(recipe.tasks.values())
        speech = {"tts": 0.4, "asr": 0.4, "svqa": 0.2} if i else {"tts": 0.5, "asr": 0.5}
        tasks = {t: (1 - share) * w / total for t, w in recipe.tasks.items()}
        tasks.update({t: share * w for t, w in speech.items()})
        out[name] = dataclasses.replace(recipe, tasks=tasks, reweight=reweight or recipe.reweight)
    return out


def shapeworld_example(task: str, index: int, side: int, split: str = "train",
                       speech: SpeechCodec | None = None, questions: int = 1,
                       relations: tuple[str, ...] | None = None, count: bool = False, bind: bool = False,
                       colour_count: bool = False) -> Example:
    """The ShapeWorld sample `index` of `split` as an example of `task` (the next sample with an edit, for edit);
    a vqa example asks up to `questions` different questions about its image, one per turn, or with `relations`
    one position question about one of them (the next sample whose scene has such a pair), and with `count` then
    how many of a shape there are (`count_question`), with `bind` the colour of a shape or the shape of a colour
    (`binding_question`), with `colour_count` how many objects of a colour there are, in that order.
    Speech tasks speak the sample's text (espeak-ng) and encode it with the `speech` codec: tts the caption in the
    narrator's voice (the model's own voice: a single-speaker TTS), asr and s2i the caption, svqa the question,
    chat the question and the answer in the sample's voice (listening covers every voice)."""
    from omniar.data.shapeworld.dataset import make_sample, more_questions
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    if task == "vqa" and relations is not None:
        return _relation_example(split, index, side, relations, count, bind, colour_count)
    s = make_sample(split, index)
    while task == "edit" and s["edit"] is None:
        index += 1
        s = make_sample(split, index)
    if task in SPEECH_TASKS:
        if speech is None:
            raise ValueError(f"a {task} example needs a speech codec to encode its speech")
        from omniar.data.shapeworld.speech import NARRATOR

        voice = tuple(sorted(s["voice"].items()))
        if task == "tts":
            narrated = spoken_codes(speech, s["caption"], tuple(sorted(vars(NARRATOR).items())))
            return Example("tts", s["caption"], speech=narrated)
        codes = spoken_codes(speech, s["question"] if task in ("svqa", "chat") else s["caption"], voice)
        if task == "asr":
            return Example("asr", s["caption"], speech=codes)
        image = render(Scene.from_dict(s["scene"]), side)
        if task == "s2i":
            return Example("s2i", s["caption"], image=image, speech=codes)
        if task == "chat":
            return Example("chat", s["question"], answer=s["answer"], image=image, speech=codes,
                           answer_speech=spoken_codes(speech, s["answer"], voice))
        return Example("svqa", s["question"], answer=s["answer"], image=image, speech=codes)
    image = render(Scene.from_dict(s["scene"]), side)
    if task == "t2i":
        return Example("t2i", s["caption"], image=image)
    if task == "caption":
        return Example("caption", s["caption"], image=image)
    if task == "vqa":
        return Example("vqa", s["question"], answer=s["answer"], image=image,
                       turns=more_questions(s, questions - 1) if questions > 1 else ())
    if task == "edit":
        target = render(Scene.from_dict(s["edit"]["scene"]), side)
        return Example("edit", s["edit"]["instruction"], image=target, source=image,
                       grounding=named_object(s["edit"]["instruction"], Scene.from_dict(s["scene"]), side))
    return Example("text", f"{s['caption']}. {s['question']} {s['answer']}.")


def _relation_example(split: str, index: int, side: int, relations: tuple[str, ...], count: bool = False,
                      bind: bool = False, colour_count: bool = False) -> Example:
    from omniar.data.shapeworld.dataset import make_sample, mentions_held_out
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene
    from omniar.data.shapeworld.tasks import sample_qa

    for i in range(index, index + 1000):
        scene = Scene.from_dict(make_sample(split, i)["scene"])
        try:
            qa = sample_qa(scene, random.Random(f"shapeworld/{split}/{i}/relation"), "position", relations)
        except ValueError:  # no pair of named objects in one of these relations
            continue
        if split == "heldout" or not mentions_held_out(qa.question):
            turns = (count_question(scene, random.Random(f"shapeworld/{split}/{i}/count")),) if count else ()
            bound = binding_question(scene, random.Random(f"shapeworld/{split}/{i}/bind")) if bind else None
            turns += (bound,) if bound else ()
            if colour_count:
                turns += (count_question(scene, random.Random(f"shapeworld/{split}/{i}/colour-count"), "color"),)
            return Example("vqa", qa.question, answer=qa.answer, image=render(scene, side), turns=turns)
    raise ValueError(f"no scene of {split} samples {index}-{index + 999} has a pair in relations {relations}")


def count_question(scene, rng: random.Random, attribute: str = "shape") -> tuple[str, str]:
    """("how many <shape>s are there?", its answer) about `scene`, or with `attribute` "color" ("how many <color>
    objects are there?", its answer): a shape (colour) in the scene half of the time, any of them otherwise."""
    from omniar.data.shapeworld.tasks import count_qa
    from omniar.data.shapeworld.world import COLORS, SHAPES

    if attribute not in ("shape", "color"):
        raise ValueError(f"a count asks by shape or color, not {attribute!r}")
    present = sorted({getattr(o, attribute) for o in scene.objects})
    value = rng.choice(present if present and rng.random() < 0.5 else SHAPES if attribute == "shape" else list(COLORS))
    qa = count_qa(scene.objects, attribute, value)  # the benchmark's own wording
    return qa.question, qa.answer


def binding_question(scene, rng: random.Random) -> tuple[str, str] | None:
    """("what color is the <shape>?" or "what shape is the <color> object?", its answer) about `scene`, either
    where only one can be asked; None where no shape and no colour appears exactly once."""
    from omniar.data.shapeworld.tasks import sample_qa

    kinds = ["color", "shape"]
    rng.shuffle(kinds)
    for kind in kinds:
        try:
            qa = sample_qa(scene, rng, kind)
        except ValueError:  # no shape (colour) appears exactly once
            continue
        return qa.question, qa.answer
    return None


def named_object(instruction: str, scene, side: int) -> np.ndarray:
    """(side, side) coverage of the object an edit instruction names in its source scene (zeros for an add, which
    names no object there)."""
    from omniar.data.shapeworld.judge import parse_edit
    from omniar.data.shapeworld.render import coverage

    kind, args = parse_edit(instruction)
    if kind == "add":
        return np.zeros((side, side), np.float32)
    (o,) = [o for o in scene.objects if (o.color, o.shape) == args[:2]]
    return coverage(o.shape, o.size, o.cx, o.cy, side)


_SPOKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # codec -> {(text, voice): codes}


def spoken_codes(codec: SpeechCodec, text: str, voice: tuple) -> Tensor:
    """Codec codes of `text` spoken by espeak-ng in `voice` (sorted (name, value) pairs of a Voice); memoized per
    codec, so a recipe's speech pool is synthesized and encoded once."""
    from omniar.data.shapeworld.speech import Voice, speak

    memo = _SPOKEN.setdefault(codec, {})
    key = (text, voice)
    if key not in memo:
        with torch.no_grad():
            memo[key] = codec.encode(torch.from_numpy(speak(text, Voice(**dict(voice))))[None])[0]
    return memo[key]


# Rough relative work of one example of each task (positions in the stream; an edit reads and writes an image).
_COST = {"edit": 3.0, "t2i": 2.0, "caption": 1.0, "vqa": 1.0, "text": 0.3, "tts": 1.0, "asr": 1.0, "svqa": 1.5,
         "chat": 2.0, "s2i": 2.5}


def examples_for_step(recipe: Recipe, step: int, side: int, seed: int = 0, pool: int = 1_000_000,
                      shard: int = 0, shards: int = 1, speech: SpeechCodec | None = None) -> list[Example]:
    """Step `step`'s examples (all of them by default), or those of piece `shard` of `shards`: the pieces get
    about the same work (longest first, each to the lightest piece so far). Only the returned ones are rendered."""
    rng = np.random.default_rng([seed, step])
    names = list(recipe.tasks)
    p = np.array([recipe.tasks[t] for t in names], dtype=float)
    tasks = rng.choice(names, size=recipe.examples_per_step, p=p / p.sum())
    picks = [(t, int(rng.integers(recipe.speech_pool if t in SPEECH_TASKS else pool))) for t in tasks]
    relations = [None] * len(picks)
    if recipe.relations is not None:  # drawn apart, so the picks stay those of the same recipe without
        draws = np.random.default_rng([seed, step, 7]).random((len(picks), 2))
        relations = [recipe.relations.relations(step, d) if t == "vqa" and asks < recipe.relations.share
                     else None for (t, _), (asks, d) in zip(picks, draws)]
        counting = np.random.default_rng([seed, step, 8]).random(len(picks)) < recipe.relations.counts
        binding = np.random.default_rng([seed, step, 9]).random(len(picks)) < recipe.relations.bindings
        colours = np.random.default_rng([seed, step, 10]).random(len(picks)) < recipe.relations.colour_counts
    else:
        counting = binding = colours = np.zeros(len(picks), bool)
    if shards > 1:
        # each further question about a vqa image adds ~10 positions to its ~70 (BENCHMARKS.md, "More questions")
        cost = {**_COST, "vqa": _COST["vqa"] * (1 + 0.13 * (recipe.questions - 1))}
        load, mine = [0.0] * shards, []
        for i in sorted(range(len(picks)), key=lambda i: -cost[picks[i][0]]):
            lightest = load.index(min(load))
            load[lightest] += cost[picks[i][0]]
            if lightest == shard:
                mine.append(i)
        mine = sorted(mine)
        picks, relations = [picks[i] for i in mine], [relations[i] for i in mine]
        counting, binding, colours = counting[mine], binding[mine], colours[mine]
    return [shapeworld_example(t, index, side, speech=speech, questions=recipe.questions, relations=r, count=bool(c),
                               bind=bool(b), colour_count=bool(k))
            for (t, index), r, c, b, k in zip(picks, relations, counting, binding, colours)]


def held_parameters(model: OmniModel, patterns: tuple[str, ...]) -> list[nn.Parameter]:
    """The trainable parameters that `patterns` name (fnmatch patterns of parameter names, where {und} stands for
    the index of the expert named und): those a stage holds fixed. A pattern of an expert the model lacks, or
    patterns that name no trainable parameter, are named errors."""
    experts = {name: i for i, name in enumerate(model.decoder.config.experts)}
    try:
        resolved = [pattern.format(**experts) for pattern in patterns]
    except KeyError as e:
        raise ValueError(f"the recipe freezes the {e.args[0]} expert, which this model does not have (experts: "
                         f"{', '.join(experts)})") from None
    held = [p for name, p in model.named_parameters()
            if p.requires_grad and any(fnmatch.fnmatchcase(name, pattern) for pattern in resolved)]
    if patterns and not held:
        raise ValueError(f"the recipe freezes {patterns}, which name none of the model's trainable parameters")
    return held


def train_omni(model: OmniModel, out: str | Path, recipe: Recipe | None = None, seed: int = 0,
               progress: bool = True, resume: bool = True, until: int | None = None,
               teacher: nn.Module | None = None, parallel: DataParallel | None = None) -> list[dict]:
    """Train `model` on ShapeWorld by `recipe`; writes out/checkpoint (model, optimizer, step) and metrics.jsonl.
    Resumes from out/checkpoint when it holds a training state. A recipe with `distill` > 0 needs the `teacher`
    (frozen) whose understanding features the student's image positions learn to match; the parameters the recipe
    freezes stay as they are (and train again after). Under data parallelism
    every process calls this with its `parallel`; `recipe.shards` must be a multiple of the process count."""
    recipe = recipe or Recipe()
    out = Path(out)
    if recipe.distill > 0 and teacher is None:
        raise ValueError("this recipe distills understanding (distill > 0): give a teacher (omni/teacher.py)")
    speech = [t for t in recipe.tasks if t in SPEECH_TASKS and recipe.tasks[t] > 0]
    if speech and model.speech_codec is None:
        raise ValueError(f"the recipe trains speech tasks ({', '.join(speech)}) but the model has no speech codec")
    if speech and model.device.type != "cpu":
        raise ValueError(f"speech tasks ({', '.join(speech)}) train on the CPU only for now; this model is on "
                         f"{model.device}")
    cur = recipe.relations
    if cur is not None and recipe.steps < cur.full:
        warnings.warn(f"this relations curriculum asks its last relations fully only from step {cur.full} (\"above\" "
                      f"from step {cur.above}, \"right of\" and \"below\" ramped in from step {cur.mirrors}); a "
                      f"stage of {recipe.steps} steps stops before: train more steps or a curriculum of shorter "
                      f"phases", stacklevel=2)
    teacher = teacher.requires_grad_(False).eval().to(model.device) if recipe.distill > 0 else None
    grid = model.patch_embed.grid()
    if teacher is not None and getattr(teacher, "grid", grid[0]) != grid[0]:
        raise ValueError(f"the teacher gives a {teacher.grid} x {teacher.grid} feature grid for "
                         f"{grid[0]} x {grid[1]} understanding tokens")

    def batch_for_step(step: int, shard: int = 0, shards: int = 1):
        # one piece keeps the seeds of unsharded runs; pieces (< 1009) get distinct seeds of their own
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * (1 if shards == 1 else 1_009) + shard)
        examples = examples_for_step(recipe, step, model.image_size, seed, shard=shard, shards=shards,
                                     speech=model.speech_codec)
        return model.batch(examples, generator=g, pack=recipe.pack, teacher=teacher, reweight=recipe.reweight)

    frozen = held_parameters(model, recipe.freeze or ())
    for p in frozen:  # out of the optimizer (and its weight decay) for this stage only
        p.requires_grad_(False)
    try:
        config = TrainConfig(steps=recipe.steps, lr=recipe.lr, warmup=recipe.warmup, min_lr_ratio=recipe.min_lr_ratio,
                             log_every=10, optimizer=recipe.optimizer, decay_steps=recipe.decay_steps)
        trainer = Trainer(model, batch_for_step, config, out_dir=out, progress=progress,
                          loss_fn=lambda m, b: m.loss(*b, distill_weight=recipe.distill), shards=recipe.shards,
                          parallel=parallel)
        if resume and (out / "checkpoint" / "trainer.json").is_file():
            trainer.resume(out / "checkpoint")
        return trainer.fit(until)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def train_stages(model: OmniModel, out: str | Path, steps: dict[str, int], seed: int = 0, progress: bool = True,
                 stages: dict[str, Recipe] | None = None, teacher: nn.Module | None = None,
                 parallel: DataParallel | None = None) -> dict[str, list[dict]]:
    """Train `model` through the stages named in `steps` (in order, e.g. {"stage1": 600, "stage2": 400}), each in
    out/<stage> from the previous stage's weights; a stage whose checkpoint already holds its steps is skipped and
    an interrupted one resumes. Each stage draws its own examples (seeded by its place in `stages`), also when
    the stages are trained one call at a time. Returns each stage's logged metrics."""
    stages = stages or STAGES
    unknown = [s for s in steps if s not in stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {', '.join(stages)}")
    out = Path(out)
    logs = {}
    for name, n in steps.items():
        if n <= 0:
            continue
        recipe, stage_seed = stage_recipe(name, n, seed, stages)
        logs[name] = train_omni(model, out / name, recipe, seed=stage_seed, progress=progress, teacher=teacher,
                                parallel=parallel)
    return logs


def stage_recipe(name: str, steps: int, seed: int = 0, stages: dict[str, Recipe] | None = None,
                 **overrides) -> tuple[Recipe, int]:
    """Stage `name`'s recipe for a run of `steps` (its warm-up at most a tenth of them) and the seed its examples
    are drawn with - the recipe and seed `train_stages` trains it with, so a stage trained on its own (`omniar train
    omni --stage NAME --init <previous stage>`) is the very stage of a `train_stages` run. `overrides`: Recipe
    fields to change (tasks, lr, examples_per_step, ...)."""
    stages = stages or STAGES
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(stages)}")
    if steps < 1:
        raise ValueError(f"a stage needs at least one step, got {steps}")
    base = stages[name]
    recipe = dataclasses.replace(base, steps=steps, warmup=min(base.warmup, max(1, steps // 10)), **overrides)
    return recipe, seed * 100 + list(stages).index(name)
