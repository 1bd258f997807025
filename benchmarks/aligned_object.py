"""A generated aligned-object category (MVTec layout) on which GLASS-j's rule picks the hypersphere.

MTD is a surface: the rule picks GLASS-m there, and GLASS-h can only be forced onto it. This writes an
object the way MVTec's bottle or screw categories look to the rule: a machined ring ("nut") centred on a
dark background (±2 px jitter, ±0.1 rad turn of its radial pattern), 320×320 grey. 200 normal training
images; test: 30 normal, 25 "scratch" (a thin dark line on the ring) and 25 "spot" (a dark elliptical
patch), with exact masks. Everything is drawn from one seed.

    python benchmarks/aligned_object.py runs/aligned_object
    glass train runs/aligned_object --out runs/aligned_h --textures ../shared/data/dtd -q
    glass test runs/aligned_h runs/aligned_object --json runs/aligned_h.json --no-pictures -q
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = 320


def _normal(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 grey image, bool mask of the ring's surface) of one normal part."""
    cx, cy = SIZE / 2 + rng.normal(0, 2), SIZE / 2 + rng.normal(0, 2)
    radius = np.hypot(xx - cx, yy - cy)
    angle = np.arctan2(yy - cy, xx - cx) + rng.uniform(-0.1, 0.1)
    image = np.full((SIZE, SIZE), 25.0, np.float32) + rng.normal(0, 3, (SIZE, SIZE))
    ring = (radius > 55) & (radius < 130)
    texture = 150 + 25 * np.cos(angle * 24) + 12 * np.sin(radius / 3.0) + rng.normal(0, 6, (SIZE, SIZE))
    image[ring] = texture[ring]
    image[(np.abs(radius - 55) < 3) | (np.abs(radius - 130) < 3)] = 210  # bright machined edges
    return cv2.GaussianBlur(image, (0, 0), 0.8), ring


def _defect(rng: np.random.Generator, image: np.ndarray, ring: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(defective image, uint8 mask) with one scratch or spot somewhere on the ring."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    ys, xs = np.nonzero(ring)
    i = rng.integers(len(ys))
    x, y = int(xs[i]), int(ys[i])
    out = image.copy()
    if kind == "scratch":
        turn, half = rng.uniform(0, math.pi), rng.uniform(20, 50)
        start = (int(x - half * math.cos(turn)), int(y - half * math.sin(turn)))
        end = (int(x + half * math.cos(turn)), int(y + half * math.sin(turn)))
        cv2.line(mask, start, end, 1, 2)
        out[mask > 0] *= rng.uniform(0.4, 0.6)
    else:
        axes = (int(rng.uniform(5, 12)), int(rng.uniform(5, 12)))
        cv2.ellipse(mask, (x, y), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        out[mask > 0] = rng.uniform(60, 90) + rng.normal(0, 4, int(mask.sum()))
    return out, mask


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert("RGB").save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    for i in range(200):
        _save(_normal(rng, yy, xx)[0], args.out / "train" / "good" / f"{i:03d}.png")
    for i in range(30):
        _save(_normal(rng, yy, xx)[0], args.out / "test" / "good" / f"{i:03d}.png")
    for kind in ("scratch", "spot"):
        for i in range(25):
            image, ring = _normal(rng, yy, xx)
            defective, mask = _defect(rng, image, ring, kind)
            _save(defective, args.out / "test" / kind / f"{i:03d}.png")
            masks = args.out / "ground_truth" / kind
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask * 255).save(masks / f"{i:03d}_mask.png")
    print(f"wrote {args.out}: 200 normal training images, 30 normal and 50 defective test images")


if __name__ == "__main__":
    main()
