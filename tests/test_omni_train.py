"""Training an OmniModel on ShapeWorld: task mixing, resume == uninterrupted, recipe errors, the relations curriculum,
parameters held for a stage."""

import dataclasses
import random
import re

import numpy as np
import pytest
import torch

from omniar.omni.model import OmniModel
from omniar.omni.train import (
    SHARED,
    STAGES,
    UNDERSTANDING,
    Recipe,
    RelationCurriculum,
    examples_for_step,
    shapeworld_example,
    train_omni,
    with_speech,
)
from tests.test_omni_model import tiny_model

TINY = dict(tasks={"t2i": 1, "caption": 1, "vqa": 1, "edit": 1, "text": 1}, examples_per_step=4, steps=6, lr=2e-3,
            warmup=2)


def answer(question, objs):
    """An answerer of our own for the five question forms."""
    from omniar.data.shapeworld.judge import relation_holds
    from omniar.data.shapeworld.tasks import NUMBER_WORDS

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
    with pytest.raises(ValueError, match="decay_steps"):
        Recipe(decay_steps=0)


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
    from omniar.data.shapeworld.dataset import make_sample, mentions_held_out, more_questions
    from omniar.data.shapeworld.scene import Scene

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


def test_the_relations_curriculum_brings_in_one_relation_at_a_time():
    """Its phases against the rule written out, over the steps and the per-question draws."""
    cur, draws = RelationCurriculum(above=20, mirrors=40, full=70), np.arange(1000) / 1000
    for step in range(101):
        asked = [cur.relations(step, d) for d in draws]
        if step < 20:
            assert set(asked) == {("left of",)}
        elif step < 40:
            assert set(asked) == {("left of", "above")}
        else:
            mirrored = sum(r == ("right of", "below") for r in asked) / len(asked)
            assert set(asked) <= {("left of", "above"), ("right of", "below")}
            assert mirrored == pytest.approx(0.5 * min(1.0, (step - 40) / 30), abs=1.5e-3), step
    for bad in (dict(above=50, mirrors=40), dict(mirrors=2000), dict(above=-1)):
        with pytest.raises(ValueError, match="phases"):
            RelationCurriculum(**bad)


def test_a_relations_recipe_asks_position_questions_of_its_phase():
    """Each vqa example asks one question of the phase's relations, free of held-out pairs, about its own scene
    (the sample's, or the next one with such a pair: found by its render), answered right; the draws of tasks and
    samples are the plain recipe's."""
    from omniar.data.shapeworld.dataset import make_sample, mentions_held_out
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene
    from omniar.data.shapeworld.tasks import sample_qa

    question = re.compile(r"is the \w+ \w+ (.+) the \w+ \w+\?")
    recipe = dataclasses.replace(STAGES["relations"], tasks={"vqa": 3, "t2i": 1}, steps=100, examples_per_step=12,
                                 questions=1, relations=RelationCurriculum(above=20, mirrors=40, full=70))
    seen = set()
    phases = ((0, {"left of"}), (30, {"left of", "above"}), (99, {"left of", "above", "right of", "below"}))
    for step, allowed in phases:
        examples = examples_for_step(recipe, step, 32)
        plain = examples_for_step(dataclasses.replace(recipe, relations=None), step, 32)
        assert [x.task for x in examples] == [x.task for x in plain] and "vqa" in {x.task for x in plain}
        for ex, base in zip(examples, plain):
            if ex.task != "vqa":
                assert ex.text == base.text and np.array_equal(ex.image, base.image)
                continue
            m = question.fullmatch(ex.text)
            assert m and m[1] in allowed and ex.turns == () and not mentions_held_out(ex.text), ex.text
            seen.add(m[1])
    assert {"left of", "above"} < seen  # and a mirror by the last phase
    for i in range(40):
        relations = (("left of",), ("above", "below"))[i % 2]
        ex = shapeworld_example("vqa", i, 32, relations=relations)
        assert question.fullmatch(ex.text)[1] in relations
        scenes = (Scene.from_dict(make_sample("train", j)["scene"]) for j in range(i, i + 100))
        scene = next(sc for sc in scenes if np.array_equal(render(sc, 32), ex.image))
        assert ex.answer == answer(ex.text, scene.objects), ex.text
    with pytest.raises(ValueError, match="unknown relation"):
        sample_qa(Scene([]), random.Random(0), "position", ("beside",))
    assert with_speech(STAGES)["relations"] == STAGES["relations"]


def test_a_recipe_can_hold_parameters_fixed_for_its_stage(tmp_path):
    """Frozen parameters stay bit for bit what they were (no update, no weight decay) and train again after."""
    model = tiny_model(seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recipe = Recipe(**{**TINY, "steps": 3}, freeze=("decoder.embed.*", "decoder.blocks.*_norm.*"))
    train_omni(model, tmp_path / "a", recipe, progress=False)
    after = dict(model.named_parameters())
    norm = re.compile(r"decoder\.blocks\.\d+\.\w+_norm\..*")
    frozen = [n for n in before if n.startswith("decoder.embed.") or norm.fullmatch(n)]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    rest = [n for n in after if n.startswith("decoder.blocks.") and n not in frozen]
    assert any(not torch.equal(before[n], after[n]) for n in rest)  # the rest trained
    assert all(p.requires_grad for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="name none of the model's trainable parameters"):
        train_omni(model, tmp_path / "b", Recipe(**TINY, freeze=("decoder.embeddings.*",)), progress=False)
    # {name} stands for the index of the expert of that name (experts text, und, gen: und is 1)
    model = tiny_model(seed=2, expert_attention=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_omni(model, tmp_path / "c", Recipe(**{**TINY, "steps": 3}, freeze=SHARED + UNDERSTANDING), progress=False)
    after = dict(model.named_parameters())
    und = [n for n in after if re.search(r"\.(qkv|o|experts)\.1\.", n) or n.startswith("patch_embed.")]
    assert und and all(torch.equal(before[n], after[n]) for n in und)
    assert any(not torch.equal(before[n], after[n]) for n in after if re.search(r"\.experts\.0\.", n))
    # the relations stage holds only what every task shares: its answers teach the text expert and the
    # understanding path, and text-to-image, which reads neither, draws what it drew
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_omni(model, tmp_path / "r", Recipe(**{**TINY, "steps": 3, "tasks": {"vqa": 1}},
                                             freeze=STAGES["relations"].freeze), progress=False)
    after = dict(model.named_parameters())
    shared = [n for n in after if n.startswith(("decoder.embed.", "decoder.norm.")) or norm.fullmatch(n)]
    assert shared and all(torch.equal(before[n], after[n]) for n in shared)
    for expert in (0, 1):  # text, und
        assert any(not torch.equal(before[n], after[n]) for n in after
                   if re.search(rf"\.experts\.{expert}\.", n))
    # the edits stage holds the text expert too (answers and captions stay), and the generation side learns
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # (captions beside the edits: they would train the text expert if it were not held)
    train_omni(model, tmp_path / "e", Recipe(**{**TINY, "steps": 3, "examples_per_step": 8,
                                                "tasks": {"edit": 1, "caption": 1}},
                                             freeze=STAGES["edits"].freeze), progress=False)
    after = dict(model.named_parameters())
    held = [n for n in after if re.search(r"\.(qkv|o|experts)\.[01]\.", n) or n.startswith(("patch_embed.",
                                                                                              "decoder.embed."))]
    assert held and all(torch.equal(before[n], after[n]) for n in held)
    assert any(not torch.equal(before[n], after[n]) for n in after if re.search(r"\.experts\.2\.", n))
    # the answers stage holds the understanding path too: of its answers and captions only the text expert learns,
    # so an edit reads its reference as before and text-to-image draws what it drew
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    answers = STAGES["answers"]
    train_omni(model, tmp_path / "a2", Recipe(**{**TINY, "steps": 3, "tasks": answers.tasks}, freeze=answers.freeze),
               progress=False)
    after = dict(model.named_parameters())
    text = [n for n in after if re.search(r"\.(qkv|o|experts)\.0\.", n)]
    assert text and any(not torch.equal(before[n], after[n]) for n in text)
    assert all(torch.equal(before[n], after[n]) for n in after if n not in text)
    with pytest.raises(ValueError, match="freezes the vision expert, which this model does not have"):
        train_omni(model, tmp_path / "d", Recipe(**TINY, freeze=("decoder.blocks.*.experts.{vision}.*",)),
                   progress=False)


def test_a_relations_share_leaves_the_other_vqa_examples_their_own_questions():
    recipe = Recipe(tasks={"vqa": 1.0}, examples_per_step=400, steps=10, questions=2,
                    relations=RelationCurriculum(share=0.25))
    examples = examples_for_step(recipe, 9, 16)
    plain = examples_for_step(dataclasses.replace(recipe, relations=None), 9, 16)
    own = [a for a, b in zip(examples, plain) if (a.text, a.answer, a.turns) == (b.text, b.answer, b.turns)]
    assert 0.68 < len(own) / 400 < 0.82  # three quarters ask the sample's own questions (with its further ones)
    assert all(not x.turns for x in examples if not any(x is o for o in own))  # a relation question is asked alone
    with pytest.raises(ValueError, match="share"):
        RelationCurriculum(share=0.0)


def test_relation_examples_can_ask_a_shape_count_as_their_second_turn():
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    recipe = Recipe(tasks={"vqa": 1.0}, examples_per_step=400, steps=10, questions=1,
                    relations=RelationCurriculum(share=0.5, counts=0.5))
    examples = examples_for_step(recipe, 9, 16)
    without = examples_for_step(dataclasses.replace(recipe, relations=RelationCurriculum(share=0.5)), 9, 16)
    plain = examples_for_step(dataclasses.replace(recipe, relations=None), 9, 16)
    assert [x.text for x in examples] == [x.text for x in without]  # the first questions stay
    # relation questions (one may be the sample's own question too); own questions have no turns (questions=1)
    relation = [a for a, b in zip(examples, plain) if a.text != b.text or a.turns]
    assert 0.35 < len(relation) / 400 < 0.65 and all(not x.turns for x in without)
    counted = [x for x in relation if x.turns]
    assert 0.35 < len(counted) / len(relation) < 0.65 and all(len(x.turns) == 1 for x in counted)
    answers = [a for x in counted for q, a in x.turns]
    assert all(re.fullmatch(r"how many (circle|square|triangle|star)s are there\?", q) for x in counted
               for q, _ in x.turns)
    assert 0.1 < answers.count("zero") / len(answers) < 0.4  # a shape in the scene half of the time (71% "zero"
    # among the mixed stages' count questions)
    for i in range(30):  # the count is the scene's
        ex = shapeworld_example("vqa", i, 32, relations=("left of", "above"), count=True)
        scenes = (Scene.from_dict(make_sample("train", j)["scene"]) for j in range(i, i + 100))
        scene = next(sc for sc in scenes if np.array_equal(render(sc, 32), ex.image))
        (q, a), = ex.turns
        shape = re.fullmatch(r"how many (\w+)s are there\?", q)[1]
        assert a == ("zero", "one", "two", "three", "four")[sum(o.shape == shape for o in scene.objects)]
    with pytest.raises(ValueError, match="counts"):
        RelationCurriculum(counts=1.5)


def test_relation_examples_can_ask_a_colour_or_a_shape():
    """`bindings`: a share of the relation examples also asks the colour of a shape or the shape of a colour, which
    the scene answers; the first questions and the count turns stay those of the recipe without."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene

    recipe = Recipe(tasks={"vqa": 1.0}, examples_per_step=300, steps=10, questions=1,
                    relations=RelationCurriculum(share=1.0, counts=1.0, bindings=0.5))
    examples = examples_for_step(recipe, 9, 16)
    without = examples_for_step(dataclasses.replace(recipe, relations=RelationCurriculum(share=1.0, counts=1.0)), 9,
                                16)
    assert [x.text for x in examples] == [x.text for x in without]
    assert all(x.turns[:1] == w.turns for x, w in zip(examples, without))  # the count first
    bound = [x.turns[1][0] for x in examples if len(x.turns) == 2]
    assert 0.35 < len(bound) / 300 < 0.65 and all(len(x.turns) <= 2 for x in examples)
    colour = r"what color is the (circle|square|triangle|star)\?"
    kinds = [bool(re.fullmatch(colour, q)) for q in bound]
    assert 0.3 < np.mean(kinds) < 0.7  # colours and shapes alike
    assert all(k or re.fullmatch(r"what shape is the \w+ object\?", q) for k, q in zip(kinds, bound))
    for i in range(30):  # the answer is the scene's
        ex = shapeworld_example("vqa", i, 32, relations=("left of", "above"), bind=True)
        scenes = (Scene.from_dict(make_sample("train", j)["scene"]) for j in range(i, i + 100))
        scene = next(sc for sc in scenes if np.array_equal(render(sc, 32), ex.image))
        (q, a), = ex.turns
        if m := re.fullmatch(colour, q):
            assert [o.color for o in scene.objects if o.shape == m[1]] == [a]
        else:
            color = re.fullmatch(r"what shape is the (\w+) object\?", q)[1]
            assert [o.shape for o in scene.objects if o.color == color] == [a]
    with pytest.raises(ValueError, match="bindings"):
        RelationCurriculum(bindings=-0.1)


def test_relation_examples_can_ask_how_many_of_a_colour():
    """`colour_counts`: a share of the relation examples asks, as its last turn, how many objects of a colour there
    are, which the scene answers; the turns before stay those of the recipe without."""
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.data.shapeworld.render import render
    from omniar.data.shapeworld.scene import Scene
    from omniar.data.shapeworld.world import COLORS

    curriculum = RelationCurriculum(share=1.0, counts=1.0, bindings=1.0)
    recipe = Recipe(tasks={"vqa": 1.0}, examples_per_step=300, steps=10, questions=1,
                    relations=dataclasses.replace(curriculum, colour_counts=0.5))
    examples = examples_for_step(recipe, 9, 16)
    without = examples_for_step(dataclasses.replace(recipe, relations=curriculum), 9, 16)
    assert [x.text for x in examples] == [x.text for x in without]
    assert all(x.turns[:len(w.turns)] == w.turns for x, w in zip(examples, without))
    added = [x.turns[-1] for x, w in zip(examples, without) if len(x.turns) > len(w.turns)]
    assert 0.35 < len(added) / 300 < 0.65 and all(len(x.turns) <= len(w.turns) + 1 for x, w in zip(examples, without))
    pattern = rf"how many ({'|'.join(COLORS)}) objects are there\?"
    assert all(re.fullmatch(pattern, q) for q, _ in added)
    assert 0.2 < [a for _, a in added].count("zero") / len(added) < 0.75  # a colour in the scene half of the time
    for i in range(30):  # the count is the scene's
        ex = shapeworld_example("vqa", i, 32, relations=("left of", "above"), colour_count=True)
        scenes = (Scene.from_dict(make_sample("train", j)["scene"]) for j in range(i, i + 100))
        scene = next(sc for sc in scenes if np.array_equal(render(sc, 32), ex.image))
        (q, a), = ex.turns
        colour = re.fullmatch(pattern, q)[1]
        assert a == ("zero", "one", "two", "three", "four")[sum(o.color == colour for o in scene.objects)]
    with pytest.raises(ValueError, match="colour_counts"):
        RelationCurriculum(colour_counts=2)


def test_a_relations_stage_too_short_for_its_curriculum_says_so(tmp_path):
    """A stage that stops before its curriculum asks every relation warns (the model would stay at chance on the
    relations it never saw); one long enough trains silently."""
    import warnings

    model = tiny_model(seed=3)
    recipe = Recipe(**{**TINY, "steps": 2, "tasks": {"vqa": 1}},
                    relations=RelationCurriculum(above=1, mirrors=2, full=3))
    with pytest.warns(UserWarning, match="fully only from step 3 .* a stage of 2 steps stops before"):
        train_omni(model, tmp_path / "short", recipe, progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="this relations curriculum")
        train_omni(model, tmp_path / "long", dataclasses.replace(recipe, steps=3), progress=False)
