import urllib.error

import pytest
import torch

from glass_ad.model import backbones
from glass_ad.model.backbones import BackboneWeightsError, create_backbone


@pytest.fixture(scope="module")
def lite2():
    return create_backbone("efficientnet_lite2")


def test_lite2_offline_weights_give_stride8_and_stride16_maps(lite2):
    maps = lite2(torch.rand(2, 3, 96, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 48, 12, 12), (2, 120, 6, 6)]
    assert all(torch.isfinite(m).all() for m in maps)


def test_unused_layers_are_not_built(lite2):
    # Stem + blocks 0..4: the stride-32 blocks 5 and 6 and the head are gone.
    assert list(lite2.extractor.stages.keys()) == ["stem", "blocks_0", "blocks_1", "blocks_2", "blocks_3", "blocks_4"]
    assert not any("conv_head" in name for name, _ in lite2.named_modules())


def test_backbone_is_frozen(lite2):
    assert not any(p.requires_grad for p in lite2.parameters())
    lite2.train()
    assert not lite2.training


def test_pretrained_weights_are_loaded_not_random():
    a = create_backbone("efficientnet_lite0")
    b = create_backbone("efficientnet_lite0")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(a(x)[0], b(x)[0])  # deterministic weights from the package, not a random init


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown layer"):
        create_backbone("efficientnet_lite0", layers=("blocks.9",))


def test_missing_torchvision_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneWeightsError, match="--weights PATH"):
        create_backbone("wide_resnet50_2")


def test_weights_path_and_torch_cache_are_used(tmp_path, monkeypatch):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = create_backbone("resnet18", weights=str(path))
    maps = model(torch.rand(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [128, 256]
    assert list(model.extractor.stages.keys()) == ["stem", "layer1", "layer2", "layer3"]
    # The same file found in the torch hub cache, no path given:
    cache = tmp_path / "hub"
    (cache / "checkpoints").mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(state, cache / "checkpoints" / url.rsplit("/", 1)[-1])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(cache))
    assert torch.equal(create_backbone("resnet18")(torch.zeros(1, 3, 64, 64))[0], model(torch.zeros(1, 3, 64, 64))[0])


def test_registry_holds_the_paper_and_offline_backbones():
    for name in ("efficientnet_lite2", "efficientnet_lite0", "wide_resnet50_2", "resnet18", "resnet50", "resnet101"):
        assert name in backbones.BACKBONES


def test_any_timm_name_with_a_weights_file(tmp_path):
    import timm

    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model = create_backbone("resnet10t", weights=str(path))
    maps = model(torch.rand(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [8, 4]


def _features_move(a, b):
    return max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b))


def test_batch_norm_folding_keeps_the_features_of_timm_and_torchvision_backbones(tmp_path):
    import copy

    import torchvision

    # timm's EfficientNet-Lite (BatchNormAct2d: the activation stays) with its real weights.
    lite = create_backbone("efficientnet_lite0")
    folded = copy.deepcopy(lite)
    assert folded.fold_batch_norm_() == 33
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert _features_move(lite(x), folded(x)) < 1e-5
    # torchvision's ResNet (plain BatchNorm2d, downsample branches), with batch-norm statistics far from
    # the identity so that a wrong fold would show.
    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value.normal_(0.0, 0.5)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    resnet = create_backbone("resnet18", weights=str(path))
    folded = copy.deepcopy(resnet)
    assert folded.fold_batch_norm_() == 1 + 2 * 2 + 2 * 2 + 1 + 2 * 2 + 1  # stem, layer1-3 (downsample in 2, 3)
    with torch.no_grad():
        assert _features_move(resnet(x), folded(x)) < 1e-5


def test_models_are_built_with_the_backbone_folded_and_the_same_features():
    from glass_ad.config import make_config
    from glass_ad.model.glass_model import build_model

    config = make_config("fast", backbone="efficientnet_lite0", image_size=64)
    model, unfolded = build_model(config).eval(), build_model(config, fold_batch_norm=False).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.backbone.modules()) == 33
    unfolded.aggregator.load_state_dict(model.aggregator.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert _features_move(unfolded.backbone(x), model.backbone(x)) < 1e-5
        assert _features_move([unfolded.features(x)], [model.features(x)]) < 1e-5
        assert model.fuse_().backbone.fold_batch_norm_() == 0  # nothing left to fold at deployment


def test_batch_norm_folding_is_undone_where_a_norm_does_not_follow_its_neighbour_convolution():
    from glass_ad.model.backbones import FrozenBackbone, StageExtractor

    class NormFirst(torch.nn.Module):  # registers conv then norm, but runs the norm first
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(3)
            self.norm.running_mean.normal_()
            self.norm.running_var.uniform_(0.5, 2.0)

        def forward(self, x):
            return self.conv(self.norm(x))

    backbone = FrozenBackbone("toy", StageExtractor([("block", NormFirst())], ["block"]), (0.5,) * 3, (0.25,) * 3)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = backbone(x)[0].clone()
        assert backbone.fold_batch_norm_() == 0
        assert isinstance(backbone.extractor.stages["block"].norm, torch.nn.BatchNorm2d)
        assert torch.equal(backbone(x)[0], before)
