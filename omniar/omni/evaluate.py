"""The ShapeWorld benchmark of an `OmniModel`: it generates, edits, answers and captions for a split's samples,
writes the predictions file of `omniar.data.shapeworld.benchmark` (PNG media beside it), and scores that file
with the independent judges - the same scoring any other model's predictions get.

Everything is batched: text-to-image rows with their guidance rows, edits with their three branches, and
questions/captions decoded in lockstep with the KV cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from omniar.generation.sampling import SamplingParams
from omniar.modality import Modality
from omniar.omni.generate import (
    EDIT_CFG,
    EDIT_CFG_SCHEDULE,
    EDIT_KEEP,
    EDIT_KEEP_TAU,
    EDIT_TEMPERATURE,
    T2I_CFG,
    T2I_TEMPERATURE,
    generate_images,
)
from omniar.omni.model import OmniModel
from omniar.omni.rerank import generate_best_of
from omniar.omni.understand import describe
from omniar.tokenizers.train_image import to_uint8

EVAL_TASKS = ("t2i", "vqa", "caption", "edit")
SPEECH_EVAL_TASKS = ("tts", "asr", "svqa")  # for models with a speech codec


@dataclass
class ImageSampling:
    """How images are decoded in the benchmark: guidance (text-to-image weight, edit weight, schedules over scales,
    edit image weight) and per-bit sampling, the edits' of their own. Chosen on the validation split, never on test
    (`T2I_CFG`, `EDIT_CFG`, ... in omni/generate.py)."""

    cfg: float = T2I_CFG
    cfg_schedule: str = "linear"
    # the last N scales drawn without guidance, the guidance rows dropped from their passes (generate_images'
    # `unguided_scales`; next-scale models): 1 decodes batches ~1.2x faster for -0.004 / -0.020 of text-to-image
    # on two models (BENCHMARKS.md "Guidance left off at the finest scale"); 0, the benchmark's: every scale guided
    unguided_scales: int = 0
    edit_cfg: float | None = EDIT_CFG  # None: `cfg`
    edit_cfg_schedule: str | None = EDIT_CFG_SCHEDULE  # None: `cfg_schedule`
    image_cfg: float | None = None
    temperature: float = T2I_TEMPERATURE
    edit_temperature: float | None = EDIT_TEMPERATURE  # None: `temperature`
    edit_keep: float = EDIT_KEEP  # an edit's pull towards its reference's bits (generate_images' `keep`)
    edit_keep_tau: float | None = EDIT_KEEP_TAU  # ... where the drawing so far agrees with it (`keep_tau`)
    top_k: int = 0
    top_p: float = 1.0
    # text-to-image: the best of this many samples by the model's own caption likelihood (omni/rerank.py);
    # 1 (the benchmark's): one sample, one forward pass per scale
    best_of: int = 1

    def __post_init__(self) -> None:
        if self.best_of < 1:
            raise ValueError(f"best_of must be >= 1, got {self.best_of}")
        if self.unguided_scales < 0:
            raise ValueError(f"unguided_scales must be >= 0, got {self.unguided_scales}")

    def guidance(self, edit: bool = False) -> float:
        """The guidance weight of a text-to-image row, or of an edit's."""
        return self.edit_cfg if edit and self.edit_cfg is not None else self.cfg

    def schedule(self, edit: bool = False) -> str:
        """The guidance schedule over scales of a text-to-image row, or of an edit's."""
        return self.edit_cfg_schedule if edit and self.edit_cfg_schedule is not None else self.cfg_schedule

    def params(self, edit: bool = False) -> SamplingParams:
        """Per-bit sampling of a text-to-image row, or of an edit's."""
        t = self.edit_temperature if edit and self.edit_temperature is not None else self.temperature
        return SamplingParams(temperature=t, top_k=self.top_k, top_p=self.top_p)

    def pull(self, model: OmniModel) -> dict:
        """An edit's `keep` and `keep_tau` (generate_images') for `model`: none where it decodes raster tokens,
        which have no scales to pull."""
        if model.gen_modality == Modality.IMAGE_RASTER:
            return {"keep": 0.0, "keep_tau": None}
        return {"keep": self.edit_keep, "keep_tau": self.edit_keep_tau}

    def unguided(self, model: OmniModel) -> int:
        """generate_images' `unguided_scales` for `model`: 0 where it decodes raster tokens, which have no scales."""
        return 0 if model.gen_modality == Modality.IMAGE_RASTER else self.unguided_scales


def predict_shapeworld(model: OmniModel, out: str | Path, num: int = 200, split: str = "test",
                       tasks: tuple[str, ...] = EVAL_TASKS, sampling: ImageSampling | None = None,
                       batch_size: int = 50, seed: int = 0, progress: bool = True) -> tuple[Path, dict]:
    """Run the model on samples 0..num-1 of `split` (edits: the first `num` samples that have one) and write
    out/predictions.jsonl with its media. Returns (path, {task: seconds spent producing its outputs})."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    unknown = [t for t in tasks if t not in EVAL_TASKS + SPEECH_EVAL_TASKS]
    if unknown:
        raise ValueError(f"unknown evaluation task(s) {unknown}; known: {', '.join(EVAL_TASKS + SPEECH_EVAL_TASKS)}")
    if set(tasks) & set(SPEECH_EVAL_TASKS) and model.speech_codec is None:
        raise ValueError("speech tasks need a model with a speech codec")
    sampling = sampling or ImageSampling()
    out = Path(out)
    (out / "media").mkdir(parents=True, exist_ok=True)
    side = model.image_size
    samples = [make_sample(split, i) for i in range(num)]
    understood = {"vqa", "caption", "svqa"} & set(tasks)  # only they read the samples' images
    images = [render(Scene.from_dict(s["scene"]), side) for s in samples] if understood else []
    records: list[dict] = []
    seconds: dict[str, float] = {}
    bar = tqdm(total=num * len(tasks), disable=not progress, desc=f"benchmark {split}", unit="item")

    def save(name: str, array: np.ndarray) -> str:
        Image.fromarray(array).save(out / "media" / name)
        return f"media/{name}"

    for task in tasks:
        t0 = time.perf_counter()
        if task == "t2i":
            for a in range(0, num, batch_size):
                chunk = samples[a : a + batch_size]
                gen = generate_best_of(model, [s["caption"] for s in chunk], sampling.best_of,
                                       cfg=sampling.guidance(), cfg_schedule=sampling.schedule(),
                                       unguided_scales=sampling.unguided(model), params=sampling.params(),
                                       seeds=[seed + a + i for i in range(len(chunk))])
                for i, (s, img) in enumerate(zip(chunk, to_uint8(gen))):
                    records.append({"task": "t2i", "prompt": s["caption"], "kind": s["kind"],
                                    "image": save(f"t2i-{a + i:05d}.png", img)})
                bar.update(len(chunk))
        elif task in ("vqa", "caption"):
            for a in range(0, num, batch_size):
                chunk, pix = samples[a : a + batch_size], images[a : a + batch_size]
                questions = [s["question"] for s in chunk] if task == "vqa" else None
                texts = describe(model, pix, questions)
                for s, text in zip(chunk, texts):
                    if task == "vqa":
                        records.append({"task": "vqa", "question": s["question"], "answer": s["answer"],
                                        "qa_kind": s["qa_kind"], "prediction": text})
                    else:
                        records.append({"task": "caption", "scene": s["scene"], "prediction": text})
                bar.update(len(chunk))
        elif task in SPEECH_EVAL_TASKS:
            records += _speech_records(model, task, samples, images, out, batch_size, bar)
        else:
            edits, i = [], 0
            while len(edits) < num:
                s = make_sample(split, i)
                if s["edit"] is not None:
                    edits.append(s)
                i += 1
            for a in range(0, num, batch_size):
                chunk = edits[a : a + batch_size]
                sources = [render(Scene.from_dict(s["scene"]), side) for s in chunk]
                gen = generate_images(model, [s["edit"]["instruction"] for s in chunk], sources=sources,
                                      cfg=sampling.guidance(edit=True), cfg_schedule=sampling.schedule(edit=True),
                                      unguided_scales=sampling.unguided(model), image_cfg=sampling.image_cfg,
                                      params=sampling.params(edit=True),
                                      **sampling.pull(model), seeds=[seed + a + i for i in range(len(chunk))])
                for j, (s, src, img) in enumerate(zip(chunk, sources, to_uint8(gen))):
                    records.append({"task": "edit", "instruction": s["edit"]["instruction"],
                                    "source": save(f"edit-{a + j:05d}-source.png", src),
                                    "edited": save(f"edit-{a + j:05d}.png", img)})
                bar.update(len(chunk))
        seconds[task] = time.perf_counter() - t0
    bar.close()
    path = out / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, seconds


def _speech_records(model: OmniModel, task: str, samples: list[dict], images: list, out: Path, batch_size: int,
                    bar) -> list[dict]:
    """tts: the caption spoken by the model (and by espeak-ng in the narrator's voice the model was taught, the
    reference); asr: the model's transcript of the caption spoken in the sample's voice; svqa: its answer to the
    spoken question."""
    import soundfile as sf

    from omniar.data.shapeworld.speech import NARRATOR, Voice, speak
    from omniar.omni.speech import answer_spoken, transcribe
    from omniar.omni.speech import speak as model_speak

    rate = model.speech_codec.config.sample_rate
    records = []

    def save(name: str, audio) -> str:
        sf.write(out / "media" / name, np.asarray(audio, dtype=np.float32), rate, format="FLAC", subtype="PCM_16")
        return f"media/{name}"

    for a in range(0, len(samples), batch_size):
        chunk = samples[a : a + batch_size]
        if task == "tts":
            audio = model_speak(model, [s["caption"] for s in chunk])
            for i, (s, wav) in enumerate(zip(chunk, audio)):
                records.append({"task": "tts", "text": s["caption"], "audio": save(f"tts-{a + i:05d}.flac", wav),
                                "reference_audio": save(f"tts-{a + i:05d}-reference.flac",
                                                        speak(s["caption"], NARRATOR))})
        elif task == "asr":
            texts = transcribe(model, [speak(s["caption"], Voice(**s["voice"])) for s in chunk])
            records += [{"task": "asr", "text": s["caption"], "prediction": t} for s, t in zip(chunk, texts)]
        else:
            questions = [speak(s["question"], Voice(**s["voice"])) for s in chunk]
            answers = answer_spoken(model, images[a : a + batch_size], questions)
            records += [{"task": "svqa", "question": s["question"], "answer": s["answer"], "qa_kind": s["qa_kind"],
                         "prediction": t} for s, t in zip(chunk, answers)]
        bar.update(len(chunk))
    return records


def draw_scales(model: OmniModel, out: str | Path, num: int = 6, split: str = "heldout",
                sampling: ImageSampling | None = None, seed: int = 0) -> list[dict]:
    """The first `num` text-to-image prompts of `split` drawn as the benchmark draws them (its sampling, sample i
    with seed `seed` + i), each image's drawing scale by scale side by side (`scale_strip`) in
    out/scales/scales-NNNNN.png: [{"prompt", "image": its path relative to out}]. The last column of each is the
    benchmark's image of that prompt (`predict_shapeworld` with the same seed). Next-scale models only."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.omni.generate import scale_strip

    sampling = sampling or ImageSampling()
    if sampling.best_of > 1:
        raise ValueError("draw_scales shows single samples drawn scale by scale; best-of-N keeps one of several after "
                         "the last scale (sampling.best_of must be 1)")
    prompts = [make_sample(split, i)["caption"] for i in range(num)]
    shown: list = []
    generate_images(model, prompts, cfg=sampling.guidance(), cfg_schedule=sampling.schedule(),
                    unguided_scales=sampling.unguided(model), params=sampling.params(),
                    seeds=[seed + i for i in range(num)],
                    on_scale=lambda k, x: shown.append(x))
    (Path(out) / "scales").mkdir(parents=True, exist_ok=True)
    records = []
    for i, prompt in enumerate(prompts):
        name = f"scales/scales-{i:05d}.png"
        Image.fromarray(scale_strip([x[i] for x in shown])).save(Path(out) / name)
        records.append({"prompt": prompt, "image": name})
    return records


def evaluate_model(model: OmniModel, out: str | Path, num: int = 200, heldout: int = 0,
                   tasks: tuple[str, ...] = EVAL_TASKS, sampling: ImageSampling | None = None,
                   split: str = "test", batch_size: int = 50, progress: bool = True) -> dict:
    """Scores of the model on `split` (and text-to-image on `heldout` prompts of the held-out split), with the
    settings and timings; writes out/<split>/predictions.jsonl (+ media) and out/scores.json."""
    from omniar.data.shapeworld.benchmark import evaluate

    if num < 0 or heldout < 0 or num + (heldout if "t2i" in tasks else 0) == 0:
        raise ValueError(f"the benchmark needs items: num ({num}) and heldout ({heldout}, text-to-image prompts) must "
                         f"be >= 0 and give it some for the tasks {', '.join(tasks)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampling = sampling or ImageSampling()
    out = Path(out)
    result: dict = {"split": split, "num": num, "sampling": asdict(sampling)}
    path, seconds = predict_shapeworld(model, out / split, num, split, tasks, sampling, batch_size,
                                       progress=progress)
    result["scores"] = evaluate(path)
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    if heldout and "t2i" in tasks:
        path, seconds = predict_shapeworld(model, out / "heldout", heldout, "heldout", ("t2i",), sampling,
                                           batch_size, progress=progress)
        result["heldout"] = evaluate(path)["t2i"]
        result["seconds"]["heldout_t2i"] = round(seconds["t2i"], 2)
    (out / "scores.json").write_text(json.dumps(result, indent=2))
    return result
