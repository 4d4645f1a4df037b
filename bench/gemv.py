"""Inference matmul on the CPU: nn.Linear's F.linear (MKL) vs omniar's threaded slab path and oneDNN's matmul
(omniar.model.linear).

    python bench/gemv.py [--rows 1 8 18 64 256 2048]

Multiplies `rows` inputs by every weight matrix of the `qwen2-bench` model in turn (about 21 MB of fp32 weights,
more than the cache holds, as in decoding) and prints the time per pass for each path (oneDNN after one call per
shape, which builds its kernel - inference repeats its shapes). This is the measurement behind `FAST_ROWS`: the
slab path up to it, oneDNN above.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import omniar.model.linear as linear_module
from omniar import OmniDecoder, preset
from omniar.model.linear import Linear


def per_pass(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 18, 64, 256, 2048])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    model = OmniDecoder(preset("qwen2-bench")).eval()
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    mb = sum(m.weight.numel() for m in layers) * 4 / 2**20
    print(f"{len(layers)} weight matrices, {mb:.1f} MiB fp32 | threads {torch.get_num_threads()}")
    print()
    onednn = linear_module.ONEDNN
    print("| rows | F.linear ms/pass | slab path ms/pass | oneDNN ms/pass | slab speed-up | oneDNN speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    linear_module.FAST_ROWS = max(args.rows)  # time the slab path at every size
    with torch.inference_mode():
        for rows in args.rows:
            xs = [torch.randn(rows, m.in_features) for m in layers]

            def plain(xs=xs):
                for x, m in zip(xs, layers):
                    F.linear(x, m.weight, m.bias)

            def slabs(xs=xs):
                for x, m in zip(xs, layers):
                    m(x)

            def dnn(xs=xs):
                for x, m in zip(xs, layers):
                    torch.ops.mkldnn._linear_pointwise(x, m.weight, m.bias, "none", [], "")

            repeats = args.repeats if rows <= 256 else 3
            t_plain, t_slab = per_pass(plain, repeats), per_pass(slabs, repeats)
            t_dnn = per_pass(dnn, repeats) if onednn else float("nan")
            print(f"| {rows} | {t_plain * 1e3:.2f} | {t_slab * 1e3:.2f} | {t_dnn * 1e3:.2f} | "
                  f"{t_plain / t_slab:.2f}x | {t_plain / t_dnn:.2f}x |")


if __name__ == "__main__":
    main()
