"""Finite-state decoding (AR-Omni): every row of a batch has a mode that follows the markers it emits.

The mode decides what the next token may be and how it is drawn:

    mode         entered by                 allowed next tokens                      drawn
    INSTRUCTION  <user> (or a greedy task)  text (may open <boa> / <boi>, end)       greedy
    RESPONSE     <assistant>                text (may open <boa> / <boi>, end)       sampled (rules.response)
    SPEECH       <boa>                      speech codes, <eoa>                      greedy (rules.speech)
    IMAGE        <boi>                      image codes, exactly `image_tokens` of   sampled (rules.image),
                                            them, then <eoi> is forced               or by a bitwise head
    DONE         a stop token (<eos>, ...)  <pad> only                               forced

<eoa> and <eoi> return the row to the text mode it left. A row of a greedy task (ASR, TTS) draws text greedily
in every text mode. Rows of one batch can be in different modes at once: the rule of each row is applied to its
own logits in one call (per-row sampling parameters, a per-row vocabulary mask).

The vocabulary is the joint id space of the stream (`JointVocab`): text ids (with the markers), then speech
codes, then image codes when images are ids of the vocabulary. When images are drawn by a bitwise head instead
(`image` = None), IMAGE rows are drawn by the caller, which hands the codes in through `advance`; the decoder
still counts them and forces <eoi>.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor

from omniar.generation.sampling import Generators, SamplingParams, sample

NEG_INF = float("-inf")


class Mode(IntEnum):
    INSTRUCTION = 0
    RESPONSE = 1
    SPEECH = 2
    IMAGE = 3
    DONE = 4


@dataclass(frozen=True)
class JointVocab:
    """The layout of a joint id space: `text` ids [0, text), `speech` codes, optional `image` codes, markers."""

    text: int  # text ids (markers included) are [0, text)
    speech: range = range(0)  # speech code ids
    image: range | None = None  # image code ids; None: images are drawn by a bitwise head, not from the logits
    markers: dict[str, int] = field(default_factory=dict)  # boa eoa boi eoi pad user assistant, stops: eos eot

    REQUIRED = ("pad", "boa", "eoa", "boi", "eoi", "user", "assistant")

    def __post_init__(self) -> None:
        missing = [m for m in self.REQUIRED if m not in self.markers]
        if missing:
            raise ValueError(f"JointVocab lacks marker ids for: {', '.join(missing)}")
        if any(not 0 <= i < self.text for i in self.markers.values()):
            raise ValueError(f"marker ids must be text ids in [0, {self.text}), got {self.markers}")
        if len(self.speech) and self.speech.start < self.text:
            raise ValueError(f"speech codes {self.speech} overlap the text ids [0, {self.text})")
        if self.image is not None and len(self.image) and self.image.start < max(self.text, self.speech.stop):
            raise ValueError(f"image codes {self.image} overlap the text or speech ids")

    @property
    def size(self) -> int:
        return max(self.text, self.speech.stop, self.image.stop if self.image is not None else 0)

    @property
    def stops(self) -> list[int]:
        return [self.markers[m] for m in ("eos", "eot") if m in self.markers]

    def modality_of(self, ids: Tensor) -> Tensor:
        """0 text, 1 speech, 2 image, per id."""
        out = torch.zeros_like(ids)
        if len(self.speech):
            out = torch.where((ids >= self.speech.start) & (ids < self.speech.stop), 1, out)
        if self.image is not None and len(self.image):
            out = torch.where((ids >= self.image.start) & (ids < self.image.stop), 2, out)
        return out


GREEDY = SamplingParams(temperature=0.0)


@dataclass
class DecodingRules:
    """How each mode draws. The defaults are AR-Omni's reference: greedy after an instruction marker and inside
    speech; temperature 1.2, top-p 0.96 and repetition penalty 1.2 in open responses."""

    response: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=1.2, top_p=0.96,
                                                                            repetition_penalty=1.2))
    instruction: SamplingParams = field(default_factory=lambda: GREEDY)
    speech: SamplingParams = field(default_factory=lambda: GREEDY)
    image: SamplingParams = field(default_factory=SamplingParams)
    image_tokens: int = 0  # tokens of one image: after <boi>, exactly this many image codes, then <eoi>
    min_speech_tokens: int = 1  # <eoa> is allowed only after this many codes (no empty speech)
    may_open: tuple[str, ...] = ("speech", "image")  # the spans a text mode may open (() for text-only answers)

    def __post_init__(self) -> None:
        for name in ("response", "instruction", "speech", "image"):
            p = getattr(self, name)
            if not all(isinstance(getattr(p, k), (int, float)) for k in ("temperature", "top_k", "top_p",
                                                                          "repetition_penalty")):
                raise ValueError(f"DecodingRules.{name} must use one value per knob (rows get theirs by mode)")
        if self.image_tokens < 0 or self.min_speech_tokens < 0:
            raise ValueError("image_tokens and min_speech_tokens must be >= 0")
        unknown = set(self.may_open) - {"speech", "image"}
        if unknown:
            raise ValueError(f"may_open takes 'speech' and 'image', got {sorted(unknown)}")

    def of(self, mode: Mode) -> SamplingParams:
        return {Mode.INSTRUCTION: self.instruction, Mode.RESPONSE: self.response, Mode.SPEECH: self.speech,
                Mode.IMAGE: self.image, Mode.DONE: GREEDY}[mode]


class FiniteStateDecoder:
    """The per-row mode machine of one batched decode. Typical use:

        fsm = FiniteStateDecoder(vocab, rules, batch=B, greedy=[task in ("asr", "tts") for task in tasks])
        fsm.observe(prompt_ids)              # the prompt's markers set each row's mode
        while not fsm.done.all():
            token = fsm.step(logits)         # constrained, each row by its own rule; updates the modes
            logits = model(token)            # (the caller feeds the tokens back)
    """

    def __init__(self, vocab: JointVocab, rules: DecodingRules | None = None, batch: int = 1,
                 greedy: Sequence[bool] | Tensor | None = None, start: Mode = Mode.INSTRUCTION,
                 stops: Sequence[int] | None = None):
        """`stops`: the tokens that end a row (default <eos> and <eot>; e.g. <eoa> too, to stop after speech)."""
        self.vocab, self.rules, self.batch = vocab, rules or DecodingRules(), batch
        self.stops = list(vocab.stops if stops is None else stops)
        if Mode(start) in (Mode.SPEECH, Mode.IMAGE, Mode.DONE):
            raise ValueError(f"rows start in a text mode, not {Mode(start).name}")
        self.greedy = torch.zeros(batch, dtype=torch.bool) if greedy is None else torch.as_tensor(greedy).bool()
        if self.greedy.shape != (batch,):
            raise ValueError(f"greedy has shape {tuple(self.greedy.shape)}, expected ({batch},)")
        if vocab.image is not None and not self.rules.image_tokens:
            raise ValueError("a vocabulary with image codes needs DecodingRules.image_tokens (tokens per image)")
        self.mode = torch.full((batch,), int(start), dtype=torch.long)
        self.text_mode = self.mode.clone()  # the text mode a speech or image span returns to
        self.count = torch.zeros(batch, dtype=torch.long)  # codes emitted in the current speech / image span
        self._allowed = self._masks()
        m = vocab.markers
        self._to_mode = {m["user"]: Mode.INSTRUCTION, m["assistant"]: Mode.RESPONSE, m["boa"]: Mode.SPEECH,
                         m["boi"]: Mode.IMAGE}

    # ---- the rule table -------------------------------------------------------------------------------------
    def _masks(self) -> dict[Mode, Tensor]:
        v, m = self.vocab, self.vocab.markers
        text = torch.zeros(v.size, dtype=torch.bool)
        text[: v.text] = True
        for name in ("pad", "eoa", "eoi"):  # closing what is not open, and padding, are never drawn
            text[m[name]] = False
        if not len(v.speech) or "speech" not in self.rules.may_open:
            text[m["boa"]] = False
        if (v.image is None and not self.rules.image_tokens) or "image" not in self.rules.may_open:
            text[m["boi"]] = False
        speech = torch.zeros(v.size, dtype=torch.bool)
        speech[v.speech.start: v.speech.stop] = True
        speech[m["eoa"]] = True
        image = torch.zeros(v.size, dtype=torch.bool)
        if v.image is not None:
            image[v.image.start: v.image.stop] = True
        done = torch.zeros(v.size, dtype=torch.bool)
        done[m["pad"]] = True
        return {Mode.INSTRUCTION: text, Mode.RESPONSE: text, Mode.SPEECH: speech, Mode.IMAGE: image, Mode.DONE: done}

    def allowed(self) -> Tensor:
        """(B, V) bool: the tokens each row may emit next (a forced token is the only one allowed)."""
        out = torch.stack([self._allowed[Mode(int(k))] for k in self.mode])
        forced = self.forced()
        rows = forced >= 0
        if rows.any():
            out[rows] = False
            out[rows, forced[rows]] = True
        speech = self.mode == Mode.SPEECH
        short = speech & (self.count < self.rules.min_speech_tokens)
        out[short, self.vocab.markers["eoa"]] = False
        return out

    def forced(self) -> Tensor:
        """(B,) the token a row must emit next (-1: none): <eoi> after a full image, <pad> when done."""
        out = torch.full((self.batch,), -1, dtype=torch.long)
        full = (self.mode == Mode.IMAGE) & (self.count >= self.rules.image_tokens)
        out[full] = self.vocab.markers["eoi"]
        out[self.mode == Mode.DONE] = self.vocab.markers["pad"]
        return out

    @property
    def done(self) -> Tensor:
        return self.mode == Mode.DONE

    @property
    def drawing_image(self) -> Tensor:
        """(B,) rows whose next token is an image code (the caller draws it when images are not vocabulary ids)."""
        return (self.mode == Mode.IMAGE) & (self.count < self.rules.image_tokens)

    # ---- one step -----------------------------------------------------------------------------------------------
    def step(self, logits: Tensor, previous: Tensor | None = None, generator: Generators = None,
             active: Tensor | None = None) -> Tensor:
        """Draw each row's next token from logits (B, V) under its mode's mask and rule, then advance. Rows not
        `active` (B,) draw nothing this step (-1) and keep their state."""
        if logits.shape != (self.batch, self.vocab.size):
            raise ValueError(f"logits have shape {tuple(logits.shape)}, expected {(self.batch, self.vocab.size)}")
        active = torch.ones(self.batch, dtype=torch.bool) if active is None else active.bool()
        if self.vocab.image is None and bool((self.drawing_image & active).any()):
            raise ValueError("rows are drawing image codes, which this vocabulary does not hold: draw them with the "
                             "bitwise head and pass them to advance()")
        allowed = self.allowed()
        allowed[~active, self.vocab.markers["pad"]] = True  # anything valid: their draw is discarded
        logits = logits.float().masked_fill(~allowed, NEG_INF)
        token = torch.where(active, sample(logits, self._params(), previous=previous, generator=generator), -1)
        self._update(token, observing=False)  # drawn under the mask: no need to check it again
        return token

    def _params(self) -> SamplingParams:
        """Per-row sampling parameters from each row's mode (greedy rows of a greedy task in text modes)."""
        rules = [self.rules.of(Mode(int(k))) for k in self.mode]
        text = (self.mode == Mode.INSTRUCTION) | (self.mode == Mode.RESPONSE)
        rules = [GREEDY if g and t else r for r, g, t in zip(rules, self.greedy.tolist(), text.tolist())]
        if all(r is rules[0] for r in rules):  # one rule for the batch: plain values keep sample()'s fast paths
            return rules[0]

        def knob(name: str, dtype=torch.float32) -> Tensor:
            return torch.tensor([getattr(r, name) for r in rules], dtype=dtype)

        return SamplingParams(temperature=knob("temperature"), top_k=knob("top_k", torch.long), top_p=knob("top_p"),
                              repetition_penalty=knob("repetition_penalty"))

    def observe(self, ids: Tensor | Sequence[Sequence[int]]) -> None:
        """Advance through given tokens (B, T) - e.g. the prompt - left to right; padding is skipped."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 2 or ids.shape[0] != self.batch:
            raise ValueError(f"observe takes ids (batch={self.batch}, T), got shape {tuple(ids.shape)}")
        pad = self.vocab.markers["pad"]
        for t in range(ids.shape[1]):
            col = ids[:, t]
            self._update(torch.where(col == pad, -1, col), observing=True)

    def advance(self, token: Tensor, check: bool = True) -> None:
        """Update the modes with the tokens (B,) just emitted (-1: no token for that row this step). With `check`,
        a token the row's mode does not allow is an error. A row drawing an image by a bitwise head passes its
        code (any value): it counts as one image token."""
        token = torch.as_tensor(token, dtype=torch.long).reshape(-1)
        if token.shape != (self.batch,):
            raise ValueError(f"advance takes one token per row ({self.batch}), got shape {tuple(token.shape)}")
        if check:
            rows = token >= 0
            if self.vocab.image is None:  # image codes from a bitwise head: any code is a valid image token
                rows &= ~self.drawing_image
            rows = rows.nonzero().squeeze(1)
            tok = token[rows]
            inside = tok < self.vocab.size
            ok = inside & self.allowed()[rows, tok.clamp(max=self.vocab.size - 1)]
            if not bool(ok.all()):
                row = int(rows[~ok][0])
                raise ValueError(f"row {row} emitted token {int(token[row])}, which its mode "
                                 f"{Mode(int(self.mode[row])).name} does not allow")
        self._update(token, observing=False)

    def _update(self, token: Tensor, observing: bool) -> None:
        """The transitions. While observing a prompt, <eoi> closes an image whatever its count (an understanding
        image is continuous features, not codes), and stop tokens are context (a user turn's <eot>)."""
        m, stops = self.vocab.markers, self.stops
        for b, tok in enumerate(token.tolist()):
            if tok < 0:
                continue
            mode = Mode(int(self.mode[b]))
            if mode == Mode.DONE:
                continue
            if mode == Mode.IMAGE:
                closes = tok == m["eoi"] and (observing or self.vocab.image is not None
                                              or self.count[b] >= self.rules.image_tokens)
                if not closes:  # an image code (from a bitwise head its value may be any int)
                    self.count[b] += 1
                    continue
            if mode == Mode.SPEECH and tok != m["eoa"]:
                self.count[b] += 1
                continue
            if tok in stops and not observing:  # a prompt's own turn ends (<eot>) are context, not the end
                self.mode[b] = Mode.DONE
            elif tok in (m["eoa"], m["eoi"]):
                self.mode[b] = self.text_mode[b]
            elif tok in self._to_mode:
                new = self._to_mode[tok]
                if new in (Mode.SPEECH, Mode.IMAGE):
                    self.count[b] = 0
                else:
                    self.text_mode[b] = new
                self.mode[b] = new
