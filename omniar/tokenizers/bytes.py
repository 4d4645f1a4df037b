"""A byte-level text tokenizer: UTF-8 bytes 0..255 plus special tokens. Lossless for any text, no training.

The learned BPE tokenizer of the tokenizer issue takes its place for real corpora.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<bos>", "<eos>", "<pad>")
TOKENIZER_NAME = "tokenizer.json"


class ByteTokenizer:
    kind = "bytes"

    def __init__(self) -> None:
        self.special = {name: 256 + i for i, name in enumerate(SPECIALS)}
        self.bos, self.eos, self.pad = (self.special[n] for n in SPECIALS)
        self.vocab_size = 256 + len(SPECIALS)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.bos] if bos else []) + ids + ([self.eos] if eos else [])

    def decode(self, ids) -> str:
        """Bytes back to text; special tokens are dropped, invalid UTF-8 is replaced."""
        return bytes(i for i in (int(t) for t in ids) if i < 256).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / TOKENIZER_NAME).write_text(json.dumps({"kind": self.kind, "specials": list(SPECIALS)}))

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        path = Path(directory) / TOKENIZER_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_NAME} in {directory}")
        kind = json.loads(path.read_text()).get("kind")
        if kind != cls.kind:
            raise ValueError(f"{path} holds a {kind!r} tokenizer, not {cls.kind!r}")
        return cls()
