"""`make demo`'s pipeline with a tiny plan: every step runs, the report shows what the model made, a second run
comes from the checkpoint cache, a stage stopped by Ctrl-C resumes, and the budget sets the step counts."""

import dataclasses
import json
import math
import os
import re
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from omniar.demo import DemoPlan, run_demo
from omniar.omni.model import OmniModel, omni_preset

# machines' timings below: an image-tokenizer step is one of TOKENIZER_BATCH (8) images, 0.37x the cost of one of 32
TINY = DemoPlan(budget=0.5, tokenizer_steps=3, tokenizer_images=64, stage_steps={"stage1": 2, "stage2": 2, "stage3": 1},
                eval_num=4, heldout_num=2, text_samples=200, examples_per_step=4, decoder_images=6, decoder_steps=2,
                self_prompts=6, self_steps=2,
                overrides=dict(hidden_size=48, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64))


def test_demo_runs_every_step_and_a_second_run_comes_from_the_cache(tmp_path, monkeypatch):
    lines = []
    report = run_demo(tmp_path / "demo", TINY, progress=False, log=lines.append)
    assert not any(s["cached"] for s in report["steps"].values())
    assert list(report["steps"]) == ["data", "text-tokenizer", "image-tokenizer", "train-stage1", "train-stage2",
                                     "train-stage3", "decoder-post", "self-train", "benchmark"]
    assert report["steps"]["decoder-post"]["images"] == 6 and report["steps"]["decoder-post"]["steps"] == 2
    assert report["steps"]["self-train"]["prompts"] == 6 and report["steps"]["self-train"]["steps"] == 2
    assert [report["steps"][f"train-stage{i}"]["steps"] for i in (1, 2, 3)] == [2, 2, 1]
    for task in ("t2i", "vqa", "caption", "edit"):
        assert report["scores"][task]["count"] == 4
    assert report["heldout"]["count"] == 2
    page = (tmp_path / "demo" / "report.html").read_text()
    images = re.findall(r'src="([^"]+)"', page)
    assert len(images) >= 2 + 4 + 2 * 4 + 4 + 4  # held-out and test grids, edits, vqa and caption inputs
    assert all((tmp_path / "demo" / src).is_file() for src in images)
    assert "Scores" in page and "Training loss" in page and "<polyline" in page
    assert "steps from the reference machine's rates" in page  # a plan of given steps, none timed
    # the held-out prompts drawn scale by scale: one column a scale, the last the benchmark's image of the prompt
    assert "Coarse to fine" in page and len(report["scales"]) == 2
    held = tmp_path / "demo" / "eval" / "heldout"
    records = [json.loads(line) for line in (held / "predictions.jsonl").read_text().splitlines()]
    for i, r in enumerate(report["scales"]):
        strip = np.asarray(Image.open(held / r["image"]))
        side = strip.shape[0]
        assert r["prompt"] == records[i]["prompt"] and strip.shape[1] == 6 * side + 5 * 2  # scales 1, 2, 3, 4, 6, 8
        assert np.array_equal(strip[:, -side:], np.asarray(Image.open(held / records[i]["image"])))
    model = OmniModel.from_pretrained(report["checkpoint"])
    assert model.config.preset == "onecat-tiny" and model.decoder.config.num_layers == 1
    # the benchmark's model is stage 3's with the post-trained image decoder, then self-trained: its generation side
    assert report["checkpoint"] == report["steps"]["self-train"]["dir"] + "/checkpoint"
    stage3 = OmniModel.from_pretrained(report["steps"]["train-stage3"]["dir"] + "/stage3/checkpoint").state_dict()
    post = OmniModel.from_pretrained(report["steps"]["decoder-post"]["dir"] + "/checkpoint").state_dict()
    changed = {k for k, v in post.items() if not torch.equal(v, stage3[k])}
    assert changed and all(k.startswith("tokenizer.decoder.") for k in changed)
    from omniar.omni.self_train import GENERATION_SIDE
    from omniar.omni.train import held_parameters

    held = {id(p) for p in held_parameters(model, GENERATION_SIDE)}
    held = {name for name, p in model.named_parameters() if id(p) in held}
    learnt = {k for k, v in model.state_dict().items() if not torch.equal(v, post[k])}
    assert learnt and not any(k.startswith("tokenizer.") or k in held for k in learnt), learnt

    stage3 = tmp_path / "cache" / report["steps"]["train-stage3"]["dir"].rsplit("/", 1)[1]
    weights = (stage3 / "stage3" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    again = run_demo(tmp_path / "demo", TINY, progress=False, log=lines.append)
    cached = {k: v["cached"] for k, v in again["steps"].items()}
    assert all(cached[k] for k in cached if k != "benchmark"), cached
    assert (stage3 / "stage3" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == weights
    assert again["scores"] == report["scores"]  # same weights, same seeds: the same outputs, judged the same

    longer = DemoPlan(**{**TINY.__dict__, "stage_steps": {"stage1": 2, "stage2": 3, "stage3": 1}})
    third = run_demo(tmp_path / "demo", longer, progress=False, log=lines.append)
    cached = {k: v["cached"] for k, v in third["steps"].items()}
    # only what changed is retrained, and every stage after it (stage 3 starts from the new stage 2)
    assert cached["train-stage1"] and not cached["train-stage2"] and not cached["train-stage3"]
    json.dumps(third)

    # a stage's recipe is part of its key: a new learning rate for stage 2 retrains stages 2 and 3, not 1
    from omniar.omni import train

    monkeypatch.setitem(train.STAGES, "stage2", dataclasses.replace(train.STAGES["stage2"], lr=1e-3))
    fourth = run_demo(tmp_path / "demo", longer, progress=False, log=lines.append)
    cached = {k: v["cached"] for k, v in fourth["steps"].items()}
    assert cached["train-stage1"] and not cached["train-stage2"] and not cached["train-stage3"]


@pytest.mark.parametrize("kind,width", [("conv", 128), ("vit", 128)])
@pytest.mark.filterwarnings("ignore:this relations curriculum")  # a 2-step relations stage, on purpose
def test_demo_with_distillation_trains_the_teacher_first(tmp_path, kind, width):
    # the ConvNet also aligns the image tokenizer's latent, so it comes before it; the ViT reads the tokenizer
    align = 1.0 if kind == "conv" else 0.0
    stages = {"stage1": 2, "stage2": 2, "stage3": 1, "relations": 2}  # as a plan with the relations curriculum
    plan = DemoPlan(**{**TINY.__dict__, "distill": 1.0, "teacher": kind, "teacher_steps": 2, "align": align,
                       "stage_steps": stages, "self_prompts": 0, "self_steps": 0})
    report = run_demo(tmp_path / "demo", plan, progress=False, log=lambda s: None)
    order = ["teacher", "image-tokenizer"] if kind == "conv" else ["image-tokenizer", "teacher"]
    assert list(report["steps"])[2:8] == [*order, "train-stage1", "train-stage2", "train-stage3", "train-relations"]
    tokenizer = report["steps"]["image-tokenizer"]["dir"]
    metrics = [json.loads(line) for line in open(f"{tokenizer}/metrics.jsonl")]
    assert ("align" in metrics[-1]) == (kind == "conv")
    if kind == "conv":
        assert {"shapes", "colours"} <= set(report["steps"]["teacher"])  # its presence accuracy
        assert json.loads(open(f"{tokenizer}/checkpoint/config.json").read())["align_width"] == width
    model = OmniModel.from_pretrained(report["checkpoint"])
    assert model.config.distill_dim == width  # the ConvTeacher's / vit-teacher-tiny's feature width
    for stage in stages:  # distilled in every mixed stage (DemoPlan.distill_stages), not in the relations one
        d = report["steps"][f"train-{stage}"]["dir"]
        metrics = [json.loads(line) for line in open(f"{d}/{stage}/metrics.jsonl")]
        assert ("distill" in metrics[-1]) == (stage != "relations")


def test_budget_sets_the_step_counts():
    default = DemoPlan.for_budget()
    assert default.budget == 45 and default.eval_num == 200 and default.heldout_num == 500
    small, big = DemoPlan.for_budget(10), DemoPlan.for_budget(90)
    assert sum(small.stage_steps.values()) < sum(default.stage_steps.values()) < sum(big.stage_steps.values())
    assert small.tokenizer_steps < default.tokenizer_steps <= big.tokenizer_steps
    vit = DemoPlan.for_budget(45, distill=1.0, teacher="vit")  # a quarter of stage 1's steps
    assert vit.teacher_steps > 0
    # OneCAT's demo distils the ConvNet teacher by default; its steps are ~5x cheaper than the model's
    assert default.distill == 3.0 and default.teacher == "conv" and default.teacher_steps == 1200
    plain = DemoPlan.for_budget(45, distill=0, align=0)
    assert plain.teacher_steps == 0
    # the image tokenizer's alignment reads the ConvNet teacher: it is trained even when nothing is distilled
    assert default.align == 2.0 and DemoPlan.for_budget(45, distill=0).teacher_steps == 1200
    assert vit.align == 0 and DemoPlan.for_budget(45, preset="raster-tiny").align == 0
    with pytest.raises(ValueError, match="reads the ConvNet teacher"):
        DemoPlan.for_budget(45, teacher="vit", align=1.0)
    assert plain.stage_steps["stage1"] - default.stage_steps["stage1"] == round(default.teacher_steps * 110 / 560)
    assert vit.teacher_steps + vit.stage_steps["stage1"] == plain.stage_steps["stage1"]
    assert DemoPlan.for_budget(45, preset="ar-omni-tiny").distill == 3.0  # shapes are unread without a teacher
    assert DemoPlan.for_budget(45, preset="raster-tiny").distill == 0
    with pytest.raises(ValueError, match="unknown teacher 'cnn'"):
        DemoPlan.for_budget(45, distill=1.0, teacher="cnn")
    with pytest.raises(ValueError, match="positive number of minutes"):
        DemoPlan.for_budget(0)
    # decoder post-training: next-scale presets, in proportion to the budget, its cost taken from the stages
    from omniar.demo import DECODER_POST_COST

    assert (default.decoder_images, default.decoder_steps) == (8000, 1200)
    assert (small.decoder_images, big.decoder_images) == (round(8000 * 10 / 45), 16000)
    assert DemoPlan.for_budget(45, preset="raster-tiny").decoder_images == 0
    assert DemoPlan.for_budget(45, speech=True, preset="ar-omni-tiny").decoder_images == 0
    unpost = DemoPlan.for_budget(45, decoder_images=0)
    assert unpost.decoder_steps == 0
    assert sum(unpost.stage_steps.values()) - sum(default.stage_steps.values()) in range(
        round(DECODER_POST_COST * 8000) - 2, round(DECODER_POST_COST * 8000) + 3)
    assert DemoPlan.for_budget(45, decoder_images=100).decoder_steps == 15
    with pytest.raises(ValueError, match="needs both"):
        DemoPlan(decoder_images=10)
    with pytest.raises(ValueError, match="raster-tiny decodes raster tokens"):
        DemoPlan(preset="raster-tiny", decoder_images=10, decoder_steps=2)


def test_a_measured_plan_gives_the_stages_the_time_the_other_steps_leave():
    from omniar.demo import (
        BENCHMARK_COST,
        DECODER_POST_COST,
        EDIT_STEP_COST,
        FIXED_SECONDS,
        MARGIN,
        RELATION_STEP_COST,
        SELF_DRAW_COST,
        TEACHER_STEP_COST,
        TOKENIZER_STEP_COST,
    )

    reference = DemoPlan.for_budget(45)
    fast = {"stage1": 0.3, "stage2": 0.4, "stage3": 0.4}
    slow = {name: 2 * s for name, s in fast.items()}
    plans = {"fast": DemoPlan.for_budget(45, step_seconds=fast), "slow": DemoPlan.for_budget(45, step_seconds=slow)}
    for name, seconds in (("fast", fast), ("slow", slow)):
        plan = plans[name]
        assert plan.step_seconds == seconds
        # the steps that do not train the model are the reference plan's: their cached products are reused
        assert (plan.tokenizer_steps, plan.teacher_steps, plan.eval_num, plan.heldout_num) == (
            reference.tokenizer_steps, reference.teacher_steps, reference.eval_num, reference.heldout_num)
        mean = 0.45 * seconds["stage1"] + 0.4 * seconds["stage2"] + 0.15 * seconds["stage3"]
        cost = {**seconds, "relations": RELATION_STEP_COST * mean, "edits": EDIT_STEP_COST * mean,
                "answers": RELATION_STEP_COST * mean}
        # self-training (where the plan holds it): its steps as edits steps, its drawings counted in stage steps
        training = sum(n * cost[s] for s, n in plan.stage_steps.items()) + plan.self_steps * cost["edits"]
        other = FIXED_SECONDS + max(seconds.values()) * (TOKENIZER_STEP_COST * plan.tokenizer_steps
                                                         + TEACHER_STEP_COST * plan.teacher_steps + BENCHMARK_COST
                                                         + DECODER_POST_COST * plan.decoder_images
                                                         + SELF_DRAW_COST * plan.self_prompts)
        # planned to fill the budget (less its margin) within a step
        assert 45 * 60 * MARGIN - max(seconds.values()) < training + other <= 45 * 60 * MARGIN
        # 45 / 40 / 15% of the stages' steps (the relations and edits stages' time taken from them in proportion)
        total = sum(n for s, n in plan.stage_steps.items() if s not in ("relations", "edits", "answers"))
        assert abs(plan.stage_steps["stage1"] - 0.45 * total) <= 1
        assert abs(plan.stage_steps["stage3"] - 0.15 * total) <= 1
    assert sum(plans["fast"].stage_steps.values()) > 2 * sum(plans["slow"].stage_steps.values())
    # a ViT teacher takes a quarter of the measured stage 1, as of the reference one; one that is not used, nothing
    none = DemoPlan.for_budget(45, step_seconds=fast, distill=0, align=0)
    vit = DemoPlan.for_budget(45, step_seconds=fast, distill=1.0, teacher="vit")
    assert vit.teacher_steps == round(0.25 * none.stage_steps["stage1"])
    assert vit.teacher_steps + vit.stage_steps["stage1"] == none.stage_steps["stage1"]
    unused = DemoPlan.for_budget(45, step_seconds=fast, distill=0, align=0, teacher="vit")
    assert unused.teacher_steps == 0 and unused.stage_steps == none.stage_steps
    with pytest.raises(ValueError, match="no time to train the model"):
        DemoPlan.for_budget(2, step_seconds=slow)
    with pytest.raises(ValueError, match="image demo only"):
        DemoPlan.for_budget(45, step_seconds=fast, speech=True)
    with pytest.raises(ValueError, match="each of stage1, stage2 and stage3"):
        DemoPlan.for_budget(45, step_seconds={"stage1": 0.3})
    with pytest.raises(ValueError, match="may time relations, edits, answers, image-tokenizer, teacher, decoder and "
                                         "self-draw"):
        DemoPlan.for_budget(45, step_seconds={**fast, "codec": 0.1})
    # timed tokenizer and teacher steps replace their ratios to a training step: the stages get what they leave
    timed = {**slow, "image-tokenizer": 0.1, "teacher": 0.05}
    plan = DemoPlan.for_budget(45, step_seconds=timed)
    other = FIXED_SECONDS + 0.1 * plan.tokenizer_steps + 0.05 * plan.teacher_steps + 0.8 * (
        BENCHMARK_COST + DECODER_POST_COST * plan.decoder_images + SELF_DRAW_COST * plan.self_prompts)
    mean = 0.45 * slow["stage1"] + 0.55 * slow["stage2"]
    cost = {**slow, "relations": RELATION_STEP_COST * mean, "edits": EDIT_STEP_COST * mean,
            "answers": RELATION_STEP_COST * mean}
    training = sum(n * cost[s] for s, n in plan.stage_steps.items()) + plan.self_steps * cost["edits"]
    assert 45 * 60 * MARGIN - 0.8 < training + other <= 45 * 60 * MARGIN
    assert sum(plan.stage_steps.values()) > sum(plans["slow"].stage_steps.values())  # 0.1 < 0.25 x 0.8 s
    # the plan's own account of its time is what it planned
    assert 45 * 60 * MARGIN - 0.8 < sum(seconds for *_, seconds in plan.schedule()) <= 45 * 60 * MARGIN


def test_on_a_slow_machine_the_tokenizer_and_teacher_leave_the_model_half_its_time():
    from omniar.demo import (
        BENCHMARK_COST,
        DECODER_POST_COST,
        DECODER_SHARE,
        FIXED_SECONDS,
        MARGIN,
        PREP_SHARE,
        TOKENIZER_BATCH,
    )

    reference = DemoPlan.for_budget(45)
    # an AVX2 EPYC on a slow day: the reference plan's 1,350 tokenizer and 1,200 teacher steps alone took 38 of the
    # 45 minutes, and the demo refused to plan
    timed = {"stage1": 2.1, "stage2": 2.48, "stage3": 2.48, "image-tokenizer": 1.44, "teacher": 0.29}
    plan = DemoPlan.for_budget(45, step_seconds=timed)
    model_time = 45 * 60 * MARGIN - FIXED_SECONDS - 2.48 * BENCHMARK_COST
    # decoder post-training (untimed: counted in stage steps) takes at most its share, with fewer images
    decoder = DECODER_POST_COST * 2.48 * plan.decoder_images
    assert DECODER_SHARE * model_time - 1 < decoder <= DECODER_SHARE * model_time
    assert plan.decoder_images < reference.decoder_images and plan.decoder_steps == round(0.15 * plan.decoder_images)
    model_time -= decoder
    prep = 1.44 * plan.tokenizer_steps + 0.29 * plan.teacher_steps
    assert PREP_SHARE * model_time - 1.44 - 0.29 < prep <= PREP_SHARE * model_time
    # the teacher keeps its steps (it reads shapes only after ~1,000); the tokenizer gets what is left
    assert plan.teacher_steps == reference.teacher_steps and 10 < plan.tokenizer_steps < reference.tokenizer_steps
    # where even the teacher's steps would not fit, it is cut too, and the tokenizer keeps 10
    tight = DemoPlan.for_budget(45, step_seconds={**timed, "teacher": 1.2})
    assert tight.tokenizer_steps == 10 and tight.teacher_steps < reference.teacher_steps
    tight_prep = 1.44 * 10 + 1.2 * tight.teacher_steps
    assert PREP_SHARE * model_time - 1.2 < tight_prep <= PREP_SHARE * model_time
    assert plan.tokenizer_images == min(reference.tokenizer_images, TOKENIZER_BATCH * plan.tokenizer_steps)
    rows = {part: (steps, seconds) for part, steps, seconds in plan.schedule()}
    training = sum(rows[s][1] for s in plan.stage_steps)
    assert model_time - prep - 2.48 < training <= model_time - prep
    assert 45 * 60 * MARGIN - 2.48 < sum(seconds for _, seconds in rows.values()) <= 45 * 60 * MARGIN
    # a machine where they fit keeps the reference counts (and their cached products)
    fast = DemoPlan.for_budget(45, step_seconds={**timed, "image-tokenizer": 0.125, "teacher": 0.05,
                                                  "stage1": 0.3, "stage2": 0.4, "stage3": 0.4})
    assert (fast.tokenizer_steps, fast.teacher_steps) == (reference.tokenizer_steps, reference.teacher_steps)


def test_a_cheap_tokenizer_step_buys_more_tokenizer_steps():
    """Where TOKENIZER_MINUTES (of 45, in proportion) pay for more than the reference count, the image tokenizer
    gets them (at most TOKENIZER_MAX_STEPS) and the stages the rest; the teacher keeps its count."""
    from omniar.demo import MARGIN, TOKENIZER_MAX_STEPS, TOKENIZER_MINUTES

    reference = DemoPlan.for_budget(45)
    # steps of 8 images: 0.37x of 32's (the Intel machines' 0.34 s, the Zen 5's 0.14)
    timed = {"stage1": 0.3, "stage2": 0.36, "stage3": 0.36, "image-tokenizer": 0.125, "teacher": 0.03}
    dear = DemoPlan.for_budget(45, step_seconds=timed)
    cheap = DemoPlan.for_budget(45, step_seconds={**timed, "image-tokenizer": 0.05})
    assert dear.tokenizer_steps == reference.tokenizer_steps  # 7 minutes buy 3,360 of 0.125 s: the reference's 3,656
    assert cheap.tokenizer_steps == round(TOKENIZER_MINUTES * 60 / 0.05) == 8400
    assert cheap.tokenizer_images == 20_000 and cheap.teacher_steps == dear.teacher_steps
    for plan in (dear, cheap):  # the stages get the rest: both fill the same time
        rows = {part: seconds for part, _, seconds in plan.schedule()}
        assert 45 * 60 * MARGIN - 0.4 < sum(rows.values()) <= 45 * 60 * MARGIN
    assert rows["image tokenizer"] == pytest.approx(420)
    half = DemoPlan.for_budget(22.5, step_seconds={**timed, "image-tokenizer": 0.05})
    assert half.tokenizer_steps == 4200  # in proportion to the budget
    cheapest = DemoPlan.for_budget(45, step_seconds={**timed, "image-tokenizer": 0.02})
    assert cheapest.tokenizer_steps == TOKENIZER_MAX_STEPS


def test_seconds_per_step_cancels_what_a_run_costs_once(monkeypatch):
    from omniar import demo

    clock = [0.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock[0])
    runs = []

    def run(n):  # 5 s of set-up, then 0.25 s a step
        runs.append(n)
        clock[0] += 5 + 0.25 * n

    assert demo.seconds_per_step(run, 16) == 0.25 and runs == [4, 16]
    # the long run came out shorter (timing noise): the long run alone
    assert demo.seconds_per_step(lambda n: clock.__setitem__(0, clock[0] + (3 if n == 1 else 2)), 4) == 0.5


def test_calibration_times_each_stage_once_and_is_kept_in_the_cache(tmp_path, monkeypatch):
    from omniar import demo

    plan = DemoPlan(**{**TINY.__dict__, "distill": 1.0})
    measured = demo.measure_step_seconds(plan.preset, plan.overrides, plan.examples_per_step, plan.distill,
                                         tuple(plan.stage_steps), steps=2, warmup=1, text_samples=plan.text_samples)
    assert set(measured) == {"stage1", "stage2", "stage3"} and all(s > 0 for s in measured.values())
    assert measured["stage2"] == measured["stage3"]  # one mix, timed once
    # self-training's drawing, a prompt's candidates and their caption scores, where the plan self-trains
    drawn = demo.measure_step_seconds(plan.preset, plan.overrides, plan.examples_per_step, 0.0, ("stage1",), steps=2,
                                      warmup=1, text_samples=plan.text_samples, self_draw=True)
    assert set(drawn) == {"stage1", "self-draw"} and drawn["self-draw"] > 0
    # the answers stage is the relations stage's mix with the text expert alone learning: timed on its own
    from omniar.omni import train

    timings, train_omni = [], train.train_omni
    monkeypatch.setattr(train, "train_omni", lambda model, out, recipe, **k: timings.append(recipe.freeze) or
                        train_omni(model, out, recipe, **k))
    late = demo.measure_step_seconds(plan.preset, plan.overrides, plan.examples_per_step, 0.0, ("relations", "answers"),
                                     steps=2, warmup=1, text_samples=plan.text_samples)
    assert set(late) == {"relations", "answers"} and len(set(timings)) == 2
    monkeypatch.undo()

    image = demo.image_tokenizer_config(omni_preset(plan.preset, **plan.overrides))
    others = demo.measure_other_seconds(dataclasses.replace(image, channels=8), teacher_grid=8, align=1.0,
                                        batch=4, steps=4)
    assert set(others) == {"image-tokenizer", "teacher"} and all(s > 0 for s in others.values())
    assert set(demo.measure_other_seconds(dataclasses.replace(image, channels=8), steps=4)) == {"image-tokenizer"}

    calls, options = [], []
    monkeypatch.setattr(demo, "measure_step_seconds", lambda *a, **k: calls.append(a) or options.append(k) or {
        "stage1": 0.101, "stage2": 0.2, "stage3": 0.2})
    monkeypatch.setattr(demo, "measure_other_seconds", lambda *a, **k: {"image-tokenizer": 0.05})
    first = demo.calibrate(tmp_path, plan, log=lambda s: None)
    assert first == {"stage1": 0.11, "stage2": 0.2, "stage3": 0.2, "image-tokenizer": 0.05} and len(calls) == 1
    # the stages after stage 3 are timed where the preset can hold them, also when this plan has none (a measured
    # one may)
    assert "relations" not in plan.stage_steps and calls[0][4] == ("stage1", "stage2", "stage3", "relations", "edits",
                                                                  "answers")
    # decoder post-training where the plan has it; self-training's drawing where the preset can (a measured plan may
    # self-train where this one, the reference rates', does not)
    assert options[0]["decoder"] and options[0]["self_draw"]
    assert demo.calibrate(tmp_path, plan, log=lambda s: None) == first and len(calls) == 1  # from the cache
    unselfed = DemoPlan(**{**plan.__dict__, "self_prompts": 0, "self_steps": 0, "decoder_images": 0,
                           "decoder_steps": 0})
    demo.calibrate(tmp_path, unselfed, log=lambda s: None)
    assert len(calls) == 2 and options[1]["self_draw"] and not options[1]["decoder"]
    demo.calibrate(tmp_path, DemoPlan(**{**unselfed.__dict__, "preset": "raster-tiny"}), log=lambda s: None)
    assert len(calls) == 3 and not options[2]["self_draw"]
    other = DemoPlan(**{**plan.__dict__, "examples_per_step": 8})  # another batch is another step
    demo.calibrate(tmp_path, other, log=lambda s: None)
    demo.calibrate(tmp_path, plan, again=True, log=lambda s: None)
    assert len(calls) == 5
    from omniar.omni import model as omni_model  # a changed preset (same name, other config) is another step

    monkeypatch.setitem(omni_model.OMNI_PRESETS, plan.preset, {**omni_model.OMNI_PRESETS[plan.preset], "patch": 8})
    demo.calibrate(tmp_path, plan, log=lambda s: None)
    assert len(calls) == 6


def test_demo_with_speech_trains_a_codec_and_reports_speech(tmp_path):
    """The AR-Omni demo: ar-omni-tiny over a raster tokenizer, a speech codec, speech tasks in every stage, and the
    benchmark and report covering text-to-speech, recognition and spoken questions."""
    plan = DemoPlan(**{**TINY.__dict__, "preset": "ar-omni-tiny", "speech": True, "codec_steps": 2,
                       "decoder_images": 0, "decoder_steps": 0, "self_prompts": 0, "self_steps": 0,
                       "codec_utterances": 8})
    report = run_demo(tmp_path / "demo", plan, progress=False, log=lambda s: None)
    assert list(report["steps"])[:5] == ["data", "text-tokenizer", "image-tokenizer", "speech-codec", "train-stage1"]
    for task in ("tts", "asr", "svqa"):
        assert report["scores"][task]["count"] == 4
    model = OmniModel.from_pretrained(report["checkpoint"])
    assert model.speech_codec is not None and model.scales == (8,) and model.config.preset == "ar-omni-tiny"
    page = (tmp_path / "demo" / "report.html").read_text()
    assert page.count("<audio controls") >= 4 and "Speech recognition" in page


def test_speech_stages_mix_the_speech_tasks_in():
    from omniar.omni.train import STAGES, with_speech

    stages = with_speech(STAGES, share=0.3)
    assert stages.pop("relations") == STAGES["relations"]  # the curriculum stays one (and the speech demo skips it)
    assert stages.pop("edits") == STAGES["edits"]  # so does a stage that holds parameters fixed
    assert stages.pop("answers") == STAGES["answers"]
    for i, (name, recipe) in enumerate(stages.items()):
        speech = {t: w for t, w in recipe.tasks.items() if t in ("tts", "asr", "svqa")}
        assert sum(speech.values()) == pytest.approx(0.3) and sum(recipe.tasks.values()) == pytest.approx(1.0)
        assert ("svqa" in speech) == (i > 0)  # spoken questions once the model has learnt to read images
        others = {t: w for t, w in recipe.tasks.items() if t not in speech}
        base = STAGES[name].tasks
        assert others == pytest.approx({t: 0.7 * w / sum(base.values()) for t, w in base.items()})
        assert recipe.reweight.tail == 4 and recipe.reweight.tail_weight == 2.0  # AR-Omni's reweighting
    assert with_speech(STAGES, reweight=None)["stage2"].reweight == STAGES["stage2"].reweight
    assert DemoPlan.for_budget(45, speech=True).codec_steps == 1296
    assert sum(DemoPlan.for_budget(45, speech=True).stage_steps.values()) < sum(
        DemoPlan.for_budget(45).stage_steps.values())
    assert "relations" not in DemoPlan.for_budget(90, speech=True).stage_steps


def test_demo_plan_prints_each_part_and_trains_nothing(tmp_path, monkeypatch, capsys):
    from omniar import demo
    from omniar.cli import main
    from omniar.demo import budget_for_after_stages

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("--plan trained"))
    main(["demo", "--out", str(tmp_path / "demo"), "--plan", "--step-seconds", "2.1", "2.48", "2.48"])
    out = capsys.readouterr().out
    plan = DemoPlan.for_budget(45, step_seconds={"stage1": 2.1, "stage2": 2.48, "stage3": 2.48})
    rows = plan.schedule()
    for part, steps, seconds in rows:
        assert f"| {part} | {'' if steps is None else steps} | {seconds / 60:.1f} |" in out
    assert f"| total | | {sum(s for *_, s in rows) / 60:.1f} |" in out
    assert "(the step times given;" in out  # not "timed here": nothing was
    assert not (tmp_path / "demo").exists()
    # at these step times the plan holds no relations or edits stage: it says so, and which budget would hold them
    more = budget_for_after_stages(45, plan.step_seconds)
    assert "[demo] the relations and edits stages do not fit 45 minutes at these step times: answers, captions " \
           "and edits stay what the mixed stages leave (as on an AVX2 EPYC: BENCHMARKS.md \"Demo\"); --budget " \
           f"{more:g} holds them" in out
    assert "answers" not in plan.stage_steps  # too few steps for it too
    # at an AVX2 EPYC's step times the answers stage comes in their place
    main(["demo", "--out", str(tmp_path / "demo"), "--plan", "--step-seconds", "0.55", "0.86", "0.86", "0.46", "0.72"])
    out = capsys.readouterr().out
    assert "| answers | 600 |" in out and "decoder post-training" not in out
    assert "do not fit 45 minutes at these step times: the answers stage (the text expert alone) comes in their " \
           "place, so edits stay what the mixed stages leave" in out
    main(["demo", "--out", str(tmp_path / "demo"), "--plan", "--step-seconds", "0.32", "0.4", "0.4", "0.1", "0.3"])
    plan = DemoPlan.for_budget(45, step_seconds={"stage1": 0.32, "stage2": 0.4, "stage3": 0.4, "relations": 0.1,
                                                 "edits": 0.3})
    steps, edits = plan.stage_steps["relations"], plan.stage_steps["edits"]
    out = capsys.readouterr().out
    assert f"| relations | {steps} | {0.1 * steps / 60:.1f} |" in out
    assert f"| edits | {edits} | {0.3 * edits / 60:.1f} |" in out
    assert "do not fit" not in out
    with pytest.raises(SystemExit, match="3 to 5 times"):
        main(["demo", "--out", str(tmp_path / "demo"), "--plan", "--step-seconds", "2.1", "2.48"])
    # a run paces its stages unless told not to
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: calls.append(k) or {
        "scores": {}, "checkpoint": "m", "wall_seconds": 60.0})
    for flags in ([], ["--no-pace"]):
        main(["demo", "--out", str(tmp_path / "demo"), "--step-seconds", "0.55", "0.86", "0.86", *flags])
    assert [k["pace"] for k in calls] == [True, False]


def test_a_stage_stopped_by_ctrl_c_resumes_to_the_model_of_an_uninterrupted_run(tmp_path, monkeypatch):
    from omniar.omni import train

    plan = DemoPlan(**{**TINY.__dict__, "stage_steps": {"stage1": 2, "stage2": 3, "stage3": 1}, "eval_num": 1,
                       "heldout_num": 1, "self_prompts": 0, "self_steps": 0})
    straight = run_demo(tmp_path / "a", plan, cache=tmp_path / "cache-a", progress=False, log=lambda s: None)
    examples_for_step = train.examples_for_step

    def ctrl_c_in_stage2(recipe, step, *args, **kwargs):
        if recipe.tasks == train.STAGES["stage2"].tasks and step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return examples_for_step(recipe, step, *args, **kwargs)

    monkeypatch.setattr(train, "examples_for_step", ctrl_c_in_stage2)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "b", plan, cache=tmp_path / "cache-b", progress=False, log=lambda s: None)
    monkeypatch.undo()
    (stage2,) = (tmp_path / "cache-b").glob("train-stage2-*")
    assert json.loads((stage2 / "stage2" / "checkpoint" / "trainer.json").read_text())["step"] == 2
    assert not (stage2 / "done.json").exists()
    resumed = run_demo(tmp_path / "b", plan, cache=tmp_path / "cache-b", progress=False, log=lambda s: None)
    assert resumed["steps"]["train-stage1"]["cached"] and not resumed["steps"]["train-stage2"]["cached"]
    a = OmniModel.from_pretrained(straight["checkpoint"]).state_dict()
    b = OmniModel.from_pretrained(resumed["checkpoint"]).state_dict()
    assert all(a[k].equal(b[k]) for k in a)


def test_a_cached_step_counts_the_time_of_every_attempt(tmp_path, monkeypatch):
    """A step cut short and run again reports the time of both attempts, not only of the last."""
    from omniar import demo

    clock = iter([0.0, 30.0, 100.0, 112.5])  # attempt 1: 30 s, then Ctrl-C; attempt 2: 12.5 s
    monkeypatch.setattr(demo.time, "perf_counter", lambda: next(clock))
    store, calls = demo.Cache(tmp_path), []

    def build(d):
        calls.append(d)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {"steps": 3}

    with pytest.raises(KeyboardInterrupt):
        store.run("stage", {"a": 1}, build)
    d, summary, cached = store.run("stage", {"a": 1}, build)
    assert summary == {"steps": 3, "seconds": 42.5} and not cached and not (d / "spent.json").exists()
    assert store.run("stage", {"a": 1}, build)[1:] == (summary, True) and len(calls) == 2


def test_the_relations_and_edits_stages_run_last_where_the_plan_trains_long_enough():
    from omniar.demo import (
        AFTER_SHARE,
        EDIT_MIN_STEPS,
        EDIT_STEP_COST,
        EDIT_STEPS,
        RELATION_SHARE,
        RELATION_STEP_COST,
        RELATION_STEPS,
        _stages,
    )

    after = ("relations", "edits")
    # a plan at about the Zen 5 machine's step times: the stages pay for both in proportion (at the Intel machines'
    # 0.32 / 0.4 / 0.4 s the edits get 935 of their 1,000 steps)
    seconds = {"stage1": 0.3, "stage2": 0.35, "stage3": 0.35}
    plan = DemoPlan.for_budget(45, step_seconds=seconds, self_prompts=0)  # self-training's time: its own test
    paid = round(RELATION_STEPS * RELATION_STEP_COST)
    paid_edits = round(EDIT_STEPS * EDIT_STEP_COST)
    assert list(plan.stage_steps) == ["stage1", "stage2", "stage3", "relations", "edits"]
    mixed = sum(n for s, n in plan.stage_steps.items() if s not in after)
    assert plan.stage_steps == {**_stages(mixed, {}), "relations": RELATION_STEPS, "edits": EDIT_STEPS}
    assert sum(_stages(6000, {}).values()) - sum(n for s, n in _stages(6000).items() if s not in after) == (
        paid + paid_edits)
    # a timed step sets its stage's cost; a plan too short for one (a slow machine, or the speech demo) has none
    timed = DemoPlan.for_budget(45, step_seconds={**seconds, "relations": 0.1, "edits": 0.2}, self_prompts=0)
    mean = 0.45 * 0.3 + 0.55 * 0.35
    stages = sum(n for s, n in timed.stage_steps.items() if s not in after)
    assert stages - mixed == paid + paid_edits - round(RELATION_STEPS * 0.1 / mean) - round(EDIT_STEPS * 0.2 / mean)
    slow = DemoPlan.for_budget(45, step_seconds={"stage1": 1.6, "stage2": 2.0, "stage3": 2.0})
    assert not set(after) & set(slow.stage_steps)
    assert not set(after) & set(DemoPlan.for_budget(90, speech=True).stage_steps)
    # they train one side with the rest held: a dense preset has no understanding expert to hold
    assert not set(after) & set(DemoPlan.for_budget(45, step_seconds=seconds, preset="ar-omni-tiny").stage_steps)
    just = math.ceil(paid / RELATION_SHARE)  # the fewest training steps of which relations take at most their share
    assert "relations" not in _stages(just - 1) and _stages(just)["relations"] == RELATION_STEPS
    both = math.ceil((paid + paid_edits) / AFTER_SHARE)  # and with edits, at most theirs together
    assert _stages(both)["edits"] == EDIT_STEPS and _stages(both - 1)["edits"] == EDIT_STEPS - 1  # or fewer edits
    cheap = {"relations": 0.3, "edits": EDIT_STEP_COST}  # relations cheap enough to leave edits the margin
    least = math.ceil((RELATION_STEPS * 0.3 + EDIT_MIN_STEPS * EDIT_STEP_COST) / AFTER_SHARE)
    assert "edits" not in _stages(least - 1, cheap) and _stages(least, cheap)["edits"] == EDIT_MIN_STEPS
    assert _stages(least + 100, cheap)["edits"] == EDIT_MIN_STEPS + math.floor(100 * AFTER_SHARE / EDIT_STEP_COST)
    assert "edits" not in _stages(10**6, {"edits": 1.0})  # edits only after relations
    # and relations only with the edits stage after it: it moves the understanding path an edit reads its reference
    # by, and the edits stage is what fits the drawing to it again (timed costs at which relations would fit alone)
    costs = {"relations": 0.61, "edits": 0.95}
    alone = math.ceil(round(RELATION_STEPS * 0.61) / RELATION_SHARE)
    both = math.ceil((round(RELATION_STEPS * 0.61) + EDIT_MIN_STEPS * 0.95) / AFTER_SHARE)
    assert alone < both
    for train in (alone, both - 1):
        assert not set(after) & set(_stages(train, costs)) and sum(_stages(train, costs).values()) == train
    assert (_stages(both, costs)["relations"], _stages(both, costs)["edits"]) == (RELATION_STEPS, EDIT_MIN_STEPS)
    rows = {part: (steps, seconds) for part, steps, seconds in plan.schedule()}
    assert rows["relations"] == (RELATION_STEPS, pytest.approx(RELATION_STEPS * RELATION_STEP_COST * mean))
    assert rows["edits"] == (EDIT_STEPS, pytest.approx(EDIT_STEPS * EDIT_STEP_COST * mean))


def test_a_plan_without_the_stages_after_stage_3_finds_the_budget_that_holds_them():
    from omniar.demo import budget_for_after_stages

    after = {"relations", "edits"}
    # an AVX2 EPYC's timing (2026-12-06, BENCHMARKS.md "Demo"): 45 minutes hold neither stage
    slow = {"stage1": 0.55, "stage2": 0.86, "stage3": 0.86, "relations": 0.46, "edits": 0.72, "decoder": 0.045,
            "image-tokenizer": 0.21, "teacher": 0.08}  # 8 images: 0.37x of 32's 0.57
    more = budget_for_after_stages(45, slow)
    assert 45 < more < math.inf and more == int(more)
    assert after <= set(DemoPlan.for_budget(more, step_seconds=slow).stage_steps)
    assert "relations" not in DemoPlan.for_budget(more - 1, step_seconds=slow).stage_steps  # (the edits stage may be)
    assert not after & set(DemoPlan.for_budget(45, step_seconds=slow).stage_steps)
    fast = {"stage1": 0.3, "stage2": 0.35, "stage3": 0.35}
    assert budget_for_after_stages(45, fast) is None  # they fit already
    assert budget_for_after_stages(45, fast, preset="ar-omni-tiny") is None  # the preset holds no und expert
    assert budget_for_after_stages(45, {name: 12 * s for name, s in fast.items()}) == math.inf  # none up to 10x


def test_a_plan_without_self_training_finds_the_budget_that_holds_it(tmp_path, capsys):
    from omniar.cli import main
    from omniar.demo import budget_for_after_stages, budget_for_self_training

    # an Intel machine's timing: 45 minutes hold the relations and edits stages only without it
    xeon = {"stage1": 0.32, "stage2": 0.35, "stage3": 0.35, "relations": 0.29, "edits": 0.41,
            "image-tokenizer": 0.08, "teacher": 0.04, "decoder": 0.025, "self-draw": 0.05}
    more = budget_for_self_training(45, xeon)
    assert 45 < more < math.inf and more == int(more)
    assert DemoPlan.for_budget(more, step_seconds=xeon).self_prompts > 0
    assert DemoPlan.for_budget(more - 1, step_seconds=xeon).self_prompts == 0
    assert budget_for_self_training(more, xeon) is None  # it fits already
    assert budget_for_self_training(45, xeon, self_prompts=0) is None  # not asked for
    assert budget_for_self_training(45, xeon, preset="ar-omni-tiny") is None  # the preset cannot
    assert budget_for_self_training(45, {name: 12 * s for name, s in xeon.items()}) == math.inf  # none up to 10x
    # `omniar demo --plan` says so (an AVX2 EPYC's step times: neither the two stages nor self-training)
    main(["demo", "--out", str(tmp_path / "demo"), "--plan", "--step-seconds", "0.55", "0.86", "0.86", "0.46", "0.72"])
    out = capsys.readouterr().out
    assert "self-training" not in out.split("[demo] the plan")[1].split("| total")[0]  # no row for it
    more = budget_for_self_training(45, {"stage1": 0.55, "stage2": 0.86, "stage3": 0.86, "relations": 0.46,
                                         "edits": 0.72})
    assert more > budget_for_after_stages(45, {"stage1": 0.55, "stage2": 0.86, "stage3": 0.86, "relations": 0.46,
                                              "edits": 0.72})  # the two stages first
    assert ("[demo] self-training does not fit 45 minutes beside the relations and edits stages at these step times "
            f"(they come first; text-to-image stays what the stages leave); --budget {more:g} holds it; "
            "--self-prompts N asks for it anyway") in out


def test_where_neither_stage_after_stage_3_fits_the_answers_stage_takes_the_decoder_post_trainings_time():
    from omniar.demo import ANSWER_SHARE, ANSWER_STEPS, RELATION_STEP_COST, _decoder_seconds, _mean_step

    after = {"relations", "edits"}
    # an AVX2 EPYC's timing (2026-12-06, BENCHMARKS.md "Demo"): 45 minutes hold neither stage
    slow = {"stage1": 0.55, "stage2": 0.86, "stage3": 0.86, "relations": 0.46, "edits": 0.72, "decoder": 0.045,
            "image-tokenizer": 0.21, "teacher": 0.08}  # 8 images: 0.37x of 32's 0.57
    plan = DemoPlan.for_budget(45, step_seconds=slow)
    assert plan.stage_steps["answers"] == ANSWER_STEPS and not after & set(plan.stage_steps)
    assert plan.decoder_images == plan.decoder_steps == 0
    # its time is the decoder post-training's and, where that is short, the stages' (timed as the relations stage)
    kept = DemoPlan.for_budget(45, step_seconds=slow, decoder_images=5008)  # the decoder's images, given: kept
    assert kept.decoder_images == 5008 and kept.stage_steps["answers"] == ANSWER_STEPS
    rows = dict((part, seconds) for part, _, seconds in plan.schedule())
    assert rows["answers"] == pytest.approx(ANSWER_STEPS * 0.46)
    mixed = {s: plan.stage_steps[s] for s in ("stage1", "stage2", "stage3")}
    mixed_kept = {s: kept.stage_steps[s] for s in ("stage1", "stage2", "stage3")}
    freed = sum(mixed.values()) - sum(mixed_kept.values())
    assert abs(freed * _mean_step(slow) - _decoder_seconds(5008, slow)) <= 2 * _mean_step(slow)
    assert sum(rows.values()) == pytest.approx(sum(seconds for *_, seconds in kept.schedule()), abs=2)
    # whole or absent: at most its share of the training time (20 minutes: none, and decoder post-training stays)
    short = DemoPlan.for_budget(20, step_seconds=slow)
    assert "answers" not in short.stage_steps and short.decoder_images > 0
    train = sum(short.stage_steps.values()) + short.decoder_images * slow["decoder"] / _mean_step(slow)
    assert ANSWER_STEPS * slow["relations"] / _mean_step(slow) > ANSWER_SHARE * train
    # untimed, a step costs what a relations step does where not timed
    untimed = DemoPlan.for_budget(45, step_seconds={k: v for k, v in slow.items() if k not in after})
    assert dict((p, s) for p, _, s in untimed.schedule())["answers"] == pytest.approx(
        ANSWER_STEPS * RELATION_STEP_COST * _mean_step(slow))
    # where the two stages fit, or the preset has no und expert to hold, nothing changes
    fast = DemoPlan.for_budget(45, step_seconds={"stage1": 0.3, "stage2": 0.35, "stage3": 0.35})
    assert after <= set(fast.stage_steps) and "answers" not in fast.stage_steps and fast.decoder_images > 0
    dense = DemoPlan.for_budget(45, step_seconds=slow, preset="ar-omni-tiny")
    assert "answers" not in dense.stage_steps
    assert "answers" not in DemoPlan.for_budget(45).stage_steps  # the reference rates' plan keeps its own


def test_where_the_relations_stage_does_not_fit_the_edits_stage_may_follow_the_answers_stage(tmp_path, capsys):
    from omniar.cli import main
    from omniar.demo import (
        ANSWER_EDIT_SHARE,
        ANSWER_STEPS,
        EDIT_MIN_STEPS,
        EDIT_STEPS,
        _after_cost,
        budget_for_after_stages,
    )

    # a Zen 4 EPYC's timing (2026-12-08, BENCHMARKS.md "Demo"): 45 minutes fall short of the relations stage
    zen4 = {"stage1": 0.42, "stage2": 0.44, "stage3": 0.44, "relations": 0.34, "edits": 0.51, "answers": 0.29,
            "decoder": 0.035, "self-draw": 0.064, "image-tokenizer": 0.11, "teacher": 0.05}
    plan = DemoPlan.for_budget(45, step_seconds=zen4)
    assert list(plan.stage_steps) == ["stage1", "stage2", "stage3", "answers", "edits"]  # trained in this order
    assert plan.stage_steps["answers"] == ANSWER_STEPS and EDIT_MIN_STEPS <= plan.stage_steps["edits"] < EDIT_STEPS
    assert plan.decoder_images == plan.decoder_steps == 0  # the answers stage's time, as before
    # the two take at most their share of the training time, and one more edits step would not fit it
    paid = {name: plan.stage_steps[name] * _after_cost(name, zen4) for name in ("answers", "edits")}
    train = sum(plan.stage_steps[s] for s in ("stage1", "stage2", "stage3")) + sum(paid.values())
    assert sum(paid.values()) <= ANSWER_EDIT_SHARE * train + 1
    assert sum(paid.values()) + _after_cost("edits", zen4) > ANSWER_EDIT_SHARE * train - 1
    # the answers stage alone, without it: its steps go back to the mixed stages
    alone = DemoPlan.for_budget(45, step_seconds={**zen4, "edits": 10.0})
    assert "edits" not in alone.stage_steps and alone.stage_steps["answers"] == ANSWER_STEPS
    mixed = sum(plan.stage_steps[s] for s in ("stage1", "stage2", "stage3"))
    assert sum(alone.stage_steps[s] for s in ("stage1", "stage2", "stage3")) - mixed == pytest.approx(
        paid["edits"], abs=3)
    assert budget_for_after_stages(45, zen4) == 48  # the budget that holds the relations stage (and edits after it)
    # the demo says so
    given = {s: zen4[s] for s in ("stage1", "stage2", "stage3", "relations", "edits")}
    main(["demo", "--out", str(tmp_path / "demo"), "--plan", "--step-seconds", *map(str, given.values())])
    out = capsys.readouterr().out
    edits = DemoPlan.for_budget(45, step_seconds=given).stage_steps["edits"]
    assert "| answers | 600 |" in out and f"| edits | {edits} |" in out
    assert "[demo] the relations stage does not fit 45 minutes at these step times: the answers stage (the text " \
           "expert alone) comes in its place, before the edits stage" in out
    assert not (tmp_path / "demo").exists()


def test_self_training_comes_last_where_the_plan_holds_the_stages_after_stage_3():
    from omniar.demo import (
        EDIT_STEP_COST,
        FIXED_SECONDS,
        MARGIN,
        SELF_DRAW_COST,
        SELF_LEAST,
        SELF_PROMPTS,
        SELF_SHARE,
        SELF_STEPS,
    )

    after = {"relations", "edits"}
    # a Zen 5's timing (BENCHMARKS.md "Demo"): the relations and edits stages fit with it, so it comes after them
    fast = {"stage1": 0.31, "stage2": 0.36, "stage3": 0.36, "relations": 0.24, "edits": 0.38, "image-tokenizer": 0.05,
            "teacher": 0.03, "decoder": 0.018, "self-draw": 0.03}
    plan = DemoPlan.for_budget(45, step_seconds=fast)
    without = DemoPlan.for_budget(45, step_seconds=fast, self_prompts=0)
    assert (plan.self_prompts, plan.self_steps) == (SELF_PROMPTS, SELF_STEPS) and after <= set(plan.stage_steps)
    rows = {part: (steps, seconds) for part, steps, seconds in plan.schedule()}
    own = SELF_PROMPTS * 0.03 + SELF_STEPS * 0.38
    assert list(rows)[-3:] == ["self-training", "benchmark", "data, text tokenizer, report"]
    assert rows["self-training"] == (SELF_STEPS, pytest.approx(own))
    # its time comes from the stages; the teacher and the image tokenizer keep theirs (and their cached products)
    assert (plan.tokenizer_steps, plan.teacher_steps) == (without.tokenizer_steps, without.teacher_steps)
    assert sum(without.stage_steps.values()) > sum(plan.stage_steps.values())
    for p in (plan, without):
        assert 45 * 60 * MARGIN - 0.4 < sum(seconds for *_, seconds in p.schedule()) <= 45 * 60 * MARGIN
    # in proportion to the budget where it fits
    assert DemoPlan.for_budget(90, step_seconds=fast).self_prompts == 2 * SELF_PROMPTS
    # dear drawings: fewer prompts and steps, in proportion, within its share of the time for the model
    model_time = 45 * 60 * MARGIN - FIXED_SECONDS - 100 * 0.36 - 8000 * 0.018
    dear = DemoPlan.for_budget(45, step_seconds={**fast, "self-draw": 0.12})
    fit = SELF_SHARE * model_time / (SELF_PROMPTS * 0.12 + SELF_STEPS * 0.38)
    assert SELF_LEAST < fit < 1 and dear.self_prompts == math.floor(fit * SELF_PROMPTS)
    assert dear.self_steps == math.floor(fit * SELF_STEPS)
    assert dear.self_prompts * 0.12 + dear.self_steps * 0.38 <= SELF_SHARE * model_time
    # below SELF_LEAST of them: none, and the plan is the one made without it
    none = DemoPlan.for_budget(45, step_seconds={**fast, "self-draw": 2.0})
    assert none.self_prompts == none.self_steps == 0
    assert none == DemoPlan.for_budget(45, step_seconds={**fast, "self-draw": 2.0}, self_prompts=0)
    # the relations and edits stages come first: an Intel machine's timing, where they fit only without it
    xeon = {"stage1": 0.32, "stage2": 0.35, "stage3": 0.35, "relations": 0.29, "edits": 0.41,
            "image-tokenizer": 0.08, "teacher": 0.04, "decoder": 0.025, "self-draw": 0.05}
    plan = DemoPlan.for_budget(45, step_seconds=xeon)
    assert plan.self_prompts == 0 and after <= set(plan.stage_steps)
    assert plan == DemoPlan.for_budget(45, step_seconds=xeon, self_prompts=0)
    assert DemoPlan.for_budget(60, step_seconds=xeon).self_prompts > 0  # a longer budget holds all three
    # an AVX2 EPYC's: neither; asked for, it comes anyway (its time from the stages; untimed drawings in stage steps)
    slow = {"stage1": 0.55, "stage2": 0.86, "stage3": 0.86, "relations": 0.46, "edits": 0.72, "decoder": 0.045,
            "image-tokenizer": 0.21, "teacher": 0.08}  # 8 images: 0.37x of 32's 0.57
    assert DemoPlan.for_budget(45, step_seconds=slow).self_prompts == 0
    asked = DemoPlan.for_budget(45, step_seconds=slow, self_prompts=500)
    assert (asked.self_prompts, asked.self_steps) == (500, round(SELF_STEPS * 500 / SELF_PROMPTS))
    assert dict((p, s) for p, _, s in asked.schedule())["self-training"] == pytest.approx(
        500 * SELF_DRAW_COST * 0.86 + asked.self_steps * 0.72)
    # the reference rates: where they hold the stages after stage 3 (90 minutes), in stage steps
    reference = DemoPlan.for_budget(90)
    assert reference.self_prompts == 2 * SELF_PROMPTS and after <= set(reference.stage_steps)
    unselfed = DemoPlan.for_budget(90, self_prompts=0)
    paid = round(SELF_DRAW_COST * 6000 + EDIT_STEP_COST * 800)
    assert sum(unselfed.stage_steps.values()) - sum(reference.stage_steps.values()) in range(paid - 2, paid + 3)
    assert DemoPlan.for_budget(45).self_prompts == 0
    # presets that cannot: raster drawings, no und expert to hold, speech
    for kw in ({"preset": "raster-tiny"}, {"preset": "ar-omni-tiny"}, {"preset": "ar-omni-tiny", "speech": True}):
        assert DemoPlan.for_budget(90, **kw).self_prompts == 0
    with pytest.raises(ValueError, match="needs both"):
        DemoPlan(self_prompts=10)
    with pytest.raises(ValueError, match="raster-tiny decodes raster tokens, has no und expert or speaks"):
        DemoPlan(preset="raster-tiny", self_prompts=10, self_steps=2)


def test_the_report_says_what_the_calibration_timed():
    from omniar.omni.report import _sizing

    assert _sizing({"step_seconds": {"stage1": 0.32, "decoder": 0.018, "self-draw": 0.03}}) == (
        "stages sized by what was timed on this machine: stage1 0.32 s a step, decoder 0.018 s an image, self-draw "
        "0.03 s a prompt")
    assert _sizing({"step_seconds": None}) == "steps from the reference machine's rates"
    assert _sizing({"step_seconds": {"stage1": 0.32}}, [{"before": "stage2", "pace": 1.2, "steps": {
        "stage2": [800, 650], "stage3": [300, 244]}}]) == (
        "stages sized by what was timed on this machine: stage1 0.32 s a step; paced to end on time - before stage2 "
        "(stages at 1.2x their timing): stage2 800 -&gt; 650, stage3 300 -&gt; 244 steps")


def test_pacing_gives_the_stages_left_the_time_the_plan_has_left():
    """A measured plan re-planned as it runs: parts on time leave the steps as they are; a stage that ran slower
    (faster) than its timing makes the stages after it shorter (longer), so that at that pace the timed parts end
    when the plan said, within PACE_LIMITS."""
    from omniar.demo import PACE_LIMITS, pace_stages

    seconds = {"stage1": 0.59, "stage2": 0.64, "stage3": 0.64, "relations": 0.48, "image-tokenizer": 0.18,
               "teacher": 0.11}
    plan = DemoPlan.for_budget(45, step_seconds=seconds)
    assert "answers" in plan.stage_steps  # a whole stage after the three: its time is forecast, not cut
    rows = {part: s for part, n, s in plan.schedule() if n is not None}
    target = sum(rows.values())
    on_time = {"image tokenizer": rows["image tokenizer"], "teacher": rows["teacher"]}
    assert pace_stages(plan, on_time) == (plan.stage_steps, 1.0)
    # the teacher took 60 s more: the three stages give them back, in proportion
    late, pace = pace_stages(plan, {**on_time, "teacher": rows["teacher"] + 60})
    assert pace == 1.0 and late["answers"] == plan.stage_steps["answers"]
    saved = sum((plan.stage_steps[n] - late[n]) * seconds[n] for n in ("stage1", "stage2", "stage3"))
    assert abs(saved - 60) <= 3 * 0.64

    for slow in (1.2, 0.8):  # stage 1 ran at this many times its timed step
        spent = {**on_time, "stage1": slow * rows["stage1"]}
        steps, pace = pace_stages(plan, spent)
        assert pace == pytest.approx(slow) and steps["stage1"] == plan.stage_steps["stage1"]
        assert (steps["stage2"] < plan.stage_steps["stage2"]) == (slow > 1) and steps["answers"] == 600
        assert steps["stage2"] / plan.stage_steps["stage2"] == pytest.approx(
            steps["stage3"] / plan.stage_steps["stage3"], abs=0.01)
        forecast = sum(spent.values()) + slow * (steps["stage2"] * 0.64 + steps["stage3"] * 0.64 + rows["answers"])
        assert abs(forecast - target) <= slow * 0.64  # half a step of each stage left: rounding
        # and stage 2 at that pace too: stage 3 alone takes what is left
        ran = {**spent, "stage2": slow * steps["stage2"] * 0.64}
        last, _ = pace_stages(plan, ran, steps)
        assert last["stage2"] == steps["stage2"] and abs(last["stage3"] - steps["stage3"]) <= 1
        assert pace_stages(plan, {**ran, "stage3": 1.0}, last) == (last, 1.0)

    # a machine far slower or faster than its timing: the stages left shrink or grow at most PACE_LIMITS of the plan's
    # steps, however often they are paced
    crawl, _ = pace_stages(plan, {**on_time, "stage1": 5 * rows["stage1"]})
    fly, _ = pace_stages(plan, {**on_time, "stage1": 0.1 * rows["stage1"]})
    for n in ("stage2", "stage3"):
        assert crawl[n] == round(PACE_LIMITS[0] * plan.stage_steps[n])
        assert fly[n] == round(PACE_LIMITS[1] * plan.stage_steps[n])
    slower, _ = pace_stages(plan, {**on_time, "stage1": 5 * rows["stage1"], "stage2": 1e4}, crawl)
    assert slower["stage3"] == crawl["stage3"]
    with pytest.raises(ValueError, match="only a measured plan"):
        pace_stages(DemoPlan.for_budget(45), on_time)


def test_a_paced_demo_trains_what_its_time_allows_and_a_second_run_plans_the_same(tmp_path):
    """A measured plan whose steps were timed far too fast: before stage 1 the image tokenizer has taken the
    stages' time, so they train a quarter of their steps (PACE_LIMITS); the report says so, and a second run, its
    parts from the cache, paces the same from their recorded seconds; without pacing, the planned steps."""
    timed = DemoPlan(**{**TINY.__dict__, "stage_steps": {"stage1": 4, "stage2": 4, "stage3": 8}, "eval_num": 1,
                        "heldout_num": 1, "decoder_images": 0, "decoder_steps": 0, "self_prompts": 0,
                        "self_steps": 0, "step_seconds": {"stage1": 1e-6, "stage2": 1e-6, "stage3": 1e-6}})
    lines = []
    report = run_demo(tmp_path / "demo", timed, progress=False, log=lines.append)
    ran = [report["steps"][f"train-stage{i}"]["steps"] for i in (1, 2, 3)]
    assert ran == [1, 1, 2] and report["plan"]["stage_steps"] == {"stage1": 1, "stage2": 1, "stage3": 2}
    assert report["paced"] == [{"before": "stage1", "pace": 1.0, "steps": {
        "stage1": [4, 1], "stage2": [4, 1], "stage3": [8, 2]}}]
    assert any(line.startswith("[demo] pacing:") and "stage3 8 -> 2 steps" in line for line in lines)
    assert timed.stage_steps == {"stage1": 4, "stage2": 4, "stage3": 8}  # the caller's plan is left as it was
    assert "paced to end on time - before stage1" in (tmp_path / "demo" / "report.html").read_text()

    again = run_demo(tmp_path / "demo", timed, progress=False, log=lambda s: None)
    assert all(s["cached"] for name, s in again["steps"].items() if name != "benchmark")
    assert again["paced"] == report["paced"]
    fixed = run_demo(tmp_path / "demo", timed, progress=False, log=lambda s: None, pace=False)
    assert [fixed["steps"][f"train-stage{i}"]["steps"] for i in (1, 2, 3)] == [4, 4, 8] and fixed["paced"] == []
    assert fixed["steps"]["image-tokenizer"]["cached"]
