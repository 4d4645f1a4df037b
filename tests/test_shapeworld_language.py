"""ShapeWorld prompts: text <-> structure, scenes that satisfy them, and the GenEval-style judge."""

import random

import pytest

from omniar.data.shapeworld import render
from omniar.data.shapeworld.judge import prompt_satisfied, relation_holds, score_images
from omniar.data.shapeworld.language import KINDS, Phrase, Prompt, parse_prompt
from omniar.data.shapeworld.scene import Obj
from omniar.data.shapeworld.tasks import sample_prompt, scene_for_prompt


def test_prompt_text_round_trips_for_every_kind():
    rng = random.Random(0)
    for kind in KINDS:
        for _ in range(30):
            p = sample_prompt(rng, kind)
            assert p.kind == kind and parse_prompt(p.text) == p


@pytest.mark.parametrize("text, kind", [
    ("a big red circle", "single_object"), ("a red circle.", "colors"), ("Three green triangles", "counting"),
    ("a red circle and a blue square", "two_object"), ("a red star and a cyan star", "color_attr"),
    ("a pink square below a yellow circle", "position"),
])
def test_prompt_parser_reads_the_grammar(text, kind):
    assert parse_prompt(text).kind == kind


@pytest.mark.parametrize("text", ["a red", "two red circle", "a circle and", "a magenta circle", ""])
def test_prompt_parser_rejects_other_text(text):
    with pytest.raises(ValueError, match="ShapeWorld prompt|disagreement"):
        parse_prompt(text)


def test_judge_rules_on_hand_made_scenes():
    red_c, blue_s = Obj("circle", "red", "big", 0.2, 0.5), Obj("square", "blue", "small", 0.7, 0.5)
    assert relation_holds(red_c, blue_s, "left of") and not relation_holds(red_c, blue_s, "above")
    assert prompt_satisfied("a red circle left of a blue square", [red_c, blue_s])
    assert not prompt_satisfied("a red circle right of a blue square", [red_c, blue_s])
    assert prompt_satisfied("a big red circle", [red_c]) and not prompt_satisfied("a small red circle", [red_c])
    assert not prompt_satisfied("two red circles", [red_c])
    assert prompt_satisfied(Prompt("counting", (Phrase("circle", "red", count=2),)), [red_c, red_c])
    assert not prompt_satisfied("a red circle and a red circle", [red_c])  # two different objects are needed


def test_ground_truth_images_score_high_and_shuffled_prompts_low():
    rng = random.Random(11)
    prompts = [sample_prompt(rng) for _ in range(180)]
    images = [render(scene_for_prompt(p, rng)) for p in prompts]
    own = score_images([p.text for p in prompts], images)
    shuffled = score_images(prompts[1:] + prompts[:1], images)
    assert own["overall"] >= 0.99 and set(own) >= set(KINDS)
    assert shuffled["overall"] <= 0.15


def test_held_out_pairs_never_appear_in_prompts():
    held_out = {("red", "circle"), ("blue", "star"), ("green", "square")}
    rng = random.Random(3)
    for _ in range(2000):
        p = sample_prompt(rng, exclude=held_out)
        assert not any((ph.color, ph.shape) in held_out for ph in p.phrases), p.text


def test_answers_follow_from_the_scene():
    from omniar.data.shapeworld.judge import answer_correct, score_answers
    from omniar.data.shapeworld.scene import Scene
    from omniar.data.shapeworld.tasks import QA_KINDS, sample_qa

    scene = Scene([Obj("circle", "red", "big", 0.2, 0.5), Obj("square", "blue", "small", 0.8, 0.5)])
    rng = random.Random(0)
    seen = {}
    for _ in range(200):
        qa = sample_qa(scene, rng)
        seen[qa.kind] = qa
        expected = {"what color is the circle?": "red", "what shape is the blue object?": "square",
                    "how many circles are there?": "one", "is the red circle left of the blue square?": "yes",
                    "is the blue square left of the red circle?": "no", "is there a red circle?": "yes"}
        if qa.question in expected:
            assert qa.answer == expected[qa.question]
    assert set(seen) == set(QA_KINDS)
    assert answer_correct("The Red.", "red") and answer_correct("2", "two") and not answer_correct("blue", "red")
    assert score_answers(["yes", "no"], ["yes", "yes"]) == 0.5


def test_edits_are_consistent_and_the_edit_judge_can_fail():
    from omniar.data.shapeworld.judge import score_edits
    from omniar.data.shapeworld.scene import sample_scene
    from omniar.data.shapeworld.tasks import EDIT_KINDS, sample_edit

    rng = random.Random(5)
    edits = []
    for kind in EDIT_KINDS * 20:
        e = sample_edit(sample_scene(rng), rng, kind)
        if e is not None:
            edits.append(e)
    assert {e.kind for e in edits} == set(EDIT_KINDS)
    instructions = [e.instruction for e in edits]
    src, tgt = [render(e.source) for e in edits], [render(e.target) for e in edits]
    truth = score_edits(instructions, src, tgt)
    assert truth["satisfied"] == 1.0 and truth["preserved"] == 1.0
    unedited = score_edits(instructions, src, src)
    assert unedited["satisfied"] == 0.0 and unedited["preserved"] == 1.0
    assert score_edits(instructions[1:] + instructions[:1], src, tgt)["satisfied"] <= 0.1


def test_edits_that_leave_nothing_alone_are_preserved_only_trivially():
    """A remove in a one-object scene keeps every untouched object whatever is drawn; preserved_nontrivial leaves
    such edits out, so a model that wipes every scene scores 0 there while `preserved` counts the vacuous ones."""
    from omniar.data.shapeworld.judge import edit_outcome, score_edits
    from omniar.data.shapeworld.scene import Scene

    star = Obj("star", "red", "big", 0.3, 0.3)
    circle = Obj("circle", "blue", "small", 0.7, 0.7)
    one, two, empty = Scene([star]), Scene([star, circle]), Scene([])
    assert edit_outcome("remove the red star", [star], []) == (True, True, 0)
    assert edit_outcome("remove the red star", [star, circle], []) == (True, False, 1)
    assert edit_outcome("remove the red star", [star, circle], [circle]) == (True, True, 1)
    wiped = score_edits(["remove the red star"] * 2, [render(one), render(two)], [render(empty)] * 2)
    assert wiped["satisfied"] == 1.0 and wiped["preserved"] == 0.5 and wiped["preserved_nontrivial"] == 0.0
    kept = score_edits(["remove the red star"], [render(two)], [render(Scene([circle]))])
    assert kept["preserved"] == kept["preserved_nontrivial"] == 1.0
    assert score_edits(["remove the red star"], [render(one)], [render(empty)])["preserved_nontrivial"] is None


def test_captions_are_judged_against_the_scene():
    from omniar.data.shapeworld.judge import caption_correct

    objs = [Obj("circle", "red", "big", 0.2, 0.5), Obj("square", "blue", "small", 0.8, 0.5)]
    assert caption_correct("a red circle left of a blue square", objs)
    assert not caption_correct("a red circle right of a blue square", objs)
    assert not caption_correct("a purple elephant", objs)
