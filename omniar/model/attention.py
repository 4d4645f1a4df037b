"""Grouped-query self-attention, Qwen2 style: fused QKV (optional bias), RoPE, optional QK-norm, SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniar.model.cache import KVCache
from omniar.model.config import DecoderConfig
from omniar.model.linear import Linear
from omniar.model.norm import RMSNorm
from omniar.model.rope import apply_rotary

CAUSAL = "causal"  # mask sentinel: the plain causal fast path of SDPA (query and key spans coincide)


class Attention(nn.Module):
    """The sequence mixer of a Transformer block. `mask` is None (see everything), CAUSAL, or bool (B, 1, Lq, Lk)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv = Linear(config.hidden_size, q_dim + 2 * kv_dim, bias=config.qkv_bias)
        self.o = Linear(q_dim, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | str | None,
                cache: KVCache | None = None) -> Tensor:
        B, L, _ = x.shape
        H, Hkv = self.num_heads, self.num_kv_heads
        qkv = self.qkv(x).view(B, L, H + 2 * Hkv, self.head_dim)
        qk, v = qkv.split([H + Hkv, Hkv], dim=2)
        if self.q_norm is not None:
            q, k = qk.split([H, Hkv], dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
        q, k = apply_rotary(qk, *rope).split([H, Hkv], dim=2)  # queries and keys rotated in one pass
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v)
        gqa = self.num_heads != self.num_kv_heads
        if mask is CAUSAL:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o(out.transpose(1, 2).reshape(B, L, -1))
