"""ShapeWorld speech: the voices that speak the world, and the grammar that the speech judge listens with.

Voices were chosen by the recognizer's word error rate on their speech (BENCHMARKS.md): the English voices of
espeak-ng with male variants stay under 5%; female variants and en-gb ran at 6-14%, so they are left out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from omniar.audio.espeak import synthesize
from omniar.audio.recognizer import GrammarRecognizer
from omniar.data.shapeworld.language import NUMBER_WORDS
from omniar.data.shapeworld.world import COLORS, RELATIONS, SHAPES, SIZES


@dataclass(frozen=True)
class Voice:
    name: str = "en-us"
    rate: int = 170
    pitch: int = 50


VOICES = ("en-us", "en-us+m1", "en-us+m2", "en-us+m3")
NARRATOR = Voice()  # the one voice a text-to-speech model is taught to speak in (a single-speaker TTS)


def sample_voice(rng: random.Random) -> Voice:
    return Voice(rng.choice(VOICES), rng.randint(150, 185), rng.randint(40, 60))


def speak(text: str, voice: Voice = Voice()) -> np.ndarray:
    """16 kHz mono float32 speech of `text`."""
    return synthesize(text, voice.name, voice.rate, voice.pitch)


def jsgf() -> str:
    """Every sentence the world says: prompts, questions, answers and edit instructions."""
    def alt(words) -> str:
        return " | ".join(words)

    return f"""#JSGF V1.0;
grammar shapeworld;
public <utterance> = <prompt> | <question> | <answer> | <edit>;
<color> = {alt(COLORS)};
<shape> = {alt(SHAPES)};
<shapes> = {alt(s + "s" for s in SHAPES)};
<size> = {alt(SIZES)};
<relation> = {alt(RELATIONS)};
<one> = (a | an) [<size>] [<color>] <shape>;
<many> = (two | three) [<size>] [<color>] <shapes>;
<phrase> = <one> | <many>;
<prompt> = <phrase> [(and | <relation>) <phrase>];
<question> = what color is the <shape> | what shape is the <color> object | how many <shapes> are there
           | how many <color> objects are there | is the <color> <shape> <relation> the <color> <shape>
           | is there (a | an) <color> <shape>;
<answer> = <color> | <shape> | {alt(NUMBER_WORDS)} | yes | no;
<edit> = make the <color> <shape> <color> | remove the <color> <shape> | add (a | an) <size> <color> <shape>
       | move the <color> <shape> (left | right | up | down);
"""


@lru_cache(maxsize=1)
def recognizer() -> GrammarRecognizer:
    """The speech judge: pocketsphinx constrained to the world's grammar (built once per process)."""
    return GrammarRecognizer(jsgf())
