"""The pool of re-used LAS copies (training/las_pool.py): each copy is a function of the seed, computed once,
and exactly what a fresh LAS copy of that image would have been."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.model.glass_model import build_model
from glass_ad.synthesis.las import ignore_near_mask
from glass_ad.training.las_pool import LASPool
from glass_ad.training.preparation import prepare_features, prepare_images, prepare_synthesis

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**overrides):
    values = dict(backbone="efficientnet_lite0", image_size=64, seed=0, precision="fp32", las_variants=3)
    values.update(overrides)
    return make_config("fast", **values)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data = make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=14, n_test_good=1, n_test_defect=1, size=64)
    config = _config()
    images = prepare_images(data, config, progress=False, echo=lambda _: None)
    synthesis = prepare_synthesis(images.images, images.config, echo=lambda _: None)
    model = build_model(images.config).eval()
    prepare_features(model, images.images, images.config, torch.device("cpu"), np.random.default_rng(0),
                     progress=False, echo=lambda _: None)  # fmt: skip
    return images, synthesis, model


def _pool(prepared, **overrides) -> LASPool:
    images, synthesis, model = prepared
    config = images.config.replace(**overrides)
    return LASPool(model, images.images, synthesis.foreground, synthesis.las, config, torch.device("cpu"))


def test_a_copy_is_the_synthesizers_copy_from_its_own_seeded_stream(prepared):
    images, synthesis, model = prepared
    pool = _pool(prepared)
    features, labels = pool.batch(np.array([5]), np.random.default_rng(1))
    (slot,) = np.flatnonzero(pool.filled)
    image, variant = divmod(int(slot), pool.variants)
    assert image == 5
    rng = np.random.default_rng([pool.seed, 0, 0x1A5, image, variant])
    fresh = synthesis.las(images.images[5:6].float() / 255.0, None, rng)
    with torch.no_grad():
        expected = model.features(fresh.images)
    assert labels.shape == (1, model.num_patches) and features.shape == (1, model.num_patches, model.embed_dim)
    assert torch.equal(labels, ignore_near_mask(fresh.patch_labels, synthesis.las.grid_shape, 0))
    assert labels.sum() > 0  # a LAS copy always has an anomalous patch
    # Stored as float16, like the normal features.
    torch.testing.assert_close(features, expected.half().float(), rtol=0, atol=0)


def test_copies_are_made_once_and_never_more_than_variants_per_image(prepared):
    pool = _pool(prepared)
    count = len(prepared[0].images)
    rng = np.random.default_rng(2)
    seen: dict[int, set[bytes]] = {}
    for _ in range(40):
        index = np.sort(rng.choice(count, 4, replace=False))
        made_before = pool.copies_made
        features, _ = pool.batch(index, rng)
        assert pool.copies_made - made_before <= len(index)
        for image, row in zip(index, features):
            seen.setdefault(int(image), set()).add(row.numpy().tobytes())
    assert pool.copies_made <= count * 3
    assert max(len(copies) for copies in seen.values()) <= 3
    assert any(len(copies) > 1 for copies in seen.values())  # images do get different copies


def test_the_pool_does_not_depend_on_the_order_of_visits(prepared):
    first, second = _pool(prepared), _pool(prepared)
    # Fill every copy of images 0-3, in two different orders and batchings.
    for image in range(4):
        for variant in range(3):
            first._make(np.array([image * 3 + variant]))
    second._make(np.arange(12)[::-1].copy())
    assert np.array_equal(first.labels[:12], second.labels[:12])
    assert np.array_equal(first.store.array[:12], second.store.array[:12])


def test_a_pool_seed_gives_other_copies(prepared):
    one, other = _pool(prepared), _pool(prepared, seed=1)
    one._make(np.array([0])), other._make(np.array([0]))
    assert not np.array_equal(one.store.array[0], other.store.array[0])


def test_las_variants_is_validated():
    with pytest.raises(ValueError, match="las_variants"):
        make_config("fast", las_variants=-1)
    with pytest.raises(ValueError, match="las_variants >= 1"):
        LASPool(None, torch.zeros(1, 3, 8, 8), None, None, make_config("fast", las_variants=0), torch.device("cpu"))
