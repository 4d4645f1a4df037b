"""Hugging Face Qwen2 / Qwen2.5 checkpoints <-> `OmniDecoder`: the one place that knows HF's names.

Reads the directory `Qwen2ForCausalLM.save_pretrained` writes (config.json + model.safetensors, or sharded with
model.safetensors.index.json) without importing transformers. q/k/v and gate/up are fused on the way in and
split on the way out. `load_qwen2(..., experts=..., routing=...)` upcycles the FFN into modality experts
(OneCAT starts from Qwen2.5 this way).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from omniar.checkpoint import atomic_write, load_state_strict, read_tensors, write_tensors
from omniar.model.config import DecoderConfig
from omniar.model.decoder import OmniDecoder
from omniar.model.experts import upcycle_experts


def config_from_qwen2(hf: dict, **overrides) -> DecoderConfig:
    """Translate a Qwen2 config.json dict; refuse features the backbone does not implement."""
    if hf.get("model_type") not in ("qwen2", None):
        raise ValueError(f"expected a qwen2 config, got model_type={hf.get('model_type')!r}")
    if hf.get("use_sliding_window"):
        raise ValueError("Qwen2 sliding-window attention is not supported (use_sliding_window=true)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"only silu activations are supported, got {hf['hidden_act']!r}")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"RoPE scaling {rope!r} is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    heads = hf["num_attention_heads"]
    cfg = dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
               num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads), head_dim=hf.get("head_dim"),
               intermediate_size=hf["intermediate_size"], rope_theta=float(theta),
               norm_eps=hf.get("rms_norm_eps", 1e-6),
               qkv_bias=True, tie_embeddings=hf.get("tie_word_embeddings", False))
    cfg.update(overrides)
    return DecoderConfig.from_dict(cfg)


def _layer_map(i: int) -> dict[str, str]:
    hf, us = f"model.layers.{i}.", f"blocks.{i}."
    return {hf + "input_layernorm.weight": us + "mixer_norm.weight",
            hf + "post_attention_layernorm.weight": us + "ffn_norm.weight",
            hf + "self_attn.o_proj.weight": us + "mixer.o.weight",
            hf + "mlp.down_proj.weight": us + "ffn.experts.0.down.weight"}


def from_qwen2_state_dict(sd: dict[str, Tensor], config: DecoderConfig) -> dict[str, Tensor]:
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(config.num_layers):
        out.update({us: sd[hf] for hf, us in _layer_map(i).items()})
        a, us = f"model.layers.{i}.self_attn.", f"blocks.{i}."
        out[us + "mixer.qkv.weight"] = torch.cat([sd[a + f"{p}_proj.weight"] for p in "qkv"])
        out[us + "mixer.qkv.bias"] = torch.cat([sd[a + f"{p}_proj.bias"] for p in "qkv"])
        m = f"model.layers.{i}.mlp."
        out[us + "ffn.experts.0.gate_up.weight"] = torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]])
    return out


def to_qwen2_state_dict(model: OmniDecoder) -> dict[str, Tensor]:
    cfg = model.config
    if (len(cfg.experts) != 1 or not cfg.qkv_bias or cfg.norm_placement != "pre" or cfg.qk_norm or cfg.feature_dims
            or cfg.attention_sink):
        raise ValueError("only a dense, pre-norm, qkv-bias, text-only decoder without attention sinks can be "
                         "exported as Qwen2")
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    for i in range(cfg.num_layers):
        out.update({hf: sd[us] for hf, us in _layer_map(i).items()})
        a, us = f"model.layers.{i}.self_attn.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            for p, t in zip("qkv", sd[us + f"mixer.qkv.{kind}"].split([q, kv, kv])):
                out[a + f"{p}_proj.{kind}"] = t
        gate, up = sd[us + "ffn.experts.0.gate_up.weight"].chunk(2)
        out[f"model.layers.{i}.mlp.gate_proj.weight"], out[f"model.layers.{i}.mlp.up_proj.weight"] = gate, up
    return out


def _read_hf_weights(directory: Path) -> dict[str, Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for f in files:
            sd.update(read_tensors(directory / f))
        return sd
    return read_tensors(directory / "model.safetensors")


def load_qwen2(directory: str | Path, *, dtype: torch.dtype | None = None, experts: tuple[str, ...] | None = None,
               routing: dict[str, str] | None = None) -> OmniDecoder:
    """Load a HF Qwen2 checkpoint directory; with `experts`, upcycle its FFN into one copy per expert."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    config = config_from_qwen2(json.loads(cfg_path.read_text()))
    sd = _read_hf_weights(directory)
    try:
        ours = from_qwen2_state_dict(sd, config)
    except KeyError as e:
        raise ValueError(f"{directory} is missing tensor {e.args[0]!r} of a Qwen2 checkpoint") from None
    model = OmniDecoder(config)

    load_state_strict(model, ours, source=str(directory))
    if experts is not None:
        model = upcycle_experts(model, experts, routing or {})
    return (model.to(dtype) if dtype is not None else model).eval()


def save_qwen2(model: OmniDecoder, directory: str | Path) -> Path:
    """Export a dense text decoder as a HF Qwen2 checkpoint directory (loadable by `Qwen2ForCausalLM`)."""
    cfg = model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / "model.safetensors", to_qwen2_state_dict(model))
    hf = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
          "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
          "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps,
          "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
          "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "use_sliding_window": False,
          "max_position_embeddings": 32768, "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(json.dumps(hf, indent=2) + "\n"))
    return directory
