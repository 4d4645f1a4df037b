"""Grouped-query self-attention, Qwen2 style: fused QKV (optional bias), RoPE, optional QK-norm, SDPA; optionally
a learned attention sink per head (gpt-oss), and projections of each modality expert's own
(`DecoderConfig.expert_attention`, Mixture-of-Transformers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniar.model.cache import KVCache
from omniar.model.config import DecoderConfig
from omniar.model.experts import Routing, dispatch
from omniar.model.linear import Linear
from omniar.model.norm import RMSNorm
from omniar.model.rope import apply_rotary

CAUSAL = "causal"  # mask sentinel: the plain causal fast path of SDPA (query and key spans coincide)


class Attention(nn.Module):
    """The sequence mixer of a Transformer block. `mask` is None (see everything), CAUSAL, or bool (B, 1, Lq, Lk).

    With `config.expert_attention` the QKV and output projections are one per expert (`qkv[e]`, `o[e]`), each
    token through its expert's (the `routing` of the FFN experts); the attention still spans all tokens."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        D, E = config.hidden_size, len(config.experts) if config.expert_attention else 0
        if E:
            self.qkv = nn.ModuleList(Linear(D, q_dim + 2 * kv_dim, bias=config.qkv_bias) for _ in range(E))
            self.o = nn.ModuleList(Linear(q_dim, D, bias=False) for _ in range(E))
        else:
            self.qkv = Linear(D, q_dim + 2 * kv_dim, bias=config.qkv_bias)
            self.o = Linear(q_dim, D, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.sink = nn.Parameter(torch.zeros(self.num_heads)) if config.attention_sink else None

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | str | None,
                cache: KVCache | None = None, routing: Routing | None = None) -> Tensor:
        B, L, _ = x.shape
        H, Hkv = self.num_heads, self.num_kv_heads
        qkv = self._project(self.qkv, x, routing).view(B, L, H + 2 * Hkv, self.head_dim)
        qk, v = qkv.split([H + Hkv, Hkv], dim=2)
        if self.q_norm is not None:
            q, k = qk.split([H, Hkv], dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
        q, k = apply_rotary(qk, *rope).split([H, Hkv], dim=2)  # queries and keys rotated in one pass
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v)
        gqa = self.num_heads != self.num_kv_heads
        if self.sink is not None:  # one more key (zeros) and value (zeros) whose logit is the head's sink
            mask = self._with_sink(mask, q.shape[2], k.shape[2], q.dtype, q.device)
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        elif mask is CAUSAL:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self._project(self.o, out.transpose(1, 2).reshape(B, L, -1), routing)

    @staticmethod
    def _project(proj: nn.Module, x: Tensor, routing: Routing | None) -> Tensor:
        if not isinstance(proj, nn.ModuleList):
            return proj(x)
        if routing is None:
            raise ValueError("attention with per-expert projections needs the tokens' routing")
        return dispatch(x, routing, lambda e, t, _scale: proj[e](t))

    def _with_sink(self, mask: Tensor | str | None, Lq: int, Lk: int, dtype: torch.dtype, device) -> Tensor:
        """The additive mask (B or 1, H, Lq, Lk + 1): 0 where a key is seen, -inf where not, the sink last."""
        if mask is CAUSAL:  # the query span ends where the key span does
            mask = torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril(Lk - Lq)[None, None]
        bias = torch.zeros(1, 1, Lq, Lk, dtype=dtype, device=device)
        if mask is not None:
            bias = bias.masked_fill(~mask, float("-inf"))
        B, H = bias.shape[0], self.num_heads
        sink = self.sink.to(dtype)[None, :, None, None].expand(B, H, Lq, 1)
        return torch.cat([bias.expand(B, H, Lq, Lk), sink], dim=-1)
