"""Training: the shared loop, densification strategies, checkpoints and run configuration."""

from .config import TrainConfig, apply_overrides
from .strategy import DefaultStrategy
from .trainer import Trainer, photometric_loss

__all__ = ["TrainConfig", "apply_overrides", "DefaultStrategy", "Trainer", "photometric_loss"]
