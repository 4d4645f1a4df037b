"""`omniar` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

DEVICE_HELP = ("where the model runs: cpu (default), cuda, cuda:1, ... (speech tasks run on the CPU only); "
               "random draws stay on the CPU, so a seed gives the same draws on every device")
# omni.train.STAGES' names, written out so that --help imports no torch (a test keeps them equal)
OMNI_STAGES = ("stage1", "stage2", "stage3", "relations", "edits", "answers")


def _demo(args) -> None:
    from omniar.demo import DemoPlan, calibrate, run_demo

    kw = dict(seed=args.seed, distill=args.distill, teacher=args.teacher, align=args.align, speech=args.speech,
              preset=args.preset, decoder_images=args.decoder_images, self_prompts=args.self_prompts)
    plan = DemoPlan.for_budget(args.budget, **kw)  # the reference machine's plan; checks the settings
    device = _device(args.device)  # named before any work
    if args.step_seconds and len(args.step_seconds) not in (3, 4, 5):
        raise SystemExit(f"--step-seconds takes 3 to 5 times (STAGE1 STAGE2 STAGE3 [RELATIONS [EDITS]]), got "
                         f"{len(args.step_seconds)}")
    names = ("stage1", "stage2", "stage3", "relations", "edits")
    seconds = dict(zip(names, args.step_seconds)) if args.step_seconds else None
    # the other steps' time is counted in training steps, so a step is timed on the CPU only, where they all run
    if seconds is None and not (args.reference_rates or args.speech or device.type != "cpu"):
        cache = args.cache if args.cache is not None else Path(args.out).parent / "cache"
        seconds = calibrate(cache, plan, device, again=args.no_cache or args.recalibrate)
    if seconds is not None:
        reference = sum(plan.stage_steps.values())
        plan = DemoPlan.for_budget(args.budget, step_seconds=seconds, **kw)
        print(f"[demo] stages {plan.stage_steps} planned at {seconds} s a step ({sum(plan.stage_steps.values())} "
              f"training steps; the reference machine's rates give {reference})")
    rows = plan.schedule()
    rates = ("the step times given" if args.step_seconds else "steps timed here" if plan.step_seconds
             else "the reference machine's rates")
    print(f"[demo] the plan for {args.budget:g} minutes ({rates}; a cached part takes no time):\n"
          "| part | steps | minutes |\n|---|---:|---:|")
    for part, steps, took in rows:
        print(f"| {part} | {'' if steps is None else steps} | {took / 60:.1f} |")
    print(f"| total | | {sum(t for *_, t in rows) / 60:.1f} |")
    if plan.step_seconds is not None:
        from omniar.demo import AFTER_STAGES, budget_for_after_stages, budget_for_self_training

        more = budget_for_after_stages(args.budget, plan.step_seconds, **kw)
        if more is not None:
            if "edits" in plan.stage_steps:  # the answers stage in the relations stage's place, the edits stage after
                missing, them = "relations stage does", "it"
                instead = ("the answers stage (the text expert alone) comes in its place, before the edits stage (as "
                           "on a Zen 4 EPYC")
            else:
                missing, them = f"{' and '.join(AFTER_STAGES)} stages do", "them"
                instead = ("the answers stage (the text expert alone) comes in their place, so edits stay what the "
                           "mixed stages leave" if "answers" in plan.stage_steps else
                           "answers, captions and edits stay what the mixed stages leave") + " (as on an AVX2 EPYC"
            print(f"[demo] the {missing} not fit {args.budget:g} minutes at these step times: {instead}: "
                  "BENCHMARKS.md \"Demo\")" + (f"; --budget {more:g} holds {them}" if more < math.inf else ""))
        more = budget_for_self_training(args.budget, plan.step_seconds, **kw)
        if more is not None:
            print(f"[demo] self-training does not fit {args.budget:g} minutes beside the relations and edits stages "
                  "at these step times (they come first; text-to-image stays what the stages leave)"
                  + (f"; --budget {more:g} holds it" if more < math.inf else "")
                  + "; --self-prompts N asks for it anyway")
    if args.plan:
        return
    report = run_demo(args.out, plan, cache=args.cache, use_cache=not args.no_cache, device=device,
                      pace=not args.no_pace)
    from omniar.data.shapeworld.benchmark import format_scores

    scores = dict(report["scores"])
    if report.get("heldout"):
        scores["heldout_t2i"] = report["heldout"]
    print(format_scores(scores))
    print(f"model: {report['checkpoint']}")
    print(f"demo output: {(Path(args.out) / 'report.html').resolve()} ({report['wall_seconds'] / 60:.1f} min)")


def _info(args) -> None:
    """Config and parameter counts of a unified model (OmniModel) or a bare decoder: a checkpoint (by its
    model_type) or a preset (the OmniModel presets of omni/model.py first, then the decoder's of model/config.py)."""
    import dataclasses

    import torch

    from omniar.checkpoint import read_config
    from omniar.model import OmniDecoder, preset
    from omniar.model.config import PRESETS
    from omniar.omni.model import MODEL_TYPE, OMNI_PRESETS, OmniModel, omni_preset

    if args.model:
        try:  # which kind, by its config's model_type (as `load_teacher` tells its two kinds apart)
            read_config(args.model, MODEL_TYPE, "unified model (OmniModel)")
            omni = True
        except (ValueError, FileNotFoundError):  # a decoder's, or none: the decoder's loader names what is wrong
            omni = False
        model = OmniModel.from_pretrained(args.model) if omni else OmniDecoder.from_pretrained(args.model)
    elif args.preset in OMNI_PRESETS:
        from omniar.data.shapeworld.corpus import world_text
        from omniar.demo import image_tokenizer_config
        from omniar.tokenizers.image import ImageTokenizer
        from omniar.tokenizers.text import TextTokenizer

        config = omni_preset(args.preset)
        text = TextTokenizer.train(list(world_text(300)))
        # untrained tokenizers as the demo makes them, every tensor on the meta device: the counts depend on the
        # sizes, not the weights, so a GPU preset is counted in no time and no memory
        with torch.device("meta"):
            model = OmniModel(config, text, ImageTokenizer(image_tokenizer_config(config)))
    elif args.preset in PRESETS:
        model = OmniDecoder(preset(args.preset))
    else:
        raise ValueError(f"unknown preset {args.preset!r}; unified models (OmniModel): "
                         f"{', '.join(sorted(OMNI_PRESETS))}; bare decoders: {', '.join(sorted(PRESETS))}")
    if isinstance(model, OmniModel):
        info = {"kind": "OmniModel", "config": dataclasses.asdict(model.config),
                "text_vocab": model.text.vocab_size, **model.num_parameters()}
    else:
        info = {"kind": "OmniDecoder", "config": model.config.to_dict(), **model.num_parameters()}
    print(json.dumps(info, indent=2))


def _train_teacher(args) -> None:
    import torch

    from omniar.omni.teacher import presence_accuracy, train_conv_teacher

    torch.manual_seed(args.seed)
    teacher = train_conv_teacher(args.out, args.steps, args.image_size, args.grid, seed=args.seed, batch=args.batch,
                                 lr=args.lr)
    scores = presence_accuracy(teacher, args.eval)
    print(f"presence exact match on {args.eval} val scenes: shapes {scores['shapes']:.3f}, "
          f"colours {scores['colours']:.3f}")
    print(f"checkpoint: {(Path(args.out) / 'checkpoint').resolve()}")


def _train_decoder(args) -> None:
    from omniar.omni.decoder_post import DecoderPostTraining, post_train_decoder
    from omniar.omni.model import OmniModel

    model = OmniModel.from_pretrained(args.model).to(args.device)
    config = DecoderPostTraining(images=args.images, steps=args.steps, batch=args.batch, lr=args.lr, keep=args.keep,
                                 true_share=args.true_share, true_source=args.true_source)
    summary = post_train_decoder(model, args.out, config, seed=args.seed)
    print(f"decoder post-trained on {summary['images']} redrawn images ({summary['keep']} scales kept), "
          f"{summary['steps']} steps: loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} "
          f"in {summary['seconds']} s")
    print(f"checkpoint: {(Path(args.out) / 'checkpoint').resolve()}")


def _train_self(args) -> None:
    from omniar.omni.model import OmniModel
    from omniar.omni.self_train import SelfTraining, self_train

    model = OmniModel.from_pretrained(args.model).to(args.device)
    config = SelfTraining(prompts=args.prompts, candidates=args.candidates, top=args.top, real_share=args.real_share,
                          edit_share=args.edit_share, skip_kinds=tuple(args.skip_kinds), steps=args.steps,
                          batch=args.batch, lr=args.lr)
    summary = self_train(model, args.out, config, seed=args.seed)
    loss = (f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}" if summary["loss_first"] is not None
            else "no steps left to train")
    print(f"self-trained on {summary['kept']} of {summary['prompts']} prompts' best drawings (caption score "
          f"{summary['score_kept']:.2f} kept, {summary['score_all']:.2f} over all drawings), {summary['steps']} "
          f"steps: {loss} in {summary['seconds']} s")
    print(f"checkpoint: {(Path(args.out) / 'checkpoint').resolve()}")


def _train_text(args) -> None:
    from omniar.data.toy import corpus
    from omniar.train.text import train_text

    if args.data:
        path = Path(args.data)
        if not path.is_file():
            sys.exit(f"error: training text not found: {path}")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    else:
        lines = corpus(20_000, seed=args.seed)
    train_text(lines, args.out, preset_name=args.preset, steps=args.steps, seed=args.seed, lr=args.lr)
    print(f"checkpoint: {Path(args.out).resolve() / 'checkpoint'}")


def _generate_text(args) -> None:
    import torch

    from omniar.generation import SamplingParams, generate
    from omniar.model import OmniDecoder
    from omniar.tokenizers.bytes import ByteTokenizer

    model = OmniDecoder.from_pretrained(args.model)
    tok = ByteTokenizer.load(args.model)
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty)
    gen = torch.Generator().manual_seed(args.seed)
    out = generate(model, [tok.encode(p) for p in args.prompts], args.max_new_tokens, params, eos_id=tok.eos,
                   pad_id=tok.pad, generator=gen)
    for p, o in zip(args.prompts, out):
        print(p + tok.decode(o))


def _data_make(args) -> None:
    import time

    from omniar.data.shapeworld.dataset import make_dataset

    t = time.perf_counter()
    if args.video:
        from omniar.data.shapeworld.video import make_video_dataset

        manifest = make_video_dataset(args.out, args.num, split=args.split, side=args.side)
    else:
        manifest = make_dataset(args.out, args.num, split=args.split, side=args.side, speech=not args.no_speech,
                                workers=args.workers, start=args.start)
    print(f"{args.num} {args.split} samples in {time.perf_counter() - t:.1f} s: {manifest.resolve()}")


def _data_show(args) -> None:
    import shutil

    from omniar.data.manifest import read_manifest
    from omniar.data.shapeworld.dataset import contact_sheet

    root = Path(args.dir)
    manifest = root / f"{args.split}.jsonl"
    records = [r for _, r in zip(range(args.num), (rec for _, rec in read_manifest(manifest)))]
    out = root / "show"
    out.mkdir(exist_ok=True)
    contact_sheet(records, root).save(out / f"{args.split}_contact_sheet.png")
    for r in records[:4]:
        print(f"{r.get('id', '')}: {r.get('caption', '')} | {r.get('question', '')} -> {r.get('answer', '')}")
        for a in r.get("audio", [])[:1]:
            name = f"{r.get('id', 'sample')}_{a.get('role', 'audio')}{Path(a['path']).suffix}"
            shutil.copy(root / a["path"], out / name)
    print(f"contact sheet and audio: {out.resolve()}")


def _eval_shapeworld(args) -> None:
    from omniar.data.shapeworld.benchmark import evaluate, format_scores, write_reference

    if args.write_reference:
        path = write_reference(args.write_reference, args.num)
        print(f"reference predictions (ground truth of {args.num} test samples): {path.resolve()}")
        return
    if not args.predictions:
        sys.exit("error: give --predictions FILE (or --write-reference DIR for the format and the ceiling)")
    scores = evaluate(args.predictions)
    print(format_scores(scores))
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=2))


DTYPE_HELP = ("the decoder's arithmetic (OmniModel.decode_in): bfloat16 draws next-scale images 1.1-1.3x faster where "
              "the CPU has native bf16 (AVX512-BF16, AMX), with the same benchmark scores; default float32")


def _device(name: str):
    """The torch device `--device` names, with a named error where it is not here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _load_omni(args):
    """The OmniModel of --model on --device (the device checked first: a bad one is named before any loading)."""
    import torch

    from omniar.omni.model import OmniModel

    device = _device(args.device)
    return OmniModel.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)


def _eval_model(args) -> None:
    from omniar.data.shapeworld.benchmark import format_scores
    from omniar.omni.evaluate import EVAL_TASKS, SPEECH_EVAL_TASKS, ImageSampling, evaluate_model

    model = _load_omni(args)
    tasks = tuple(args.tasks) if args.tasks else EVAL_TASKS + (SPEECH_EVAL_TASKS if model.speech_codec else ())
    sampling = ImageSampling(**{k: v for k, v in (("cfg", args.cfg), ("edit_cfg", args.edit_cfg),
                                                  ("cfg_schedule", args.cfg_schedule),
                                                  ("edit_cfg_schedule", args.edit_cfg_schedule),
                                                  ("edit_temperature", args.edit_temperature),
                                                  ("edit_keep", args.edit_keep),
                                                  ("edit_keep_tau", args.edit_keep_tau),
                                                  ("unguided_scales", args.unguided_scales),
                                                  ("best_of", args.best_of)) if v is not None})
    result = evaluate_model(model, args.out, num=args.num, heldout=args.heldout, tasks=tasks, split=args.split,
                            sampling=sampling)
    scores = dict(result["scores"])
    if result.get("heldout"):
        scores["heldout_t2i"] = result["heldout"]
    print(format_scores(scores))
    print(f"predictions and scores: {Path(args.out).resolve()}")


def _tokenizer_train_text(args) -> None:
    from omniar.tokenizers.text import TextTokenizer

    if args.data:
        from omniar.data.manifest import manifest_texts

        texts = list(manifest_texts(args.data))
    else:
        from omniar.data.shapeworld.corpus import world_text

        texts = list(world_text(args.samples))
    tok = TextTokenizer.train(texts, vocab_size=args.vocab_size)
    path = tok.save(args.out)
    n_tokens = sum(len(tok.encode(t)) for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    print(f"{len(texts)} texts, vocabulary {tok.vocab_size}, {n_bytes / max(1, n_tokens):.2f} bytes/token: "
          f"{path.resolve()}")


def _tokenizer_train_image(args) -> None:
    import numpy as np
    from PIL import Image

    from omniar.tokenizers.image import ImageTokenizerConfig
    from omniar.tokenizers.train_image import (
        ALIGN_WEIGHT,
        BATCH,
        evaluate_image_tokenizer,
        shapeworld_images,
        to_tensor,
        train_image_tokenizer,
    )

    teacher, align_weight = None, 0.0
    if args.align_teacher:
        from omniar.omni.teacher import ConvTeacher

        teacher = ConvTeacher.from_pretrained(args.align_teacher)
        align_weight = ALIGN_WEIGHT if args.align_weight is None else args.align_weight
    elif args.align_weight is not None:
        raise ValueError("--align-weight needs --align-teacher (a ConvNet teacher's checkpoint)")
    if args.data:
        from omniar.data.manifest import ManifestError, iter_samples, manifest_files

        files = manifest_files(args.data)
        images = [s["image"] for f in files for s in iter_samples(f, load=("image",)) if "image" in s]
        if not images:
            raise ManifestError(f"no images in {', '.join(map(str, files))}")
        images = np.stack(images)
    else:
        images = shapeworld_images(args.num_images)
    config = ImageTokenizerConfig(image_size=images.shape[1], bits=args.bits, prior_width=args.prior_width if
                                  args.rate_weight else 0,
                                  scales=tuple(args.scales) if args.scales else ImageTokenizerConfig.scales,
                                  align_width=teacher.und_width if teacher is not None else 0)
    model = train_image_tokenizer(args.out, images, config, steps=args.steps, batch=args.batch or BATCH,
                                  lr=args.lr, rate_weight=args.rate_weight, align_teacher=teacher,
                                  align_weight=align_weight, optimizer=args.optimizer)
    out = Path(args.out)
    report = evaluate_image_tokenizer(model, args.eval_images)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    x = to_tensor(images[:16])
    recon = model.decode(model.encode(x))
    grid = np.concatenate([np.concatenate(list(t.permute(0, 2, 3, 1).numpy()), axis=1) for t in (x, recon)], axis=0)
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(out / "reconstructions.png")
    print(json.dumps(report))
    print(f"tokenizer: {(out / 'checkpoint').resolve()} (report.json, reconstructions.png, metrics.jsonl)")


def _tokenizer_train_speech(args) -> None:
    import time

    from omniar.tokenizers.train_speech import (
        evaluate_speech_codec,
        manifest_speech,
        shapeworld_speech,
        train_speech_codec,
    )

    t = time.perf_counter()
    clips = manifest_speech(args.data) if args.data else shapeworld_speech(args.utterances, progress=True)
    codec = train_speech_codec(args.out, clips, steps=args.steps, batch=args.batch)
    minutes = round((time.perf_counter() - t) / 60, 2)
    report = evaluate_speech_codec(codec, args.eval_captions, out=args.out, extra={"train_minutes": minutes},
                                   progress=True)
    print(json.dumps(report))
    print(f"codec: {(Path(args.out) / 'checkpoint').resolve()} (report.json, sample*.wav, metrics.jsonl)")


def parse_pairs(pairs: list[str]) -> dict:
    """key=value pairs (values parsed as JSON when they can be) -> dict: --set, --config, --tasks."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _train_omni(args) -> None:
    import torch

    from omniar.checkpoint import read_config
    from omniar.omni.model import MODEL_TYPE

    shards = args.shards or args.workers
    if args.workers < 1 or shards % args.workers or (args.batch and shards > args.batch):
        sys.exit(f"error: --shards {shards} must be a multiple of --workers {args.workers} and at most --batch "
                 f"{args.batch} (the examples per step)")
    if _device(args.device).type != "cpu" and args.workers > 1:
        sys.exit("error: --workers shares a step among CPU processes; on an accelerator train with one")
    out = Path(args.out)
    if (out / "checkpoint" / "trainer.json").is_file():
        preset = read_config(out / "checkpoint", MODEL_TYPE, "unified model (OmniModel)").get("preset", "")
        if args.preset is not None and args.preset != preset:
            sys.exit(f"error: {out / 'checkpoint'} was trained from preset {preset!r}, not {args.preset!r}: give "
                     f"--preset {preset} to resume it, or a new --out")
        print(f"resuming {out / 'checkpoint'}" + (" (--init starts a new run: ignored)" if args.init else ""))
    elif args.init:
        given = [flag for flag, value in (("--set", args.set), ("--config", args.config),
                                          ("--text-tokenizer", args.text_tokenizer),
                                          ("--image-tokenizer", args.image_tokenizer),
                                          ("--speech-codec", args.speech_codec)) if value]
        if given:
            sys.exit(f"error: --init starts from {args.init}'s model, its configuration and tokenizers included: "
                     f"drop {', '.join(given)}")
        preset = read_config(args.init, MODEL_TYPE, "unified model (OmniModel)").get("preset", "")
        if args.preset is not None and args.preset != preset:
            sys.exit(f"error: {args.init} holds a {preset!r} model, not {args.preset!r}")
    else:
        missing = [flag for flag, value in (("--text-tokenizer", args.text_tokenizer),
                                            ("--image-tokenizer", args.image_tokenizer)) if not value]
        if missing:
            sys.exit(f"error: a new run needs {' and '.join(missing)} (or --init: a trained model to start from)")
    try:  # a bad recipe is named before any process starts
        recipe, seed = _omni_recipe(args, shards, bool(args.teacher))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.workers > 1:
        from omniar.train.parallel import launch

        launch(_train_omni_process, args.workers, args, recipe, seed,
               threads=max(1, torch.get_num_threads() // args.workers))
    else:
        _train_omni_process(args, recipe, seed)
    print(f"checkpoint: {(out / 'checkpoint').resolve()}")


def _omni_recipe(args, shards: int, distill: bool):
    """The recipe and seed of `omniar train omni`: --stage's (omni.train.STAGES, as `train_stages` trains it) or
    the unified mix, with the flags given (tasks, lr, batch, questions, optimizer, speech pool) over it."""
    from omniar.omni.train import Recipe, stage_recipe

    given = {"tasks": {k: float(v) for k, v in parse_pairs(args.tasks.split(",")).items()} if args.tasks else None,
             "lr": args.lr, "examples_per_step": args.batch, "questions": args.questions,
             "optimizer": args.optimizer, "speech_pool": args.speech_pool}
    given = {k: v for k, v in given.items() if v is not None}
    run = {"shards": shards, "distill": args.distill if distill else 0.0}
    if args.stage:
        return stage_recipe(args.stage, args.steps, args.seed, **given, **run)
    return Recipe(**{"questions": 4, "steps": args.steps, **given, **run}), args.seed


def _train_omni_process(args, recipe, seed: int) -> None:
    """One process's part of `omniar train omni` (the only one, or one of --workers data-parallel ones), training by
    `recipe` with examples drawn by `seed` (`_omni_recipe`)."""
    import torch

    from omniar.omni.model import OmniModel, omni_preset
    from omniar.omni.train import train_omni
    from omniar.tokenizers.image import ImageTokenizer
    from omniar.tokenizers.text import TextTokenizer
    from omniar.train.parallel import DataParallel

    torch.manual_seed(args.seed)
    from omniar.omni.teacher import load_teacher

    teacher = load_teacher(args.teacher) if args.teacher else None
    out = Path(args.out)
    if (out / "checkpoint" / "trainer.json").is_file():
        model = OmniModel.from_pretrained(out / "checkpoint")
    elif args.init:
        model = OmniModel.from_pretrained(args.init)
        if teacher is not None and model.config.distill_dim != teacher.und_width:
            sys.exit(f"error: {args.init}'s model distils features of width {model.config.distill_dim or 'none'}, "
                     f"the teacher gives {teacher.und_width}: give the teacher it was trained with, or no --teacher")
    else:
        config = omni_preset(args.preset or "onecat-tiny", **parse_pairs(args.set))
        if args.config:
            import dataclasses

            from omniar.omni.model import OmniConfig

            config = OmniConfig.from_dict({**dataclasses.asdict(config), **parse_pairs(args.config)})
        if teacher is not None:
            from omniar.omni.teacher import distill_config

            config = distill_config(config, teacher)
        speech = None
        if args.speech_codec:
            from omniar.tokenizers.speech import SpeechCodec

            speech = SpeechCodec.from_pretrained(args.speech_codec)
        model = OmniModel(config, TextTokenizer.load(args.text_tokenizer),
                          ImageTokenizer.from_pretrained(args.image_tokenizer), speech)
    train_omni(model.to(_device(args.device)), out, recipe, seed=seed, teacher=teacher,
               parallel=DataParallel() if args.workers > 1 else None)


# the suffixes a wrong output name's error suggests (of the many the writers know)
_COMMON_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".wav", ".flac", ".ogg"}


def _output_path(output: str, suffixes, kind: str) -> Path:
    """`output` as a Path, its suffix checked before anything is generated (one that no writer knows would
    otherwise fail only after the work is done); its folder is made when the first file is written."""
    out = Path(output)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"cannot write {kind} as {out.name!r}: give a file name ending in one of "
                         f"{', '.join(sorted(x for x in suffixes if x in _COMMON_SUFFIXES) or sorted(suffixes))}")
    return out


def _generate_image(args) -> None:
    from PIL import Image

    from omniar.generation.sampling import SamplingParams
    from omniar.omni.evaluate import ImageSampling
    from omniar.omni.generate import image_grid, scale_strip
    from omniar.omni.rerank import generate_best_of
    from omniar.tokenizers.train_image import to_uint8

    out = _output_path(args.output, Image.registered_extensions(), "an image")
    if args.scales and args.best_of > 1:
        sys.exit("error: --scales shows one drawing scale by scale; --best-of draws several and keeps one: give one "
                 "of the two")
    bench, edit = ImageSampling(), bool(args.image)  # what is not given: the benchmark's (chosen on validation)
    temperature = bench.params(edit).temperature if args.temperature is None else args.temperature
    if args.unguided_scales < 0:
        sys.exit(f"error: --unguided-scales must be >= 0, got {args.unguided_scales}")
    samples = args.samples
    if samples < 1:
        sys.exit(f"error: --samples must be at least 1, got {samples}")
    if samples > 1 and temperature == 0:
        default = "" if args.temperature is not None else ", the default for edits"
        sys.exit(f"error: --samples {samples} draws {samples} images per {'instruction' if edit else 'prompt'}, but "
                 f"the bits are chosen greedily (temperature 0{default}): they would all be the same image; give "
                 "--temperature > 0 (e.g. 1)")
    sources, prompts = None, args.prompts
    if args.image:
        from omniar.data.manifest import load_image

        paths, prompts = _pair(args.image, args.prompts, "instructions")
        sources = [load_image(path) for path in paths]  # every file read before the model loads
    model = _load_omni(args)
    if sources is not None:
        _check_sizes(paths, sources, model.image_size)
    _warn_unseen(model, prompts, "instruction" if edit else "prompt")
    cfg = bench.guidance(edit) if args.cfg is None else args.cfg
    pull = bench.pull(model) if edit else {"keep": 0.0, "keep_tau": None}
    keep = args.keep if args.keep is not None else pull["keep"]
    keep_tau = args.keep_tau if args.keep_tau is not None else pull["keep_tau"]
    # sample j of prompt i draws with seed + i + j * len(prompts): the first of each is the image drawn without
    # --samples; all of them in one batch, grouped by prompt
    n = len(prompts)
    shown: list = []  # with --scales: each scale's images, coarse to fine
    images = generate_best_of(model, [p for p in prompts for _ in range(samples)], args.best_of,
                              sources=None if sources is None else [x for x in sources for _ in range(samples)],
                              cfg=cfg, image_cfg=args.image_cfg, cfg_schedule=args.cfg_schedule or bench.schedule(edit),
                              unguided_scales=args.unguided_scales, keep=keep, keep_tau=keep_tau,
                              params=SamplingParams(temperature=temperature, top_p=args.top_p),
                              seeds=[args.seed + i + j * n for i in range(n) for j in range(samples)],
                              **({"on_scale": lambda k, x: shown.append(x)} if args.scales else {}))
    arrays = to_uint8(images)
    strips = [scale_strip([x[i] for x in shown]) for i in range(len(arrays))] if args.scales else []
    out.parent.mkdir(parents=True, exist_ok=True)
    for k, a in enumerate(arrays):
        i, j = divmod(k, samples)
        name = (out.stem if len(arrays) == 1 else f"{out.stem}-{i}" if samples == 1 else
                f"{out.stem}-{j}" if n == 1 else f"{out.stem}-{i}-{j}")
        path = out.with_name(f"{name}{out.suffix}")
        Image.fromarray(a).save(path)
        print(path)
        if strips:
            strip = path.with_name(f"{path.stem}-scales{path.suffix}")
            Image.fromarray(strips[k]).save(strip)
            print(strip)
    if samples > 1:  # one row a prompt, its samples side by side
        grid = out.with_name(f"{out.stem}-grid{out.suffix}")
        Image.fromarray(image_grid([list(arrays[i * samples:(i + 1) * samples]) for i in range(n)])).save(grid)
        print(grid)


def _ask(args) -> None:
    from omniar.data.manifest import load_image
    from omniar.omni.understand import describe

    if args.audio:
        from omniar.omni.speech import answer_spoken

        if args.questions:
            sys.exit("error: give the questions either as text or as --audio, not both")
        if len(args.image) > 1:
            sys.exit(f"error: spoken questions are about one image; {len(args.image)} --image given")
        image = load_image(args.image[0])
        model = _load_omni(args)
        _check_sizes(args.image, [image], model.image_size)
        clips, rate = _read_audio(args.audio)
        for text in answer_spoken(model, image, clips, sample_rate=rate):
            print(text)
        return
    paths, questions = _pair(args.image, args.questions, "questions")
    images = [load_image(path) for path in paths]  # every file read before the model loads: a bad one fails fast
    model = _load_omni(args)
    _check_sizes(paths, images, model.image_size)
    _warn_unseen(model, questions, "question")
    texts = describe(model, images, questions or None)
    for path, text in zip(paths, texts):
        print(text if len(args.image) == 1 else f"{path}: {text}")


def _warn_unseen(model, texts: list[str], what: str) -> None:
    """Name, on stderr, the words of each text that none of its tokenizer's training texts held
    (`TextTokenizer.unseen_words`): what the model makes of them is anybody's guess."""
    for text in dict.fromkeys(texts):
        unseen = model.text.unseen_words(text)
        if unseen:
            words = ", ".join(repr(w) for w in unseen)
            print(f"warning: {what} {text!r}: {words} {'is' if len(unseen) == 1 else 'are'} in none of the texts the "
                  "model's tokenizer was trained on (most likely never read by the model): the output may mean "
                  "nothing", file=sys.stderr)


def _check_sizes(paths: list[str], images: list, side: int) -> None:
    """Exit naming the first image file that is not side x side pixels."""
    for path, image in zip(paths, images):
        if image.shape[:2] != (side, side):
            sys.exit(f"error: {path} is {image.shape[1]} x {image.shape[0]} pixels; this model reads {side} x {side} "
                     "images: resize it first")


def _pair(images: list[str], texts: list[str], what: str) -> tuple[list[str], list[str]]:
    """The (image, text) pairs of a command given `images` and `texts` (questions or instructions): one image
    with every text, every image with the one text (or, with no texts, each image alone), or as many of each,
    paired in order."""
    if len(images) == 1 or not texts:
        return images * max(1, len(texts)), texts
    if len(texts) == 1:
        return images, texts * len(images)
    if len(texts) == len(images):
        return images, texts
    sys.exit(f"error: {len(images)} images and {len(texts)} {what}: give one image, one of the {what}, or as many "
             f"{what} as images (paired in order)")


def _read_audio(paths: list[str]) -> tuple[list, int]:
    """Mono float clips of audio files (channels averaged), all at one sample rate."""
    import soundfile as sf

    clips, rates = [], set()
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        try:
            wav, rate = sf.read(path, dtype="float32", always_2d=True)
        except RuntimeError as e:
            raise ValueError(f"cannot read audio file {path}: {e}") from None
        clips.append(wav.mean(1))
        rates.add(rate)
    if len(rates) > 1:
        raise ValueError(f"the audio files have different sample rates: {sorted(rates)}")
    return clips, rates.pop()


def _speak(args) -> None:
    import soundfile as sf

    from omniar.omni.model import OmniModel
    from omniar.omni.speech import speak, speak_stream

    out = _output_path(args.output, {f".{f.lower()}" for f in sf.available_formats()}, "audio")
    model = OmniModel.from_pretrained(args.model)
    if model.speech_codec is None:
        sys.exit(f"error: {args.model} has no speech codec: it was trained without speech")
    rate = model.speech_codec.config.sample_rate
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.stream:
        if len(args.texts) != 1:
            sys.exit("error: --stream speaks one text")
        timings: dict = {}
        with sf.SoundFile(out, "w", samplerate=rate, channels=1) as f:  # written chunk by chunk, as it comes
            for chunk in speak_stream(model, args.texts[0], max_seconds=args.max_seconds, chunk=args.chunk,
                                      timings=timings):
                f.write(chunk.numpy())
        print(f"{out}  first chunk {1000 * timings['first_chunk_s']:.0f} ms, real-time factor {timings['rtf']:.3f}, "
              f"{timings['audio_s']:.2f} s of audio")
        return
    for i, audio in enumerate(speak(model, args.texts, max_seconds=args.max_seconds)):
        path = out if len(args.texts) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        sf.write(path, audio.numpy(), rate)
        print(path)


def _transcribe(args) -> None:
    from omniar.omni.model import OmniModel
    from omniar.omni.speech import transcribe

    model = OmniModel.from_pretrained(args.model)
    clips, rate = _read_audio(args.audio)
    for path, text in zip(args.audio, transcribe(model, clips, sample_rate=rate)):
        print(f"{path}\t{text}" if len(args.audio) > 1 else text)


TENSORBOARD_HELP = ("also log the metrics as TensorBoard scalars in each run's tensorboard/ folder, beside its "
                    "metrics.jsonl (needs: pip install 'omniar[tensorboard]')")


@contextlib.contextmanager
def _tensorboard(on: bool):
    """With `on`, every run of the command logs TensorBoard scalars (OMNIAR_TENSORBOARD=1 while it runs, so the
    processes it starts do too); the package is checked before anything trains."""
    from omniar.train.metrics import TENSORBOARD_ENV, require_tensorboard

    if not on:
        yield
        return
    try:
        require_tensorboard()
    except ImportError as e:
        sys.exit(f"error: {e}")
    before = os.environ.get(TENSORBOARD_ENV)
    os.environ[TENSORBOARD_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[TENSORBOARD_ENV]
        else:
            os.environ[TENSORBOARD_ENV] = before


def main(argv: list[str] | None = None) -> None:
    # the benchmark's guidance and sampling, named in the help
    from omniar.omni.generate import (
        EDIT_CFG,
        EDIT_CFG_SCHEDULE,
        EDIT_KEEP,
        EDIT_KEEP_TAU,
        EDIT_TEMPERATURE,
        T2I_CFG,
        T2I_TEMPERATURE,
    )

    ap = argparse.ArgumentParser(prog="omniar", description="Unified multimodal autoregressive models.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="main job: data, tokenizers, staged onecat-tiny training, benchmark, report")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--budget", type=float, default=45.0, help="minutes (default 45): a training step is timed here "
                   "first, and the stages get what the tokenizers, teacher and benchmark leave")
    from omniar.demo import EDIT_STEP_COST, RELATION_STEP_COST

    p.add_argument("--step-seconds", type=float, nargs="+", metavar="S",
                   help="plan with these training step times (seconds: STAGE1 STAGE2 STAGE3 [RELATIONS [EDITS]]; "
                   f"a relations step is otherwise counted as {RELATION_STEP_COST:g} of the stages' mean step, an "
                   f"edits step as {EDIT_STEP_COST:g}) instead of timing them here")
    p.add_argument("--reference-rates", action="store_true", help="plan from the reference 2-core machine's rates "
                   "(BENCHMARKS.md) instead of timing a step here (the speech demo and --device cuda always do)")
    p.add_argument("--recalibrate", action="store_true", help="time a training step again (it is kept in the "
                   "cache, so that a second run plans the same steps)")
    p.add_argument("--plan", action="store_true", help="print the plan (each part's steps and expected minutes, "
                   "after timing a step here) and stop")
    p.add_argument("--no-pace", action="store_true", help="train the planned steps as they are; by default each of "
                   "the three stages gets the time the plan has left when it starts, at the pace the stages before "
                   "it ran (a machine slower than its timing trains fewer steps rather than run past the budget); with "
                   "--step-seconds from another machine, to train the steps its plan gives there")
    p.add_argument("--cache", help="checkpoint cache (default: out/cache beside --out)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step")
    p.add_argument("--distill", type=float, help="> 0: train a teacher and distil it into the image positions "
                   "with this weight; 0: no distillation (default: the preset's recipe, 3 for onecat-tiny and "
                   "ar-omni-tiny)")
    p.add_argument("--teacher", choices=("conv", "vit"), default="conv",
                   help="the distillation teacher: a ConvNet shape/colour reader, or OneCAT's ViT-encoder captioner")
    p.add_argument("--align", type=float, help="> 0: align the image tokenizer's latent to the ConvNet teacher's "
                   "features with this weight; 0: a plain tokenizer (default: the preset's, 2 for onecat-tiny)")
    p.add_argument("--decoder-images", type=int, metavar="N", help="decoder post-training after the last stage: "
                   "the model redraws the finest scale of N training images and the image decoder learns them "
                   "(default: 8,000 in 45 minutes, in proportion; 0: none; next-scale presets only)")
    p.add_argument("--self-prompts", type=int, metavar="N", help="self-training last: the model draws 4 images "
                   "for each of N training prompts, keeps the best by its own caption score, and its generation side "
                   "learns them (default: 3,000 in 45 minutes, in proportion, where the plan holds the relations and "
                   "edits stages too; 0: none; next-scale presets with an und expert only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speech", action="store_true", help="AR-Omni's speech too: a speech codec, text-to-speech, "
                                                         "recognition and spoken questions in every stage")
    p.add_argument("--preset", default="onecat-tiny", help="e.g. ar-omni-tiny (raster images, swin-norm)")
    p.add_argument("--device", default="cpu", help="where the stages train and the benchmark runs: cpu (default), "
                   "cuda, ... (data, tokenizers and the teacher are made on the CPU; speech runs on the CPU only)")
    p.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    p.set_defaults(func=_demo)

    p = sub.add_parser("info", help="config and parameter counts (total / active) of a preset or checkpoint")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="an OmniModel preset (onecat-tiny, raster-tiny, ar-omni-tiny, ...; counted with "
                                    "the demo's tokenizer sizes) or a bare decoder's (text-tiny, experts-tiny, ...)")
    g.add_argument("--model", help="a checkpoint directory: an OmniModel's or a bare decoder's")
    p.set_defaults(func=_info)

    p = sub.add_parser("train", help="train a model")
    tsub = p.add_subparsers(dest="what", required=True)
    t = tsub.add_parser("text", help="text-only decoder on the toy corpus or --data FILE (one text per line)")
    t.add_argument("--out", required=True, help="run directory (resumes from its checkpoint if there is one)")
    t.add_argument("--data")
    t.add_argument("--preset", default="text-tiny")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    t.set_defaults(func=_train_text)

    t = tsub.add_parser("teacher", help="ConvTeacher: a ConvNet that learns which shapes and colours a ShapeWorld "
                                        "scene holds (the distillation teacher of `train omni --teacher`)")
    t.add_argument("--out", required=True, help="run directory (resumes from its checkpoint if there is one)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch", type=int, default=16, help="scenes per step")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--grid", type=int, default=8, help="feature grid side: the student's understanding tokens "
                   "per side (image size / (2 x patch))")
    t.add_argument("--eval", type=int, default=500, help="validation scenes to score it on")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    t.set_defaults(func=_train_teacher)

    t = tsub.add_parser("decoder", help="post-train a next-scale OmniModel's image decoder on its own draws of the "
                                        "finest scale (RobusTok; omni/decoder_post.py): cleaner generated images")
    t.add_argument("--model", required=True, help="OmniModel checkpoint directory")
    t.add_argument("--out", required=True, help="run directory: the model with the new decoder in out/checkpoint "
                   "(a run stopped while drawing or training goes on from where it stopped)")
    t.add_argument("--images", type=int, default=8000, help="training scenes the model redraws")
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--keep", type=int, default=None, help="coarse scales kept from each image (default: all but "
                   "the finest)")
    t.add_argument("--true-share", type=float, default=0.4, help="share of a batch decoded from encoded images' "
                   "codes")
    t.add_argument("--true-source", choices=("pool", "train"), default="pool", help="those images: renders of every "
                   "colour-shape pair, text-free (default), or the redrawn training scenes themselves")
    t.add_argument("--device", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    t.set_defaults(func=_train_decoder)

    t = tsub.add_parser("self", help="self-training (omni/self_train.py): the model draws for training prompts, its "
                                     "own caption score keeps the best drawings, the generation side learns them")
    t.add_argument("--model", required=True, help="OmniModel checkpoint directory")
    t.add_argument("--out", required=True, help="run directory: the model in out/checkpoint (a run stopped while "
                   "drawing or training goes on from where it stopped)")
    t.add_argument("--prompts", type=int, default=3000, help="training prompts drawn for")
    t.add_argument("--candidates", type=int, default=4, help="drawings per prompt (its best is kept)")
    t.add_argument("--top", type=float, default=0.5, help="share of each prompt kind kept: the best-scoring")
    t.add_argument("--real-share", type=float, default=0.5, help="share of the text-to-image examples from the "
                   "prompts' own renders")
    t.add_argument("--edit-share", type=float, default=0.3, help="share of a batch from the train split's edits")
    t.add_argument("--skip-kinds", nargs="*", default=["counting"], metavar="KIND", help="prompt kinds whose drawings "
                   "are not learnt (default: counting, which the caption score does not check); none: --skip-kinds")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--device", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train_self)

    t = tsub.add_parser("omni", help="OmniModel (OneCAT, AR-Omni) on ShapeWorld: t2i, caption, vqa, edit, text, "
                                     "and with --speech-codec tts, asr, svqa")
    t.add_argument("--out", required=True, help="run directory (resumes from its checkpoint if there is one)")
    t.add_argument("--preset", help="model preset of a new run (default onecat-tiny)")
    t.add_argument("--init", metavar="CHECKPOINT", help="start from this trained model (its weights, configuration "
                   "and tokenizers) with a fresh optimizer: the next stage of a staged recipe, or a fine-tune")
    t.add_argument("--stage", choices=OMNI_STAGES, help="train by this stage's recipe (omni.train.STAGES: its "
                   "task mix, learning rate and schedule, questions, batch, curriculum and frozen parameters; flags "
                   "given override them), e.g. --stage stage2 --init runs/stage1/checkpoint")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="decoder config overrides, e.g. num_layers=2")
    t.add_argument("--config", nargs="*", metavar="KEY=VALUE", help="model config (OmniConfig) overrides, e.g. "
                   "perceptual_weight=1 speech_vocab=decoupled speech_expert=true")
    t.add_argument("--text-tokenizer", help="directory with tokenizer.json (a new run without --init)")
    t.add_argument("--image-tokenizer", help="image tokenizer checkpoint directory (a new run without --init)")
    t.add_argument("--speech-codec", help="speech codec checkpoint directory (for the speech tasks tts, asr, svqa)")
    t.add_argument("--tasks", help="task ratios, e.g. t2i=0.5,caption=0.5 (default: the stage's, or the unified "
                   "mix of stages 2 and 3, t2i=0.15,caption=0.1,vqa=0.45,edit=0.25,text=0.05)")
    t.add_argument("--teacher", help="distil this teacher's checkpoint into the model: a ConvTeacher (`omniar "
                   "train teacher`) or a ViT-encoder captioner (--preset vit-teacher-tiny --tasks caption=0.5,vqa=0.5)")
    t.add_argument("--distill", type=float, default=3.0, help="distillation weight (with --teacher)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch", type=int, help="examples per step (default: the stage's, or 16)")
    t.add_argument("--questions", type=int, help="questions per vqa image, one per turn: the sample's own, then "
                   "further ones about the same scene (default 4, as in every stage of the demo)")
    t.add_argument("--speech-pool", type=int, help="speech tasks draw their utterances from this many "
                   "samples, each synthesized once when first drawn (default: Recipe's, 20,000)")
    t.add_argument("--lr", type=float, help="peak learning rate (default: the stage's, or 2e-3)")
    t.add_argument("--optimizer", choices=("muon", "adamw"), help="muon: Muon for the decoder blocks' matrices and "
                   "AdamW for the rest (default, as in the demo's stages); adamw: AdamW for all")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--shards", type=int, default=0, help="pieces per step, each its own forward/backward (gradient "
                   "accumulation: less memory, the same update); default: --workers")
    t.add_argument("--workers", type=int, default=1, help="data-parallel processes sharing each step's pieces "
                   "(gloo; bench/train_parallel.py measures whether it pays on your machine)")
    t.add_argument("--device", default="cpu", help=DEVICE_HELP)
    t.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    t.set_defaults(func=_train_omni)

    p = sub.add_parser("ask", help="answer questions about images (or caption them) with an OmniModel")
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True, action="append",
                   help="the image every question is about; repeated (--image a.png --image b.png): each image "
                        "asked the one question, or captioned, or paired in order with as many questions, each "
                        "answer printed after its image's path")
    p.add_argument("questions", nargs="*", help="none: caption the images")
    p.add_argument("--audio", nargs="+", help="spoken questions (WAV files) instead of text ones")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help=DTYPE_HELP)
    p.set_defaults(func=_ask)

    p = sub.add_parser("speak", help="text-to-speech with an OmniModel trained with speech")
    p.add_argument("--model", required=True)
    p.add_argument("texts", nargs="+")
    p.add_argument("-o", "--output", default="out.wav", help="one text: this file; more: name-0.wav, ...")
    p.add_argument("--stream", action="store_true", help="write audio chunk by chunk while it is generated, and "
                                                         "print the first-chunk latency and real-time factor")
    p.add_argument("--chunk", type=int, default=5, help="codes per streamed chunk (5 = 100 ms)")
    p.add_argument("--max-seconds", type=float, default=8.0)
    p.set_defaults(func=_speak)

    p = sub.add_parser("transcribe", help="speech recognition with an OmniModel trained with speech")
    p.add_argument("--model", required=True)
    p.add_argument("audio", nargs="+", help="WAV files (16 kHz; channels are averaged)")
    p.set_defaults(func=_transcribe)

    p = sub.add_parser("generate", help="generate from a checkpoint")
    gsub = p.add_subparsers(dest="what", required=True)
    for t, edit in ((gsub.add_parser("image", help="text-to-image (or, with --image, an edit of it) with an "
                                   "OmniModel"), False),
                    (sub.add_parser("edit", help="edit an image by instructions with an OmniModel"), True)):
        t.add_argument("--model", required=True)
        t.add_argument("prompts", nargs="+", metavar="instructions" if edit else "prompts")
        t.add_argument("-o", "--output", default="out.png", help="one prompt: this file; more: name-0.png, ...")
        t.add_argument("--image", required=edit, action="append",
                       help="edit this image (the prompts are instructions); repeated (--image a.png --image "
                            "b.png): each image edited by the one instruction, or paired in order with as many "
                            "instructions")
        t.add_argument("--cfg", type=float, help="guidance weight (at the last scale when ramped); "
                                                 + (f"default: the benchmark's, {EDIT_CFG:g}" if edit else
                                                    f"default: the benchmark's, {T2I_CFG:g} for text-to-image, "
                                                    f"{EDIT_CFG:g} for edits (with --image)"))
        t.add_argument("--cfg-schedule", choices=["linear", "constant"],
                       help="guidance over the scales: ramped linearly from 1, or constant; default: the benchmark's, "
                            + (f"{EDIT_CFG_SCHEDULE}" if edit else
                               f"linear for text-to-image, {EDIT_CFG_SCHEDULE} for edits"))
        t.add_argument("--unguided-scales", type=int, default=0, metavar="N",
                       help="draw the last N scales without guidance, their guidance rows dropped from those passes "
                            "(next-scale models; batches ~1.2x faster at N = 1, images a little worse; default 0)")
        t.add_argument("--image-cfg", type=float, help="edits: OneCAT's three-branch guidance with this image weight")
        t.add_argument("--keep", type=float, help="edits: the log-probability added to each bit that keeps the "
                                                  "reference, outside the object the instruction names; default: "
                                                  f"the benchmark's, {EDIT_KEEP:g}")
        t.add_argument("--keep-tau", type=float, help="edits: pull only where the drawing so far is within this "
                                                      "relative distance of the reference's latent (inf: "
                                                      f"everywhere); default: the benchmark's, {EDIT_KEEP_TAU:g}")
        t.add_argument("--temperature", type=float,
                       help="per bit, 0 = greedy; default: the benchmark's, "
                            + (f"{EDIT_TEMPERATURE:g}" if edit else f"{T2I_TEMPERATURE:g} for text-to-image, "
                                                                    f"{EDIT_TEMPERATURE:g} for edits"))
        t.add_argument("--top-p", type=float, default=1.0)
        t.add_argument("--seed", type=int, default=0)
        if not edit:
            t.add_argument("--best-of", type=int, default=1, metavar="N",
                           help="draw N images per prompt (needs --temperature > 0) and keep the one whose caption "
                                "likelihood of the prompt is highest under the model itself")
        t.add_argument("--samples", type=int, default=1, metavar="N",
                       help="draw N images per " + ("instruction" if edit else "prompt") + " (needs --temperature > 0"
                            + (", edits are greedy by default" if edit else "") + "), in one batch: NAME-0.png ... "
                            "(several prompts: NAME-<prompt>-<sample>.png) and NAME-grid.png, a row each; the first "
                            "of each is the image drawn without --samples")
        t.add_argument("--scales", action="store_true",
                       help="also write each image's drawing scale by scale, coarse to fine (next-scale models): "
                            "NAME-scales.png beside NAME.png, one column a scale, the last the image itself")
        t.add_argument("--device", default="cpu", help=DEVICE_HELP)
        t.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help=DTYPE_HELP)
        t.set_defaults(func=_generate_image, best_of=1)
    t = gsub.add_parser("text")
    t.add_argument("--model", required=True, help="checkpoint directory")
    t.add_argument("prompts", nargs="+")
    t.add_argument("--max-new-tokens", type=int, default=64)
    t.add_argument("--temperature", type=float, default=0.8)
    t.add_argument("--top-k", type=int, default=0)
    t.add_argument("--top-p", type=float, default=0.95)
    t.add_argument("--repetition-penalty", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_generate_text)

    p = sub.add_parser("data", help="make or inspect datasets")
    dsub = p.add_subparsers(dest="what", required=True)
    d = dsub.add_parser("make", help="materialise a built-in dataset")
    d.add_argument("world", choices=["shapeworld"])
    d.add_argument("--out", required=True)
    d.add_argument("--num", type=int, required=True)
    d.add_argument("--split", default="train", choices=["train", "val", "test", "heldout"])
    d.add_argument("--start", type=int, default=0, help="first sample index (to grow a dataset)")
    d.add_argument("--side", type=int, default=64)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--no-speech", action="store_true")
    d.add_argument("--video", action="store_true", help="moving-shape videos (PNG strips) instead")
    d.set_defaults(func=_data_make)
    d = dsub.add_parser("show", help="contact sheet and a few audio files of a dataset")
    d.add_argument("dir")
    d.add_argument("--split", default="train")
    d.add_argument("--num", type=int, default=32)
    d.set_defaults(func=_data_show)

    p = sub.add_parser("tokenizer", help="train tokenizers")
    tsub = p.add_subparsers(dest="what", required=True)
    t = tsub.add_parser("train", help="train a tokenizer")
    ttsub = t.add_subparsers(dest="modality", required=True)
    t = ttsub.add_parser("text", help="byte-level BPE with the stream's special tokens")
    t.add_argument("--data", help="manifest (.jsonl), folder of manifests, or text file (default: ShapeWorld text)")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=1024)
    t.add_argument("--samples", type=int, default=2000, help="ShapeWorld samples per split when --data is not given")
    t.set_defaults(func=_tokenizer_train_text)

    t = ttsub.add_parser("image", help="multi-scale bitwise (BSQ) image tokenizer")
    t.add_argument("--data", help="manifest or dataset folder with images (default: ShapeWorld train renders)")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=3500)
    t.add_argument("--batch", type=int, help="images a step (default 8: under Muon smaller steps reconstruct sharper "
                                             "in the same minutes; BENCHMARKS.md)")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--optimizer", choices=("muon", "adam"), default="muon",
                   help="muon: Muon for the hidden convolutions' filters, Adam for the rest (BENCHMARKS.md: +2 dB at "
                        "the demo's steps); adam: Adam for everything")
    t.add_argument("--bits", type=int, default=16)
    t.add_argument("--scales", type=int, nargs="+", help="scale schedule, e.g. 1 2 3 4 6 8 (one scale: raster)")
    t.add_argument("--rate-weight", type=float, default=0.0,
                   help="weight of the rate term (bit_prior.py): > 0 makes each scale's bits predictable from the "
                        "earlier scales (e.g. 0.02; BENCHMARKS.md: it has not raised the generation score yet)")
    t.add_argument("--prior-width", type=int, default=64, help="width of the bit prior the rate term trains")
    t.add_argument("--align-teacher", help="ConvNet teacher checkpoint whose feature map the latent is aligned to "
                                           "(semantic alignment; BENCHMARKS.md: text-to-image 0.11 -> 0.20)")
    t.add_argument("--align-weight", type=float, help="weight of the alignment term (with --align-teacher; "
                                                      "default: the demo's)")
    t.add_argument("--num-images", type=int, default=20000)
    t.add_argument("--eval-images", type=int, default=500)
    t.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    t.set_defaults(func=_tokenizer_train_image)

    t = ttsub.add_parser("speech", help="streaming speech codec: one VQ codebook, 50 tokens/s, ISTFT decoder")
    t.add_argument("--data", help="manifest or dataset folder with audio (default: ShapeWorld train speech)")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--utterances", type=int, default=2000, help="ShapeWorld utterances when --data is not given")
    t.add_argument("--eval-captions", type=int, default=300)
    t.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    t.set_defaults(func=_tokenizer_train_speech)

    p = sub.add_parser("eval", help="benchmarks")
    esub = p.add_subparsers(dest="what", required=True)
    e = esub.add_parser("shapeworld", help="score a predictions file with the ShapeWorld judges")
    e.add_argument("--predictions", help="JSONL of model outputs (see omniar.data.shapeworld.benchmark)")
    e.add_argument("--json", help="also write the scores as JSON here")
    e.add_argument("--write-reference", metavar="DIR", help="write ground-truth predictions (format + ceiling)")
    e.add_argument("--num", type=int, default=50, help="samples for --write-reference")
    e.set_defaults(func=_eval_shapeworld)
    e = esub.add_parser("model", help="run an OmniModel on the ShapeWorld benchmark and score it (all its tasks)")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True, help="predictions, media and scores.json go here")
    e.add_argument("--tasks", nargs="+", help="default: t2i vqa caption edit, and tts asr svqa with speech")
    e.add_argument("--num", type=int, default=200, help="items per task")
    e.add_argument("--heldout", type=int, default=0, help="held-out text-to-image prompts")
    e.add_argument("--split", default="test", choices=["val", "test"])
    e.add_argument("--cfg", type=float, help=f"text-to-image guidance weight (default {T2I_CFG:g})")
    e.add_argument("--edit-cfg", type=float, help=f"edit guidance weight (default {EDIT_CFG:g})")
    e.add_argument("--cfg-schedule", choices=["linear", "constant"], help="text-to-image guidance over the scales "
                                                                          "(default linear)")
    e.add_argument("--edit-cfg-schedule", choices=["linear", "constant"],
                   help=f"edit guidance over the scales (default {EDIT_CFG_SCHEDULE})")
    e.add_argument("--unguided-scales", type=int, metavar="N", help="draw the last N scales without guidance "
                                                                    "(next-scale models; default 0: every scale)")
    e.add_argument("--edit-temperature", type=float, help=f"edits' per-bit temperature (default {EDIT_TEMPERATURE:g})")
    e.add_argument("--edit-keep", type=float, help="edits' pull towards the reference's bits outside the named "
                                                   f"object (generate_images' keep; default {EDIT_KEEP:g})")
    e.add_argument("--edit-keep-tau", type=float, help="... only where the drawing so far is within this relative "
                                                       "distance of the reference's latent (generate_images' keep_tau;"
                                                       f" inf: everywhere; default {EDIT_KEEP_TAU:g})")
    e.add_argument("--best-of", type=int, metavar="N", help="text-to-image: the best of N samples by the model's own "
                                                            "caption likelihood (default 1: one sample)")
    e.add_argument("--device", default="cpu", help=DEVICE_HELP)
    e.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help=DTYPE_HELP)
    e.set_defaults(func=_eval_model)

    args = ap.parse_args(argv)
    try:
        with _tensorboard(getattr(args, "tensorboard", False)):
            args.func(args)
    except (ValueError, FileNotFoundError) as e:  # includes ManifestError
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # training saved a checkpoint first and said where (train/interrupt.py)
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
