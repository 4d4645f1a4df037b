"""Finite-state decoding: transitions on each marker, constrained vocabularies never violated (property test against
an independent oracle written from the rule table), greedy vs sampling per mode, mixed-mode batches."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniar.generation.fsm import DecodingRules, FiniteStateDecoder, JointVocab, Mode
from omniar.generation.sampling import SamplingParams

# a tiny joint id space: text 0..19 (markers among them), speech 20..29, image 30..37
M = dict(pad=0, eos=1, boi=2, eoi=3, boa=4, eoa=5, user=6, assistant=7, eot=8)
VOCAB = JointVocab(text=20, speech=range(20, 30), image=range(30, 38), markers=M)
N_IMAGE = 4


def oracle_allowed(mode: str, count: int) -> set[int]:
    """The rule table of omniar.generation.fsm, restated by hand."""
    text = set(range(20)) - {M["pad"], M["eoa"], M["eoi"]}
    if mode in ("instruction", "response"):
        return text
    if mode == "speech":
        return set(range(20, 30)) | ({M["eoa"]} if count >= 1 else set())
    if mode == "image":
        return set(range(30, 38)) if count < N_IMAGE else {M["eoi"]}
    return {M["pad"]}


def oracle_next(state: tuple, tok: int) -> tuple:
    mode, text_mode, count = state
    if mode == "done":
        return state
    if mode == "speech" and tok != M["eoa"]:
        return mode, text_mode, count + 1
    if mode == "image" and tok != M["eoi"]:
        return mode, text_mode, count + 1
    if tok in (M["eoa"], M["eoi"]):
        return text_mode, text_mode, 0
    if tok in (M["eos"], M["eot"]):
        return "done", text_mode, 0
    if tok == M["user"]:
        return "instruction", "instruction", 0
    if tok == M["assistant"]:
        return "response", "response", 0
    if tok == M["boa"]:
        return "speech", text_mode, 0
    if tok == M["boi"]:
        return "image", text_mode, 0
    return state


NAMES = {Mode.INSTRUCTION: "instruction", Mode.RESPONSE: "response", Mode.SPEECH: "speech", Mode.IMAGE: "image",
         Mode.DONE: "done"}


def fsm(batch=1, **kw):
    return FiniteStateDecoder(VOCAB, DecodingRules(image_tokens=N_IMAGE), batch=batch, **kw)


@pytest.mark.parametrize("tokens, mode", [
    ([M["assistant"]], Mode.RESPONSE), ([M["assistant"], M["user"]], Mode.INSTRUCTION),
    ([M["boa"]], Mode.SPEECH), ([M["boa"], 21, 22, M["eoa"]], Mode.INSTRUCTION),
    ([M["assistant"], M["boa"], 21, M["eoa"]], Mode.RESPONSE), ([M["boi"]], Mode.IMAGE),
    ([M["assistant"], M["boi"], 30, 31, 32, 33, M["eoi"]], Mode.RESPONSE), ([M["eos"]], Mode.DONE),
    ([M["assistant"], 9, 10, M["eot"]], Mode.DONE), ([9, 10, 11], Mode.INSTRUCTION),
])
def test_each_marker_moves_the_row_to_its_mode(tokens, mode):
    f = fsm()
    for t in tokens:
        f.advance(torch.tensor([t]))
    assert Mode(int(f.mode[0])) == mode


def test_a_full_image_forces_eoi_and_done_forces_pad():
    f = fsm(batch=2)
    f.advance(torch.tensor([M["boi"], M["eos"]]))
    for k in range(N_IMAGE):
        assert f.forced().tolist() == [-1, M["pad"]]
        f.advance(torch.tensor([30 + k, M["pad"]]))
    assert f.forced().tolist() == [M["eoi"], M["pad"]]
    token = f.step(torch.randn(2, VOCAB.size) * 10)  # whatever the logits say
    assert token.tolist() == [M["eoi"], M["pad"]]
    assert Mode(int(f.mode[0])) == Mode.INSTRUCTION


def test_a_token_outside_the_mode_is_an_error():
    f = fsm()
    f.advance(torch.tensor([M["boa"]]))
    with pytest.raises(ValueError, match="row 0 emitted token 9, which its mode SPEECH does not allow"):
        f.advance(torch.tensor([9]))
    with pytest.raises(ValueError, match="does not allow"):
        f.advance(torch.tensor([M["eoa"]]))  # no empty speech: at least min_speech_tokens codes first


def test_observe_reads_prompts_with_padding_and_understanding_images():
    # left-padded rows; row 1 holds an understanding image (feature positions carry id 0 = pad) before its turn
    prompts = torch.tensor([[0, 0, 0, 0, M["user"], 9, M["assistant"]],
                            [M["boi"], 0, 0, M["eoi"], 9, M["assistant"], M["boa"]]])
    f = fsm(batch=2)
    f.observe(prompts)
    assert [Mode(int(m)) for m in f.mode] == [Mode.RESPONSE, Mode.SPEECH]
    assert f.count.tolist() == [0, 0]
    f = fsm()  # a finished user turn in the prompt does not end the row
    f.observe(torch.tensor([[M["user"], 9, M["eot"], M["assistant"]]]))
    assert Mode(int(f.mode[0])) == Mode.RESPONSE


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 6), greedy=st.booleans())
def test_constrained_vocabularies_are_never_violated(seed, batch, greedy):
    g = torch.Generator().manual_seed(seed)
    rules = DecodingRules(image_tokens=N_IMAGE, response=SamplingParams(temperature=1.5, top_p=0.9,
                                                                        repetition_penalty=1.3))
    f = FiniteStateDecoder(VOCAB, rules, batch=batch, greedy=[greedy] * batch)
    states = [("instruction", "instruction", 0)] * batch
    history = torch.zeros(batch, 0, dtype=torch.long)
    for _ in range(60):
        # logits that favour the markers (so every mode is visited), plus noise
        logits = torch.randn(batch, VOCAB.size, generator=g) * 3
        logits[:, [M["boa"], M["boi"], M["assistant"], M["user"]]] += 2.0
        logits[:, [M["eoa"], M["eoi"], M["pad"]]] += 6.0  # forbidden unless their mode allows them
        token = f.step(logits, previous=history, generator=g)
        for b in range(batch):
            tok = int(token[b])
            mode, _, count = states[b]
            assert tok in oracle_allowed(mode, count), (mode, count, tok)
            states[b] = oracle_next(states[b], tok)
            assert NAMES[Mode(int(f.mode[b]))] == states[b][0]
        history = torch.cat([history, token[:, None]], 1)
    for b in range(batch):  # every finished image span holds exactly N_IMAGE codes
        row = history[b].tolist()
        for i, t in enumerate(row):
            if t == M["boi"] and M["eoi"] in row[i:]:
                assert row.index(M["eoi"], i) - i - 1 == N_IMAGE


def test_greedy_in_speech_and_instruction_sampling_in_responses():
    logits = torch.randn(1, VOCAB.size)
    draws = {}
    for name, prefix in (("instruction", [M["user"]]), ("speech", [M["boa"]]), ("response", [M["assistant"]])):
        seen = set()
        for s in range(40):
            f = fsm()
            f.observe(torch.tensor([prefix]))
            allowed = f.allowed()
            seen.add(int(f.step(logits.clone(), generator=torch.Generator().manual_seed(s))))
        draws[name] = seen
        if name != "response":
            assert seen == {int(logits.masked_fill(~allowed, float("-inf")).argmax())}
    assert len(draws["response"]) > 3  # temperature 1.2 over ~17 allowed tokens


def test_a_greedy_task_row_decodes_its_response_greedily():
    logits = torch.randn(1, VOCAB.size).expand(2, -1)  # both rows see the same logits
    best = None
    drawn = []
    for s in range(30):
        f = fsm(batch=2, greedy=[True, False])
        f.observe(torch.tensor([[M["assistant"]], [M["assistant"]]]))
        if best is None:
            best = int(logits[0].masked_fill(~f.allowed()[0], float("-inf")).argmax())
        drawn.append(f.step(logits.clone(), generator=torch.Generator().manual_seed(s)))
    assert {int(t[0]) for t in drawn} == {best}
    assert len({int(t[1]) for t in drawn}) > 3


def test_rows_in_different_modes_step_together_as_they_would_alone():
    prefixes = [[M["user"]], [M["boa"]], [M["boi"]], [M["eos"]]]
    rules = DecodingRules(image_tokens=N_IMAGE, response=SamplingParams(temperature=0.0),
                          image=SamplingParams(temperature=0.0))
    logits = torch.randn(4, VOCAB.size)
    together = FiniteStateDecoder(VOCAB, rules, batch=4)
    together.observe(torch.tensor(prefixes))
    got = together.step(logits.clone())
    for b, p in enumerate(prefixes):
        alone = FiniteStateDecoder(VOCAB, rules, batch=1)
        alone.observe(torch.tensor([p]))
        assert int(alone.step(logits[b: b + 1].clone())) == int(got[b])
    assert [NAMES[Mode(int(m))] for m in together.mode] == ["instruction", "speech", "image", "done"]


def test_images_from_a_bitwise_head_are_counted_and_closed():
    vocab = JointVocab(text=20, speech=range(20, 30), markers=M)  # no image ids: a bitwise head draws them
    f = FiniteStateDecoder(vocab, DecodingRules(image_tokens=3), batch=2)
    f.advance(torch.tensor([M["boi"], 9]))
    assert f.drawing_image.tolist() == [True, False]
    with pytest.raises(ValueError, match="bitwise head"):
        f.step(torch.randn(2, vocab.size))
    for code in (65535, M["eoi"], 7):  # any code value counts, even one equal to a marker id
        f.advance(torch.tensor([code, -1]))
    assert f.drawing_image.tolist() == [False, False] and f.forced().tolist() == [M["eoi"], -1]
    assert f.step(torch.randn(2, vocab.size))[0] == M["eoi"]
    assert Mode(int(f.mode[0])) == Mode.INSTRUCTION


def test_bad_setups_are_named():
    with pytest.raises(ValueError, match="lacks marker ids for: eoa"):
        JointVocab(text=20, markers={k: v for k, v in M.items() if k != "eoa"})
    with pytest.raises(ValueError, match="overlap"):
        JointVocab(text=20, speech=range(10, 30), markers=M)
    with pytest.raises(ValueError, match="image_tokens"):
        FiniteStateDecoder(VOCAB, DecodingRules())
    with pytest.raises(ValueError, match="logits have shape"):
        fsm().step(torch.randn(1, 5))
    with pytest.raises(ValueError, match="one value per knob"):
        DecodingRules(response=SamplingParams(temperature=[1.0, 2.0]))
