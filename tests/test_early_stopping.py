"""The stopping rule: best single epoch kept, stopping on the smoothed validation score."""

import pytest

from glass_ad.training.loop import TimeLimit
from glass_ad.training.validation import EarlyStopping

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
