"""The image tokenizer's rate term: a context model of each scale's bits given the scales before it.

Learned image compression trains its encoder against the entropy of its codes under a learned prior (Balle et al.
2018, "Variational image compression with a scale hyperprior"; Minnen et al. 2018, context models). Here the
context of scale k is what a next-scale generator sees there: the accumulated latent of the earlier scales,
f_hat_{<k} (d x H x H). `BitPrior` (a small conv net) turns it into a logit for each of the d bits of every token of
scale k (area-downsampled to s_k x s_k). Its binary cross-entropy against the encoder's soft bits
(sign(u) relaxed to clamp(u * sqrt(d), -1, 1) / 2 + 1/2) is the rate in nats per bit:

    rate = mean_k BCE(prior(stop_grad(f_hat_{<k}), k), soft_bits_k)

Added to the tokenizer's loss with a weight (`train_image_tokenizer(rate_weight=...)`), it trains the prior to
predict and the encoder to be predictable: the later scales of the codes follow from the earlier ones wherever the
image allows it. Without it a scale's bits are largely unpredictable from the scales before it: a conv prior
trained on the plain tokenizer's codes gets only 70-76% of the bits of object tokens right, about what onecat-tiny
does. With weight 0.02 the generator's teacher-forced loss falls from 0.46 to 0.14 nats per bit at 0.7 dB less
PSNR - and yet the text-to-image score did not rise at the budgets tried (BENCHMARKS.md), so it is off by default.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BitPrior(nn.Module):
    def __init__(self, bits: int, scales: tuple[int, ...], width: int = 64, depth: int = 4):
        super().__init__()
        self.scales = tuple(scales)
        self.inp = nn.Conv2d(bits, width, 3, padding=1)
        self.scale = nn.Embedding(len(self.scales), width)
        self.body = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(depth))
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, bits, 1))

    def forward(self, context: Tensor, k: int) -> Tensor:
        """Logits (B, d, s_k, s_k) that each bit of scale k is 1, from f_hat_{<k} (B, d, H, H) (zeros for k = 0)."""
        h = self.inp(context) + self.scale.weight[k][None, :, None, None]
        for block in self.body:
            h = h + block(h)
        s = self.scales[k]
        return self.out(F.interpolate(h, size=(s, s), mode="area") if h.shape[-1] != s else h)
