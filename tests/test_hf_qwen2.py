"""Parity with Hugging Face transformers' Qwen2 on the same weights (transformers is a dev extra)."""

import inspect
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from omniar import DecoderConfig, Modality, OmniDecoder, Sample, SamplingParams, Segment, collate, generate  # noqa: E402
from omniar.hf import load_qwen2, save_qwen2  # noqa: E402

TOL = 1e-4


def tiny_qwen2(tmp_path, tie: bool, **kw) -> tuple[Qwen2ForCausalLM, str]:
    """A random Qwen2 with weights large enough that logits differ clearly (HF's init is nearly uniform)."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=tie, max_position_embeddings=512)
    cfg.update(kw)
    hf = Qwen2ForCausalLM(Qwen2Config(**cfg)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.15) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    path = tmp_path / "hf"
    hf.save_pretrained(path)
    return hf, str(path)


@pytest.mark.parametrize("tie", [False, True])
def test_full_forward_logits_match(tmp_path, tie):
    hf, path = tiny_qwen2(tmp_path, tie)
    ours = load_qwen2(path)
    ids = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= TOL


def test_cached_greedy_generation_matches_64_steps(tmp_path):
    hf, path = tiny_qwen2(tmp_path, tie=False)
    ours = load_qwen2(path)
    prompt = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, min_new_tokens=64,
                          do_sample=False, pad_token_id=0)[:, 7:]
    got = generate(ours, prompt, 64, SamplingParams(temperature=0.0))
    assert len(set(ref[0].tolist())) > 5  # a real sequence, not one token repeated
    assert torch.equal(got, ref)


def test_cached_step_logits_match_hf_cache(tmp_path):
    hf, path = tiny_qwen2(tmp_path, tie=True, rope_theta=1e6)
    ours = load_qwen2(path)
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        # transformers renamed the cache argument (past_key_values -> cache, 5.2x); either works here
        name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
        out = hf(ids[:, :12], use_cache=True)
        ref = [out.logits]
        past = out.past_key_values
        for t in range(12, 20):
            out = hf(ids[:, t : t + 1], use_cache=True, **{name: past})
            past = out.past_key_values
            ref.append(out.logits)
        cache = ours.new_cache()
        got = [ours(ids[:, :12], cache=cache).logits] + [ours(ids[:, t : t + 1], cache=cache).logits
                                                         for t in range(12, 20)]
    assert (torch.cat(ref, 1) - torch.cat(got, 1)).abs().max() <= TOL


def test_upcycling_keeps_text_logits_and_routes_images(tmp_path):
    hf, path = tiny_qwen2(tmp_path, tie=False)
    dense = load_qwen2(path)
    moe = load_qwen2(path, experts=("text", "und", "gen"), routing={"image_und": "und", "image_gen": "gen"})
    assert moe.config.experts == ("text", "und", "gen")
    ids = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        assert (moe(ids).logits - hf(ids).logits).abs().max() <= TOL
    # the copies are independent parameters: training the generation expert leaves text untouched
    with torch.no_grad():
        for block in moe.blocks:
            block.ffn.experts[2].down.weight.mul_(2.0)
        assert torch.equal(moe(ids).logits, dense(ids).logits)
        batch = collate([Sample([Segment("text", [1, 2, 3]), Segment("image_gen", [4, 5, 6, 7, 8],
                                                                     scales=[(1, 1), (2, 2)])])])
        a, b = moe(**batch.model_inputs()).logits, dense(**batch.model_inputs()).logits
        gen = batch.meta.modality[0] == Modality.IMAGE_GEN
    # text rows went through the gather path (other matmul shapes), hence a float tolerance rather than equality
    assert (a[0, ~gen] - b[0, ~gen]).abs().max() <= TOL
    assert (a[0, gen] - b[0, gen]).abs().max() > 0.1


def test_export_back_to_hf(tmp_path):
    hf, path = tiny_qwen2(tmp_path, tie=True)
    ours = load_qwen2(path)
    save_qwen2(ours, tmp_path / "back")
    again = Qwen2ForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert (again(ids).logits - hf(ids).logits).abs().max() <= TOL


def test_unsupported_and_broken_hf_checkpoints_are_named(tmp_path):
    _, path = tiny_qwen2(tmp_path, tie=False)
    cfg = json.loads(open(f"{path}/config.json").read())
    cfg["use_sliding_window"] = True
    open(f"{path}/config.json", "w").write(json.dumps(cfg))
    with pytest.raises(ValueError, match="sliding-window"):
        load_qwen2(path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_qwen2(tmp_path / "empty")
    with pytest.raises(ValueError, match="only a dense"):
        save_qwen2(OmniDecoder(DecoderConfig(experts=("a", "b"))), tmp_path / "x")
    with pytest.raises(ValueError, match="without attention sinks"):  # Qwen2 has no sinks: refuse, don't drop them
        save_qwen2(OmniDecoder(DecoderConfig(qkv_bias=True, attention_sink=True)), tmp_path / "y")
