"""The stopping rule: best single epoch kept, stopping on the smoothed validation score."""

import time
from types import SimpleNamespace

import pytest
from torch import nn

from glass_ad.training.loop import TimeLimit
from glass_ad.training.progress import Progress
from glass_ad.training.trainer import _stop
from glass_ad.training.validation import GAS_TRAINED_AUROC, EarlyStopping

# Validation scores of the MTD run with a cosine schedule (runs/exp_cosine20, docs/benchmarks.md): noisy,
# but still rising until epoch 19.
NOISY_RISING = [0.9048, 0.9133, 0.9153, 0.9284, 0.9216, 0.9229, 0.9268, 0.9239, 0.9311, 0.9303,
                0.9379, 0.9355, 0.9357, 0.9371, 0.9400, 0.9391, 0.9406, 0.9404, 0.9412, 0.9410]


def _first_stop(scores, patience, window):
    stopper = EarlyStopping(patience, window)
    for epoch, score in enumerate(scores, start=1):
        stopper.update(score)
        if stopper.should_stop:
            return epoch
    return None


def test_raw_scores_stop_a_rising_run_early():
    assert _first_stop(NOISY_RISING, patience=4, window=1) == 8


def test_smoothed_scores_let_it_run():
    assert _first_stop(NOISY_RISING, patience=4, window=3) is None


def test_a_plateau_stops_after_patience():
    scores = [0.5, 0.6, 0.7] + [0.7] * 10
    # The 3-epoch mean still rises until epoch 5, then is flat: stale at epochs 6..9.
    assert _first_stop(scores, patience=4, window=3) == 9


def test_best_single_epoch_is_reported():
    stopper = EarlyStopping(patience=4, window=3)
    flags = [stopper.update(s) for s in [0.5, 0.8, 0.7, 0.79, 0.81]]
    assert flags == [True, True, False, False, True]
    assert stopper.best_score == pytest.approx(0.81)


# Validation scores of an MTD run whose first epoch scored high by luck (worse-family selection): the
# trend must not be compared with a one-epoch "mean" (it stopped this run at epoch 7 with the best score).
LUCKY_FIRST = [0.6637, 0.6555, 0.6539, 0.6481, 0.6703, 0.5717, 0.6891]


def test_trend_waits_for_a_full_window():
    assert _first_stop(LUCKY_FIRST, patience=6, window=3) is None


def test_time_limit_expects_the_slowest_epoch_so_far():
    limit = TimeLimit.from_history(1.0, [{"epoch": 1, "epoch_s": 20.0}, {"epoch": 2, "epoch_s": 35.0}])
    assert limit.longest_epoch_s == 35.0
    assert limit.allows_another(25.0) and not limit.allows_another(25.5)  # 25 + 35 = 60 s fits exactly
    limit.record(10.0)
    assert limit.longest_epoch_s == 35.0
    limit.record(50.0)
    assert not limit.allows_another(11.0) and limit.allows_another(10.0)
    assert TimeLimit.from_history(0.0, [{"epoch_s": 1e6}]).allows_another(1e9)  # 0: no limit
    assert TimeLimit.from_history(5.0, [{"epoch": 1}]).longest_epoch_s == 0.0  # histories written before epoch_s


def test_time_limit_keeps_the_finishings_seconds_free():
    limit = TimeLimit.from_history(1.0, [{"epoch_s": 20.0}], reserve_s=15.0)
    assert limit.allows_another(25.0) and not limit.allows_another(25.5)  # 25 + 20 + 15 = 60 s fits exactly
    assert TimeLimit.from_history(0.0, [{"epoch_s": 20.0}], reserve_s=1e9).allows_another(1e9)  # 0: no limit


# (val_score, val_gas_separation) of MPDD metal_plate forced to the hypersphere, seed 1 (runs6/mpdd_h_s1,
# docs/benchmarks.md): epoch 2 scores 0.547 while its GAS separation is 0.41; GAS trains from epoch 8 on.
SLOW_GAS = [(0.265, 0.55), (0.547, 0.411), (0.429, 0.583), (0.517, 0.665), (0.49, 0.787), (0.507, 0.838),
            (0.427, 0.886), (0.531, 0.905), (0.571, 0.915), (0.602, 0.935), (0.662, 0.937), (0.636, 0.944),
            (0.639, 0.95), (0.619, 0.956), (0.665, 0.962), (0.691, 0.966), (0.639, 0.976), (0.649, 0.977)]


def _kept_epochs(records, patience=4, window=3):
    """The kept epoch after each epoch, with a model whose weight records the epoch it was kept at."""
    model = nn.Module()
    model.discriminator = nn.Linear(1, 1, bias=False)
    progress = Progress(EarlyStopping(patience, window), started=time.perf_counter())
    kept = []
    for epoch, record in enumerate(records, start=1):
        model.discriminator.weight.data.fill_(epoch)
        progress.select(epoch, record, model)
        progress.history.append(record)
        assert progress.best_state["discriminator.weight"].item() == progress.best_epoch  # its weights
        kept.append(progress.best_epoch)
    return kept, progress


def test_an_epoch_whose_gas_trained_beats_higher_scores_without():
    records = [{"val_score": s, "val_gas_separation": g} for s, g in SLOW_GAS]
    kept, progress = _kept_epochs(records)
    assert kept[:7] == [1, 2, 2, 2, 2, 2, 2]  # no epoch's GAS trained yet: the best score
    assert kept[7] == 8  # epoch 8 (0.531, GAS 0.905) replaces epoch 2 (0.547, GAS 0.411)
    assert kept[-1] == 16 and records[15]["val_gas_separation"] >= GAS_TRAINED_AUROC
    assert progress.gas_trained


def test_without_gas_measured_the_best_score_is_kept():
    kept, progress = _kept_epochs([{"val_score": s} for s, _ in SLOW_GAS])
    assert kept[-1] == 16 and kept[7] == 2  # the scores alone: epoch 2 leads until epoch 9
    assert progress.gas_trained  # nothing measured: nothing to wait for


def _stop_reason(progress, epochs=50):
    config = SimpleNamespace(early_stopping=True, stop_window=3, patience=4, epochs=epochs, time_limit_min=0.0)
    run = SimpleNamespace(config=config, validating=True)
    group = SimpleNamespace(broadcast=lambda value: value)
    limit = TimeLimit.from_history(0.0, progress.history)
    stop = _stop(run, progress, limit, group)
    return None if stop is None else stop[0]


def test_early_stopping_waits_for_an_epoch_whose_gas_trained():
    flat = [{"val_score": 0.6, "val_gas_separation": 0.5 + 0.03 * i, "elapsed_s": i} for i in range(16)]
    progress = Progress(EarlyStopping(4, 3), started=time.perf_counter())
    reasons = []
    for epoch, record in enumerate(flat, start=1):
        progress.select(epoch, record, nn.Linear(1, 1))
        progress.history.append(record)
        reasons.append(_stop_reason(progress))
    # The flat score is stale from epoch 4 and would stop the run at epoch 7; GAS reaches 0.9 at epoch 15.
    assert progress.stopper.stale >= 4 and flat[13]["val_gas_separation"] < GAS_TRAINED_AUROC
    assert reasons[:14] == [None] * 14 and reasons[14] == "early stopping"
