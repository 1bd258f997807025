"""Images and masks → network inputs: the `Preprocessor` (resize, centre crop or stretch, the way back to
the original frame) and the rule that chooses the fit and input shape from the training images.

The same integers as the exported graphs and the plant runtime (`Preprocessor.crop_box`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from glass_ad.data.layouts import Sample

if TYPE_CHECKING:
    from glass_ad.config import GlassConfig

__all__ = [
    "ELONGATED",
    "ELONGATED_SHARE",
    "MAX_ASPECT",
    "SAME_ASPECT",
    "CropBox",
    "Preprocessor",
    "choose_fit",
    "choose_input_shape",
    "resolve_fit",
]

ELONGATED = 1.5  # long/short side: a centre crop would drop over a third of such an image
ELONGATED_SHARE = 0.1  # fit "auto" stretches when at least this share of the training images is elongated


def _probe_sizes(samples: Sequence[Sample], probe: int = 64) -> list[tuple[int, int]]:
    """(height, width) of up to ``probe`` images spread over ``samples``, from their headers."""
    from PIL import Image

    sizes = []
    for sample in samples[:: max(1, len(samples) // probe)][:probe]:
        if not Path(sample.path).is_file():  # a FIFO would block the open; it is reported when decoded
            continue
        try:
            with Image.open(sample.path) as image:
                width, height = image.size
        except Exception:  # unreadable files are reported when decoded
            continue
        sizes.append((max(1, height), max(1, width)))
    return sizes


def choose_fit(samples: Sequence[Sample], probe: int = 64) -> str:
    """'stretch' when at least 10 % of the (probed) images are elongated (a centre crop would drop whole
    regions, and with them defects), else 'crop' (the reference). Reads image headers only."""
    ratios = [max(h, w) / min(h, w) for h, w in _probe_sizes(samples, probe)]
    share = float(np.mean(np.asarray(ratios) > ELONGATED)) if ratios else 0.0
    return "stretch" if share >= ELONGATED_SHARE else "crop"


MAX_ASPECT = 2.5  # the long side of an automatic rectangular input is at most this many short sides
SAME_ASPECT = 0.1  # images whose aspect ratio lies within 10 % of the median share one input shape


def choose_input_shape(samples: Sequence[Sample], image_size: int, probe: int = 64) -> tuple[int, int] | None:
    """A rectangular network input ``(H, W)`` that keeps the aspect ratio of elongated training images
    (e.g. (288, 720) for 500×1260 images at image_size 288), or None (a square input).

    Only when nearly all images (90 %) share one orientation and, within 10 %, one aspect ratio of at
    least 1.5: the short side stays ``image_size``, the long side is the ratio times it, rounded to a
    multiple of 8 and at most 2.5 × ``image_size`` (the cost per image grows with the area)."""
    sizes = _probe_sizes(samples, probe)
    if not sizes:
        return None
    wide = np.asarray([w >= h for h, w in sizes])
    landscape = bool(wide.mean() >= 0.5)
    if max(wide.mean(), 1 - wide.mean()) < 0.9:
        return None
    ratios = np.asarray([max(h, w) / min(h, w) for h, w in sizes])
    median = float(np.median(ratios))
    if median < ELONGATED or np.mean(np.abs(ratios / median - 1.0) <= SAME_ASPECT) < 0.9:
        return None
    long_side = int(round(min(median, MAX_ASPECT) * image_size / 8.0)) * 8
    return (image_size, long_side) if landscape else (long_side, image_size)


def resolve_fit(fit: str, samples: Sequence[Sample] | None = None) -> str:
    """The fit a :class:`Preprocessor` applies ("crop" or "stretch") for a configured ``fit``.

    "auto" is decided once, at training time, from the training ``samples`` (:func:`choose_fit`), and the
    checkpoint stores the decision. Without samples — a trained model's config, where "auto" can only remain
    in hand-made configs — "auto" means "crop", the reference.
    """
    if fit != "auto":
        return fit
    return choose_fit(samples) if samples is not None else "crop"


@dataclass(frozen=True)
class CropBox:
    """Where the ``H × W`` network input (``crop_hw``) comes from: the original image is resized to
    ``resized_hw``, then ``[top : top + H, left : left + W]`` is cut out."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    top: int
    left: int
    crop_hw: tuple[int, int]

    @property
    def size(self) -> int:
        """The side of a square crop."""
        if self.crop_hw[0] != self.crop_hw[1]:
            raise ValueError(f"the crop is {self.crop_hw[0]}×{self.crop_hw[1]}, not a square")
        return self.crop_hw[0]

    def in_original(self) -> tuple[float, float, float, float]:
        """The crop in original pixel coordinates: ``(y0, x0, y1, x1)``, floats, end exclusive."""
        sy = self.original_hw[0] / self.resized_hw[0]
        sx = self.original_hw[1] / self.resized_hw[1]
        return self.top * sy, self.left * sx, (self.top + self.crop_hw[0]) * sy, (self.left + self.crop_hw[1]) * sx


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an ``N×C×H×W`` float tensor, antialiased when shrinking."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    shrink = size[0] < tensor.shape[-2] or size[1] < tensor.shape[-1]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class Preprocessor:
    """Resize the shorter side to ``resize or image_size``, then centre-crop ``image_size`` — or, for a
    rectangular network input ``shape = (H, W)``, resize so that the frame covers ``(H·m, W·m)`` with the
    margin ``m = resize / min(H, W)`` and centre-crop ``H × W`` (docs/method.md: rectangular inputs).

    ``fit="crop"`` (default) is the MVTec/GLASS convention; it loses the ends of elongated images (on
    MTD, ~30% of the defects lie wholly outside the crop). ``fit="stretch"`` resizes both sides to
    ``resize or image_size`` (aspect ratio not kept), then centre-crops, so nothing is lost when
    ``resize`` is ``None``.

    The resized longer side is rounded to the nearest pixel; images use bilinear interpolation with
    antialiasing. Masks go through the same interpolation and are thresholded at 0.5; if that leaves
    nothing of a defect that reaches into the crop (a thin scratch shrunk below half a pixel), the
    threshold becomes half the mask's peak coverage, so a defect never vanishes from its mask.
    """

    def __init__(
        self, image_size: int, resize: int | None = None, fit: str = "crop", shape: tuple[int, int] | None = None
    ):
        if fit not in ("crop", "stretch"):
            raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
        self.fit = fit
        self.shape = (int(shape[0]), int(shape[1])) if shape is not None else (int(image_size), int(image_size))
        if min(self.shape) < 8:
            raise ValueError(f"the network input must be at least 8 pixels a side, got {self.shape}")
        self.image_size = min(self.shape)
        self.resize = int(resize) if resize is not None else self.image_size
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must not be smaller than image_size ({self.image_size})")

    @classmethod
    def from_config(cls, config: "GlassConfig", samples: Sequence[Sample] | None = None) -> "Preprocessor":
        """The preprocessing of `config` (input shape, resize, fit resolved by :func:`resolve_fit`)."""
        return cls(config.image_size, config.resize, resolve_fit(config.fit, samples), config.input_shape)

    @property
    def square(self) -> bool:
        return self.shape[0] == self.shape[1]

    def __repr__(self) -> str:
        shape = "" if self.square else f", shape={self.shape}"
        return f"Preprocessor(image_size={self.image_size}, resize={self.resize}, fit={self.fit!r}{shape})"

    def crop_box(self, height: int, width: int) -> CropBox:
        """The geometry applied to a ``height × width`` image (the same integers as `runtime.crop_box`)."""
        height, width = int(height), int(width)
        if height < 1 or width < 1:
            raise ValueError(f"invalid image size {width}x{height}")
        out_h, out_w = self.shape
        if self.square:  # the reference's rule, written for squares
            if self.fit == "stretch":
                new_h = new_w = self.resize
            elif height <= width:
                new_h, new_w = self.resize, max(self.resize, int(round(width * self.resize / height)))
            else:
                new_h, new_w = max(self.resize, int(round(height * self.resize / width))), self.resize
        else:  # exact fractions: the ONNX graph and the numpy runtime compute the same integers (ties to even)
            margin = Fraction(self.resize, self.image_size)
            cover_h, cover_w = round(out_h * margin), round(out_w * margin)
            if self.fit == "stretch":
                new_h, new_w = cover_h, cover_w
            else:  # keep the aspect ratio: the smallest resize that covers the (margin-grown) input
                factor = max(out_h * margin / height, out_w * margin / width)
                new_h, new_w = max(cover_h, round(height * factor)), max(cover_w, round(width * factor))
        top = int(round((new_h - out_h) / 2.0))
        left = int(round((new_w - out_w) / 2.0))
        return CropBox((height, width), (new_h, new_w), top, left, (out_h, out_w))

    def geometry(self, original_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(resized_h, resized_w, top, left)`` of the crop for an image of ``original_hw``."""
        box = self.crop_box(*original_hw)
        return box.resized_hw[0], box.resized_hw[1], box.top, box.left

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        box = self.crop_box(*tensor.shape[-2:])
        resized = _resize(tensor, box.resized_hw)
        (out_h, out_w), top, left = box.crop_hw, box.top, box.left
        return resized[..., top : top + out_h, left : left + out_w]

    def image(self, image: np.ndarray) -> torch.Tensor:
        """``uint8`` ``H×W×3`` (or ``H×W`` grey) → ``float32`` ``(3, S, S)`` in ``[0, 1]``."""
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 image, got shape {tuple(array.shape)}")
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # a read-only array (np.frombuffer, a memory map opened "r"): torch warns
            array = array.copy()
        tensor = torch.from_numpy(array).permute(2, 0, 1).float()
        if array.dtype == np.uint8:
            tensor = tensor.div_(255.0)
        return self._apply(tensor[None])[0].clamp_(0.0, 1.0).contiguous()

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """``bool`` ``H×W`` → ``float32`` ``(1, S, S)`` in ``{0, 1}``, aligned with :meth:`image`."""
        array = np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f"expected an H×W mask, got shape {tuple(array.shape)}")
        soft = self._apply(torch.from_numpy((array != 0).astype(np.float32))[None, None])[0]
        hard = soft > 0.5
        peak = float(soft.max())
        if not hard.any() and peak > 1e-3:  # thin defect: keep its strongest half
            hard = soft >= 0.5 * peak
        return hard.float().contiguous()

    def map_to_original(
        self,
        anomaly_map: np.ndarray | torch.Tensor,
        original_hw: tuple[int, int],
        pad: Literal["constant", "edge"] = "constant",
        value: float = 0.0,
    ) -> np.ndarray:
        """Map an ``(S, S)`` map back onto the original ``(H, W)`` frame, for overlays.

        Where the crop cut the image, the map is filled with ``value`` (``pad="constant"``, default 0:
        "not scored") or with the nearest edge value (``pad="edge"``, for maps whose range does not start
        at 0); then it is resized to ``(H, W)``. A bool map comes back bool, anything else float32.
        """
        if isinstance(anomaly_map, torch.Tensor):
            array = anomaly_map.detach().cpu().numpy()
        else:
            array = np.asarray(anomaly_map)
        is_bool = array.dtype == np.bool_
        values = np.ascontiguousarray(array, dtype=np.float32)
        values = torch.from_numpy(values if values.flags.writeable else values.copy())
        if values.ndim != 2:
            values = values.reshape(values.shape[-2:])
        out_h, out_w = self.shape
        if tuple(values.shape) != (out_h, out_w):
            values = F.interpolate(values[None, None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0, 0]
        box = self.crop_box(*original_hw)
        (new_h, new_w), top, left = box.resized_hw, box.top, box.left
        padding = (left, new_w - left - out_w, top, new_h - top - out_h)
        frame = values[None, None]
        if any(padding):
            if pad == "edge":
                frame = F.pad(frame, padding, mode="replicate")
            elif pad == "constant":
                frame = F.pad(frame, padding, mode="constant", value=float(value))
            else:
                raise ValueError(f"pad must be 'constant' or 'edge', got {pad!r}")
        out = _resize(frame, box.original_hw)[0, 0].numpy()
        return out > 0.5 if is_bool else out.astype(np.float32)
