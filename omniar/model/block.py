"""One decoder layer: a sequence mixer over all modalities' tokens and modality-routed FFN experts.

Norm placement (`config.norm_placement`):
- "pre" (Qwen2):        h = x + mixer(norm(x));  out = h + ffn(norm(h))
- "swin" (Chameleon / AR-Omni): h = x + norm(mixer(x));  out = h + norm(ffn(h)), used with QK-norm; the norm
  on each sublayer's output bounds what enters the residual stream, which keeps mixed-modal training stable.
"""

from __future__ import annotations

from torch import Tensor, nn

from omniar.model.attention import Attention
from omniar.model.config import DecoderConfig
from omniar.model.experts import ModalityExperts, Routing
from omniar.model.norm import RMSNorm


class DecoderBlock(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.swin = config.norm_placement == "swin"
        self.mixer = Attention(config)
        self.ffn = ModalityExperts(config)
        self.mixer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.ffn_norm = RMSNorm(config.hidden_size, config.norm_eps)

    def forward(self, x: Tensor, rope, mask, routing: Routing, cache=None) -> Tensor:
        if self.swin:
            x = x + self.mixer_norm(self.mixer(x, rope, mask, cache, routing))
            return x + self.ffn_norm(self.ffn(x, routing))
        x = x + self.mixer(self.mixer_norm(x), rope, mask, cache, routing)
        return x + self.ffn(self.ffn_norm(x), routing)
