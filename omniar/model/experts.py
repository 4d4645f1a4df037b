"""Modality-routed FFN experts (OneCAT §2.2): hard routing by each token's modality, no gate, no balancing.

Every layer has one attention and E SwiGLU experts. A token's modality picks its expert through the config's
`routing` map, so the routing is known before the forward pass: it is computed once per forward (`Routing`) and
reused by every layer. Each expert runs only on its own tokens (one gather before, one after: `dispatch`), and
padding positions - never a key, never a target - on none (their output is zeros), so a packed batch's padding
costs no expert's work. With `DecoderConfig.expert_attention` the attention's projections are routed the same
way (Mixture-of-Transformers).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from omniar.masks import PAD_DOC
from omniar.modality import Modality
from omniar.model.adapter import ScaleAdaptedSwiGLU, ScaleIds
from omniar.model.config import DecoderConfig
from omniar.model.ffn import SwiGLU


class Routing:
    """Which expert serves which token of a (B, L) batch; shared by all layers of one forward. `scale` (B, L) is
    each token's scale for a Scale-Aware Adapter (None: the batch has no scale-adapted tokens). An expert id of
    `num_experts` marks padding, which no expert serves (`dispatch` gives it zeros)."""

    def __init__(self, expert_ids: Tensor | None, num_experts: int, default: int = 0, scale: Tensor | None = None):
        self.single: int | None = default  # all tokens go to this expert: no gather needed
        # (expert, token count, their scales) in sorted order; expert None: padding
        self.groups: list[tuple[int | None, int, ScaleIds | None]] = []
        self.order: Tensor | None = None  # tokens sorted by expert
        self.inverse: Tensor | None = None
        self.scale = None if scale is None else ScaleIds(scale)  # all tokens' (B * L), while single
        if expert_ids is None or num_experts == 1:
            return
        flat = expert_ids.reshape(-1)
        counts = torch.bincount(flat, minlength=num_experts + 1).tolist()
        used = [e for e, c in enumerate(counts[:num_experts]) if c]
        padding = counts[num_experts]
        if not used:  # padding only: the default expert has it, as a batch of one expert would
            return
        if len(used) == 1 and not padding:
            self.single = used[0]
            return
        self.single, self.scale = None, None
        if scale is not None:  # sorted by expert, then by scale: a Scale-Aware Adapter gets contiguous scales
            scale = scale.reshape(-1)
            self.order = torch.argsort(flat * (int(scale.max()) + 1) + scale, stable=True)
            scale = scale[self.order]
        else:
            self.order = torch.argsort(flat, stable=True)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(len(flat), device=flat.device)
        at = 0
        for e in used:
            part = None if scale is None else ScaleIds(scale[at : at + counts[e]], is_sorted=True)
            self.groups.append((e, counts[e], part))
            at += counts[e]
        if padding:
            self.groups.append((None, padding, None))


class Router(nn.Module):
    """Maps per-position modality ids to a `Routing`, through the config's modality -> expert table."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self._table = [config.expert_of(m) for m in Modality]
        self.register_buffer("table", torch.empty(len(self._table), dtype=torch.long), persistent=False)
        self.num_experts = len(config.experts)
        self.text_expert = self._table[Modality.TEXT]
        self.prompt_expert = config.experts.index(config.prompt_expert) if config.prompt_expert else None
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Fill the (non-persistent) table; also after the model was built on the meta device."""
        with torch.no_grad():
            self.table.copy_(torch.tensor(self._table, dtype=torch.long, device="cpu"))

    def forward(self, modality: Tensor | None, scale: Tensor | None = None, doc: Tensor | None = None) -> Routing:
        """`doc` (B, L): the positions' documents, for `DecoderConfig.prompt_expert`."""
        if modality is None or self.num_experts == 1:
            return Routing(None, self.num_experts, self.text_expert, scale if modality is not None else None)
        ids = self.table[modality]
        if self.prompt_expert is not None and doc is not None:
            ids = torch.where(prompt_positions(modality, doc), self.prompt_expert, ids)
        if doc is not None:  # padding (never a key, never a target): no expert's work
            ids = ids.masked_fill(doc == PAD_DOC, self.num_experts)
        return Routing(ids, self.num_experts, self.text_expert, scale)


def prompt_positions(modality: Tensor, doc: Tensor) -> Tensor:
    """(B, L) bool: the text positions of documents (same row, same `doc`, not padding) that hold next-scale
    generation positions. In cached decoding the prompt's prefill carries the first scale's positions, so a
    prompt is routed there as in training."""
    gen, text = modality == Modality.IMAGE_GEN, modality == Modality.TEXT
    if not (bool(gen.any()) and bool(text.any())):  # e.g. a next-scale decoding step after the prefill
        return torch.zeros_like(gen)
    B = modality.shape[0]
    d = doc.clamp(min=0)
    key = torch.arange(B, device=doc.device)[:, None] * (int(d.max()) + 1) + d
    generating = torch.zeros(int(key.max()) + 1, dtype=torch.bool, device=doc.device)
    generating[key[gen]] = True
    return text & (doc >= 0) & generating[key]


class _Permute(torch.autograd.Function):
    """Rows of x in the order `index`; the gradient goes back by the inverse permutation - a gather both ways,
    where indexing's backward would scatter-add (slower on the CPU, for what a permutation never needs)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def dispatch(x: Tensor, routing: Routing, run) -> Tensor:
    """Apply `run(expert, tokens, scale)` to each expert's tokens of x (..., D) and put the outputs (..., D_out)
    back in x's order, `scale` the tokens' `ScaleIds` (or None). One expert for all: it sees x as is; several: flat
    sorted groups (n, D)."""
    if routing.single is not None:
        return run(routing.single, x, routing.scale)
    flat = _Permute.apply(x.reshape(-1, x.shape[-1]), routing.order, routing.inverse)
    outs, at = [], 0
    for e, n, scale in routing.groups:
        if e is None:  # padding, sorted last: zeros of the experts' output width
            outs.append(outs[-1].new_zeros(n, outs[-1].shape[-1]))
            continue
        outs.append(run(e, flat[at : at + n], scale))
        at += n
    return _Permute.apply(torch.cat(outs), routing.inverse, routing.order).reshape(*x.shape[:-1], -1)


class ModalityExperts(nn.Module):
    """E SwiGLU experts; with E == 1 this is the dense FFN of Qwen2. The expert named by
    `config.scale_adapter_expert` carries the Scale-Aware Adapter when `config.scale_adapter_rank` > 0."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        D, inter = config.hidden_size, config.intermediate_size
        self.adapted = config.experts.index(config.scale_adapter_expert) if config.scale_adapter_rank else None
        self.experts = nn.ModuleList(
            ScaleAdaptedSwiGLU(D, inter, config.num_scales, config.scale_adapter_rank, config.scale_adapter_alpha)
            if e == self.adapted else SwiGLU(D, inter) for e in range(len(config.experts)))

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        return dispatch(x, routing, self._run)

    def _run(self, e: int, x: Tensor, scale: ScaleIds | None) -> Tensor:
        return self.experts[e](x, scale) if e == self.adapted else self.experts[e](x)


def upcycle_experts(model: nn.Module, experts: tuple[str, ...], routing: dict[str, str],
                    attention: bool = False) -> nn.Module:
    """Turn a dense model into a modality-expert model by copying its FFN into every expert (OneCAT upcycling);
    with `attention` (or a model that has `expert_attention` already) its attention projections too
    (Mixture-of-Transformers).

    Before any training the copies are identical, so every token's output is unchanged.
    """
    from omniar.model.decoder import OmniDecoder  # local import: decoder imports this module

    if not isinstance(model, OmniDecoder):
        raise TypeError(f"upcycle_experts needs an OmniDecoder, got {type(model).__name__}")
    if len(model.config.experts) != 1:
        raise ValueError(f"model already has experts {model.config.experts}; upcycle a dense model")
    attention = attention or model.config.expert_attention
    cfg = DecoderConfig.from_dict({**model.config.to_dict(), "experts": tuple(experts), "routing": dict(routing),
                                   "expert_attention": attention})
    new = OmniDecoder(cfg).to(next(model.parameters()).dtype)
    projection = re.compile(r"\.mixer\.(qkv|o)(\.0)?\.(weight|bias)$")  # plain, or one expert's own
    state = {}
    for name, t in model.state_dict().items():
        m = projection.search(name) if attention else None
        if ".ffn.experts.0." in name:
            for e in range(len(experts)):
                state[name.replace(".ffn.experts.0.", f".ffn.experts.{e}.")] = t.clone()
        elif m is not None:
            for e in range(len(experts)):
                state[name[: m.start()] + f".mixer.{m.group(1)}.{e}.{m.group(3)}"] = t.clone()
        else:
            state[name] = t
    new.load_state_dict(state, strict=True)
    return new
