from omniar.generation.generate import generate, left_pad
from omniar.generation.sampling import SamplingParams, classifier_free_guidance, sample

__all__ = ["SamplingParams", "classifier_free_guidance", "generate", "left_pad", "sample"]
