"""omniar: unified multimodal autoregressive models - one decoder for text, images and speech."""

from omniar.generation import SamplingParams, generate
from omniar.masks import PositionMeta, build_attention_mask
from omniar.model import DecoderConfig, OmniDecoder, preset, upcycle_experts
from omniar.stream import Batch, Modality, Pattern, Sample, Segment, collate

__version__ = "0.1.0"
__all__ = ["Batch", "DecoderConfig", "Modality", "OmniDecoder", "Pattern", "PositionMeta", "Sample",
           "SamplingParams", "Segment", "build_attention_mask", "collate", "generate", "preset", "upcycle_experts"]
