"""Former home of the training loop, now the `glass_ad.training` package (kept until every caller moves)."""

from .training.hybrid import build_hybrid_score
from .training.preparation import (
    choose_fit,
    compute_foreground,
    decode_images,
    extract_features,
    is_grey,
    split_holdout,
)
from .training.step import gas_settings, training_step, use_bf16
from .training.trainer import TrainResult, train
from .training.validation import (
    EarlyStopping,
    branch_summary,
    dead_branch_warning,
    gas_separation,
    score_features,
    validate,
)

__all__ = [
    "EarlyStopping",
    "TrainResult",
    "branch_summary",
    "build_hybrid_score",
    "choose_fit",
    "compute_foreground",
    "dead_branch_warning",
    "decode_images",
    "extract_features",
    "gas_separation",
    "is_grey",
    "score_features",
    "split_holdout",
    "train",
    "training_step",
    "use_bf16",
    "validate",
    "gas_settings",
]
