"""Text tokenizer: byte-level BPE trained with the `tokenizers` library, plus the token stream's special tokens.

Byte-level means any text round-trips exactly (unknown characters fall back to bytes). The special tokens
(`SPECIAL_TOKENS`: padding, sequence bounds, modality markers, task and turn tokens) are single ids that plain
text can never produce - not even text that spells one out, like "<boi>". Saved as a standard `tokenizer.json`,
which Hugging Face's tokenizers also read, and `words.json`: the words of the texts it was trained on, so that a
prompt's words outside them can be named (`unseen_words`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = (
    "<pad>", "<bos>", "<eos>",  # sequence
    "<boi>", "<eoi>", "<boa>", "<eoa>", "<ref>", "</ref>",  # modality boundaries (image, audio, edit reference)
    "<t2i>", "<i2t>", "<vqa>", "<edit>", "<tts>", "<asr>", "<lm>",  # tasks
    "<user>", "<assistant>", "<eot>",  # turns
)
TOKENIZER_NAME = "tokenizer.json"
WORDS_NAME = "words.json"
_PUNCTUATION = ".,;:!?\"'()"


def words_of(text: str) -> list[str]:
    """The words of `text`: split at white space, punctuation at either end dropped, empty ones left out."""
    return [w for w in (w.strip(_PUNCTUATION) for w in text.split()) if w]


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, words: Iterable[str] | None = None):
        """`words`: those of the texts it was trained on (None: not known, as for a tokenizer.json from elsewhere)."""
        self.tokenizer = tokenizer
        self.words = frozenset(words) if words is not None else None
        self.tokenizer.encode_special_tokens = True  # "<boi>" typed in text is text, not a marker
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens: {', '.join(missing)}")
        self.pad, self.bos, self.eos = (self.token_id(t) for t in ("<pad>", "<bos>", "<eos>"))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> TextTokenizer:
        """Learn merges from `texts`; the vocabulary holds the specials, the 256 bytes, then merges."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        words: set[str] = set()

        def read(texts: Iterable[str]) -> Iterable[str]:
            for text in texts:
                words.update(words_of(text))
                yield text

        tok.train_from_iterator(read(texts), trainer=trainer)
        return cls(tok, words)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None or token not in SPECIAL_TOKENS:
            raise ValueError(f"unknown special token {token!r}; known: {' '.join(SPECIAL_TOKENS)}")
        return i

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos] if bos else []) + ids + ([self.eos] if eos else [])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def unseen_words(self, text: str) -> list[str]:
        """The words of `text` (`words_of`) that none of the texts this tokenizer was trained on held, each named
        once, in order: for a model trained on those texts (ShapeWorld's: lower case, "color"), words it has never
        read, such as "colour", "hexagon" or a capitalised "Is". Empty where the training words are not known."""
        if self.words is None:
            return []
        return [w for w in dict.fromkeys(words_of(text)) if w not in self.words]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for vocab_size {self.vocab_size}")
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special)

    def save(self, directory: str | Path) -> Path:
        from omniar.checkpoint import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_NAME
        atomic_write(path, lambda p: self.tokenizer.save(str(p)))
        if self.words is not None:
            atomic_write(directory / WORDS_NAME, lambda p: Path(p).write_text(json.dumps(sorted(self.words))))
        else:
            (directory / WORDS_NAME).unlink(missing_ok=True)  # not another tokenizer's words
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer:
        path = Path(directory)
        path = path / TOKENIZER_NAME if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_NAME} at {path}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"corrupt tokenizer file {path}: {e}") from None
        words, words_path = None, path.with_name(WORDS_NAME)
        if words_path.is_file():  # tokenizers saved before it was written have none
            try:
                words = json.loads(words_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"corrupt words file {words_path}: {e}") from None
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ValueError(f"corrupt words file {words_path}: expected a list of words")
        return cls(tokenizer, words)
