"""Band-limited resampling by FFT (offline, whole signals): exact for band-limited input, no dependencies."""

from __future__ import annotations

import numpy as np


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a mono float signal; the spectrum above the lower Nyquist frequency is dropped."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    wav = np.asarray(wav, dtype=np.float32)
    if from_rate == to_rate or len(wav) == 0:
        return wav.copy()
    n = int(round(len(wav) * to_rate / from_rate))
    spectrum = np.fft.rfft(wav)
    keep = min(n // 2 + 1, len(spectrum))
    out = np.zeros(n // 2 + 1, dtype=complex)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n) * (n / len(wav))).astype(np.float32)
