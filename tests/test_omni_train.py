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
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        Recipe(optimizer="sgd")


def test_shards_partition_the_step_with_balanced_work():
    recipe = Recipe(tasks={"t2i": 1, "vqa": 1, "edit": 1, "text": 1}, examples_per_step=16)
    whole = sorted((x.task, x.text) for x in examples_for_step(recipe, 5, 32))
    pieces = [examples_for_step(recipe, 5, 32, shard=i, shards=3) for i in range(3)]
    assert sorted((x.task, x.text) for piece in pieces for x in piece) == whole
    cost = {"edit": 3.0, "t2i": 2.0, "vqa": 1.0, "text": 0.3}
    loads = [sum(cost[x.task] for x in piece) for piece in pieces]
    assert max(loads) - min(loads) <= 3.0  # greedy longest-first: within one example's work


def test_vqa_examples_ask_more_questions_about_the_same_scene():
    """Further questions are distinct, reproducible, answered by the scene and free of held-out pairs."""
    import re

    from omniar.data.shapeworld.dataset import make_sample, mentions_held_out, more_questions
    from omniar.data.shapeworld.judge import relation_holds
    from omniar.data.shapeworld.scene import Scene
    from omniar.data.shapeworld.tasks import NUMBER_WORDS

    def answer(question, objs):  # an answerer of our own for the five question forms
        if m := re.fullmatch(r"what color is the (\w+)\?", question):
            return [o.color for o in objs if o.shape == m[1]][0]
        if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
            return [o.shape for o in objs if o.color == m[1]][0]
        if m := re.fullmatch(r"how many (\w+) objects are there\?", question):
            return NUMBER_WORDS[sum(o.color == m[1] for o in objs)]
        if m := re.fullmatch(r"how many (\w+)s are there\?", question):
            return NUMBER_WORDS[sum(o.shape == m[1] for o in objs)]
        if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
            return "yes" if any((o.color, o.shape) == (m[1], m[2]) for o in objs) else "no"
        m = re.fullmatch(r"is the (\w+) (\w+) (.+) the (\w+) (\w+)\?", question)
        a, b = ([o for o in objs if (o.color, o.shape) == (m[i], m[i + 1])][0] for i in (1, 4))
        return "yes" if relation_holds(a, b, m[3]) else "no"

    asked = 0
    for i in range(100):
        s = make_sample("train", i)
        more = more_questions(s, 3)
        assert more == more_questions(s, 3) and more[:2] == more_questions(s, 2)
        questions = [s["question"]] + [q for q, _ in more]
        assert len(set(questions)) == len(questions)
        objs = Scene.from_dict(s["scene"]).objects
        for q, a in more:
            assert a == answer(q, objs), q
            assert not mentions_held_out(q)
        asked += len(more)
    assert asked >= 250
    ex = shapeworld_example("vqa", 0, 32, questions=4)
    assert len(ex.turns) == 3 and ex.turns == tuple(more_questions(make_sample("train", 0), 3))
    assert shapeworld_example("vqa", 0, 32).turns == ()
    with pytest.raises(ValueError, match="questions"):
        Recipe(questions=0)
