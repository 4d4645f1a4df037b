"""One-codebook vector quantiser: k-means initialisation, EMA codebook updates, dead-code restarts.

The recipe of SoundStream §3.3 (and VQ-VAE-2's EMA updates): the codebook is not a parameter but an exponential
moving average of the encoder outputs assigned to each code; it starts from k-means on the first batch of encoder
outputs, and a code that no vector chose for `restart_after` consecutive training steps is moved onto a random
encoder output of the current batch, so the whole codebook stays in use. All randomness comes from a generator the
caller passes, so training with this quantiser resumes exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code (squared Euclidean distance) for every row of z (N, D)."""
    d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(1)
    return d.argmin(1)


def kmeans(z: Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on z (N, D) seeded by k-means++: (centres (k, D), cluster sizes (k,)).
    An empty cluster is re-seeded with a random row."""
    if len(z) < k:
        raise ValueError(f"k-means needs at least {k} vectors for {k} codes, got {len(z)}")
    centres = z.new_empty(k, z.shape[1])
    centres[0] = z[torch.randint(len(z), (1,), generator=generator)]
    d2 = (z - centres[0]).pow(2).sum(1)
    for i in range(1, k):  # k-means++: the next seed is drawn with probability ~ squared distance to the seeds
        centres[i] = z[torch.multinomial(d2 + 1e-12, 1, generator=generator)]
        d2 = torch.minimum(d2, (z - centres[i]).pow(2).sum(1))
    for _ in range(iters):
        ids = nearest_code(z, centres)
        counts = torch.bincount(ids, minlength=k).to(z.dtype)
        sums = torch.zeros_like(centres).index_add_(0, ids, z)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centres[empty] = z[torch.randint(len(z), (int(empty.sum()),), generator=generator)]
    counts = torch.bincount(nearest_code(z, centres), minlength=k).to(z.dtype)
    return centres, counts


class VectorQuantizer(nn.Module):
    def __init__(self, size: int, dim: int, decay: float = 0.99, restart_after: int = 25, eps: float = 1e-5):
        super().__init__()
        self.size, self.dim, self.decay, self.restart_after, self.eps = size, dim, decay, restart_after, eps
        self.register_buffer("codebook", torch.randn(size, dim))
        self.register_buffer("cluster_size", torch.ones(size))  # EMA of how many vectors chose each code
        self.register_buffer("embed_sum", self.codebook.clone())  # EMA of their sum
        self.register_buffer("unused_steps", torch.zeros(size, dtype=torch.long))  # training steps since last chosen
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """z (..., D) -> (straight-through quantised z, code ids (...), commitment loss). In training mode the
        codebook moves toward the batch afterwards (EMA) and dead codes restart."""
        flat = z.reshape(-1, self.dim)
        ids = nearest_code(flat.detach(), self.codebook)
        q = self.codebook[ids].view_as(z)
        commit = F.mse_loss(z, q)
        if self.training:
            self._update(flat.detach(), ids, generator)
        return z + (q - z).detach(), ids.view(z.shape[:-1]), commit

    def encode(self, z: Tensor) -> Tensor:
        """Code ids (...) of z (..., D); never updates the codebook."""
        return nearest_code(z.reshape(-1, self.dim), self.codebook).view(z.shape[:-1])

    def lookup(self, ids: Tensor) -> Tensor:
        return self.codebook[ids]

    @torch.no_grad()
    def kmeans_init(self, z: Tensor, iters: int = 10, generator: torch.Generator | None = None) -> None:
        """Start the codebook (and its EMA statistics) from k-means on encoder outputs z (..., D)."""
        centres, counts = kmeans(z.reshape(-1, self.dim).float(), self.size, iters, generator)
        self.codebook.copy_(centres)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centres * counts[:, None])
        self.unused_steps.zero_()
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, flat: Tensor, ids: Tensor, generator: torch.Generator | None) -> None:
        counts = torch.bincount(ids, minlength=self.size).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.size * self.eps) * n  # Laplace: no division by 0
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.unused_steps >= self.restart_after).nonzero().squeeze(1)
        if len(dead):
            new = flat[torch.randint(len(flat), (len(dead),), generator=generator)]
            self.codebook[dead] = new
            self.embed_sum[dead] = new
            self.cluster_size[dead] = 1.0
            self.unused_steps[dead] = 0
