"""`Linear`: nn.Linear with a fast path for decoding on the CPU.

Decoding multiplies one token (or a few) by every weight matrix: a matrix-vector product whose speed is set by
how the weight streams from memory. PyTorch's CPU GEMV over nn.Linear's (out, in) layout runs on one thread
and well below memory bandwidth; the same product over an (in, out) copy cut into one slab per thread (a
batched matmul, which PyTorch spreads over its threads) runs 1.5-2.6x faster for one row on the 2-core dev
machine (`bench/gemv.py`, BENCHMARKS.md). So when no gradient is needed and at most `FAST_ROWS` rows come in
on the CPU, `linear` multiplies by such a copy, made lazily and rebuilt whenever the weight changes (its
version counter moves). Training and large inputs use F.linear untouched; parameters, state dicts and
checkpoints are nn.Linear's. The copy costs the weight's memory once more, in inference only:
`drop_slabs(model)` frees it (OmniDecoder does on `.train()`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAST_ROWS = 32  # bench/gemv.py: the slab path wins up to 64 rows and loses from 256; 32 keeps a margin


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, holder: nn.Module) -> Tensor:
    """x @ weight.T + bias; `holder` keeps the cached slabs of `weight`."""
    if x.device.type != "cpu" or (torch.is_grad_enabled() and weight.requires_grad):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    if rows > FAST_ROWS:
        return F.linear(x, weight, bias)
    slabs, bias_slabs = _slabs(weight, bias, holder)
    flat = x.reshape(1, rows, in_features).expand(slabs.shape[0], rows, in_features)
    out = torch.bmm(flat, slabs) if bias_slabs is None else torch.baddbmm(bias_slabs, flat, slabs)
    if rows == 1:
        return out.view(*x.shape[:-1], out_features)
    return out.transpose(0, 1).reshape(*x.shape[:-1], out_features)  # (T, rows, n) -> (rows, T * n)


def _slabs(weight: Tensor, bias: Tensor | None, holder: nn.Module) -> tuple[Tensor, Tensor | None]:
    """weight as (T, in, out/T) slabs and bias as (T, 1, out/T), T = threads (1 if out does not split evenly)."""
    threads = torch.get_num_threads()
    out_features, in_features = weight.shape
    T = threads if out_features % threads == 0 else 1
    key = (weight._version, weight.data_ptr(), weight.dtype, T, None if bias is None else bias._version)
    cached = holder.__dict__.get("_decode_slabs")
    if cached is None or cached[0] != key:
        w = weight.detach().view(T, out_features // T, in_features).transpose(1, 2).contiguous()
        b = None if bias is None else bias.detach().view(T, 1, out_features // T).clone()
        holder.__dict__["_decode_slabs"] = cached = (key, w, b)
    return cached[1], cached[2]


def drop_slabs(module: nn.Module) -> None:
    """Free the cached slab copies of every weight under `module`."""
    for m in module.modules():
        m.__dict__.pop("_decode_slabs", None)


class Linear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self)
