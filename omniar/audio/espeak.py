"""Speech synthesis with espeak-ng through ctypes, from the `espeakng-loader` wheel (library and voices bundled).

espeak-ng keeps global state, so one process-wide engine serves every caller under a lock. Output: mono float32
at `SAMPLE_RATE` (16 kHz), resampled from espeak's native 22,050 Hz.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from omniar.audio.resample import resample

SAMPLE_RATE = 16_000
_SYNCHRONOUS = 0x02  # AUDIO_OUTPUT_SYNCHRONOUS: synthesis returns when the callback has seen every sample
_RATE, _PITCH = 1, 3  # espeak_PARAMETER ids
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """The process-wide espeak-ng engine. Use `Espeak.get()`."""

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:  # pragma: no cover - a core dependency
            raise RuntimeError("speech synthesis needs the espeakng-loader package") from e
        lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.native_rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.native_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: ctypes must not free it
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    @classmethod
    def get(cls) -> Espeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50) -> np.ndarray:
        """Speak `text`: float32 mono at 16 kHz. `rate` in words per minute (80-450), `pitch` 0-100."""
        if not text.strip():
            raise ValueError("nothing to say: empty text")
        if not 80 <= rate <= 450 or not 0 <= pitch <= 100:
            raise ValueError(f"rate must be in [80, 450] and pitch in [0, 100], got rate={rate}, pitch={pitch}")
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"unknown espeak-ng voice {voice!r} (try 'en-us', 'en-us+m3', 'en-us+f2')")
            self.lib.espeak_SetParameter(_RATE, rate, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._chunks = []
            data = text.encode()
            self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise RuntimeError(f"espeak-ng produced no audio for {text!r}")
        wav = np.concatenate(chunks).astype(np.float32) / 32768.0
        return resample(wav, self.native_rate, SAMPLE_RATE)


def synthesize(text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50) -> np.ndarray:
    return Espeak.get().synthesize(text, voice, rate, pitch)
