import math
from collections import Counter

import numpy as np

from glass_ad.synthesis.perlin import combined_perlin_mask, perlin_mask, perlin_noise


def _pointwise_perlin(shape, scale, rng):
    """Per-pixel textbook Perlin noise (slow, independent of the vectorised code)."""
    angles = 2 * math.pi * rng.random((scale[0] + 1, scale[1] + 1))
    step_y, step_x = -(-shape[0] // scale[0]), -(-shape[1] // scale[1])
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    out = np.zeros(shape)
    for y in range(shape[0]):
        for x in range(shape[1]):
            cy, cx, u, v = y // step_y, x // step_x, (y % step_y) / step_y, (x % step_x) / step_x

            def dot(i, j):
                a = angles[cy + i, cx + j]
                return math.cos(a) * (u - i) + math.sin(a) * (v - j)

            top = dot(0, 0) + fade(u) * (dot(1, 0) - dot(0, 0))
            bottom = dot(0, 1) + fade(u) * (dot(1, 1) - dot(0, 1))
            out[y, x] = math.sqrt(2) * (top + fade(v) * (bottom - top))
    return out


def test_vectorised_noise_matches_pointwise_formula():
    for shape, scale in [((32, 32), (4, 2)), ((30, 37), (4, 8)), ((16, 16), (1, 1))]:
        fast = perlin_noise(shape, scale, np.random.default_rng(1))
        slow = _pointwise_perlin(shape, scale, np.random.default_rng(1))
        assert fast.shape == shape and fast.dtype == np.float32
        np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_indivisible_shape_is_a_crop_of_the_padded_grid():
    # 30 rows / 4 cells → 8 px per cell → 32 rows; 37 cols / 8 cells → 5 px per cell → 40 cols.
    cropped = perlin_noise((30, 37), (4, 8), np.random.default_rng(3))
    padded = perlin_noise((32, 40), (4, 8), np.random.default_rng(3))
    np.testing.assert_array_equal(cropped, padded[:30, :37])


def test_noise_range_and_smoothness():
    noise = perlin_noise((128, 128), (8, 8), np.random.default_rng(0))
    assert -1.5 < noise.min() < 0 < noise.max() < 1.5
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2  # continuous: neighbours differ little


def test_mask_is_boolean_reproducible_and_accepts_rectangles():
    a = perlin_mask(64, np.random.default_rng(5))
    b = perlin_mask(64, np.random.default_rng(5))
    assert a.dtype == bool and a.shape == (64, 64) and np.array_equal(a, b)
    assert perlin_mask((40, 72), np.random.default_rng(5)).shape == (40, 72)


def test_mask_threshold_and_scale_range():
    rng = np.random.default_rng(0)
    coverage = np.mean([perlin_mask(64, rng).mean() for _ in range(200)])
    assert 0.02 < coverage < 0.4  # noise > 0.5 is a minority of the area
    fine = perlin_mask(64, np.random.default_rng(1), min_scale_exp=5, max_scale_exp=6)
    assert 0 < fine.mean() < 0.5
    assert perlin_mask(64, np.random.default_rng(1), threshold=2.0).sum() == 0


def test_rules_each_drawn_a_third_of_the_time():
    # 1500 draws: the binomial standard deviation is 0.012, so 0.05 is a 4-sigma band.
    rng = np.random.default_rng(0)
    counts = Counter(combined_perlin_mask(32, rng)[1] for _ in range(1500))
    assert set(counts) == {"and", "or", "single"}
    for rule in ("and", "or", "single"):
        assert abs(counts[rule] / 1500 - 1 / 3) < 0.05, counts


def test_rules_combine_the_two_masks():
    # Draw order m1, m2, p: replaying it with the same seed gives the parts of the combined mask.
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        first, second = perlin_mask(48, rng), perlin_mask(48, rng)
        p = rng.random()
        mask, rule = combined_perlin_mask(48, np.random.default_rng(seed))
        expected_rule = "or" if p > 2 / 3 else ("and" if p > 1 / 3 else "single")
        expected = {"or": first | second, "and": first & second, "single": first}[expected_rule]
        assert rule == expected_rule and np.array_equal(mask, expected)
        seen.add(rule)
    assert seen == {"and", "or", "single"}


# ------------------------------------------------------------------------------ the one redraw loop


def test_draw_perlin_mask_crops_the_enclosing_square():
    from glass_ad.synthesis.perlin import draw_perlin_mask

    mask, rule = draw_perlin_mask((40, 70), np.random.default_rng(3))
    square, same_rule = combined_perlin_mask(70, np.random.default_rng(3))
    assert mask.shape == (40, 70) and rule == same_rule
    assert np.array_equal(mask, square[15:55])  # centred crop of the max(H, W) square


def test_draw_perlin_mask_redraws_until_large_enough_and_keeps_the_foreground():
    from glass_ad.synthesis.perlin import draw_perlin_mask

    foreground = np.zeros((64, 64), bool)
    foreground[8:40, 8:40] = True
    for seed in range(10):
        mask, _ = draw_perlin_mask(64, np.random.default_rng(seed), foreground=foreground, min_pixels=50)
        assert mask.sum() >= 50 and not (mask & ~foreground).any()


def test_draw_perlin_mask_returns_the_largest_when_every_draw_falls_short(monkeypatch):
    import glass_ad.synthesis.perlin as perlin_module

    sizes = iter([3, 9, 9, 5])

    def fake(size, rng):
        mask = np.zeros((size, size), bool)
        mask.flat[: next(sizes)] = True
        return mask, "single"

    monkeypatch.setattr(perlin_module, "combined_perlin_mask", fake)
    mask, _ = perlin_module.draw_perlin_mask(16, np.random.default_rng(0), min_pixels=100, max_draws=4)
    assert mask.sum() == 9
    # The foreground is given up after `foreground_tries` misses.
    sizes = iter([4, 4, 4])
    far = np.zeros((16, 16), bool)
    far[-1, -1] = True
    mask, _ = perlin_module.draw_perlin_mask(16, np.random.default_rng(0), foreground=far, foreground_tries=2, max_draws=3)
    assert mask.sum() == 4


# ----------------------------------------------------------------------------- rectangular inputs


def test_square_size_as_int_or_tuple_draws_the_same_masks():
    from glass_ad.synthesis.perlin import as_hw, draw_perlin_mask

    assert as_hw(64) == (64, 64) and as_hw((40, 72)) == (40, 72)
    for seed in range(5):
        a, rule_a = draw_perlin_mask(64, np.random.default_rng(seed))
        b, rule_b = draw_perlin_mask((64, 64), np.random.default_rng(seed))
        assert rule_a == rule_b and np.array_equal(a, b)
        # A square is the square itself (no crop): the masks of the combined draw.
        square, _ = combined_perlin_mask(64, np.random.default_rng(seed))
        assert np.array_equal(a, square)


def test_square_masks_keep_their_numbers():
    # Pinned before rectangles existed: a square input must draw exactly these masks for these seeds.
    from glass_ad.synthesis.perlin import draw_perlin_mask

    drawn = [draw_perlin_mask(64, np.random.default_rng(seed)) for seed in range(4)]
    assert [(int(m.sum()), rule) for m, rule in drawn] == [(9, "and"), (7, "and"), (200, "or"), (180, "single")]


def test_portrait_mask_is_the_centred_column_window_of_the_square():
    from glass_ad.synthesis.perlin import draw_perlin_mask

    mask, rule = draw_perlin_mask((72, 40), np.random.default_rng(4))
    square, same_rule = combined_perlin_mask(72, np.random.default_rng(4))
    assert mask.shape == (72, 40) and rule == same_rule
    assert np.array_equal(mask, square[:, 16:56])


def test_rectangular_masks_stay_inside_the_foreground():
    from glass_ad.synthesis.perlin import draw_perlin_mask

    foreground = np.zeros((40, 96), bool)
    foreground[8:32, 20:90] = True
    for seed in range(8):
        mask, _ = draw_perlin_mask((40, 96), np.random.default_rng(seed), foreground=foreground, min_pixels=20)
        assert mask.shape == (40, 96) and mask.sum() >= 20 and not (mask & ~foreground).any()
