"""The image tokenizer: conv encoder -> multi-scale bitwise quantiser (`bsq.py`) -> conv decoder.

`encode(images) -> bits per scale`, `decode(bits) -> images`, `ar_inputs(bits)` for teacher forcing and
`self_correct(...)` for Infinity's bitwise self-correction. A single-scale schedule (`scales=(8,)`) is the raster
tokenizer AR-Omni-style models use. Images are float (B, 3, H, H) in [0, 1].

Semantic alignment (VA-VAE's idea, Yao et al. 2025, with a small vision model in place of DINOv2): with
`align_width` > 0 a 1 x 1 convolution maps the encoder's latent, area-pooled to each of `align_sizes`, onto the
feature map of a frozen vision model (train_image.py passes the ConvNet teacher's), and 1 - cosine is a training
loss. Shape identity then lives in the latent's coarse averages, the scales a generator decides first; without it
the latent codes pixels and a shape is a detail of a few edge tokens (BENCHMARKS.md, "A latent that knows shapes").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniar.checkpoint import WEIGHTS_NAME, load_state_strict, read_config, read_tensors, save_checkpoint
from omniar.model.config import build_strict
from omniar.tokenizers.bit_prior import BitPrior
from omniar.tokenizers.bsq import MultiScaleBSQ

MODEL_TYPE = "omniar-image-tokenizer"


@dataclass
class ImageTokenizerConfig:
    image_size: int = 64
    channels: int = 32  # width at half resolution; doubled at each further downsampling (at most 4x)
    bits: int = 16  # latent channels = bits per token
    downsample: int = 3  # stride 2 ** downsample
    scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    refine: bool = True
    # width of the bits' context model (bit_prior.py), trained with the rate term; 0: none
    prior_width: int = 0
    # width of the vision features the latent is aligned to in training (the 1 x 1 head's output); 0: none
    align_width: int = 0
    align_sizes: tuple[int, ...] = (2, 4, 8)  # grids the latent and the features are area-pooled to and compared at

    def __post_init__(self) -> None:
        self.scales = tuple(self.scales)
        self.align_sizes = tuple(self.align_sizes)
        latent = self.image_size // 2**self.downsample
        if self.image_size % 2**self.downsample or self.scales[-1] != latent:
            raise ValueError(f"the last scale must equal the latent side {latent} "
                             f"({self.image_size} / 2^{self.downsample}), got scales {self.scales}")
        if self.align_width and not all(1 <= a <= latent for a in self.align_sizes):
            raise ValueError(f"align_sizes must lie in [1, {latent}] (the latent side), got {self.align_sizes}")

    @property
    def tokens_per_image(self) -> int:
        return sum(s * s for s in self.scales)

    @classmethod
    def from_dict(cls, d: dict) -> ImageTokenizerConfig:
        return build_strict(cls, d)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _widths(cfg: ImageTokenizerConfig) -> list[int]:
    """Channel widths from the first (half-resolution) stage down to the latent stage."""
    return [cfg.channels * min(2**i, 4) for i in range(cfg.downsample)]


class Encoder(nn.Module):
    """Patchify by 2 (no convolution runs at full resolution), then residual stages halving the side."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        w = _widths(cfg)
        layers: list[nn.Module] = [nn.Conv2d(3, w[0], 4, stride=2, padding=1), ResBlock(w[0])]
        for i in range(cfg.downsample - 1):
            layers += [nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1), ResBlock(w[i + 1])]
        layers += [ResBlock(w[-1]), nn.GroupNorm(8, w[-1]), nn.SiLU(), nn.Conv2d(w[-1], cfg.bits, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Mirror of the encoder; the last stage emits 2 x 2 pixels per position (pixel shuffle)."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        w = _widths(cfg)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.bits, w[0], 3, padding=1), ResBlock(w[0]), ResBlock(w[0])]
        for i in range(cfg.downsample - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i], w[i + 1], 3, padding=1),
                       ResBlock(w[i + 1])]
        layers += [nn.GroupNorm(8, w[-1]), nn.SiLU(), nn.Conv2d(w[-1], 12, 3, padding=1), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class ImageTokenizer(nn.Module):
    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = MultiScaleBSQ(config.bits, config.scales, config.refine)
        self.decoder = Decoder(config)
        self.prior = BitPrior(config.bits, config.scales, config.prior_width) if config.prior_width else None
        self.align = nn.Conv2d(config.bits, config.align_width, 1) if config.align_width else None

    def _check(self, images: Tensor) -> None:
        s = self.config.image_size
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, {s}, {s}), got {getattr(images, 'shape', type(images).__name__)}")
        if tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"this tokenizer reads {s}x{s} images, got {images.shape[2]}x{images.shape[3]}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got {images.dtype}")

    def forward(self, images: Tensor, features: Tensor | None = None
                ) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
        """Training pass: (reconstruction, bits per scale, the quantiser's losses: commit, balance and, with a
        prior, rate); with `features` (B, align_width, g, g) of a frozen vision model, also "align"."""
        self._check(images)
        f = self.encoder(images * 2 - 1)
        f_hat, bits, losses = self.quantizer(f, self.prior)
        if features is not None:
            losses["align"] = self.alignment(f, features)
        return self.decoder(f_hat) * 0.5 + 0.5, bits, losses

    def alignment(self, latent: Tensor, features: Tensor) -> Tensor:
        """Mean over `align_sizes` of 1 - cosine between the aligned latent and the features, both area-pooled to
        that grid (per cell)."""
        if self.align is None:
            raise ValueError("this tokenizer has no alignment head (ImageTokenizerConfig.align_width = 0)")
        width, side = self.config.align_width, max(self.config.align_sizes)
        if features.dim() != 4 or features.shape[1] != width or features.shape[0] != latent.shape[0] or \
                features.shape[2] != features.shape[3] or features.shape[2] < side:
            raise ValueError(f"alignment features must be ({latent.shape[0]}, {width}, g, g) with g >= {side}, got "
                             f"{tuple(features.shape)}")
        down = self.quantizer.down
        return torch.stack([1 - F.cosine_similarity(self.align(down(latent, a)), down(features, a), dim=1).mean()
                            for a in self.config.align_sizes]).mean()

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """Bits per scale: list of bool (B, bits, s, s)."""
        self._check(images)
        return self.quantizer(self.encoder(images * 2 - 1))[1]

    @torch.no_grad()
    def latents(self, images: Tensor) -> list[Tensor]:
        """The encoder's latent area-downsampled to every scale, (B, bits, s, s) each: what scale k's bits code,
        less the earlier scales' reconstruction (the AR input); an edit's copy source (OmniConfig.edit_reference)."""
        self._check(images)
        f = self.encoder(images * 2 - 1)
        return [self.quantizer.down(f, s) for s in self.config.scales]

    @torch.no_grad()
    def decode(self, bits: list[Tensor]) -> Tensor:
        return self.decode_latent(self.quantizer.decode_bits(bits))

    @torch.no_grad()
    def decode_latent(self, f_hat: Tensor) -> Tensor:
        """Images (B, 3, S, S) in [0, 1] from a latent (B, bits, s, s) at the last scale's side: the scales' summed
        contributions (`decode` of all of them; fewer, mid-generation, give the image drawn so far)."""
        return (self.decoder(f_hat) * 0.5 + 0.5).clamp(0, 1)

    def ar_inputs(self, bits: list[Tensor]) -> list[Tensor]:
        return self.quantizer.ar_inputs(bits)

    @torch.no_grad()
    def bit_rate(self, bits: list[Tensor]) -> list[float]:
        """Nats per bit of each scale's bits (as `encode` gives them) under the prior (bit_prior.py): how much a
        generator must guess."""
        if self.prior is None:
            raise ValueError("this tokenizer has no bit prior (ImageTokenizerConfig.prior_width = 0)")
        return [F.binary_cross_entropy_with_logits(self.prior(c, k), b.float()).item()
                for k, (c, b) in enumerate(zip(self.quantizer.contexts(bits), bits))]

    def code_embedding(self, bits: Tensor) -> Tensor:
        """A token's perceptual embedding (N, width) for bits (N, d): the decoder's first convolution's response
        to a uniform field of that code - what the frozen decoder makes of the token, learned by reconstruction
        (AR-Omni's perceptual alignment target; omni/model.py)."""
        conv = self.decoder.net[0]
        return self.quantizer.codes(bits) @ conv.weight.sum((2, 3)).T + conv.bias

    def self_correct(self, images: Tensor, flip_prob: Tensor, generator=None) -> tuple[list[Tensor], list[Tensor]]:
        self._check(images)
        with torch.no_grad():
            return self.quantizer.self_correct(self.encoder(images * 2 - 1), flip_prob, generator)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        cfg = {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config)}
        return save_checkpoint(directory, cfg, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageTokenizer:
        directory = Path(directory)
        d = read_config(directory, MODEL_TYPE, "image tokenizer")
        model = cls(ImageTokenizerConfig.from_dict(d))
        load_state_strict(model, read_tensors(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))
        return model.eval()


def reconstruction_loss(recon: Tensor, target: Tensor) -> Tensor:
    """L1 + L2 + an image-gradient term (edges are what the judge reads)."""
    def grad(x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    (ry, rx), (ty, tx) = grad(recon), grad(target)
    return (F.l1_loss(recon, target) + F.mse_loss(recon, target)
            + 0.5 * (F.l1_loss(ry, ty) + F.l1_loss(rx, tx)))
