"""Sampling: each knob against its definition, per-row parameters, seeding, CFG."""

import pytest
import torch

from omniar import OmniDecoder, SamplingParams, generate
from omniar.generation.sampling import apply_repetition_penalty, categorical, classifier_free_guidance, sample
from omniar.model.bitwise import sample_bits
from tests.streams import mixed_config


def draws(logits, params, n=400, previous=None):
    g = torch.Generator().manual_seed(0)
    return torch.stack([sample(logits, params, previous=previous, generator=g) for _ in range(n)])


def test_greedy_picks_the_argmax():
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, SamplingParams(temperature=0.0)), logits.argmax(-1))


def test_top_k_only_draws_from_the_k_best():
    logits = torch.randn(2, 30)
    got = draws(logits, SamplingParams(temperature=2.0, top_k=3))
    for b in range(2):
        allowed = set(logits[b].topk(3).indices.tolist())
        assert set(got[:, b].tolist()) == allowed  # all three appear at temperature 2 over 400 draws


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    got = draws(probs.log(), SamplingParams(top_p=0.75))
    assert set(got[:, 0].tolist()) == {0, 1}  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75
    got = draws(probs.log(), SamplingParams(top_p=0.1))
    assert set(got[:, 0].tolist()) == {0}  # the best token always stays


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = draws(logits, SamplingParams(temperature=0.3))[:, 0]
    hot = draws(logits, SamplingParams(temperature=3.0))[:, 0]
    assert (cold == 0).float().mean() > 0.9 > (hot == 0).float().mean()


def test_repetition_penalty_follows_the_ctrl_rule():
    logits = torch.tensor([[2.0, -1.0, 1.9, 0.5]])
    prev = torch.tensor([[0, 1]])
    # token 0: 2.0 / 2 = 1.0 < 1.9, so greedy moves to token 2; token 1: -1 * 2 = -2
    assert sample(logits, SamplingParams(temperature=0.0, repetition_penalty=2.0), previous=prev).item() == 2
    out = apply_repetition_penalty(logits, prev, torch.tensor([2.0]))
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 1.9, 0.5]]))


def test_parameters_are_per_row():
    logits = torch.randn(3, 40)
    params = SamplingParams(temperature=[0.0, 1.0, 0.0], top_k=[0, 2, 0])
    got = draws(logits, params, n=200)
    assert (got[:, 0] == logits[0].argmax()).all() and (got[:, 2] == logits[2].argmax()).all()
    assert set(got[:, 1].tolist()) == set(logits[1].topk(2).indices.tolist())


def test_seeded_generators_reproduce():
    logits = torch.randn(2, 100)
    a, b = draws(logits, SamplingParams(top_p=0.9), n=20), draws(logits, SamplingParams(top_p=0.9), n=20)
    assert torch.equal(a, b)


def test_a_draw_is_torch_multinomials_and_each_block_of_rows_draws_from_its_own_generator():
    probs = torch.rand(300, 7).masked_fill(torch.rand(300, 7) < 0.3, 0.0)
    probs[:, 0] += 1e-3
    probs /= probs.sum(-1, keepdim=True)
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(categorical(probs, ours), torch.multinomial(probs, 1, generator=theirs)[:, 0])
    assert torch.equal(torch.rand(3, generator=ours), torch.rand(3, generator=theirs))  # the same draws consumed
    seeds = [3, 1, 4]
    blocks = categorical(probs, [torch.Generator().manual_seed(s) for s in seeds])
    alone = [categorical(probs[100 * i : 100 * (i + 1)], torch.Generator().manual_seed(s))
             for i, s in enumerate(seeds)]
    assert torch.equal(blocks, torch.cat(alone))
    assert not torch.equal(blocks[:100], blocks[100:200])  # not one stream shared by the blocks
    skip = torch.zeros(300, dtype=torch.bool)
    skip[100:200] = True  # the second block is greedy: its generator gives nothing
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    skipped = categorical(probs, gens, skip=skip)
    assert torch.equal(skipped[:100], blocks[:100]) and torch.equal(skipped[200:], blocks[200:])
    assert torch.equal(torch.rand(3, generator=gens[1]), torch.rand(3, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="7 generators for 300 rows"):
        categorical(probs, [torch.Generator() for _ in range(7)])
    with pytest.raises(ValueError, match="NaN"):
        categorical(torch.tensor([[0.5, float("nan")]]))


def test_bits_of_a_row_depend_on_its_generator_and_knobs_only():
    logits = torch.randn(4, 9, 16, 2)
    params = SamplingParams(temperature=[1.0, 0.0, 0.6, 2.0], top_p=[1.0, 1.0, 0.7, 1.0])
    together = sample_bits(logits, params, [torch.Generator().manual_seed(s) for s in range(4)])
    for i in range(4):
        row = SamplingParams(params.temperature[i], params.top_k, params.top_p[i])
        assert torch.equal(together[i], sample_bits(logits[i : i + 1], row, torch.Generator().manual_seed(i))[0])
    assert torch.equal(together[1], logits[1].argmax(-1).bool())  # the greedy row
    with pytest.raises(ValueError, match="3 generators for 4 rows"):
        sample_bits(logits, params, [torch.Generator()] * 3)


def test_classifier_free_guidance_formula_and_per_row_scale():
    cond, uncond = torch.randn(2, 10), torch.randn(2, 10)
    out = classifier_free_guidance(cond, uncond, [1.0, 3.0])
    assert torch.allclose(out[0], cond[0])
    assert torch.allclose(out[1], uncond[1] + 3.0 * (cond[1] - uncond[1]))


def test_bad_sampling_parameters_are_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):  # per-row knobs: checked row by row
        SamplingParams(top_p=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=[3, -1])
    SamplingParams(temperature=torch.tensor([0.0, 2.0]), top_p=[1.0, 0.5], top_k=0, repetition_penalty=1.2)
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        sample(torch.randn(2, 5), SamplingParams(temperature=[1.0, 1.0, 1.0]))


def test_generate_batches_rows_of_different_lengths_like_single_rows():
    model = OmniDecoder(mixed_config()).eval()
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    batched = generate(model, prompts, 12, SamplingParams(temperature=0.0))
    for i, p in enumerate(prompts):
        alone = generate(model, [p], 12, SamplingParams(temperature=0.0))
        assert torch.equal(batched[i], alone[0])


def test_generate_with_a_generator_per_prompt_samples_each_row_as_alone():
    model = OmniDecoder(mixed_config()).eval()
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    params = SamplingParams(temperature=1.5)
    batched = generate(model, prompts, 12, params, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    for p, s, row in zip(prompts, (7, 8, 9), batched):
        assert torch.equal(row, generate(model, [p], 12, params, generator=torch.Generator().manual_seed(s))[0])
    shared = generate(model, prompts, 12, params, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(shared[1:], batched[1:])  # one stream for the batch draws other tokens
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        generate(model, prompts, 4, params, generator=[torch.Generator(), torch.Generator()])


def test_generate_stops_rows_at_eos_and_pads_after():
    model = OmniDecoder(mixed_config()).eval()
    free = generate(model, [[1, 2, 3]], 10, SamplingParams(temperature=0.0))[0]
    eos = int(free[3])
    out = generate(model, [[1, 2, 3]], 10, SamplingParams(temperature=0.0), eos_id=eos, pad_id=0)[0]
    stop = free.tolist().index(eos)
    assert out[: stop + 1].tolist() == free[: stop + 1].tolist()
    assert len(out) == stop + 1  # the only row finished: decoding stopped


def test_generate_with_cfg_equals_guided_logits_by_hand():
    model = OmniDecoder(mixed_config()).eval()
    cond, uncond = [5, 6, 7], [5]
    got = generate(model, [cond], 4, SamplingParams(temperature=0.0), uncond_prompts=[uncond], cfg_scale=2.5)[0]
    seq_c, seq_u = list(cond), list(uncond)
    with torch.no_grad():
        for t in range(4):
            lc = model(torch.tensor([seq_c])).logits[0, -1]
            lu = model(torch.tensor([seq_u])).logits[0, -1]
            tok = int((lu + 2.5 * (lc - lu)).argmax())
            assert tok == int(got[t])
            seq_c.append(tok)
            seq_u.append(tok)


def test_generate_is_seedable():
    model = OmniDecoder(mixed_config()).eval()
    params = SamplingParams(temperature=1.0, top_p=0.95, repetition_penalty=1.1)
    a = generate(model, [[1, 2], [3, 4]], 16, params, generator=torch.Generator().manual_seed(7))
    b = generate(model, [[1, 2], [3, 4]], 16, params, generator=torch.Generator().manual_seed(7))
    c = generate(model, [[1, 2], [3, 4]], 16, params, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg_needs_one_unconditional_prompt_per_prompt():
    model = OmniDecoder(mixed_config()).eval()
    with pytest.raises(ValueError, match="4 uncond_prompts for 2 prompts"):
        generate(model, [[1], [2]], 2, uncond_prompts=[[1]] * 4)
