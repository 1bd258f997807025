import dataclasses
import math

import pytest
import torch

from glass_ad.config import GAS_MODES, GlassConfig, make_config
from glass_ad.model.discriminator import Discriminator
from glass_ad.synthesis.gas import (
    GASSettings,
    hypersphere_radius,
    project_las_features,
    synthesize,
    truncate_norm,
)

DIM = 32


def settings_of(hypothesis: str = "manifold", **changes) -> GASSettings:
    """The paper config's GAS settings with some fields changed."""
    return dataclasses.replace(GASSettings.from_config(GlassConfig(), hypothesis), **changes)


@pytest.fixture()
def disc():
    torch.manual_seed(0)
    return Discriminator(DIM, hidden=16)


def test_truncate_norm_lands_in_interval():
    delta = torch.randn(500, DIM) * torch.logspace(-3, 2, 500).unsqueeze(1)
    norms = truncate_norm(delta, 0.5, 1.0).norm(dim=1)
    assert norms.min() >= 0.5 - 1e-5 and norms.max() <= 1.0 + 1e-5
    inside = (delta.norm(dim=1) >= 0.5) & (delta.norm(dim=1) <= 1.0)
    assert torch.allclose(truncate_norm(delta, 0.5, 1.0)[inside], delta[inside])  # untouched inside


def test_manifold_projection_radius(disc):
    u = torch.randn(400, DIM)
    # Large noise so that the projection must shrink most vectors; small noise so that it must grow some.
    for noise in (0.001, 0.5):
        settings = settings_of("manifold", noise_std=noise, steps=10, step_size=0.01, project_every=5, r1=0.5, r2=1.0)
        v = synthesize(disc, u, settings, generator=torch.Generator().manual_seed(1))
        dist = (v - u).norm(dim=1)
        assert dist.min() >= 0.5 - 1e-4 and dist.max() <= 1.0 + 1e-4


def test_hypersphere_projection_radius(disc):
    u = torch.randn(400, DIM)
    centres = torch.zeros_like(u)
    radius = hypersphere_radius(u, centres, 0.75)
    expected = torch.quantile(u.norm(dim=1), 0.75)
    assert math.isclose(float(radius), float(expected), rel_tol=1e-6)
    # r'1 covers 75 % of the normal points.
    assert math.isclose(float((u.norm(dim=1) <= radius).float().mean()), 0.75, abs_tol=0.01)
    settings = settings_of("hypersphere", steps=5, project_every=5)
    v = synthesize(disc, u, settings, centres=centres, radius=radius, generator=torch.Generator().manual_seed(1))
    dist = v.norm(dim=1)
    assert dist.min() >= radius - 1e-4 and dist.max() <= 2 * radius + 1e-4


def test_las_anomalies_pushed_to_outer_shell():
    features = torch.randn(100, DIM)
    labels = (torch.arange(100) % 3 == 0).float()
    centres = torch.zeros_like(features)
    radius = torch.tensor(2.0)
    out = project_las_features(features, labels, centres, radius)
    dist = out[labels > 0].norm(dim=1)
    assert dist.min() >= 4.0 - 1e-4 and dist.max() <= 8.0 + 1e-4
    assert torch.equal(out[labels == 0], features[labels == 0])


def test_noise_only_mode_is_gaussian(disc):
    u = torch.zeros(2000, DIM)
    v = synthesize(disc, u, settings_of(mode="noise", noise_std=0.015), generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(v.std()), 0.015, rel_tol=0.05)


def test_given_noise_replaces_the_gaussian_draw(disc):
    u, noise = torch.randn(50, DIM), torch.randn(50, DIM)
    settings = settings_of(mode="noise", noise_std=0.5, unit=2.0)
    torch.testing.assert_close(synthesize(disc, u, settings, noise=noise) - u, noise * 0.5 * 2.0)
    projected = synthesize(disc, u, settings_of(mode="full", noise_std=0.5, r1=5.0, r2=10.0), noise=noise)
    moved = (projected - u).norm(dim=1)  # then the ascent (20 steps of 0.001) and the projection to [5, 10]
    assert bool((moved >= 5.0 - 1e-4).all()) and bool((moved <= 5.02 + 1e-4).all())


def test_ascent_moves_towards_higher_loss(disc):
    # Each normalised step has length η: without projection the total move is at most steps·η.
    u = torch.randn(300, DIM)
    settings = settings_of(mode="ascent", noise_std=0.0, steps=4, step_size=0.05)
    v = synthesize(disc, u, settings, generator=torch.Generator().manual_seed(0))
    moved = (v - u).norm(dim=1)
    assert moved.max() <= 0.2 + 1e-5 and moved.mean() > 0.18  # 4 steps of 0.05, nearly straight
    loss_before = torch.nn.functional.binary_cross_entropy(disc(torch.cat([u, u]))[300:], torch.ones(300, 1))
    loss_after = torch.nn.functional.binary_cross_entropy(disc(torch.cat([u, v]))[300:], torch.ones(300, 1))
    assert loss_after > loss_before


def test_gas_output_carries_gradient_to_the_input(disc):
    u = torch.randn(50, DIM, requires_grad=True)
    v = synthesize(disc, u, settings_of(steps=5, project_every=5), generator=torch.Generator().manual_seed(0))
    v.sum().backward()
    assert torch.allclose(u.grad, torch.ones_like(u))


def test_settings_come_from_the_config():
    config = make_config("fast", noise_std=0.02, r1=0.7, r2=1.5, gas="ascent")
    settings = GASSettings.from_config(config, "hypersphere", 2.5)
    assert (settings.hypothesis, settings.mode, settings.noise_std) == ("hypersphere", "ascent", 0.02)
    assert (settings.steps, settings.step_size, settings.project_every) == (
        config.ascent_steps,
        config.ascent_step_size,
        config.project_every,
    )
    assert (settings.r1, settings.r2, settings.unit) == (0.7, 1.5, 2.5)
    assert GASSettings.from_config(config.replace(feature_spacing=None), "manifold", 2.5).unit == 1.0


def test_modes_are_one_list():
    # Each mode adds one step to the previous one.
    steps = {mode: (settings_of(mode=mode).ascends, settings_of(mode=mode).projects) for mode in GAS_MODES}
    assert steps == {"off": (False, False), "noise": (False, False), "ascent": (True, False), "full": (True, True)}
    with pytest.raises(ValueError, match="GAS mode"):
        settings_of(mode="projection")
    with pytest.raises(ValueError, match="hypothesis"):
        settings_of(hypothesis="auto")
    with pytest.raises(ValueError, match="gas must be one of"):
        GlassConfig(gas="projection").validate()


class _Whole(torch.nn.Module):
    """D without the first-layer split: GAS must then call it whole, as the reference does."""

    def __init__(self, inner: Discriminator):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("layers", [2, 3])
def test_ascent_with_d_first_layer_computed_once_equals_whole_calls(layers):
    # The ascent computes D's first layer on the (fixed) normal vectors once; the GAS vectors it finds and
    # the batch-norm statistics it leaves behind must be those of calling D on [u; g] at every step.
    torch.manual_seed(0)
    split = Discriminator(DIM, hidden=16, layers=layers)
    whole = Discriminator(DIM, hidden=16, layers=layers)
    whole.load_state_dict(split.state_dict())
    u = torch.randn(300, DIM)
    settings = settings_of("manifold", steps=6, step_size=0.05, project_every=2, r1=0.5, r2=1.0)
    a = synthesize(split, u, settings, generator=torch.Generator().manual_seed(3))
    b = synthesize(_Whole(whole), u, settings, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-5)
    noise_only = synthesize(split, u, dataclasses.replace(settings, mode="noise"), generator=torch.Generator().manual_seed(3))
    assert (a - noise_only).norm(dim=1).min() > 0.1  # the ascent and projections moved every vector
    assert split.body[1].num_batches_tracked > 0  # the ascent's calls updated the batch-norm statistics
    for name, buffer in split.state_dict().items():
        assert torch.allclose(buffer.float(), whole.state_dict()[name].float(), atol=1e-6), name
    x = torch.randn(7, DIM)
    assert torch.allclose(split.after_first_layer(split.first_layer(x)), split(x))
