"""Training: the shared run loop, losses, view sampling, optimisation, densification strategies,
checkpoints and run configuration."""

from .config import TrainConfig, apply_overrides
from .loss import photometric_loss
from .strategy import DefaultStrategy
from .trainer import Trainer

__all__ = ["TrainConfig", "apply_overrides", "DefaultStrategy", "Trainer", "photometric_loss"]
