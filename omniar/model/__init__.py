from omniar.model.cache import DecoderCache, KVCache
from omniar.model.config import PRESETS, DecoderConfig, preset
from omniar.model.decoder import DecoderOutput, OmniDecoder
from omniar.model.experts import upcycle_experts

__all__ = ["PRESETS", "DecoderCache", "DecoderConfig", "DecoderOutput", "KVCache", "OmniDecoder", "preset",
           "upcycle_experts"]
