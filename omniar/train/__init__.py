from omniar.train.losses import weighted_cross_entropy
from omniar.train.trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer", "weighted_cross_entropy"]
