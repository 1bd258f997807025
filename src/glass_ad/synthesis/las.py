"""Local Anomaly Synthesis (LAS): textures blended into normal images under Perlin masks.

For every image: ``m`` = combined Perlin mask (∧ / ∨ / single rule, :mod:`glass_ad.synthesis.perlin`) ∧ foreground,
redrawn (mask pair and rule together, as the reference does; :func:`glass_ad.synthesis.perlin.draw_perlin_mask`) until
non-empty; β ~ N(beta_mean, beta_std²) clipped to [beta_min, beta_max] (the `GlassConfig` settings); then

    x+ = x ⊙ (1 − m) + (1 − β) · texture ⊙ m + β · x ⊙ m

Pixels outside the mask are copied from ``x`` exactly. The patch labels are ``m`` max-pooled by the feature
stride (8), flattened row-major — the order of the patch features.

The network input may be a rectangle H×W (``shape``; ``GlassConfig.input_shape``): masks are H×W (drawn on
the enclosing max(H, W) square and centre-cropped, see :func:`glass_ad.synthesis.perlin.draw_perlin_mask`),
textures are asked for at H×W, and the patch labels cover the (H/8)×(W/8) grid, flattened row-major
(B × (H/8)·(W/8)). A square input draws exactly the random numbers it always did.

Because an "and" mask is empty more often than the others (about 20 % of draws at 288 px, vs ~4 % for
"single" and ~0 % for "or"), redrawing makes the rules of the *accepted* masks slightly unequal
(measured ≈ 0.28 / 0.36 / 0.36 for and / or / single); the reference's redraw loop behaves the same way.
The reference loops without a bound; here after :data:`FOREGROUND_TRIES` misses (a foreground far smaller
than the Perlin blobs), or at once for a foreground under :data:`MIN_FOREGROUND_PIXELS`, the Perlin mask
alone is used, so the anomaly may reach the background. Should even that stay empty until
:data:`MAX_REDRAWS` (practically never), one central stride × stride patch is the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from glass_ad.config import GlassConfig, field_default
from glass_ad.synthesis.perlin import as_hw, draw_perlin_mask
from glass_ad.synthesis.textures import TextureSource

__all__ = [
    "LASBatch",
    "LocalAnomalySynthesizer",
    "TextureSource",
    "FOREGROUND_TRIES",
    "MAX_REDRAWS",
    "MIN_FOREGROUND_PIXELS",
    "FEATURE_STRIDE",
    "IGNORED",
    "foreground_arrays",
    "ignore_near_mask",
    "patch_labels",
]

FOREGROUND_TRIES = 16  # draws that must meet the foreground before it is given up
MAX_REDRAWS = 32
MIN_FOREGROUND_PIXELS = 16  # smaller foregrounds are treated as absent (the Perlin mask alone is used)


FEATURE_STRIDE = 8  # pixels per patch of the finest feature grid: patch labels are masks pooled by it


def foreground_arrays(
    foreground: torch.Tensor | None, batch: int, size: int | tuple[int, int]
) -> np.ndarray | None:
    """A B×1×H×W foreground tensor as a B×H×W bool NumPy array (``size``: S for a square or (H, W); None
    stays None: the whole image)."""
    if foreground is None:
        return None
    height, width = as_hw(size)
    if tuple(foreground.shape[-2:]) != (height, width) or foreground.numel() != batch * height * width:
        raise ValueError(f"expected a B×1×{height}×{width} foreground for {batch} images, got {tuple(foreground.shape)}")
    return foreground.reshape(batch, height, width).detach().to("cpu", torch.bool).numpy()


def patch_labels(masks: torch.Tensor, stride: int = FEATURE_STRIDE) -> torch.Tensor:
    """B×1×H×W {0, 1} masks → B×((H/stride)·(W/stride)) patch labels (max-pooled, flattened row-major over
    the (H/stride)×(W/stride) grid: the patch order)."""
    return F.max_pool2d(masks, stride).flatten(1)


IGNORED = -1.0  # patch label of a patch the LAS loss leaves out (see ignore_near_mask)


def ignore_near_mask(labels: torch.Tensor, grid_shape: tuple[int, int], margin: int) -> torch.Tensor:
    """B×P {0, 1} patch labels with the normal patches within `margin` patches (Chebyshev distance on the
    grid) of an anomalous one set to :data:`IGNORED`. Their features see the texture through the backbone's
    receptive field, so "normal" is the wrong label for them and "anomalous" is not right either."""
    if margin <= 0:
        return labels
    grid = labels.view(labels.shape[0], 1, *grid_shape)
    near = F.max_pool2d(grid, 2 * margin + 1, stride=1, padding=margin).flatten(1)
    return torch.where((near > 0.5) & (labels < 0.5), torch.full_like(labels, IGNORED), labels)


@dataclass
class LASBatch:
    """One batch of synthetic anomalies."""

    images: torch.Tensor  # B×3×H×W float in [0, 1]: x+
    masks: torch.Tensor  # B×1×H×W float in {0, 1}
    patch_labels: torch.Tensor  # B×((H/stride)·(W/stride)) float in {0, 1}, row-major over the patch grid
    betas: torch.Tensor  # B: the opacity of the original image inside the mask
    modes: list[str]  # per image: "and" | "or" | "single"


class LocalAnomalySynthesizer:
    """Builds x+ images, masks and patch labels for a batch; all randomness comes from the given generator.

    ``shape`` = (H, W) of a rectangular network input; None: ``image_size × image_size``. ``image_size`` is
    then only the short side (kept for callers that read it); ``shape`` and ``grid_shape`` say the geometry.
    """

    def __init__(
        self,
        image_size: int,
        textures: TextureSource,
        *,
        # Defaults are GlassConfig's (read, not copied); the library builds it with from_config.
        beta_mean: float = field_default("beta_mean"),
        beta_std: float = field_default("beta_std"),
        beta_min: float = field_default("beta_min"),
        beta_max: float = field_default("beta_max"),
        feature_stride: int = FEATURE_STRIDE,
        shape: tuple[int, int] | None = None,
    ) -> None:
        height, width = as_hw(image_size if shape is None else shape)
        if height % feature_stride or width % feature_stride:
            what = f"image_size {image_size}" if shape is None else f"shape {height}×{width}"
            raise ValueError(f"{what} is not a multiple of the feature stride {feature_stride}")
        if not 0.0 <= beta_min <= beta_max <= 1.0:
            raise ValueError(f"need 0 <= beta_min <= beta_max <= 1 (got {beta_min}, {beta_max})")
        self.shape = (height, width)
        self.image_size = min(height, width) if shape is not None else int(image_size)
        self.textures = textures
        self.beta_mean, self.beta_std = float(beta_mean), float(beta_std)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.stride = int(feature_stride)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(H/stride, W/stride): the patch grid the labels are pooled to."""
        return (self.shape[0] // self.stride, self.shape[1] // self.stride)

    @classmethod
    def from_config(
        cls, config: GlassConfig, textures: TextureSource, *, feature_stride: int = FEATURE_STRIDE
    ) -> LocalAnomalySynthesizer:
        """The synthesizer of `config` (its input shape and every β setting) drawing from `textures`."""
        return cls(
            config.image_size,
            textures,
            shape=tuple(getattr(config, "input_shape", (config.image_size, config.image_size))),
            beta_mean=config.beta_mean,
            beta_std=config.beta_std,
            beta_min=config.beta_min,
            beta_max=config.beta_max,
            feature_stride=feature_stride,
        )

    def draw_mask(self, rng: np.random.Generator, foreground: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """A non-empty H×W bool mask inside ``foreground`` (when given and not tiny), and its rule."""
        if foreground is not None and int(np.count_nonzero(foreground)) < MIN_FOREGROUND_PIXELS:
            foreground = None
        mask, mode = draw_perlin_mask(
            self.shape, rng, foreground=foreground, max_draws=MAX_REDRAWS, foreground_tries=FOREGROUND_TRIES
        )
        if mask.any():
            return mask, mode
        # Only reachable when even plain Perlin masks came out empty this many times (practically never):
        # one central patch keeps the contract "mask non-empty" without looping forever.
        height, width = self.shape
        mask = np.zeros((height, width), dtype=bool)
        top, left = (height - self.stride) // 2, (width - self.stride) // 2
        mask[top : top + self.stride, left : left + self.stride] = True
        return mask, "single"

    def draw_beta(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """β ~ N(mean, std²) clipped to [beta_min, beta_max] (float64, ``count`` values)."""
        return np.clip(rng.normal(self.beta_mean, self.beta_std, size=count), self.beta_min, self.beta_max)

    def __call__(self, images: torch.Tensor, foreground: torch.Tensor | None, rng: np.random.Generator) -> LASBatch:
        """x+ for a B×3×H×W float batch in [0, 1]; ``foreground`` is B×1×H×W bool or None (whole image)."""
        height, width = self.shape
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (height, width):
            raise ValueError(f"expected B×3×{height}×{width} images, got {tuple(images.shape)}")
        batch = images.shape[0]
        fg = foreground_arrays(foreground, batch, self.shape)
        masks = np.empty((batch, height, width), dtype=bool)
        textures = np.empty((batch, height, width, 3), dtype=np.uint8)
        modes: list[str] = []
        # A square asks the source for its own size, as always; a rectangle names its shape.
        texture_size = None if height == width else self.shape
        for i in range(batch):
            masks[i], mode = self.draw_mask(rng, None if fg is None else fg[i])
            modes.append(mode)
            textures[i] = self.textures.sample(rng, texture_size)
        betas = self.draw_beta(rng, batch)

        device, dtype = images.device, images.dtype
        mask = torch.from_numpy(masks).to(device).unsqueeze(1)  # B×1×H×W bool
        texture = torch.from_numpy(textures).to(device).permute(0, 3, 1, 2).to(dtype).div_(255.0)
        beta = torch.from_numpy(betas).to(device=device, dtype=dtype).view(-1, 1, 1, 1)
        blend = torch.lerp(texture, images, beta)  # (1 − β)·texture + β·x
        out = torch.where(mask, blend, images)  # outside the mask: x, bit for bit
        mask_f = mask.to(dtype)
        labels = patch_labels(mask_f, self.stride)
        return LASBatch(out, mask_f, labels, beta.view(-1), modes)
