"""`OmniModel`: the OneCAT composition - one decoder that understands, generates and edits images.

    text ids ------------------------------> token embedding ----\
    understanding image -> PatchEmbed ----> image_und features --+--> OmniDecoder (experts text / und / gen,
    target image -> ImageTokenizer bits -> AR inputs                |    causal text, bidirectional understanding
                 -> ScaleInputEmbed ------> image_gen features --/     image, block-causal scales)
    hidden at text positions -> text head (CE); hidden at generation positions -> BitwiseHead (bitwise CE)

An `Example` is one training item of a task; `OmniModel.batch(examples)` embeds every image of a batch in one
call (patch embedding, tokenizer encoding with bitwise self-correction) and lays the examples out as stream
`Sample`s (omniar.stream), so the decoder sees exactly the layout generation will build. Stream layouts:

    t2i      <t2i> prompt <boi> [scales 0..K-1] <eoi>
    caption  <i2t> <boi> [understanding image] <eoi> caption <eos>
    vqa      <vqa> <boi> [understanding image] <eoi> question <assistant> answer <eos>
    edit     <edit> <ref> [understanding image] </ref> instruction <boi> [scales] <eoi>
             (with `edit_reference`, each scale position also adds an embedding of the reference's latent there)
    text     <lm> text <eos>
    tts      <tts> text <boa> [speech codes] <eoa>                                   (with a speech codec)
    asr      <asr> <boa> [speech codes] <eoa> text <eos>
    svqa     <vqa> <boi> [understanding image] <eoi> <boa> [spoken question] <eoa> <assistant> answer <eos>
    chat     <user> <boi> [understanding image] <eoi> <boa> [spoken question] <eoa> <eot>
             <assistant> <boa> [spoken answer] <eoa> <eot>                       (a turn-marked conversation)
    s2i      <user> <boa> [spoken prompt] <eoa> <eot> <assistant> <boi> [image] <eoi> <eot>   (raster images)

Speech (AR-Omni) lives in the token stream as codec ids: the joint id space is the text tokenizer's ids, then the
codec's codes (`speech_offset` + code). With `speech_vocab="joint"` one softmax covers all of it (AR-Omni); with
"decoupled" each target is scored against its own modality's ids only - text, or speech codes plus <eoa> - as
OmniMamba's per-modality heads do (finite-state decoding applies the same split at inference).

Generation (`generate_images`) is next-scale decoding with the KV cache: one prefill that ends with scale 0's
start position, then one forward pass per further scale; classifier-free guidance runs the conditional and
unconditional rows in the same batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniar.checkpoint import WEIGHTS_NAME, load_state_strict, read_config, read_tensors, save_checkpoint
from omniar.modality import Modality
from omniar.model.bitwise import BitwiseHead, ScaleInputEmbed, bitwise_loss
from omniar.model.config import DecoderConfig, build_strict
from omniar.model.decoder import OmniDecoder
from omniar.model.patch_embed import PatchEmbed
from omniar.stream.collate import IGNORE, Batch, collate
from omniar.stream.segment import Sample, Segment
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from omniar.tokenizers.speech import SpeechCodec, SpeechCodecConfig
from omniar.tokenizers.text import TextTokenizer
from omniar.train.losses import feature_distillation, token_cross_entropy

MODEL_TYPE = "omniar-omni"
TASKS = ("t2i", "caption", "vqa", "edit", "text", "tts", "asr", "svqa", "chat", "s2i")
SPEECH_TASKS = ("tts", "asr", "svqa", "chat", "s2i")
TASK_TOKENS = {"t2i": "<t2i>", "caption": "<i2t>", "vqa": "<vqa>", "edit": "<edit>", "text": "<lm>", "tts": "<tts>",
               "asr": "<asr>", "svqa": "<vqa>", "chat": "<user>", "s2i": "<user>"}
SPEECH_VOCAB = ("joint", "decoupled")
UNDERSTANDS = ("caption", "vqa", "edit", "svqa", "chat")  # tasks that read an image (edit: its reference)
GENERATES = ("t2i", "edit", "s2i")  # tasks that write an image


GENERATION = ("next_scale", "raster")


@dataclass
class OmniConfig:
    decoder: dict = field(default_factory=dict)  # DecoderConfig fields (vocab and feature widths are set here)
    image: dict = field(default_factory=dict)  # ImageTokenizerConfig fields
    speech: dict = field(default_factory=dict)  # SpeechCodecConfig fields; empty: a model without speech
    speech_vocab: str = "joint"  # "joint": one softmax over text and speech ids (AR-Omni); "decoupled": per modality
    speech_expert: bool = False  # speech through an FFN expert of its own; False: shared with text
    preset: str = ""  # the preset this config came from (a resumed run must name the same one)
    # "next_scale": OneCAT / Infinity, one forward pass per scale of a multi-scale tokenizer; "raster": the
    # Chameleon / AR-Omni baseline, one token per forward pass over a single-scale tokenizer's grid
    generation: str = "next_scale"
    patch: int = 4  # understanding patch size (then 2 x 2 unshuffle: 8 x 8 pixels per token)
    patch_channels: int = 64
    # a ViT encoder (bidirectional layers) over the patch tokens: 0 for OneCAT's encoder-free model; > 0 makes
    # the distillation teacher (omni/teacher.py), whose encoder outputs are the targets of the student
    vision_layers: int = 0
    # understanding distillation: the width of the teacher's features, matched by a Linear(D, distill_dim) of the
    # student's last hidden state at understanding-image positions (0: no distillation head)
    distill_dim: int = 0
    bit_loss_weight: float = 1.0
    # AR-Omni's perceptual alignment: > 0 adds this weight x MSE(Linear(h), E[x]) at the positions that predict
    # image tokens x, E the frozen image tokenizer's code embedding (ImageTokenizer.code_embedding)
    perceptual_weight: float = 0.0
    # > 0: each bit of a token conditioned on its earlier bits (BitwiseHead, MADE of this width); 0: Infinity's
    # independent bits
    bit_ar_width: int = 0
    cfg_dropout: float = 0.1  # t2i / edit prompts and edit references dropped (independently) in training, for CFG
    # edits also see the reference in the tokenizer's latent space: each generation position adds an embedding
    # (Linear, from zero) of the reference's latent downsampled to its scale, there. A token's bits are the sign
    # of the target's latent less the earlier scales' reconstruction (the position's AR input), so where the edit
    # leaves the image alone they are a local function of the two (85-90% of them on ShapeWorld edits,
    # BENCHMARKS.md) instead of a redraw from the patch-embedded reference. Dropped with the reference for CFG.
    edit_reference: bool = False
    # edits read the instruction before the reference image (<edit> instruction <ref> image </ref> <boi>), so the
    # reference's image tokens, which see what precedes them, can each tell whether they belong to the named object
    edit_instruction_first: bool = False
    # > 0 (needs edit_instruction_first): a Linear(D, 1) head on the last hidden state at each reference-image
    # position of an edit predicts how much of its patch the object the instruction names covers (BCE against
    # `Example.grounding`, ShapeWorld's object masks), weighted by this, so the reference's tokens say which object
    # is meant; training only
    grounding_weight: float = 0.0
    # (needs grounding_weight) each generation position of an edit also adds Linear(1, D) (from zero) of the named
    # object's map at its scale and place, so the drawing is told which object the instruction means: in training
    # the true mask (`Example.grounding`), at generation the grounding head's map, read by the prompt's prefill
    # (omni/generate.py); zero where the instruction or the reference is dropped
    grounding_input: bool = False
    max_flip: float = 0.3  # bitwise self-correction: flip probability ~ U{0, ..., max_flip} per image
    max_length: int = 512  # the context: positions of one example (prompt, images and answer)

    def __post_init__(self) -> None:
        if self.generation not in GENERATION:
            raise ValueError(f"generation must be one of {', '.join(GENERATION)}, got {self.generation!r}")
        if self.perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {self.perceptual_weight}")
        if self.grounding_weight < 0 or (self.grounding_weight and not self.edit_instruction_first):
            raise ValueError("grounding_weight must be >= 0, and > 0 needs edit_instruction_first (the reference's "
                             "tokens must see the instruction)")
        if self.grounding_input and not self.grounding_weight:
            raise ValueError("grounding_input feeds the grounding head's map to the drawing: it needs grounding_weight")
        if self.speech_vocab not in SPEECH_VOCAB:
            raise ValueError(f"speech_vocab must be one of {', '.join(SPEECH_VOCAB)}, got {self.speech_vocab!r}")

    @classmethod
    def from_dict(cls, d: dict) -> OmniConfig:
        return build_strict(cls, d)


# Named OmniModel presets (data): the decoder's fields plus the patch embedding; vocabulary and feature widths
# come from the tokenizers. onecat-tiny: 6.9M trainable parameters, 2.1M of them active per token (5.7M before
# expert attention, 4.5M before its prompt expert), sized for 2 CPU cores (BENCHMARKS.md);
# raster-tiny is the decoder of onecat-tiny's first demos decoding a single-scale tokenizer's codes token by token
# (the baseline; its speed and quality were measured against that one). The
# OneCAT presets edit with the reference's latent at every generation position (`edit_reference`: edits alone,
# 800 steps, untouched objects preserved 0.275 -> 0.84, BENCHMARKS.md).
_EXPERTS = dict(experts=("text", "und", "gen"), routing={"image_und": "und", "image_gen": "gen", "image_raster": "gen"})
# the text of documents that draw an image goes through an expert of its own (DecoderConfig.prompt_expert): the
# demo's test split, t2i 0.256 -> 0.273, held-out 0.197 -> 0.231, VQA 0.67 -> 0.765, edits 0.365 -> 0.50
# (BENCHMARKS.md "Demo")
_PROMPT = dict(experts=("text", "und", "gen", "prompt"), prompt_expert="prompt")
# every expert with attention projections of its own (DecoderConfig.expert_attention, Mixture-of-Transformers): the
# demo's test split, VQA 0.76 -> 0.86, edits satisfied 0.48 -> 0.665 and preserved 0.515 -> 0.685, held-out
# 0.232 -> 0.282 (BENCHMARKS.md "Demo")
_MOT = dict(expert_attention=True)
# edits name their object before the reference is read, the reference's tokens learn which object it is and the
# drawing is told (OmniConfig.edit_instruction_first, grounding_weight, grounding_input): 1,000 validation edits
# from one stage 1, preserved 0.82 -> 0.91-0.93 and same-colour look-alikes lost 89 -> 7-8 of 104; the demo's test
# split at the same plan, edits 0.830 / 0.855 -> 0.870 / 0.910, the other tasks the same (BENCHMARKS.md "Demo")
_GROUNDED = dict(edit_instruction_first=True, grounding_weight=1.0, grounding_input=True)
_TINY = dict(hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2, intermediate_size=512, **_EXPERTS)


def _onecat(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, rank: int, patch_channels: int) -> dict:
    """The OneCAT composition at one size: modality experts (+ the prompt expert, each expert with its own attention
    projections), the Scale-Aware Adapter over six scales, the patch embedding, the edit reference and grounding.
    Every size has every part, so what was measured on `onecat-tiny` is what a larger run on a GPU scales up."""
    decoder = dict(hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                   intermediate_size=ffn, scale_adapter_rank=rank, num_scales=6, **{**_EXPERTS, **_PROMPT}, **_MOT)
    return dict(decoder=decoder, patch=4, patch_channels=patch_channels, edit_reference=True, **_GROUNDED)


OMNI_PRESETS: dict[str, dict] = {
    # onecat-tiny for 2 CPU cores; onecat-small (54M trained parameters, 16M active) and onecat-base (317M, 94M
    # active) are GPU sizes of the same composition, with heads 64 wide
    "onecat-tiny": _onecat(192, 4, 6, 2, 512, rank=8, patch_channels=32),
    "onecat-small": _onecat(384, 8, 6, 2, 1024, rank=16, patch_channels=64),
    "onecat-base": _onecat(768, 12, 12, 3, 2048, rank=32, patch_channels=128),
    "raster-tiny": dict(decoder=_TINY, generation="raster", patch=4, patch_channels=32, edit_reference=True),
    # the understanding-distillation teacher (omni/teacher.py): a ViT encoder (3 layers) + a small dense decoder
    "vit-teacher-tiny": dict(decoder=dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                                          intermediate_size=384), vision_layers=3, patch=4, patch_channels=32),
    # AR-Omni: one dense decoder (no experts) with swin-norm and QK-norm, raster images, speech in a joint
    # vocabulary (build it with a speech codec: OmniModel(config, text, image, speech_codec))
    "ar-omni-tiny": dict(decoder=dict(hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2,
                                      intermediate_size=512, norm_placement="swin", qk_norm=True),
                         generation="raster", speech_vocab="joint", patch=4, patch_channels=32),
}


def omni_preset(name: str, **decoder_overrides) -> OmniConfig:
    if name not in OMNI_PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(OMNI_PRESETS))}")
    d = dict(OMNI_PRESETS[name], preset=name)
    d["decoder"] = {**d["decoder"], **decoder_overrides}
    return OmniConfig.from_dict(d)


@dataclass
class Example:
    """One training item, or with its target left empty a prompt (a tts example without `speech`, an asr example
    without `text`, an svqa example without `answer`). Images are (3, S, S) float tensors in [0, 1] or (S, S, 3)
    uint8 arrays; `speech` is the speech codec's code ids of the utterance."""

    task: str
    text: str = ""  # t2i prompt, caption, vqa question, edit instruction, tts input / asr transcript, plain text
    answer: str = ""  # vqa / svqa answer
    image: Tensor | np.ndarray | None = None  # t2i / edit target (generated), caption / vqa input (understood)
    source: Tensor | np.ndarray | None = None  # edit: the reference image
    speech: Tensor | Sequence[int] | None = None  # tts target, asr input, svqa / chat spoken question (codec codes)
    answer_speech: Tensor | Sequence[int] | None = None  # chat: the spoken answer (the target)
    # edit: (S, S) coverage in [0, 1] of the source by the object the instruction names (grounding_weight / _input)
    grounding: Tensor | np.ndarray | None = None
    # vqa: further (question, answer) turns about the same image after the first answer (training: more answers
    # per image read, for little more than the image's positions)
    turns: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if self.task not in ("text", "tts", "asr", "s2i") and self.image is None:
            raise ValueError(f"a {self.task} example needs an image")
        if self.task == "edit" and self.source is None:
            raise ValueError("an edit example needs a source image")
        self.turns = tuple((str(q), str(a)) for q, a in self.turns)
        if self.turns and self.task != "vqa":
            raise ValueError(f"further question turns are for vqa examples, not {self.task}")
        if self.task in ("asr", "svqa", "chat", "s2i") and self.speech is None:
            raise ValueError(f"an {self.task} example needs its speech (codec codes)")
        for name in ("speech", "answer_speech"):
            if getattr(self, name) is not None:
                setattr(self, name, torch.as_tensor(getattr(self, name), dtype=torch.long).reshape(-1))
                if not len(getattr(self, name)):
                    raise ValueError(f"the {self.task} example's {name.replace('_', ' ')} is empty")

    @property
    def target(self) -> bool:
        """Whether the example holds what its task predicts (a training item) or not (a prompt)."""
        return {"tts": self.speech is not None, "asr": bool(self.text), "svqa": bool(self.answer),
                "chat": self.answer_speech is not None, "s2i": self.image is not None}.get(self.task, True)


@dataclass(frozen=True)
class Reweighting:
    """AR-Omni's task-aware loss reweighting of token targets: L = sum_t w_t CE_t / sum_t w_t, where w_t is the
    weight of the example's task (`task`, default 1) times `tail_weight` for the last `tail` target tokens of the
    tasks in `tail_tasks` (the end of the response: AR-Omni weights the last tokens of captioning and
    speech-to-text 2.0). `tail` = 0 is off."""

    task: dict[str, float] = field(default_factory=dict)
    tail: int = 0
    tail_weight: float = 2.0
    tail_tasks: tuple[str, ...] = ("caption", "asr")

    def __post_init__(self) -> None:
        unknown = [t for t in (*self.task, *self.tail_tasks) if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown} in the reweighting; known: {', '.join(TASKS)}")
        if self.tail < 0 or self.tail_weight <= 0 or any(w <= 0 for w in self.task.values()):
            raise ValueError("reweighting needs tail >= 0 and positive weights")

    def segments(self, task: str, modality: str, ids: list[int], **kw) -> list[Segment]:
        """The target segment of `task` (its markers in `kw`), split so its last `tail` tokens carry the tail
        weight (text runs are causal within and across segments, so the split changes nothing else)."""
        w = self.task.get(task, 1.0)
        n = min(self.tail, len(ids)) if task in self.tail_tasks else 0
        if n in (0, len(ids)):
            return [Segment(modality, ids, loss=True, weight=w * (self.tail_weight if n else 1.0), **kw)]
        end = kw.pop("end", None)
        return [Segment(modality, ids[:-n], loss=True, weight=w, **kw),
                Segment(modality, ids[-n:], loss=True, weight=w * self.tail_weight, end=end)]


def as_images(images, side: int) -> Tensor:
    """A list of images (uint8 (S, S, 3) arrays or float (3, S, S) tensors), or one image -> float (N, 3, S, S)."""
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 3:
        images = [images]
    out = []
    for i, im in enumerate(images):
        t = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 if isinstance(im, np.ndarray) else im
        if t.shape != (3, side, side):
            raise ValueError(f"images must be {side}x{side} RGB for this model, got shape {tuple(t.shape)} "
                             f"(image {i})")
        out.append(t.float())
    return torch.stack(out)


def stream_order(maps: list[Tensor]) -> Tensor:
    """Per-scale maps (B, C, s, s) -> (B, sum s^2, C): the generation positions' order, scale-major, row-major."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def vision_encoder(width: int, heads: int, layers: int) -> nn.Module:
    """A ViT encoder over patch tokens (which carry their positions): pre-norm bidirectional Transformer layers."""
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.LayerNorm(width))


class TrainingBatch(NamedTuple):
    """What `OmniModel.batch` gives, in the order `OmniModel.loss` takes it (`model.loss(*batch)`)."""
    stream: Batch  # the collated token stream (inputs, features, labels, masks)
    bits: Tensor  # the target bits (N_gen, d) of the generation positions, in stream order
    teacher: Tensor | None = None  # with a teacher: its features (N_und, width) of the understanding images
    grounding: Tensor | None = None  # with a grounding head: targets (N_und,), NaN where none is taught


class OmniModel(nn.Module):
    def __init__(self, config: OmniConfig, text_tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer,
                 speech_codec: SpeechCodec | None = None):
        super().__init__()
        self.config, self.text, self.tokenizer = config, text_tokenizer, image_tokenizer
        img = image_tokenizer.config
        if config.speech and speech_codec is None:
            raise ValueError("the config describes a speech codec (OmniConfig.speech) but none was given: pass "
                             "speech_codec=, or load the model with OmniModel.from_pretrained")
        # the joint id space: text ids, then the speech codec's codes
        self.speech_codec = speech_codec
        self.speech_offset = text_tokenizer.vocab_size
        codes = speech_codec.config.codebook_size if speech_codec is not None else 0
        decoder = dict(config.decoder, vocab_size=text_tokenizer.vocab_size + codes)
        if speech_codec is not None and config.speech_expert:
            experts = tuple(decoder.get("experts", ("shared",)))
            decoder.update(experts=(*experts, "speech"), routing={**decoder.get("routing", {}), "speech": "speech"})
        dec = DecoderConfig.from_dict(decoder)
        D = dec.hidden_size
        raster = config.generation == "raster"
        self.gen_modality = Modality.IMAGE_RASTER if raster else Modality.IMAGE_GEN
        gen_name = self.gen_modality.name.lower()
        dec = DecoderConfig.from_dict({**dec.to_dict(), "feature_dims": {"image_und": D, gen_name: D}})
        if raster != (len(img.scales) == 1):
            raise ValueError(f"{config.generation} generation needs a {'single' if raster else 'multi'}-scale image "
                             f"tokenizer; this one has scales {img.scales} (train one with --scales "
                             f"{img.scales[-1] if raster else '1 2 3 4 6 8'})")
        if dec.scale_adapter_rank and dec.num_scales < len(img.scales):
            raise ValueError(f"the scale adapter has {dec.num_scales} scales but the tokenizer {len(img.scales)}")
        self.decoder = OmniDecoder(dec)
        self.patch_embed = PatchEmbed(D, config.patch, config.patch_channels, img.image_size)
        self.vision = vision_encoder(D, dec.num_heads, config.vision_layers) if config.vision_layers else None
        self.distill_proj = nn.Linear(D, config.distill_dim) if config.distill_dim else None
        self.scale_embed = ScaleInputEmbed(img.bits, D, len(img.scales), img.scales[-1])
        self.bit_head = BitwiseHead(D, img.bits, config.bit_ar_width)
        self.ref_embed = nn.Linear(img.bits, D) if config.edit_reference else None
        if self.ref_embed is not None:  # starts as no change: the edit path learns how much to copy
            nn.init.zeros_(self.ref_embed.weight)
            nn.init.zeros_(self.ref_embed.bias)
        width = image_tokenizer.decoder.net[0].out_channels
        self.perceptual = nn.Linear(D, width) if config.perceptual_weight > 0 else None
        self.grounding_head = nn.Linear(D, 1) if config.grounding_weight > 0 else None
        self.ground_embed = nn.Linear(1, D) if config.grounding_input else None
        if self.ground_embed is not None:  # starts as no change, like ref_embed
            nn.init.zeros_(self.ground_embed.weight)
            nn.init.zeros_(self.ground_embed.bias)
        image_tokenizer.requires_grad_(False).eval()
        if speech_codec is not None:
            speech_codec.requires_grad_(False).eval()
        self.ids = {name: text_tokenizer.token_id(tok) for name, tok in
                    {**TASK_TOKENS, "boi": "<boi>", "eoi": "<eoi>", "ref": "<ref>", "ref_end": "</ref>",
                     "eos": "<eos>", "assistant": "<assistant>", "user": "<user>", "eot": "<eot>",
                     "boa": "<boa>", "eoa": "<eoa>", "pad": "<pad>"}.items()}

    def joint_vocab(self):
        """The layout of this model's id space for finite-state decoding (omniar.generation.fsm)."""
        from omniar.generation.fsm import JointVocab

        codes = self.speech_codec.config.codebook_size if self.speech_codec is not None else 0
        return JointVocab(text=self.speech_offset, speech=range(self.speech_offset, self.speech_offset + codes),
                          markers={k: self.ids[k] for k in ("pad", "eos", "eot", "boi", "eoi", "boa", "eoa", "user",
                                                            "assistant")})

    def speech_ids(self, codes: Tensor) -> list[int]:
        """Codec codes -> ids of the joint space (named errors for a model without speech or bad codes)."""
        if self.speech_codec is None:
            raise ValueError("this model has no speech codec: build it with one (OmniModel(..., speech_codec=...)) "
                             "for speech tasks")
        K = self.speech_codec.config.codebook_size
        codes = torch.as_tensor(codes, dtype=torch.long).reshape(-1)
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"speech codes must be in [0, {K}), got {int(codes.min())}..{int(codes.max())}")
        return (codes + self.speech_offset).tolist()

    @property
    def scales(self) -> tuple[int, ...]:
        return self.tokenizer.config.scales

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.image_size

    def train(self, mode: bool = True) -> OmniModel:
        if not mode and not any(m.training for m in self.modules()):
            return self  # already evaluating: the walk below costs ~1 ms, a twentieth of generating one image
        super().train(mode)
        self.tokenizer.eval()  # frozen: never in training mode
        if self.speech_codec is not None:
            self.speech_codec.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (`model.to(device)` moves it; inputs follow, random draws stay on their
        generators' device, so a seed gives the same draws on every device)."""
        return self.decoder.embed.weight.device

    @property
    def und_width(self) -> int:
        """The width of `und_features` (a distillation teacher's feature width)."""
        return self.decoder.config.hidden_size

    def und_features(self, images: Tensor) -> Tensor:
        """Understanding-image tokens (B, T, D): the patch embedding, then the ViT encoder if there is one."""
        x = self.patch_embed(images.to(self.device))
        return x if self.vision is None else self.vision(x)

    def reference_features(self, sources, latents: list[Tensor] | None = None) -> Tensor:
        """(B, T, D): for each generation position of an edit, the embedding of the reference image's latent at
        that position's scale and place (stream order: scale-major, row-major; `OmniConfig.edit_reference`).
        `latents`: the sources' `ImageTokenizer.latents`, where the caller has them already."""
        if latents is None:
            latents = self.tokenizer.latents(as_images(sources, self.image_size).to(self.device))
        return self.ref_embed(stream_order(latents))

    def grounding_features(self, maps: Tensor) -> Tensor:
        """(B, T, D): the named object's maps (B, g, g) on the understanding grid, area-pooled to each scale, embedded
        at each generation position's place (`OmniConfig.grounding_input`)."""
        maps = maps[:, None].to(self.device, self.ground_embed.weight.dtype)
        return self.ground_embed(stream_order([F.adaptive_avg_pool2d(maps, s) for s in self.scales]))

    # ---- layouts ----------------------------------------------------------------------------------------------
    def gen_segment(self, features: Tensor, begin: bool = True) -> Segment:
        """A generated image's segment (<boi> ... <eoi>; without `begin`, the <boi> is the caller's)."""
        layout = dict(grid=(self.scales[0],) * 2) if self.gen_modality == Modality.IMAGE_RASTER else dict(
            scales=[(s, s) for s in self.scales])
        return Segment(self.gen_modality, features=features, begin=self.ids["boi"] if begin else None,
                       end=self.ids["eoi"], **layout)

    def und_segment(self, features: Tensor, begin: str = "boi", end: str = "eoi") -> Segment:
        return Segment("image_und", features=features, grid=self.patch_embed.grid(), begin=self.ids[begin],
                       end=self.ids[end])

    def sample(self, ex: Example, und: Tensor | None, gen: Tensor | None, drop_prompt: bool = False,
               drop_image: bool = False, reweight: Reweighting | None = None) -> Sample:
        """The stream layout of one example (module docstring), given its embedded images; `drop_prompt` and
        `drop_image` (edit: the reference) give the unconditional layouts of classifier-free guidance. An example
        without its target (`Example.target`) gives the prompt that generation continues."""
        enc, eos, ids = self.text.encode, self.ids["eos"], self.ids
        reweight = reweight or Reweighting()
        prompt = [] if drop_prompt else enc(ex.text)
        segs: list[Segment] = []

        def target(modality: str, tokens: list[int], **kw) -> None:
            segs.extend(reweight.segments(ex.task, modality, tokens, **kw))

        if ex.task == "t2i":
            if prompt:
                segs.append(Segment("text", prompt))
            segs.append(self.gen_segment(gen))
        elif ex.task == "caption":
            segs.append(self.und_segment(und))
            target("text", enc(ex.text) + [eos])
        elif ex.task == "vqa":
            segs += [self.und_segment(und), Segment("text", enc(ex.text) + [ids["assistant"]])]
            target("text", enc(ex.answer) + [eos])
            for question, answer in ex.turns:
                segs.append(Segment("text", enc(question) + [ids["assistant"]]))
                target("text", enc(answer) + [eos])
        elif ex.task == "tts":
            segs.append(Segment("text", enc(ex.text)))
            if ex.target:
                target("speech", self.speech_ids(ex.speech), begin=ids["boa"], end=ids["eoa"])
            else:
                segs.append(Segment("text", [ids["boa"]]))
        elif ex.task == "asr":
            segs.append(Segment("speech", self.speech_ids(ex.speech), begin=ids["boa"], end=ids["eoa"]))
            if ex.target:
                target("text", enc(ex.text) + [eos])
        elif ex.task == "svqa":
            segs += [self.und_segment(und), Segment("speech", self.speech_ids(ex.speech), begin=ids["boa"],
                                                    end=ids["eoa"]), Segment("text", [ids["assistant"]])]
            if ex.target:
                target("text", enc(ex.answer) + [eos])
        elif ex.task == "chat":
            segs += [self.und_segment(und), Segment("speech", self.speech_ids(ex.speech), begin=ids["boa"],
                                                    end=ids["eoa"]), Segment("text", [ids["eot"], ids["assistant"]])]
            if ex.target:
                target("speech", self.speech_ids(ex.answer_speech), begin=ids["boa"], end=ids["eoa"])
                target("text", [ids["eot"]])
        elif ex.task == "s2i":
            if self.gen_modality != Modality.IMAGE_RASTER:
                raise ValueError("s2i draws its image token by token inside a conversation: it needs raster "
                                 "generation (e.g. preset ar-omni-tiny)")
            segs += [Segment("speech", self.speech_ids(ex.speech), begin=ids["boa"], end=ids["eoa"]),
                     Segment("text", [ids["eot"], ids["assistant"]])]
            if ex.target:  # the assistant opens the image itself; its codes are the bits' targets, <eoi> is forced
                segs += [Segment("text", [ids["boi"]], loss=True), self.gen_segment(gen, begin=False)]
                target("text", [ids["eot"]])
        elif ex.task == "edit":
            first = self.config.edit_instruction_first
            if prompt and first:
                segs.append(Segment("text", prompt))
            if not drop_image:
                segs.append(self.und_segment(und, "ref", "ref_end"))
            if prompt and not first:
                segs.append(Segment("text", prompt))
            segs.append(self.gen_segment(gen))
        else:
            target("text", enc(ex.text) + [eos])
        return Sample(segs, task=self.ids[ex.task])

    # ---- training -----------------------------------------------------------------------------------------------
    def batch(self, examples: list[Example], generator: torch.Generator | None = None,
              pack: bool = False, teacher: nn.Module | None = None,
              reweight: Reweighting | None = None) -> TrainingBatch:
        """The examples as one `TrainingBatch` (`loss(*batch)` trains on it); images embedded in one call per kind.
        With a generator, applies condition dropout and bitwise self-correction (training). With `pack`, the
        image-generation examples come first, one per row, and the short ones share rows of that length. With a
        `teacher` (omni/teacher.py), its features of the understanding images; with a grounding head
        (`OmniConfig.grounding_weight`), the grounding targets. `reweight`: the task-aware loss weights of the token
        targets."""
        self._require_fp32("training")
        for i, ex in enumerate(examples):
            if not ex.target:
                raise ValueError(f"{ex.task} example {i} has no target to train on (tts: speech, asr: text, svqa: "
                                 f"answer, chat: answer_speech)")
        order = list(range(len(examples)))
        if pack:  # stable: generation examples (the longest) first, each group in its own order
            order.sort(key=lambda i: examples[i].task not in GENERATES)
        names = [f"{examples[i].task} example {i}" for i in order]
        examples = [examples[i] for i in order]
        side = self.image_size
        und_images = [ex.source if ex.task == "edit" else ex.image for ex in examples
                      if ex.task in UNDERSTANDS]
        gen_images = [ex.image for ex in examples if ex.task in GENERATES]
        device = self.device
        und_pixels = as_images(und_images, side).to(device) if und_images else None
        und = iter(self.und_features(und_pixels)) if und_images else iter(())
        taught = iter(())
        if teacher is not None and und_images:
            with torch.no_grad():
                taught = iter(teacher.eval().und_features(und_pixels))
        gen, targets = iter(()), torch.zeros(0, self.tokenizer.config.bits, dtype=torch.bool, device=device)
        if gen_images:
            x = as_images(gen_images, side).to(device)
            if self.gen_modality == Modality.IMAGE_RASTER:  # next-token inputs: the previous token's code
                bits = self.tokenizer.encode(x)
                codes = self.tokenizer.quantizer.codes(bits[0]).flatten(2).transpose(1, 2)
                gen = iter(self.scale_embed.raster(codes, 0, codes.shape[1]))
            else:
                if generator is not None:  # bitwise self-correction
                    levels = torch.randint(0, 4, (len(x),), generator=generator)
                    flip = levels.float() / 3 * self.config.max_flip
                else:
                    flip = torch.zeros(len(x))
                inputs, bits = self.tokenizer.self_correct(x, flip.to(device), generator)
                gen = iter(self.scale_embed(inputs, batch=len(x)))
            targets = stream_order(bits).reshape(-1, bits[0].shape[1])
        drops = []  # condition dropout, each independently: (drop prompt, drop reference image)
        for ex in examples:
            drop_prompt = drop_image = False
            if generator is not None and ex.task in ("t2i", "edit"):
                drop_prompt, drop_image = (torch.rand(2, generator=generator) < self.config.cfg_dropout).tolist()
            drops.append((drop_prompt, drop_image and ex.task == "edit"))
        refs = iter(())  # the reference latents of the edits that keep their reference
        kept = [ex.source for ex, (_, di) in zip(examples, drops) if ex.task == "edit" and not di]
        if self.ref_embed is not None and kept:
            refs = iter(self.reference_features(kept))
        samples, features, grounding = [], [], []
        grid = self.patch_embed.grid()
        # grounding: each understanding image's target in the stream (the named object's share of each patch, NaN
        # where nothing is taught), once; with grounding_input the edits' maps are also their drawing's input
        named = [self.grounding_target(ex, grid, known=not dp) if self.grounding_head is not None
                 and ex.task in UNDERSTANDS and not (ex.task == "edit" and di) else None
                 for ex, (dp, di) in zip(examples, drops)]
        grounds = iter(())
        if self.ground_embed is not None and kept:
            maps = torch.stack([m for ex, m in zip(examples, named) if ex.task == "edit" and m is not None])
            grounds = iter(self.grounding_features(maps.nan_to_num(0.0).reshape(-1, *grid)))
        for ex, (drop_prompt, drop_image), target_map in zip(examples, drops, named):
            u = next(und) if ex.task in UNDERSTANDS else None
            t = next(taught, None) if ex.task in UNDERSTANDS else None
            g = next(gen) if ex.task in GENERATES else None
            if ex.task == "edit" and not drop_image and self.ref_embed is not None:
                g = g + next(refs)
            if ex.task == "edit" and not drop_image and self.ground_embed is not None:
                g = g + next(grounds)
            samples.append(self.sample(ex, u, g, drop_prompt, drop_image, reweight))
            if t is not None and not drop_image:  # a dropped reference is not in the stream
                features.append(t)
            if target_map is not None:
                grounding.append(target_map)
        self.check_context(samples, names)
        max_len = max(len(s) for s in samples) if pack else None
        batch = collate(samples, max_len=max_len, pad_id=self.text.pad).to(device)
        taught = named = None
        if teacher is not None:
            taught = torch.cat(features) if features else torch.zeros(0, teacher.und_width, device=device)
        if self.grounding_head is not None:
            named = torch.cat(grounding).to(device) if grounding else torch.zeros(0, device=device)
        return TrainingBatch(batch, targets, taught, named)

    def grounding_target(self, ex: Example, grid: tuple[int, int], known: bool = True) -> Tensor:
        """(h * w,): the share of each understanding-image patch (`grid` h x w) the named object covers, NaN where
        nothing is taught (no grounding, not an edit, or the instruction dropped)."""
        if ex.task != "edit" or ex.grounding is None or not known:
            return torch.full((grid[0] * grid[1],), float("nan"))
        g = torch.as_tensor(np.asarray(ex.grounding), dtype=torch.float32)
        return F.adaptive_avg_pool2d(g[None, None], grid).reshape(-1)

    def check_context(self, samples: list[Sample], names: list[str], reserve: int = 0) -> None:
        """A named error when a sample (plus `reserve` positions still to generate) exceeds the context."""
        for name, s in zip(names, samples):
            if len(s) + reserve > self.config.max_length:
                extra = f" + {reserve} to generate" if reserve else ""
                raise ValueError(f"{name} needs {len(s)}{extra} positions, more than the model's context of "
                                 f"{self.config.max_length} (OmniConfig.max_length): shorten the prompt")

    def loss(self, batch: Batch, target_bits: Tensor, teacher: Tensor | None = None, grounding: Tensor | None = None,
             distill_weight: float = 1.0) -> tuple[Tensor, dict]:
        """Token CE (task-weighted) + bit_loss_weight * bitwise CE at generation positions (+ perceptual_weight *
        the perceptual alignment MSE there, when the config has it); with `teacher`
        features (N_und, distill_dim) in stream order, + distill_weight * (MSE + 1 - cosine) between them and the
        projected last hidden state at the understanding-image positions."""
        out = self.decoder(**batch.model_inputs())
        parts = {}
        total = out.logits.new_zeros(())
        if teacher is not None:
            if self.distill_proj is None:
                raise ValueError("distillation needs a student with OmniConfig.distill_dim = the teacher's width")
            und = batch.meta.modality == Modality.IMAGE_UND
            if int(und.sum()) != len(teacher):
                raise ValueError(f"{len(teacher)} teacher features for {int(und.sum())} understanding positions")
            if len(teacher):
                pred = self.distill_proj(out.hidden[und])
                parts["distill"] = feature_distillation(pred, teacher)
                total = total + distill_weight * parts["distill"]
        if grounding is not None and self.grounding_head is not None:
            und = batch.meta.modality == Modality.IMAGE_UND
            known = ~grounding.isnan()
            if known.any():
                logit = self.grounding_head(out.hidden[und][known]).squeeze(-1)
                parts["grounding"] = F.binary_cross_entropy_with_logits(logit, grounding[known])
                total = total + self.config.grounding_weight * parts["grounding"]
        labels = batch.labels
        if (labels != IGNORE).any():
            logits = out.logits
            speech = self.is_speech_target(labels)
            if self.config.speech_vocab == "decoupled" and self.speech_codec is not None:
                logits = logits.masked_fill(speech[..., None] != self._speech_group(logits.device), float("-inf"))
            ce = token_cross_entropy(logits, labels)
            valid = labels != IGNORE
            w = batch.loss_weights * valid
            total = total + (ce * w).sum() / w.sum().clamp(min=1e-8)
            for name, where in (("text", valid & ~speech), ("speech", valid & speech)):
                if where.any():
                    parts[name] = ce[where].mean()
        gen = batch.meta.modality == self.gen_modality
        if gen.any():
            h = out.hidden[gen]
            parts["bits"] = bitwise_loss(self.bit_head(h, target_bits), target_bits)
            total = total + self.config.bit_loss_weight * parts["bits"]
            if self.perceptual is not None:
                with torch.no_grad():
                    target = self.tokenizer.code_embedding(target_bits)
                parts["perceptual"] = F.mse_loss(self.perceptual(h), target)
                total = total + self.config.perceptual_weight * parts["perceptual"]
        return total, {k: v.item() for k, v in parts.items()}

    def is_speech_target(self, labels: Tensor) -> Tensor:
        """Targets scored by the speech vocabulary under `speech_vocab="decoupled"`: speech codes and <eoa>."""
        return (labels >= self.speech_offset) | (labels == self.ids["eoa"])

    def _speech_group(self, device) -> Tensor:
        group = torch.zeros(self.decoder.config.vocab_size, dtype=torch.bool, device=device)
        group[self.speech_offset:] = True
        group[self.ids["eoa"]] = True
        return group

    # ---- the Python API (batched; see omni/generate.py and omni/understand.py for every knob) ----------------
    def generate_image(self, prompts: str | Sequence[str], cfg: float | None = None, best_of: int = 1,
                       **kw) -> Tensor:
        """Images (B, 3, S, S) in [0, 1] for text prompts; guidance `cfg` and the per-bit `params` default to the
        benchmark's (`T2I_CFG`, ramped over the scales; `T2I_TEMPERATURE`). `best_of` > 1 (with sampled bits): the
        best of that many candidates by the model's own caption likelihood of the prompt (omni/rerank.py). `kw` go
        to `generate_images` (`seeds`, `cfg_schedule`, `unguided_scales`, `on_scale`, ...)."""
        from omniar.generation.sampling import SamplingParams
        from omniar.omni.generate import T2I_CFG, T2I_TEMPERATURE
        from omniar.omni.rerank import generate_best_of

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        kw.setdefault("params", SamplingParams(temperature=T2I_TEMPERATURE))
        return generate_best_of(self, prompts, best_of, cfg=T2I_CFG if cfg is None else cfg, **kw)

    def edit_image(self, images, instructions: str | Sequence[str], cfg: float | None = None, **kw) -> Tensor:
        """Edits of `images` (one per instruction; a single image is used for every instruction); guidance `cfg`,
        its `cfg_schedule`, the per-bit `params` and the pull towards the reference (`keep`, `keep_tau`) default to
        the benchmark's (`EDIT_CFG`, `EDIT_CFG_SCHEDULE`, `EDIT_TEMPERATURE`, `EDIT_KEEP`, `EDIT_KEEP_TAU`)."""
        from omniar.generation.sampling import SamplingParams
        from omniar.omni.evaluate import ImageSampling
        from omniar.omni.generate import EDIT_CFG, EDIT_CFG_SCHEDULE, EDIT_TEMPERATURE, generate_images

        instructions = [instructions] if isinstance(instructions, str) else list(instructions)
        kw.setdefault("cfg_schedule", EDIT_CFG_SCHEDULE)
        kw.setdefault("params", SamplingParams(temperature=EDIT_TEMPERATURE))
        for name, value in ImageSampling().pull(self).items():  # none for raster decoding
            kw.setdefault(name, value)
        return generate_images(self, instructions, sources=self._one_per(images, len(instructions)),
                               cfg=EDIT_CFG if cfg is None else cfg, **kw)

    def answer(self, images, questions: str | Sequence[str], **kw) -> list[str]:
        """Answers to `questions` (one image per question; a single image is used for every question)."""
        from omniar.omni.understand import describe

        questions = [questions] if isinstance(questions, str) else list(questions)
        return describe(self, self._one_per(images, len(questions)), questions, **kw)

    def speak(self, texts: str | Sequence[str], **kw) -> list[Tensor]:
        """16 kHz float audio of each text (omni/speech.py: `speak_stream` streams it chunk by chunk)."""
        from omniar.omni.speech import speak

        return speak(self, [texts] if isinstance(texts, str) else list(texts), **kw)

    def transcribe(self, clips, sample_rate: int = 16_000, **kw) -> list[str]:
        """The text of each 16 kHz mono clip (a single 1-D clip, or a list of them)."""
        from omniar.omni.speech import transcribe

        one = isinstance(clips, (np.ndarray, Tensor)) and clips.ndim == 1
        return transcribe(self, [clips] if one else list(clips), sample_rate, **kw)

    def _one_per(self, images, n: int) -> Tensor:
        """Images as (n, 3, S, S): a single image is used for all n."""
        images = as_images(images, self.image_size)
        return images.expand(n, -1, -1, -1) if len(images) == 1 else images

    def caption(self, images, **kw) -> list[str]:
        from omniar.omni.understand import describe

        return describe(self, as_images(images, self.image_size), **kw)

    def num_parameters(self) -> dict:
        """Parameter counts: "total" the trained ones (all but the frozen tokenizers), "active" those a token passes
        through (the decoder's experts but one per layer stay idle, `OmniDecoder.num_parameters`), "frozen" the
        tokenizers' (image, and speech codec), and "parts": each top-level module's count."""
        frozen = {id(p) for m in (self.tokenizer, self.speech_codec) if m is not None for p in m.parameters()}
        total = sum(p.numel() for p in self.parameters() if id(p) not in frozen)
        decoder = self.decoder.num_parameters()
        parts = {name: sum(p.numel() for p in module.parameters()) for name, module in self.named_children()
                 if any(True for _ in module.parameters())}
        return {"total": total, "active": total - (decoder["total"] - decoder["active"]),
                "frozen": sum(p.numel() for p in self.parameters() if id(p) in frozen), "parts": parts}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """The model's config, text tokenizer and fp32 weights in `directory` (safetensors, written atomically). A
        model that decodes in bf16 (`decode_in`) has rounded its weights: saving it is refused by name, as
        loading them back would silently give the rounded ones."""
        self._require_fp32("saving")
        directory = Path(directory)
        cfg = {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config),
               "image": dataclasses.asdict(self.tokenizer.config),
               "speech": dataclasses.asdict(self.speech_codec.config) if self.speech_codec is not None else {}}
        self.text.save(directory)
        return save_checkpoint(directory, cfg, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None) -> OmniModel:
        """The saved model, in eval mode; `dtype` (e.g. torch.bfloat16): the decoder's (`decode_in`)."""
        directory = Path(directory)
        d = read_config(directory, MODEL_TYPE, "unified model (OmniModel)")
        config = OmniConfig.from_dict(d)
        speech = SpeechCodec(SpeechCodecConfig.from_dict(config.speech)) if config.speech else None
        model = cls(config, TextTokenizer.load(directory), ImageTokenizer(ImageTokenizerConfig.from_dict(config.image)),
                    speech)
        load_state_strict(model, read_tensors(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))
        return (model if dtype is None else model.decode_in(dtype)).eval()

    def _require_fp32(self, doing: str) -> None:
        """A named error where `decode_in` has rounded the weights: training and saving need the fp32 ones (saved
        rounded weights would load back into fp32 silently)."""
        lowered = sorted({str(p.dtype).removeprefix("torch.") for p in self.parameters() if p.dtype != torch.float32})
        if lowered:
            raise ValueError(f"{doing} needs fp32 weights; this model holds {', '.join(lowered)} weights "
                             "(decode_in): load it again without a dtype")

    def decode_in(self, dtype: torch.dtype) -> OmniModel:
        """Run the decoder, and the heads that read its hidden states, in `dtype` - for inference: torch.bfloat16 on
        a CPU with native bf16 (AVX512-BF16, as measured, or AMX) makes next-scale images 1.1-1.3x faster with the
        benchmark's scores unchanged (raster decoding, one token a pass, is slower in it; BENCHMARKS.md, "Next-scale
        vs raster decoding"). The tokenizers and the input embeddings stay fp32 (the decoder casts what it reads);
        training and saving need fp32 weights (both say so)."""
        if not dtype.is_floating_point:
            raise ValueError(f"the decoder runs in a floating-point dtype, got {dtype}")
        for m in (self.decoder, self.bit_head, self.grounding_head, self.distill_proj, self.perceptual):
            if m is not None:
                m.to(dtype)
        return self
