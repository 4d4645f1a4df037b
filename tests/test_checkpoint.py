"""Checkpoints: save -> load -> identical outputs; atomic writes; strict, named errors."""

import json

import pytest
import torch

from omniar import DecoderConfig, OmniDecoder, collate, preset
from tests.streams import mixed_config, mixed_sample, random_sinks


@pytest.mark.parametrize("sink", [False, True])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, sink):
    model = OmniDecoder(mixed_config(norm_placement="swin", qk_norm=True, attention_sink=sink)).eval()
    if sink:  # learned sink logits (they start at 0) must travel with the weights
        random_sinks(model)
    batch = collate([mixed_sample(0), mixed_sample(1)], pad_side="left")
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = OmniDecoder.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model(**batch.model_inputs()).logits, loaded(**batch.model_inputs()).logits)


def test_tied_embeddings_survive_the_round_trip(tmp_path):
    model = OmniDecoder(preset("text-tiny", num_layers=1)).eval()
    model.save_pretrained(tmp_path)
    loaded = OmniDecoder.from_pretrained(tmp_path)
    assert loaded.lm_head is None
    ids = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_saving_leaves_no_temporary_files_and_overwrites(tmp_path):
    model = OmniDecoder(preset("text-tiny", num_layers=1))
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(OmniDecoder.from_pretrained(tmp_path).embed.weight, model.embed.weight)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = OmniDecoder(preset("text-tiny", num_layers=1))
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("omniar.checkpoint.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def test_mismatched_shapes_name_the_tensor(tmp_path):
    OmniDecoder(preset("text-tiny", num_layers=1)).save_pretrained(tmp_path)
    edit_config(tmp_path, intermediate_size=256)
    with pytest.raises(ValueError, match=r"tensor 'blocks.0.ffn.experts.0.gate_up.weight' has shape \(1024, 192\)"):
        OmniDecoder.from_pretrained(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    OmniDecoder(preset("text-tiny", num_layers=1)).save_pretrained(tmp_path)
    edit_config(tmp_path, num_layers=2)
    with pytest.raises(ValueError, match=r"missing tensors: blocks\.1\."):
        OmniDecoder.from_pretrained(tmp_path)
    edit_config(tmp_path, num_layers=1, tie_embeddings=False)
    with pytest.raises(ValueError, match="missing tensors: lm_head.weight"):
        OmniDecoder.from_pretrained(tmp_path)


def test_unknown_config_key_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\).*'num_layer' \(did you mean 'num_layers'\?\)"):
        DecoderConfig.from_dict({"num_layer": 3})
    OmniDecoder(preset("text-tiny", num_layers=1)).save_pretrained(tmp_path)
    edit_config(tmp_path, rope_scaling=2.0)
    with pytest.raises(ValueError, match="rope_scaling"):
        OmniDecoder.from_pretrained(tmp_path)


def test_corrupt_and_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        OmniDecoder.from_pretrained(tmp_path / "nope")
    OmniDecoder(preset("text-tiny", num_layers=1)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt checkpoint file .*model.safetensors"):
        OmniDecoder.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint weights not found"):
        OmniDecoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        OmniDecoder.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad, message", [
    (dict(num_heads=5), "not divisible by num_heads"),
    (dict(num_kv_heads=3), "not a multiple of num_kv_heads"),
    (dict(norm_placement="post"), "norm_placement"),
    (dict(experts=("a", "b"), routing={"image_gen": "c"}), "unknown expert 'c'"),
    (dict(routing={"smell": "shared"}), "unknown modality 'smell'"),
    (dict(rope_sections=(1, 2, 3)), "rope_sections"),
])
def test_invalid_configs_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**bad)


def test_missing_config_names_a_nested_checkpoint(tmp_path):
    from omniar.checkpoint import read_config, save_checkpoint

    save_checkpoint(tmp_path / "run" / "checkpoint", {"model_type": "x"}, {"w": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match=r"not a saved thing \(found one in .*run/checkpoint\)"):
        read_config(tmp_path, "x", "thing")
    assert read_config(tmp_path / "run" / "checkpoint", "x", "thing") == {}
