"""Small-batch matmul on the CPU: nn.Linear's F.linear vs omniar's threaded slab path (omniar.model.linear).

    python bench/gemv.py [--rows 1 8 64 256 2048]

Multiplies `rows` inputs by every weight matrix of the `qwen2-bench` model in turn (about 21 MB of fp32 weights,
more than the cache holds, as in decoding) and prints the time per pass for each path. This is the measurement
behind `FAST_ROWS` and the decode fast path.
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
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 256, 2048])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    model = OmniDecoder(preset("qwen2-bench")).eval()
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    mb = sum(m.weight.numel() for m in layers) * 4 / 2**20
    print(f"{len(layers)} weight matrices, {mb:.1f} MiB fp32 | threads {torch.get_num_threads()}")
    print()
    print("| rows | F.linear ms/pass | slab path ms/pass | speed-up |")
    print("|---:|---:|---:|---:|")
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

            repeats = args.repeats if rows <= 256 else 3
            t_plain, t_slab = per_pass(plain, repeats), per_pass(slabs, repeats)
            print(f"| {rows} | {t_plain * 1e3:.2f} | {t_slab * 1e3:.2f} | {t_plain / t_slab:.2f}x |")


if __name__ == "__main__":
    main()
