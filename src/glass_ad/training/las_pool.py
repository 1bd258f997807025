"""A pool of LAS copies per training image whose backbone features are computed once.

The reference draws a new LAS copy (Perlin mask, texture, β) of every image at every visit and runs the frozen
backbone over it: on a 2-core CPU without bf16 units that pass is about half of a training step. The fast
recipe instead gives each training image `las_variants` fixed copies. At each visit one of them is picked at
random; a copy is synthesised and its patch features computed the first time it is picked, then kept (float16,
in RAM or a memory-mapped file beside the run, like the normal features). Over a 20-epoch MTD run an image is
visited about 12 times, so 4 copies save about two thirds of the LAS backbone passes; the patch vectors a step
trains on are still re-drawn at every visit (step.py), and the masks and textures still differ between images.

Each copy is drawn from its own random stream, seeded by (seed, process rank, image, copy): the pool is a
function of the seed, whatever the order of the visits, so a resumed run recomputes the same copies and the
branch check's probe and the training share them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis.las import LocalAnomalySynthesizer, ignore_near_mask
from glass_ad.training.cache import FeatureStore

_STREAM = 0x1A5  # tells the pool's seeds apart from every other stream seeded by the run's seed


class LASPool:
    """`variants` LAS copies per image: features (P×D, scaled like the normal ones) and patch labels."""

    def __init__(
        self,
        model: GlassModel,
        images: torch.Tensor,
        foreground: torch.Tensor | None,
        synthesizer: LocalAnomalySynthesizer,
        config: GlassConfig,
        device: torch.device,
        *,
        rank: int = 0,
        spill_dir: str | Path | None = None,
    ) -> None:
        if config.las_variants < 1:
            raise ValueError("a LAS pool needs las_variants >= 1 (0: a fresh copy at every visit)")
        self.model, self.images, self.foreground, self.synthesizer = model, images, foreground, synthesizer
        self.variants, self.device = int(config.las_variants), device
        self.seed, self.rank, self.margin = int(config.seed), int(rank), int(config.las_ignore_margin)
        self.store_settings = dict(dtype=config.cache_dtype, ram_limit_gb=config.cache_ram_limit_gb, spill_dir=spill_dir)
        self.store: FeatureStore | None = None  # allocated at the first copy
        self.labels = np.zeros((len(images) * self.variants, model.num_patches), dtype=np.float32)
        self.filled = np.zeros(len(images) * self.variants, dtype=bool)

    @property
    def copies_made(self) -> int:
        return int(self.filled.sum())

    def batch(self, index: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B×P×D) and patch labels (B×P) of one picked copy of each image in `index`."""
        index = np.asarray(index)
        slots = index * self.variants + rng.integers(self.variants, size=len(index))
        missing = np.unique(slots[~self.filled[slots]])
        if len(missing):
            self._make(missing)
        features = self.store.read(slots, self.device)
        labels = torch.from_numpy(self.labels[slots]).to(self.device)
        return features, labels

    @torch.no_grad()
    def _make(self, slots: np.ndarray) -> None:
        copies, labels = [], []
        for slot in slots:
            image, variant = divmod(int(slot), self.variants)
            rng = np.random.default_rng([self.seed, self.rank, _STREAM, image, variant])
            foreground = self.foreground[image : image + 1] if self.foreground is not None else None
            synthetic = self.synthesizer(self.images[image : image + 1].float() / 255.0, foreground, rng)
            copies.append(synthetic.images)
            labels.append(ignore_near_mask(synthetic.patch_labels, self.synthesizer.grid_shape, self.margin))
        # One image per backbone pass: a copy's features then never depend on which copies shared its batch,
        # so a resumed run recomputes them bit for bit.
        features = torch.cat([self.model.features(copy.to(self.device)) for copy in copies])
        if self.store is None:
            self.store = FeatureStore(len(self.filled), self.model.num_patches, self.model.embed_dim, **self.store_settings)
        for slot, row, label in zip(slots, features, labels):
            self.store.write(int(slot), row.unsqueeze(0))
            self.labels[slot] = label[0].numpy()
        self.filled[slots] = True

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
