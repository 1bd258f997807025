"""The training loop's parts, each on its own (training/trainer.py calls them in this order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.model.glass_model import build_model
from glass_ad.synthesis.gas import GASSettings
from glass_ad.training.loop import iterations_per_epoch, make_optimisation, train_one_epoch
from glass_ad.training.preparation import prepare_features, prepare_images, prepare_synthesis, split_holdout


def _config(**overrides):
    values = dict(backbone="efficientnet_lite0", image_size=64, epochs=4, seed=0, precision="fp32", batch_size=8)
    values.update(overrides)
    return make_config("fast", **values)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=24, n_test_good=2, n_test_defect=2, size=64)


@pytest.fixture(scope="module")
def prepared(data):
    config = _config()
    images = prepare_images(data, config, progress=False, echo=lambda _: None)
    synthesis = prepare_synthesis(images.images, images.config, echo=lambda _: None)
    model = build_model(images.config)
    setup = prepare_features(model, images.images, images.config, torch.device("cpu"), np.random.default_rng(0),
                             progress=False, echo=lambda _: None)  # fmt: skip
    return images, synthesis, model, setup


def test_the_holdout_split_is_seeded_disjoint_and_complete(data):
    from glass_ad.data.layouts import load_dataset

    samples = load_dataset(data).train
    train, holdout = split_holdout(samples, _config())
    again = split_holdout(samples, _config())
    assert [s.path for s in holdout] == [s.path for s in again[1]]
    assert not {s.path for s in train} & {s.path for s in holdout}
    assert len(train) + len(holdout) == len(samples) and len(train) >= 8
    other = split_holdout(samples, _config(seed=1))[1]
    assert [s.path for s in other] != [s.path for s in holdout]


def test_preparation_decodes_once_and_measures_the_spacing(prepared):
    images, synthesis, model, setup = prepared
    assert images.images.dtype == torch.uint8 and images.images.shape[1:] == (3, 64, 64)
    assert images.holdout is not None and images.config.fit in ("crop", "stretch")
    assert synthesis.hypothesis in ("manifold", "hypersphere")
    assert setup.features.batch(np.arange(3)).shape == (3, model.num_patches, model.embed_dim)
    assert setup.mean_feature.shape == (model.num_patches, model.embed_dim)
    # The scale rule: after scaling, the measured normal spacing is the configured one (1).
    assert setup.geometry.scale > 0
    assert float(setup.spacing_probe.spacing(torch.nn.Identity())) == pytest.approx(1.0, rel=1e-4)


def test_the_optimisers_are_the_references():
    config = _config(lr=2e-4)
    model = build_model(config)
    optimisation = make_optimisation(model, config)
    disc, adaptor = optimisation.optimizers
    assert isinstance(disc, torch.optim.AdamW) and disc.param_groups[0]["lr"] == pytest.approx(4e-4)
    assert isinstance(adaptor, torch.optim.Adam) and adaptor.param_groups[0]["lr"] == pytest.approx(2e-4)
    assert adaptor.param_groups[0]["weight_decay"] == config.adaptor_weight_decay
    assert optimisation.lr == pytest.approx(2e-4)
    cosine = make_optimisation(model, _config(lr=2e-4, lr_schedule="cosine", epochs=2))
    cosine.end_epoch()
    assert cosine.lr == pytest.approx(2e-4 * 0.5)  # half-way down the cosine after 1 of 2 epochs


def test_an_epoch_trains_every_branch(prepared):
    images, synthesis, model, setup = prepared
    config = images.config
    model.train()
    optimisation = make_optimisation(model, config)
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    with torch.no_grad():
        centre = model.adaptor(setup.mean_feature)
    stats = train_one_epoch(
        model, optimisation, setup.features, synthesis, config,
        GASSettings.from_config(config, synthesis.hypothesis, 1.0), centre,
        order_rng=np.random.default_rng(0), las_rng=np.random.default_rng(1), generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert {"loss", "loss_normal", "loss_gas", "loss_las", "p_true", "p_gas"} <= set(stats)
    assert stats["loss"] == pytest.approx(stats["loss_normal"] + stats["loss_gas"] + stats["loss_las"], rel=1e-5)
    changed = [k for k, v in model.discriminator.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    assert iterations_per_epoch(config, len(setup.features)) == min(
        -(-(config.images_per_epoch + 1) // config.batch_size), -(-len(setup.features) // config.batch_size)
    )


def test_nn_agreement_is_one_for_a_discriminator_that_ranks_by_distance():
    from glass_ad.training.validation import nn_agreement, nn_agreement_probe

    torch.manual_seed(0)
    bank = torch.randn(2000, 4)
    normal = torch.randn(3, 50, 4) * torch.tensor([1.0, 1.0, 1.0, 3.0])  # spread along the last axis
    rows, distances = nn_agreement_probe(normal, bank)
    assert rows.shape == (150, 4) and distances.shape == (150,)
    brute = torch.cdist(rows, bank).amin(1)
    torch.testing.assert_close(distances, brute)

    class Ranker(torch.nn.Module):  # D's logit = the true nearest-neighbour distance: perfect agreement
        adaptor = torch.nn.Identity()

        class discriminator:  # noqa: N801 - stands in for the module attribute
            @staticmethod
            def logits(x):
                return torch.cdist(x, bank).amin(1, keepdim=True)

    assert nn_agreement(Ranker(), rows, distances) == pytest.approx(1.0)

    class Opposite(Ranker):
        class discriminator:  # noqa: N801
            @staticmethod
            def logits(x):
                return -torch.cdist(x, bank).amin(1, keepdim=True)

    assert nn_agreement(Opposite(), rows, distances) == pytest.approx(-1.0)


def test_the_weight_average_is_an_exponential_moving_average_of_a_and_d():
    from glass_ad.training.averaging import WeightAverage, trainable_state

    model = build_model(_config())
    average = WeightAverage(model, decay=0.9)
    states = []
    torch.manual_seed(0)
    for _ in range(3):  # three "steps": new weights and new batch-norm statistics each time
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if name.startswith(("adaptor.", "discriminator.")) and value.is_floating_point():
                    value.copy_(torch.randn_like(value))
        states.append(trainable_state(model))
        average.update()
    live = trainable_state(model)
    for name in live:
        if not live[name].is_floating_point():
            continue
        expected = (0.9 * states[0][name] + 0.1 * states[1][name]) * 0.9 + 0.1 * states[2][name]  # first update copies
        torch.testing.assert_close(average.state()[name], expected)
    assert any(n.endswith("running_mean") for n in live) and any(n.startswith("adaptor.") for n in live)

    # Evaluated inside `applied()`, the live weights come back afterwards, even after an error.
    with pytest.raises(RuntimeError), average.applied():
        torch.testing.assert_close(trainable_state(model)["adaptor.linear.weight"], average.state()["adaptor.linear.weight"])
        raise RuntimeError("validation failed")
    for name, value in trainable_state(model).items():
        assert torch.equal(value, live[name])

    copy = WeightAverage(model, decay=0.9)
    copy.load_state_dict(average.state_dict())
    for name, value in copy.state().items():
        assert torch.equal(value, average.state()[name])
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)
    # A decay of 0 is no average: it copies the live weights.
    copying = WeightAverage(model, decay=0.0)
    copying.update()
    for name, value in copying.state().items():
        assert torch.equal(value, live[name])


def test_training_with_the_average_keeps_the_steps_and_saves_the_average(data, tmp_path):
    from glass_ad.model.checkpoint import read_checkpoint
    from glass_ad.training.trainer import train

    runs, said = {}, []
    for span in (0.0, 1.0):
        config = _config(epochs=2, ema_epochs=span, early_stopping=True, patience=50, num_threads=1)
        result = train(data, tmp_path / str(span), config, progress=False, echo=said.append)
        runs[span] = (result, read_checkpoint(tmp_path / str(span)))
    (plain, plain_ck), (averaged, averaged_ck) = runs[0.0], runs[1.0]
    # The span is one epoch of steps: the decay follows the data set's size (a few steps here).
    steps = iterations_per_epoch(_config(), averaged_ck["training"]["train_images"])
    assert sum("moving average" in line for line in said) == 1
    assert f"decay {1 - 1 / steps:.4f} per step" in next(line for line in said if "moving average" in line)
    # The optimiser's steps are the same (the average only follows them) ...
    for a, b in zip(plain.history, averaged.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    # ... but what is validated and saved is the average, not the live weights.
    assert plain.history[-1]["val_score"] != averaged.history[-1]["val_score"]
    assert not torch.equal(plain_ck["discriminator"]["body.0.weight"], averaged_ck["discriminator"]["body.0.weight"])


def test_the_las_weight_scales_only_the_las_term(prepared):
    from glass_ad.training.step import step_loss

    images, synthesis, model, setup = prepared
    normal = setup.features.batch(np.arange(4))
    las = synthesis.las(images.images[:4].float() / 255.0, None, np.random.default_rng(0))
    with torch.no_grad():
        las_features = model.features(las.images)
        centre = model.adaptor(setup.mean_feature)
    results = {}
    for weight in (1.0, 0.25):
        config = images.config.replace(las_weight=weight)
        settings = GASSettings.from_config(config, synthesis.hypothesis, 1.0)
        loss, stats = step_loss(model, normal, las_features, las.patch_labels, centre, config, settings,
                                torch.Generator().manual_seed(0))  # fmt: skip
        results[weight] = (float(loss), stats)
    (loss_1, stats_1), (loss_q, stats_q) = results[1.0], results[0.25]
    assert stats_q["loss_las"] == pytest.approx(stats_1["loss_las"]) and stats_q["loss_las"] > 0
    assert loss_1 == pytest.approx(stats_1["loss_normal"] + stats_1["loss_gas"] + stats_1["loss_las"], rel=1e-5)
    assert loss_q == pytest.approx(stats_q["loss_normal"] + stats_q["loss_gas"] + 0.25 * stats_q["loss_las"], rel=1e-5)


def test_patches_next_to_a_las_mask_can_be_left_out_of_the_las_loss(prepared):
    from glass_ad.synthesis.las import IGNORED, ignore_near_mask
    from glass_ad.training.losses import las_loss
    from glass_ad.training.step import step_loss

    images, synthesis, model, setup = prepared
    normal = setup.features.batch(np.arange(4))
    las = synthesis.las(images.images[:4].float() / 255.0, None, np.random.default_rng(1))
    marked = ignore_near_mask(las.patch_labels, synthesis.las.grid_shape, 1)
    assert (marked == IGNORED).any() and torch.equal(marked[marked != IGNORED], las.patch_labels[marked != IGNORED])
    config = images.config.replace(patch_fraction=1.0, gas="off")
    settings = GASSettings.from_config(config, "manifold", 1.0)
    with torch.no_grad():
        las_features = model.features(las.images)
        centre = model.adaptor(setup.mean_feature)
        _, stats = step_loss(model, normal, las_features, marked, centre, config, settings, torch.Generator().manual_seed(0))
        # The LAS term is the reference loss over the counted patches only.
        counted = (marked != IGNORED).flatten()
        rows = las_features.reshape(-1, las_features.shape[-1])[counted]
        scores = model.discriminator(model.adaptor(rows)).float().squeeze(1)
        expected = las_loss(scores, marked.flatten()[counted], config.focal_gamma, config.ohem_quantile)
    assert stats["loss_las"] == pytest.approx(float(expected), rel=1e-5)


def test_each_branch_trains_on_at_most_the_capped_patch_vectors_per_image(prepared):
    from glass_ad.training.step import patch_vectors_per_step, step_loss

    images, synthesis, model, setup = prepared
    fast = images.config
    # A quarter of the batch's patch vectors; at most 324 per image (a quarter of a 288² input's grid), so
    # an elongated 288×720 input (3,240 patches) trains on as many vectors per step as a square one.
    assert patch_vectors_per_step(8, 1296, fast) == 2592 == patch_vectors_per_step(8, 3240, fast)
    assert patch_vectors_per_step(8, 64, fast) == 128
    assert patch_vectors_per_step(8, 3240, fast.replace(max_patches_per_image=None)) == 6480
    with pytest.raises(ValueError, match="max_patches_per_image"):
        fast.replace(max_patches_per_image=0).validate()

    config = fast.replace(max_patches_per_image=5)  # 4 images × 5 = 20 of the 4 × 64 × 0.25 = 64
    normal = setup.features.batch(np.arange(4))
    las = synthesis.las(images.images[:4].float() / 255.0, None, np.random.default_rng(0))
    rows_seen = []
    hook = model.discriminator.register_forward_hook(lambda module, args, out: rows_seen.append(len(args[0])))
    try:
        with torch.no_grad():
            las_features = model.features(las.images)
            centre = model.adaptor(setup.mean_feature)
        settings = GASSettings.from_config(config, synthesis.hypothesis, 1.0)
        step_loss(model, normal, las_features, las.patch_labels, centre, config, settings, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    # GAS ascent and the normal + GAS call see 20 normal and 20 GAS rows; the LAS call 20 LAS rows.
    assert rows_seen and max(rows_seen) == 40 and rows_seen[-1] == 20


def test_the_validation_split_can_keep_the_pixel_masks_of_its_anomalies(prepared):
    from glass_ad.synthesis.las import patch_labels
    from glass_ad.training.validation import build_validation_set

    images, synthesis, model, _ = prepared
    build = lambda keep: build_validation_set(model, images.holdout, synthesis.las, images.config,  # noqa: E731
                                              torch.device("cpu"), False, keep_masks=keep)  # fmt: skip
    plain, kept = build(False), build(True)
    assert plain.masks is None and plain.unseen_masks is None
    # The same anomalies either way (fixed seeds), and the masks are those the patch labels were pooled from.
    assert torch.equal(plain.labels, kept.labels) and torch.equal(plain.unseen, kept.unseen)
    for masks, labels in ((kept.masks, kept.labels), (kept.unseen_masks, kept.unseen_labels)):
        assert masks.dtype == torch.bool and masks.shape == (len(images.holdout), *images.config.input_shape)
        assert masks.any() and torch.equal(patch_labels(masks[:, None].float()) > 0.5, labels > 0.5)
