from omniar.modality import DEFAULT_PATTERN, Modality, Pattern
from omniar.stream.collate import IGNORE, Batch, collate
from omniar.stream.segment import Sample, Segment

__all__ = ["DEFAULT_PATTERN", "IGNORE", "Batch", "Modality", "Pattern", "Sample", "Segment", "collate"]
