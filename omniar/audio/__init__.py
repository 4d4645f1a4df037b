"""Audio utilities: resampling, espeak-ng synthesis, grammar-constrained recognition, word error rate."""
