"""Former home of the training loop, now the `glass_ad.training` package (kept until every caller moves)."""

from .training.hybrid import build_hybrid_score
from .training.preparation import (
    compute_foreground,
    decode_images,
    extract_features,
    is_grey,
    split_holdout,
)
from .gas import GASSettings
from .training.step import training_step, use_bf16


def gas_settings(config, hypothesis, unit=1.0):  # kept for callers not yet moved
    return GASSettings.from_config(config, hypothesis, unit)


from .datasets import choose_fit  # noqa: E402
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
    "choose_fit",
    "EarlyStopping",
    "TrainResult",
    "branch_summary",
    "build_hybrid_score",
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
