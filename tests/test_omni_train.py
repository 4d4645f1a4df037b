"""Training an OmniModel on ShapeWorld: task mixing, resume == uninterrupted, recipe errors."""

import pytest
import torch

from omniar.omni.model import OmniModel
from omniar.omni.train import Recipe, examples_for_step, shapeworld_example, train_omni
from tests.test_omni_model import tiny_model

TINY = dict(tasks={"t2i": 1, "caption": 1, "vqa": 1, "edit": 1, "text": 1}, examples_per_step=4, steps=6, lr=2e-3,
            warmup=2)


def test_examples_follow_the_ratios_and_are_a_function_of_the_step():
    recipe = Recipe(tasks={"t2i": 3, "vqa": 1}, examples_per_step=400)
    tasks = [ex.task for ex in examples_for_step(recipe, 0, side=32)[:400]]
    assert set(tasks) == {"t2i", "vqa"} and 0.68 < tasks.count("t2i") / 400 < 0.82
    a, b = examples_for_step(Recipe(**TINY), 3, 32), examples_for_step(Recipe(**TINY), 3, 32)
    assert [(x.task, x.text) for x in a] == [(x.task, x.text) for x in b]
    edit = shapeworld_example("edit", 0, 32)
    assert edit.source.shape == edit.image.shape == (32, 32, 3) and edit.text


def test_resume_equals_uninterrupted(tmp_path):
    whole = tiny_model(seed=1)
    log = train_omni(whole, tmp_path / "a", Recipe(**TINY), progress=False)
    part = tiny_model(seed=1)
    train_omni(part, tmp_path / "b", Recipe(**TINY), progress=False, until=3)
    resumed = OmniModel.from_pretrained(tmp_path / "b" / "checkpoint")
    train_omni(resumed, tmp_path / "b", Recipe(**TINY), progress=False)
    for (name, p), q in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert log and log[-1]["step"] == 6 and (tmp_path / "a" / "metrics.jsonl").is_file()


def test_recipe_errors():
    with pytest.raises(ValueError, match="unknown task"):
        Recipe(tasks={"draw": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        Recipe(tasks={"t2i": 0.0})


def test_shards_partition_the_step_with_balanced_work():
    recipe = Recipe(tasks={"t2i": 1, "vqa": 1, "edit": 1, "text": 1}, examples_per_step=16)
    whole = sorted((x.task, x.text) for x in examples_for_step(recipe, 5, 32))
    pieces = [examples_for_step(recipe, 5, 32, shard=i, shards=3) for i in range(3)]
    assert sorted((x.task, x.text) for piece in pieces for x in piece) == whole
    cost = {"edit": 3.0, "t2i": 2.0, "vqa": 1.0, "text": 0.3}
    loads = [sum(cost[x.task] for x in piece) for piece in pieces]
    assert max(loads) - min(loads) <= 3.0  # greedy longest-first: within one example's work
