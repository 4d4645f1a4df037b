"""The unified decoder: embeddings (token ids and continuous features), a stack of blocks, a final norm, the head.

Single-device and plain: parallelism, compilation and activation checkpointing are applied from outside.
One forward serves training (full sequences, packed rows), prefill, and incremental steps of any length
(one token, or a whole scale of a next-scale image) through a `DecoderCache`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from omniar.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_strict, read_tensors, save_checkpoint
from omniar.masks import PositionMeta, build_attention_mask
from omniar.modality import Modality
from omniar.model.adapter import ScaleAdaptedSwiGLU
from omniar.model.attention import CAUSAL
from omniar.model.block import DecoderBlock
from omniar.model.cache import DecoderCache
from omniar.model.config import DecoderConfig
from omniar.model.experts import Router
from omniar.model.linear import Linear, drop_slabs, linear
from omniar.model.norm import RMSNorm
from omniar.model.rope import RotaryEmbedding

MODEL_TYPE = "omniar-decoder"


@dataclass
class DecoderOutput:
    logits: Tensor | None  # (B, L or logits_to_keep, vocab)
    hidden: Tensor  # (B, L, hidden) after the final norm: input of modality-specific heads


class OmniDecoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, D)
        self.feature_proj = nn.ModuleDict({Modality.parse(m).name.lower(): nn.Linear(d, D)
                                           for m, d in config.feature_dims.items()})
        self.router = Router(config)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_sections, config.rope_interleaved)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(D, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else Linear(D, config.vocab_size, bias=False)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ---- forward ----------------------------------------------------------------------------------------------
    def new_cache(self) -> DecoderCache:
        return DecoderCache([block.mixer.new_cache() for block in self.blocks])

    def forward(self, input_ids: Tensor, *, meta: PositionMeta | None = None, positions: Tensor | None = None,
                features: dict | None = None, cache: DecoderCache | None = None,
                logits_to_keep: int | None = None) -> DecoderOutput:
        """Run the decoder on (B, L) positions.

        meta: per-position metadata (None: plain causal text). positions: (B, L, 3) RoPE positions (None: text
        positions continuing the cache). features: modality -> (N, d) continuous inputs for that modality's
        positions, in row-major order. cache: continue from and extend it. logits_to_keep: only the last n.
        """
        B, L = self._check_ids(input_ids)
        start = cache.length if cache is not None else 0
        if meta is not None:
            if meta.shape != (B, L):
                raise ValueError(f"meta has shape {tuple(meta.shape)} but input_ids has {(B, L)}")
            index = torch.arange(start, start + L, device=input_ids.device).expand(B, L)
            meta = dataclasses.replace(meta, index=index)
        x = self._embed(input_ids, meta, features)
        positions = self._positions(positions, cache, B, L, input_ids.device)
        rope = self.rope(positions)
        mask = self._mask(meta, cache, B, L, input_ids.device)
        routing = self.router(*((meta.modality, meta.block, meta.doc) if meta is not None else (None,)))
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, routing, cache.layers[i] if cache is not None else None)
        x = self.norm(x)
        if logits_to_keep is not None and logits_to_keep < 1:
            raise ValueError(f"logits_to_keep must be None or >= 1, got {logits_to_keep}")
        h = x if logits_to_keep is None else x[:, -logits_to_keep:]
        return DecoderOutput(self.head(h), x)

    def head(self, h: Tensor) -> Tensor:
        return self.lm_head(h) if self.lm_head is not None else linear(h, self.embed.weight, None, self.embed)

    def _check_ids(self, input_ids: Tensor) -> tuple[int, int]:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, length) tensor, got {shape}")
        if input_ids.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel():
            lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()  # one sync for both bounds
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is out of range for vocab_size {self.config.vocab_size}")
        return input_ids.shape

    def _embed(self, input_ids: Tensor, meta: PositionMeta | None, features: dict | None) -> Tensor:
        x = self.embed(input_ids)
        given = {Modality.parse(m): f for m, f in (features or {}).items()}
        for name in given:
            if name.name.lower() not in self.feature_proj:
                raise ValueError(f"features given for {name.name.lower()}, which this model reads as token ids "
                                 f"(feature modalities: {sorted(self.feature_proj) or 'none'})")
        for name, proj in self.feature_proj.items():
            mod = Modality.parse(name)
            where = meta.modality == mod if meta is not None else None
            count = int(where.sum()) if where is not None else 0
            f = given.get(mod)
            if f is None:
                if count:
                    raise ValueError(f"{count} {name} positions but no {name} features were given")
                continue
            if not isinstance(f, Tensor) or f.dim() != 2 or not f.is_floating_point():
                desc = f"{tuple(f.shape)} {f.dtype}" if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(f"{name} features must be a float tensor (n, {proj.in_features}); got {desc}")
            if f.shape != (count, proj.in_features):
                raise ValueError(f"{name} features have shape {tuple(f.shape)}; the batch has {count} {name} "
                                 f"positions of width {proj.in_features}")
            x = x.masked_scatter(where[..., None], proj(f.to(x.dtype)).to(x.dtype))
        return x

    def _positions(self, positions: Tensor | None, cache: DecoderCache | None, B: int, L: int, device) -> Tensor:
        """RoPE positions: given (B, L, 3), or 1-D text positions (B, L) continuing the cache."""
        if positions is None:
            if cache is not None and cache.positions_lost:
                raise ValueError("the cache was truncated and its next RoPE position is unknown: give positions")
            positions = torch.arange(L, device=device, dtype=torch.float32)
            if cache is not None and cache.next_position is not None:
                positions = cache.next_position[:, None] + positions
            positions = positions.expand(B, L)
            if cache is not None:
                cache.next_position = positions[:, -1] + 1
            return positions
        if positions.shape != (B, L, 3):
            raise ValueError(f"positions must have shape {(B, L, 3)} (t, row, col), got {tuple(positions.shape)}")
        if cache is not None:
            cache.next_position = positions[:, -1].amax(-1) + 1
        return positions

    def _mask(self, meta: PositionMeta | None, cache: DecoderCache | None, B: int, L: int, device):
        """None (see all keys), CAUSAL (SDPA's fast path), or a bool mask (B, 1, Lq, Lk) from the metadata."""
        if cache is None:
            if meta is None or meta.is_plain_causal():
                return CAUSAL if L > 1 else None
            return build_attention_mask(meta, meta)[:, None]
        start, was_plain = cache.length, cache.plain
        keys = cache.append_meta(meta, B, L, device)
        if meta is None and was_plain and L == 1:
            return None  # one text token after one unpadded document: it sees every key
        if start == 0 and (meta is None or meta.is_plain_causal()):
            return CAUSAL if L > 1 else None
        return build_attention_mask(keys[:, start:], keys)[:, None]

    def set_scale_adapter(self, enabled: bool = True, merge: bool = False) -> None:
        """Switch the Scale-Aware Adapter on or off (ablation); `merge` precomputes each scale's merged weights."""
        for m in self.modules():
            if isinstance(m, ScaleAdaptedSwiGLU):
                m.enabled = enabled
        if merge:
            self.merge_scale_adapter()

    def merge_scale_adapter(self) -> None:
        """(Re)compute the merged per-scale weights of every enabled adapter: decoding then runs plain matmuls.
        Generation calls it each time, so the merged copies always match the current weights."""
        for m in self.modules():
            if isinstance(m, ScaleAdaptedSwiGLU) and m.enabled:
                m.merge()

    def train(self, mode: bool = True) -> OmniDecoder:
        if mode:
            drop_slabs(self)  # the decode-time weight copies are not needed while training
        return super().train(mode)

    # ---- bookkeeping ------------------------------------------------------------------------------------------
    def num_parameters(self) -> dict[str, int]:
        """Total parameters and active ones (a token passes through one expert per layer)."""
        total = sum(p.numel() for p in self.parameters())
        inactive = 0
        for block in self.blocks:  # a token passes through its expert's FFN (and projections, if routed too)
            sizes = [sum(p.numel() for p in e.parameters()) for e in block.ffn.experts]
            if isinstance(block.mixer.qkv, nn.ModuleList):
                sizes = [n + sum(p.numel() for m in (q, o) for p in m.parameters())
                         for n, q, o in zip(sizes, block.mixer.qkv, block.mixer.o)]
            inactive += sum(sizes) - max(sizes)
        return {"total": total, "active": total - inactive}

    def save_pretrained(self, directory: str | Path) -> Path:
        config = {"model_type": MODEL_TYPE, **self.config.to_dict()}
        return save_checkpoint(directory, config, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> OmniDecoder:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {directory}")
        config = DecoderConfig.load(directory / CONFIG_NAME)
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device=device or "cpu")
        for module in model.modules():  # non-persistent buffers are not in the checkpoint: compute them
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
        load_state_strict(model, read_tensors(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()
