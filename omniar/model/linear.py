"""`Linear`: nn.Linear with fast paths for the CPU.

PyTorch's `F.linear` on the CPU runs MKL's sgemm, which at this project's shapes is far from the machine's peak
(`bench/gemv.py`, BENCHMARKS.md "Small-batch matmul"). So on the CPU, `linear` takes:

- at most `FAST_ROWS` rows, fp32, no gradient (decoding): an (in, out) copy of the weight cut into one slab per thread,
  multiplied as a batched matmul (which PyTorch spreads over its threads): a matrix-vector product is set by how
  the weight streams from memory, and this runs 1.5-2.6x faster than F.linear's one-thread GEMV for one row. The
  copy is made lazily and rebuilt whenever the weight changes (its version counter moves); it costs the weight's
  memory once more, in inference only: `drop_slabs(model)` frees it (OmniDecoder does on `.train()`).
- more rows, fp32: oneDNN's matmul (the kernel PyTorch's own CPU compiler fuses linear layers into), 1.3-2.3x
  F.linear's speed from 18 rows up on an AVX-512 CPU, 1.0-1.5x on an AVX2 one. It builds a kernel per shape once
  (~0.3-1 ms, cached by oneDNN), which inference, whose shapes repeat, pays back at once. In training
  (`_OneDNNLinear`) the forward and the input's gradient run it too where the CPU has AVX-512 (`ONEDNN_TRAINING`):
  the packed rows change every step, so every step builds new kernels, and still a training run there moves ~5%
  more tokens a second. Without AVX-512 MKL's kernels are as fast as oneDNN's, the builds are a loss and training
  keeps F.linear (a stage-2 step of `onecat-tiny` 0.93x the time on a Zen 3). The weight's gradient, a product
  over those rows, stays with MKL either way (oneDNN's new shapes cost more there than they save).

Otherwise (another device, another dtype, `ONEDNN` off, or training where `ONEDNN_TRAINING` is off) it is
`F.linear`. Parameters, state dicts and checkpoints are nn.Linear's.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

FAST_ROWS = 8  # bench/gemv.py: the slab path wins at 1 row, ties oneDNN at 8 and loses to it from 18
# oneDNN's matmul for more rows on the CPU, in inference and training; False (or a build without oneDNN): F.linear
# (x86 only: the machines measured; elsewhere oneDNN may sit on other kernels)
ONEDNN = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
# ... and in training too: only with AVX-512, whose oneDNN kernels outrun MKL's (which runs AVX2 kernels on AMD CPUs)
# by more than a step's new kernels cost (BENCHMARKS.md "Small-batch matmul": a Zen 5 step 1.07-1.09x faster with
# oneDNN; on an AVX2 Zen 3 0.93x the time without it)
ONEDNN_TRAINING = ONEDNN and torch.backends.cpu.get_cpu_capability() == "AVX512"


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, holder: object) -> Tensor:
    """x @ weight.T + bias; `holder` (any object with a `__dict__`) keeps the cached slabs of `weight`."""
    if x.device.type != "cpu":
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    onednn = ONEDNN and rows > FAST_ROWS and x.dtype == weight.dtype == torch.float32
    if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
        return _OneDNNLinear.apply(x, weight, bias) if onednn and ONEDNN_TRAINING else F.linear(x, weight, bias)
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if rows > FAST_ROWS or x.dtype != torch.float32:  # bf16: F.linear (oneDNN's) beats slabs at any row count
        return F.linear(x, weight, bias)
    slabs, bias_slabs = _slabs(weight, bias, holder)
    flat = x.reshape(1, rows, in_features).expand(slabs.shape[0], rows, in_features)
    out = torch.bmm(flat, slabs) if bias_slabs is None else torch.baddbmm(bias_slabs, flat, slabs)
    if rows == 1:
        return out.view(*x.shape[:-1], out_features)
    return out.transpose(0, 1).reshape(*x.shape[:-1], out_features)  # (T, rows, n) -> (rows, T * n)


class _OneDNNLinear(torch.autograd.Function):
    """F.linear whose forward and input gradient run oneDNN's matmul; the weight's gradient (a product over the
    rows, whose count changes every step) stays with MKL, which builds nothing per shape. Once differentiable
    (no double backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.mkldnn._linear_pointwise(grad, weight.t(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            gw = g.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


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
