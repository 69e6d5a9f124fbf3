"""Training fixed genotypes: 1-bit child, fp32 parent, CP-NAS kernel loss, distillation, two stages."""
from bitnas.train.config import TrainConfig
from bitnas.train.losses import CenterLoss, KernelLoss, distillation_loss
from bitnas.train.trainer import Trainer, evaluate_checkpoint, train

__all__ = ["CenterLoss", "KernelLoss", "TrainConfig", "Trainer", "distillation_loss", "evaluate_checkpoint", "train"]
