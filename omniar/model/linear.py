"""`Linear`: nn.Linear with fast paths for inference on the CPU.

Inference multiplies a few rows (decoding) or a known set of row counts (next-scale's scales, a prompt) by every
weight matrix, with no gradient. PyTorch's `F.linear` on the CPU runs MKL's sgemm, which on these shapes is far
from the machine's peak (`bench/gemv.py`, BENCHMARKS.md "Small-batch matmul"), so when no gradient is needed:

- at most `FAST_ROWS` rows: an (in, out) copy of the weight cut into one slab per thread, multiplied as a batched
  matmul (which PyTorch spreads over its threads): a matrix-vector product is set by how the weight streams from
  memory, and this runs 1.5-2.6x faster than F.linear's one-thread GEMV for one row. The copy is made lazily and
  rebuilt whenever the weight changes (its version counter moves); it costs the weight's memory once more, in
  inference only: `drop_slabs(model)` frees it (OmniDecoder does on `.train()`).
- more rows, fp32: oneDNN's matmul (the kernel PyTorch's own CPU compiler fuses linear layers into), 1.3-2.3x
  F.linear's speed from 18 rows up on the machines measured. It builds a kernel per shape once (~0.3-1 ms,
  cached by oneDNN), which inference, whose shapes repeat, pays back at once.

Training (a weight or input that needs its gradient) always takes `F.linear` untouched: oneDNN's op has no
backward, and there every packed batch brings new row counts. Parameters, state dicts and checkpoints are
nn.Linear's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAST_ROWS = 8  # bench/gemv.py: the slab path wins at 1 row, ties oneDNN at 8 and loses to it from 18
# oneDNN's matmul for larger inference inputs on the CPU; False (or a build without oneDNN): F.linear
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, holder: object) -> Tensor:
    """x @ weight.T + bias; `holder` (any object with a `__dict__`) keeps the cached slabs of `weight`."""
    if x.device.type != "cpu" or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    if rows > FAST_ROWS:
        if ONEDNN and x.dtype == weight.dtype == torch.float32 and rows:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return F.linear(x, weight, bias)
    slabs, bias_slabs = _slabs(weight, bias, holder)
    flat = x.reshape(1, rows, in_features).expand(slabs.shape[0], rows, in_features)
    out = torch.bmm(flat, slabs) if bias_slabs is None else torch.baddbmm(bias_slabs, flat, slabs)
    if rows == 1:
        return out.view(*x.shape[:-1], out_features)
    return out.transpose(0, 1).reshape(*x.shape[:-1], out_features)  # (T, rows, n) -> (rows, T * n)


def _slabs(weight: Tensor, bias: Tensor | None, holder: object) -> tuple[Tensor, Tensor | None]:
    """weight as (T, in, out/T) slabs and bias as (T, 1, out/T), T = threads (1 if out does not split evenly)."""
    threads = torch.get_num_threads()
    out_features, in_features = weight.shape
    T = threads if out_features % threads == 0 else 1
    key = (_version(weight), weight.data_ptr(), weight.dtype, T, None if bias is None else _version(bias))
    cached = holder.__dict__.get("_decode_slabs")
    if cached is None or cached[0] != key:
        w = weight.detach().view(T, out_features // T, in_features).transpose(1, 2).contiguous()
        b = None if bias is None else bias.detach().view(T, 1, out_features // T).clone()
        holder.__dict__["_decode_slabs"] = cached = (key, w, b)
    return cached[1], cached[2]


def _version(t: Tensor) -> int:
    """t's in-place version counter; 0 for an inference tensor, which has none (and which omniar never changes:
    the adapter's merged weights are new tensors whenever they are remade)."""
    return 0 if t.is_inference() else t._version


def drop_slabs(module: nn.Module) -> None:
    """Free the cached slab copies of every weight under `module`."""
    for m in module.modules():
        m.__dict__.pop("_decode_slabs", None)


class Linear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self)
