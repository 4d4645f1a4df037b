"""Multi-scale residual bitwise quantisation (Infinity's BSQ over VAR's scales), with bitwise self-correction.

For scales s_1 < ... < s_K (e.g. 1, 2, 3, 4, 6, 8 on an 8 x 8 latent f with d channels):
    r_k   = area-downsample(f - f_hat, s_k x s_k)
    u_k   = r_k / ||r_k|| per token;  q_k = sign(u_k) / sqrt(d)     (straight-through in training)
    bits  = q_k > 0                                                  (d bits per token)
    f_hat = f_hat + gain_k * phi(bicubic-upsample(q_k))               (phi: optional 3x3 conv refinement)
Decoding sums the scales' contributions from bits alone. The AR input for scale k + 1 is f_hat after scale k,
area-downsampled to s_{k+1}. With a `BitPrior` the quantiser also returns the rate of its bits given the earlier
scales (bit_prior.py). Bitwise self-correction (Infinity): flip bits of each scale with probability p,
accumulate the corrupted codes, and compute every later scale's target against the corrupted accumulation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiScaleBSQ(nn.Module):
    def __init__(self, dim: int, scales: tuple[int, ...], refine: bool = True):
        super().__init__()
        if list(scales) != sorted(set(scales)):
            raise ValueError(f"scales must be strictly increasing, got {scales}")
        self.dim, self.scales = dim, tuple(scales)
        self.gain = nn.Parameter(torch.ones(len(scales)))
        self.refine = nn.Conv2d(dim, dim, 3, padding=1) if refine else None
        if self.refine is not None:
            nn.init.zeros_(self.refine.weight)
            nn.init.zeros_(self.refine.bias)

    # ---- pieces ---------------------------------------------------------------------------------------------
    def quantize(self, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(straight-through codes, bits, unit vectors) of residual tokens r (B, d, s, s)."""
        u = F.normalize(r, dim=1)
        q = torch.where(u >= 0, 1.0, -1.0) / math.sqrt(self.dim)
        return u + (q - u).detach(), q > 0, u

    def codes(self, bits: Tensor) -> Tensor:
        return (bits.float() * 2 - 1) / math.sqrt(self.dim)

    def contribution(self, q: Tensor, k: int, size: int) -> Tensor:
        x = F.interpolate(q, size=(size, size), mode="bicubic", align_corners=False) if q.shape[-1] != size else q
        if self.refine is not None:
            x = x + self.refine(x)
        return self.gain[k] * x

    @staticmethod
    def down(x: Tensor, size: int) -> Tensor:
        return F.interpolate(x, size=(size, size), mode="area") if x.shape[-1] != size else x

    # ---- quantise / decode -------------------------------------------------------------------------------------
    def forward(self, f: Tensor, prior: nn.Module | None = None) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
        """f (B, d, H, H) -> (f_hat with straight-through gradients, bits per scale, losses): "commit" and "balance",
        and with a `prior` (`BitPrior`) "rate", the nats per bit of each scale's soft bits under it."""
        if f.shape[1] != self.dim or f.shape[-1] != self.scales[-1]:
            side = self.scales[-1]
            raise ValueError(f"latent must be (B, {self.dim}, {side}, {side}), got {tuple(f.shape)}")
        size = f.shape[-1]
        f_hat = torch.zeros_like(f)
        bits, commit, balance, rate = [], f.new_zeros(()), f.new_zeros(()), f.new_zeros(())
        for k, s in enumerate(self.scales):
            q, b, u = self.quantize(self.down(f - f_hat, s))
            soft = (u * math.sqrt(self.dim)).clamp(-1, 1) * 0.5 + 0.5  # ~ probability that each bit is 1
            if prior is not None:  # the context is what a generator sees at scale k (bit_prior.py)
                rate = rate + F.binary_cross_entropy_with_logits(prior(f_hat.detach(), k), soft)
            f_hat = f_hat + self.contribution(q, k, size)
            bits.append(b)
            commit = commit + ((u - q.detach()) ** 2).mean()  # per element, as Infinity
            balance = balance + ((soft.mean(dim=(0, 2, 3)) - 0.5) ** 2).mean()
        losses = {"commit": commit / len(self.scales), "balance": balance / len(self.scales)}
        if prior is not None:
            losses["rate"] = rate / len(self.scales)
        return f_hat, bits, losses

    def decode_bits(self, bits: list[Tensor]) -> Tensor:
        """Latent f_hat from bits per scale (B, d, s_k, s_k)."""
        self._check_bits(bits)
        size = self.scales[-1]
        f_hat = 0
        for k, b in enumerate(bits):
            f_hat = f_hat + self.contribution(self.codes(b), k, size)
        return f_hat

    def contexts(self, bits: list[Tensor]) -> list[Tensor]:
        """f_hat before each scale k (B, d, H, H) - zeros before the first - from bits per scale."""
        self._check_bits(bits)
        size = self.scales[-1]
        f_hat = torch.zeros(bits[0].shape[0], self.dim, size, size, device=bits[0].device)
        out = [f_hat]
        for k, b in enumerate(bits[:-1]):
            f_hat = f_hat + self.contribution(self.codes(b), k, size)
            out.append(f_hat)
        return out

    def ar_inputs(self, bits: list[Tensor]) -> list[Tensor]:
        """Teacher-forcing inputs: for k >= 1, f_hat after scales < k, downsampled to s_k (VAR's next-scale input)."""
        return [self.down(c, s) for c, s in zip(self.contexts(bits)[1:], self.scales[1:])]

    def self_correct(self, f: Tensor, flip_prob: Tensor, generator: torch.Generator | None = None
                     ) -> tuple[list[Tensor], list[Tensor]]:
        """Infinity's bitwise self-correction: (AR inputs, targets) when each earlier scale's bits are flipped with
        probability flip_prob (B,) and later targets are recomputed against the corrupted accumulation."""
        size = f.shape[-1]
        p = flip_prob.view(-1, 1, 1, 1)
        f_hat = torch.zeros_like(f)
        inputs, targets = [], []
        for k, s in enumerate(self.scales):
            _, target, _ = self.quantize(self.down(f - f_hat, s))
            targets.append(target)
            # drawn where the generator lives (a CPU generator flips the same bits for a model on any device)
            where = generator.device if generator is not None else f.device
            flip = torch.rand(target.shape, generator=generator, device=where).to(f.device) < p
            f_hat = f_hat + self.contribution(self.codes(target ^ flip), k, size)
            if k + 1 < len(self.scales):
                inputs.append(self.down(f_hat, self.scales[k + 1]))
        return inputs, targets

    def _check_bits(self, bits: list[Tensor]) -> None:
        if len(bits) != len(self.scales):
            raise ValueError(f"expected bits for {len(self.scales)} scales, got {len(bits)}")
        for s, b in zip(self.scales, bits):
            if tuple(b.shape[1:]) != (self.dim, s, s):
                raise ValueError(f"bits of scale {s} must be (B, {self.dim}, {s}, {s}), got {tuple(b.shape)}")
