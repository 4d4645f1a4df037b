"""Modalities of the token stream and the attention pattern each one uses inside its own segment."""

from __future__ import annotations

from enum import IntEnum


class Modality(IntEnum):
    """What a position holds. The id is stored per position and drives expert routing (OneCAT §2.2)."""

    TEXT = 0  # text tokens, boundary markers, task and turn tokens
    IMAGE_UND = 1  # understanding image: continuous patch features, read bidirectionally (OneCAT)
    IMAGE_GEN = 2  # next-scale generation tokens, block-causal across scales (VAR / Infinity / OneCAT)
    IMAGE_RASTER = 3  # single-scale discrete image codes decoded token by token (Chameleon / AR-Omni)
    SPEECH = 4  # discrete speech codec tokens (AR-Omni)

    @classmethod
    def parse(cls, name: str | int | Modality) -> Modality:
        if isinstance(name, Modality):
            return name
        if isinstance(name, int):
            return cls(name)
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown modality {name!r}; known: {known}") from None


class Pattern(IntEnum):
    """Visibility rule between two positions of the *same* segment (across segments it is always causal).

    A new mechanism (ACDiT's skip-causal mask) is one more member here and one more branch in
    `omniar.masks.build_attention_mask`.
    """

    CAUSAL = 0  # k <= q
    BIDIRECTIONAL = 1  # every position of the segment sees every other (OneCAT understanding image)
    BLOCK_CAUSAL = 2  # block(k) <= block(q): tokens of one scale see each other and all coarser scales


DEFAULT_PATTERN = {
    Modality.TEXT: Pattern.CAUSAL,
    Modality.IMAGE_UND: Pattern.BIDIRECTIONAL,
    Modality.IMAGE_GEN: Pattern.BLOCK_CAUSAL,
    Modality.IMAGE_RASTER: Pattern.CAUSAL,
    Modality.SPEECH: Pattern.CAUSAL,
}
