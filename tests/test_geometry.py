"""The scale rule (normal spacing), GAS lengths in that unit, and GAS that really trains the discriminator."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from glass_ad.config import GlassConfig, make_config
from glass_ad.model.discriminator import Adaptor, Discriminator
from glass_ad.model.geometry import (
    FeatureGeometry,
    SpacingProbe,
    measure_geometry,
    nearest_distances,
)
from glass_ad.synthesis import gas as gas_module
from glass_ad.synthesis.gas import GASSettings, synthesize
from glass_ad.training.validation import dead_branch_warning, gas_separation


def settings_of(hypothesis: str = "manifold", **changes) -> GASSettings:
    """The paper config's GAS settings with some fields changed."""
    return dataclasses.replace(GASSettings.from_config(GlassConfig(), hypothesis), **changes)


def test_nearest_distances_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(50, 7, generator=generator), torch.randn(300, 7, generator=generator)
    brute = torch.tensor([min(float((q - b).norm()) for b in bank) for q in queries])
    assert torch.allclose(nearest_distances(queries, bank, chunk=16), brute, atol=1e-4)


def test_probe_queries_never_meet_their_own_image():
    # Every image is one constant vector: a query would find distance 0 only in its own image.
    images = torch.arange(12, dtype=torch.float32).view(12, 1, 1).expand(12, 20, 5).clone()
    probe = SpacingProbe.from_features(images, np.random.default_rng(0), query_images=3)
    assert nearest_distances(probe.queries, probe.bank).min() >= 1.0 - 1e-6
    assert len(probe.queries) == 3 * 20 and len(probe.bank) == 9 * 20


def test_scale_brings_spacing_to_target():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(16, 64, 24, generator=generator) * 37.0
    probe = SpacingProbe.from_features(features, np.random.default_rng(0))
    geometry = measure_geometry(probe, 1.0)
    scaled = SpacingProbe(probe.queries * geometry.scale, probe.bank * geometry.scale)
    assert math.isclose(scaled.spacing(), 1.0, rel_tol=1e-4)
    assert geometry.spacing_q10 <= 1.0 <= geometry.spacing_q90
    assert geometry.principal_std_min <= geometry.principal_std_median <= geometry.principal_std_max
    assert FeatureGeometry.from_dict(geometry.to_dict()) == geometry
    # Raw features (the reference's absolute lengths): no scaling.
    assert measure_geometry(probe, None).scale == 1.0


def test_spacing_follows_the_adaptor():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(8, 32, 16, generator=generator)
    probe = SpacingProbe.from_features(features, np.random.default_rng(0))
    assert math.isclose(probe.spacing(lambda x: 3.0 * x), 3.0 * probe.spacing(), rel_tol=1e-5)


@pytest.mark.parametrize("unit", [0.1, 3.0])
def test_gas_lengths_are_in_units_of_the_spacing(unit):
    torch.manual_seed(0)
    disc = Discriminator(32, hidden=16)
    u = torch.randn(300, 32) * unit
    settings = settings_of("manifold", steps=4, step_size=0.005, project_every=2, r1=0.5, r2=1.0, unit=unit)
    v = synthesize(disc, u, settings, generator=torch.Generator().manual_seed(0))
    distance = (v - u).norm(dim=1)
    assert distance.min() >= 0.5 * unit * (1 - 1e-4) and distance.max() <= 1.0 * unit * (1 + 1e-4)


def test_config_unit_only_with_the_scale_rule():
    config = make_config("fast")
    assert GASSettings.from_config(config, "manifold", 2.5).unit == 2.5
    assert GASSettings.from_config(config.replace(feature_spacing=None), "manifold", 2.5).unit == 1.0


def test_noise_is_drawn_on_the_generators_device(monkeypatch):
    """A CPU generator must never be asked for a tensor on another device (CUDA raised at the first GAS step)."""
    seen = []
    real_randn = torch.randn

    def spy(*args, **kwargs):
        seen.append((kwargs.get("device"), kwargs.get("generator")))
        return real_randn(*args, **kwargs)

    monkeypatch.setattr(gas_module.torch, "randn", spy)
    generator = torch.Generator().manual_seed(0)
    disc = Discriminator(8, hidden=8)
    synthesize(disc, torch.randn(10, 8), settings_of(steps=1), generator=generator)
    assert seen and all(device == generator.device for device, gen in seen if gen is generator)


def test_ascent_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    disc = Discriminator(32, hidden=16)
    u = torch.randn(64, 32)
    settings = settings_of(mode="ascent", noise_std=0.0, steps=1, step_size=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = synthesize(disc, u, settings, generator=torch.Generator().manual_seed(0))
    assert v.dtype == torch.float32
    # One step of 1e-3 moves every vector by 1e-3 exactly: nothing rounded away in bf16.
    assert torch.allclose((v - u).norm(dim=1), torch.full((64,), 1e-3), rtol=1e-2)


def _manifold_features(count: int, patches: int, dim: int, seed: int) -> torch.Tensor:
    """Normal-like features: a 16-dimensional curved manifold in `dim` dimensions with a thin spread off it."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(99)))[0]
    latent = torch.randn(count * patches, 16, generator=generator)
    curved = torch.cat([latent, torch.sin(latent[:, :8]), latent[:, 8:] ** 2 / 4], dim=1)  # 32 directions
    thin = torch.randn(count * patches, dim - 32, generator=generator) * 0.02
    return (torch.cat([curved, thin], dim=1) @ basis.T).view(count, patches, dim)


def _train_gas_only(features: torch.Tensor, steps: int, settings: GASSettings, seed: int = 0):
    torch.manual_seed(seed)
    dim = features.shape[-1]
    adaptor, disc = Adaptor(dim), Discriminator(dim, hidden=128)
    params = list(adaptor.parameters()) + list(disc.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = features[rng.choice(len(features), 4, replace=False)].reshape(-1, dim)
        u = adaptor(batch)
        v = synthesize(disc, u, settings, generator=generator)
        scores = disc(torch.cat([u, v]))
        loss = torch.nn.functional.binary_cross_entropy(
            scores, torch.cat([torch.zeros(len(u), 1), torch.ones(len(v), 1)])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return adaptor, disc


class _Model(torch.nn.Module):
    def __init__(self, adaptor, disc):
        super().__init__()
        self.adaptor, self.discriminator = adaptor, disc


@pytest.mark.slow
def test_gas_becomes_separable_at_the_measured_spacing_and_not_deep_inside():
    """The failure this guards against: GAS lengths far below the normal spacing are invisible to D."""
    train, held_out = _manifold_features(24, 64, 96, seed=0), _manifold_features(6, 64, 96, seed=1)
    probe = SpacingProbe.from_features(train, np.random.default_rng(0))
    geometry = measure_geometry(probe, 1.0)
    train, held_out = train * geometry.scale, held_out * geometry.scale
    results = {}
    for name, unit in (("spacing", 1.0), ("deep inside", 0.02)):
        settings = settings_of("manifold", steps=4, step_size=0.005, project_every=2, r1=0.5, r2=1.0, unit=unit)
        adaptor, disc = _train_gas_only(train, 80, settings)
        model = _Model(adaptor, disc)
        centre = torch.zeros(64, 96)
        results[name] = gas_separation(model, held_out, settings, centre, 0.75)
    assert results["spacing"] > 0.85, results
    assert results["deep inside"] < 0.65, results


@pytest.mark.slow
@pytest.mark.realdata
def test_gas_becomes_separable_on_real_mtd_features(mtd_root):
    from glass_ad.data.layouts import load_dataset
    from glass_ad.data.preprocessing import Preprocessor
    from glass_ad.model.glass_model import build_model
    from glass_ad.training.preparation import decode_images

    config = make_config("fast", image_size=128)
    model = build_model(config).eval()
    samples = load_dataset(mtd_root).train[::40][:16]
    images, _ = decode_images(samples, Preprocessor(128, None, "stretch"), progress=False)
    with torch.no_grad():
        features = model.features(images.float() / 255)  # 16 × 256 × 432: real patch vectors
    train, held_out = features[:12], features[12:]
    geometry = measure_geometry(SpacingProbe.from_features(train, np.random.default_rng(0)), 1.0)
    settings = settings_of("manifold", steps=4, step_size=0.005, project_every=2, r1=0.5, r2=1.0, unit=1.0)
    adaptor, disc = _train_gas_only(train * geometry.scale, 60, settings)
    separation = gas_separation(_Model(adaptor, disc), held_out * geometry.scale, settings, torch.zeros(256, 432), 0.75)
    assert separation > 0.8


def test_dead_branch_warning():
    alive = [{"val_gas_separation": 0.9}] * 3
    dead = [{"val_gas_separation": 0.9}] + [{"val_gas_separation": 0.52}] * 3
    assert dead_branch_warning(alive) is None
    assert "near chance" in dead_branch_warning(dead)
    assert dead_branch_warning([{"loss": 1.0}]) is None  # no GAS measured (e.g. --gas off)
