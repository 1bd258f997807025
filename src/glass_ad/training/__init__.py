"""Training one GLASS model from normal images: preparation → optimisation → epochs → validation → finishing
(see trainer.py for the order, docs/architecture.md for the map)."""

from glass_ad.training.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
