"""The decoder's configuration: one dataclass, strict about unknown keys, with named presets as data."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from omniar.modality import Modality


def build_strict(cls, d: dict):
    """Build dataclass `cls` from a dict; an unknown key is an error that names it (and the closest known key)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(hints)}")
    return cls(**d)


@dataclass
class DecoderConfig:
    """Everything that shapes an `OmniDecoder`. Field names follow Qwen2 where one exists."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 2  # grouped-query attention: num_heads // num_kv_heads query heads share a K/V head
    head_dim: int | None = None  # default hidden_size // num_heads
    intermediate_size: int = 688
    rope_theta: float = 10000.0
    # Frequency pairs given to the (t, row, col) position components (Qwen2-VL M-RoPE). None: a quarter each
    # to row and col, the rest to t. Text positions have t == row == col, so text sees plain 1-D RoPE.
    rope_sections: tuple[int, int, int] | None = None
    rope_interleaved: bool = True  # spread each component over all frequencies (Qwen3-VL); False: Qwen2-VL blocks
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Chameleon / AR-Omni stability)
    # a learned attention-sink logit per query head (gpt-oss): a virtual key with a zero value that every query
    # sees, so a head can attend to "nothing" (softmax over [q.k / sqrt(d), sink]) instead of spreading its weight
    attention_sink: bool = False
    norm_placement: str = "pre"  # "pre": x + f(norm(x)); "swin": x + norm(f(x)) (Chameleon swin-norm)
    tie_embeddings: bool = True
    # Modality-routed FFN experts (OneCAT §2.2). One expert = dense. `routing` maps modality name -> expert
    # name; modalities not listed go to the first expert.
    experts: tuple[str, ...] = ("shared",)
    routing: dict[str, str] = field(default_factory=dict)
    # the expert that serves the text positions (prompt, task token, <boi>) of every document that generates a
    # next-scale image, whatever `routing` says for text: the prompt is then encoded by weights that only the
    # generation losses train (a throwaway test on ShapeWorld: a wrong shape word cost 6.3 nats instead of 1.9,
    # BENCHMARKS.md "Why: the prompt is read through the text expert"). None: text goes by `routing`.
    prompt_expert: str | None = None
    # Mixture-of-Transformers (Liang et al. 2024; BAGEL): each expert also owns the attention's QKV and output
    # projections, chosen per token by the same routing; the attention itself still runs over all tokens. The
    # same compute per token, the attention's parameters times the number of experts.
    expert_attention: bool = False
    # Modalities that arrive as continuous features (n, d) instead of token ids, with their width d.
    feature_dims: dict[str, int] = field(default_factory=dict)
    # OneCAT's Scale-Aware Adapter: per-scale LoRA of this rank (0: none) on one expert's FFN, chosen by each
    # token's scale (its block in the stream), for next-scale images of up to `num_scales` scales.
    scale_adapter_rank: int = 0
    scale_adapter_alpha: float = 16.0
    scale_adapter_expert: str = "gen"
    num_scales: int = 0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.experts = tuple(self.experts)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.norm_placement not in ("pre", "swin"):
            raise ValueError(f"norm_placement must be 'pre' or 'swin', got {self.norm_placement!r}")
        if not self.experts or len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts must be distinct names, got {self.experts}")
        for mod, expert in self.routing.items():
            Modality.parse(mod)
            if expert not in self.experts:
                raise ValueError(f"routing sends {mod!r} to unknown expert {expert!r}; experts: {self.experts}")
        if self.prompt_expert is not None and self.prompt_expert not in self.experts:
            raise ValueError(f"prompt_expert {self.prompt_expert!r} is not an expert; experts: {self.experts}")
        for mod in self.feature_dims:
            Modality.parse(mod)
        if self.scale_adapter_rank:
            if self.scale_adapter_expert not in self.experts:
                raise ValueError(f"scale_adapter_expert {self.scale_adapter_expert!r} is not an expert; experts: "
                                 f"{self.experts}")
            if self.num_scales < 1 or self.scale_adapter_rank < 0:
                raise ValueError(f"a scale adapter needs num_scales >= 1 and rank > 0, got num_scales "
                                 f"{self.num_scales}, rank {self.scale_adapter_rank}")
        half = self.head_dim // 2
        if self.rope_sections is None:
            self.rope_sections = (half - 2 * (half // 4), half // 4, half // 4)
        self.rope_sections = tuple(self.rope_sections)
        if len(self.rope_sections) != 3 or sum(self.rope_sections) != half:
            raise ValueError(f"rope_sections {self.rope_sections} must be 3 numbers summing to head_dim/2 = {half}")

    def expert_of(self, modality: Modality) -> int:
        """Index of the expert that serves `modality`."""
        for mod, expert in self.routing.items():
            if Modality.parse(mod) == modality:
                return self.experts.index(expert)
        return 0

    # ---- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["experts"] = list(self.experts)
        d["rope_sections"] = list(self.rope_sections)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        return build_strict(cls, d)

    @classmethod
    def load(cls, path: str | Path) -> DecoderConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        d.pop("model_type", None)
        return cls.from_dict(d)


# Named presets: data, not code. `omniar info --preset NAME` prints parameter counts.
PRESETS: dict[str, dict] = {
    # the text-only demo model: trains in a couple of minutes on 2 CPU cores
    "text-tiny": dict(vocab_size=320, hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2,
                      intermediate_size=512),
    # the benchmark model of bench/decode.py (Qwen2-shaped)
    "qwen2-bench": dict(vocab_size=4096, hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=2,
                        intermediate_size=688, qkv_bias=True, rope_theta=1e6, tie_embeddings=False),
    # OneCAT's expert layout on a bare decoder: three modality experts behind one shared attention (the benchmark
    # of bench/train_throughput.py; the unified models, `onecat-tiny` among them, are omni/model.py's presets)
    "experts-tiny": dict(vocab_size=4096, hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=2,
                        intermediate_size=688, qkv_bias=True, experts=("text", "und", "gen"),
                        routing={"text": "text", "image_und": "und", "image_gen": "gen"}),
    # AR-Omni-style stability: swin-norm with QK-norm
    "swin-tiny": dict(vocab_size=4096, hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=2,
                      intermediate_size=688, norm_placement="swin", qk_norm=True),
}


def preset(name: str, **overrides) -> DecoderConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return DecoderConfig.from_dict({**PRESETS[name], **overrides})
