"""Mixed-modality samples shared by the tests."""

import torch

from omniar import Sample, Segment
from omniar.model.config import DecoderConfig

FEAT = 12  # width of the understanding-image features in the test models
BOI, EOI, BOA, EOA, T2I, CAP = 90, 91, 92, 93, 94, 95


def mixed_config(**kw) -> DecoderConfig:
    base = dict(vocab_size=128, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                qkv_bias=True, experts=("text", "und", "gen", "speech"),
                routing={"image_und": "und", "image_gen": "gen", "speech": "speech"},
                feature_dims={"image_und": FEAT})
    base.update(kw)
    return DecoderConfig(**base)


def random_sinks(model):
    """Give every attention sink of an OmniDecoder a random logit (they start at 0), so tests see heads using them."""
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.sink.normal_(0, 2)
    return model


def mixed_sample(seed: int, text_len: int = 4) -> Sample:
    """task, text, <boi> understanding image (2x3 features) <eoi>, text, <boi> next-scale image <eoi>, speech, text."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(0, 80, (n,), generator=g)

    return Sample(task=T2I, segments=[
        Segment("text", ids(text_len), loss=True),
        Segment("image_und", features=torch.randn(6, FEAT, generator=g), grid=(2, 3), begin=BOI, end=EOI),
        Segment("text", ids(3), loss=True),
        Segment("image_gen", ids(1 + 4 + 9), scales=[(1, 1), (2, 2), (3, 3)], begin=BOI, end=EOI, loss=True),
        Segment("speech", ids(5), begin=BOA, end=EOA, loss=True, weight=2.0),
        Segment("text", ids(2), loss=True),
    ])
