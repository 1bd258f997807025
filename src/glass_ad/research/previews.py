"""Pictures for research: what LAS makes, where GAS and LAS features lie, how scores separate, heatmaps.

* :func:`las_grid` — normal training images next to their LAS versions and masks (synthetic anomaly
  previews), titled with β and the Perlin rule;
* :func:`feature_projection` — a 2-D projection (PCA, or t-SNE on a subsample) of the adapted patch
  features of normal images, their GAS features (``gas.synthesize`` with the checkpoint's hypothesis) and
  the anomalous patches of LAS images, like the paper's Fig. 1;
* :func:`score_histograms` — one histogram of image scores per run of a suite (from ``scores.csv``);
* :func:`heatmap_grid` — test images with their anomaly maps and ground truth (``visualize.case_grid``).

Every function writes one PNG and returns its path. Matplotlib is used through its Agg canvas only.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from glass_ad.data.datasets import ImageDataset
from glass_ad.data.layouts import DatasetError, Sample, load_dataset
from glass_ad.data.preprocessing import Preprocessor
from glass_ad.evaluation import visualize

_TITLE_H = 24


def _titled(tiles: list[np.ndarray], title: str) -> np.ndarray:
    """Tiles side by side (same height) under a white title bar."""
    row = np.concatenate(tiles, axis=1)
    bar = np.full((_TITLE_H, row.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, _TITLE_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, row], axis=0)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×S×S floats in [0, 1] → B×S×S×3 uint8."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spread over the list (all when it is shorter)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


# ------------------------------------------------------------------------------------------------- LAS


def las_grid(
    data_root: str | Path,
    out: str | Path,
    *,
    textures: str | Path | None = None,
    count: int = 8,
    image_size: int = 256,
    foreground: Literal["auto", "on", "off"] = "auto",
    seed: int = 0,
    category: str | None = None,
    layout: str = "auto",
    columns: int = 2,
) -> Path:
    """Grid of (normal | LAS image | mask) for ``count`` training images, titled with β and the rule: the
    training's LAS (default β overlay, grey textures for grey products)."""
    from glass_ad.config import make_config
    from glass_ad.synthesis.las import LocalAnomalySynthesizer
    from glass_ad.synthesis.textures import textures_from_config
    from glass_ad.training.preparation import compute_foreground, decode_images, is_grey

    config = make_config("fast", image_size=image_size, textures=str(textures) if textures else None)
    dataset = load_dataset(data_root, layout, category=category)
    samples = _spread(dataset.train, count)
    images, samples = decode_images(samples, Preprocessor(image_size), progress=False)
    fg = compute_foreground(images, foreground)
    synthesizer = LocalAnomalySynthesizer.from_config(config, textures_from_config(config, grey_images=is_grey(images)))
    batch = synthesizer(images.float() / 255.0, fg, np.random.default_rng(seed))
    normal, synthetic = _to_uint8(images.float() / 255.0), _to_uint8(batch.images)
    panels = []
    for i, sample in enumerate(samples):
        mask = np.repeat((batch.masks[i, 0].numpy() > 0.5)[..., None] * np.uint8(255), 3, axis=2)
        title = f"{sample.path.name}: beta {float(batch.betas[i]):.2f}, rule {batch.modes[i]}"
        panels.append(_titled([normal[i], synthetic[i], mask], title))
    visualize.case_grid(panels, out, columns=columns)
    return Path(out)


# -------------------------------------------------------------------------------------------- features


@torch.no_grad()
def _adapted(model, images: torch.Tensor) -> torch.Tensor:
    """(B·P)×D adapted patch features u = A(E(x)) of B×3×S×S images."""
    features = model.features(images)
    return model.adaptor(features.reshape(-1, features.shape[-1])).float()


def feature_projection(
    run_dir: str | Path,
    data_root: str | Path,
    out: str | Path,
    *,
    images: int = 8,
    method: Literal["pca", "tsne"] = "pca",
    points: int = 3000,
    textures: str | Path | None = None,
    seed: int = 0,
    category: str | None = None,
    layout: str = "auto",
) -> Path:
    """Scatter of normal, GAS and LAS-anomalous patch features of a trained model in 2-D (Fig. 1 style).

    Normal features come from ``images`` training images; GAS moves them with the checkpoint's hypothesis
    and settings (full GAS when training ran without it, so there is something to see); LAS features are
    the mask-covered patches of the same images after local anomaly synthesis (the checkpoint's texture
    folder when it still exists, else procedural textures).
    """
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.synthesis import gas as gas_module
    from glass_ad.synthesis.las import LocalAnomalySynthesizer
    from glass_ad.synthesis.textures import textures_from_config
    from glass_ad.training.preparation import compute_foreground, decode_images, is_grey

    checkpoint = Checkpoint.load(run_dir)
    model = checkpoint.build_model("cpu")
    config = checkpoint.config
    hypothesis = checkpoint.hypothesis or "manifold"
    dataset = load_dataset(data_root, layout, category=category)
    preprocessor = checkpoint.preprocessor()
    raw, _ = decode_images(_spread(dataset.train, images), preprocessor, progress=False)
    batch = raw.float() / 255.0
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    u = _adapted(model, batch)
    # GAS as trained: lengths in units of the last epoch's normal spacing (scale rule on).
    history = checkpoint.training.history
    unit = float(history[-1].get("spacing", 1.0)) if history else 1.0
    settings = gas_module.GASSettings.from_config(
        config if config.gas != "off" else config.replace(gas="full"), hypothesis, unit
    )
    centres = checkpoint.centre.float().repeat(len(batch), 1)
    radius = gas_module.hypersphere_radius(u, centres, config.radius_quantile) if hypothesis == "hypersphere" else None
    v = gas_module.synthesize(model.discriminator, u, settings, centres=centres, radius=radius, generator=generator).detach()

    texture_folder = textures or config.textures
    if texture_folder is not None and not Path(texture_folder).is_dir():
        texture_folder = None  # the training machine's folder is not here: procedural textures instead
    las_config = config.replace(textures=str(texture_folder) if texture_folder else None)
    synthesizer = LocalAnomalySynthesizer.from_config(las_config, textures_from_config(las_config, grey_images=is_grey(raw)))
    fg = compute_foreground(raw, "on") if checkpoint.foreground else None
    las = synthesizer(batch, fg, rng)
    las_u = _adapted(model, las.images)[las.patch_labels.reshape(-1) > 0.5]

    groups = {"normal": u, f"GAS ({hypothesis})": v, "LAS anomalies": las_u}
    per_group = max(1, points // len(groups))
    chosen = {}
    for name, values in groups.items():
        values = values.numpy()
        if len(values) > per_group:
            values = values[np.sort(rng.choice(len(values), per_group, replace=False))]
        chosen[name] = values
    stacked = np.concatenate([v for v in chosen.values() if len(v)])
    embedded = _project(stacked, method, seed)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    start = 0
    colours = {"normal": "tab:blue", "LAS anomalies": "tab:red"}
    for name, values in chosen.items():
        part = embedded[start : start + len(values)]
        start += len(values)
        if len(part):
            ax.scatter(part[:, 0], part[:, 1], s=4, alpha=0.5, color=colours.get(name, "tab:orange"), label=f"{name} (n={len(part)})")
    ax.set_title(f"adapted patch features, {method.upper()} ({Path(run_dir).name})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=4, loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _project(values: np.ndarray, method: str, seed: int) -> np.ndarray:
    """N×D → N×2 with PCA or t-SNE (t-SNE after a 50-component PCA, the usual speed-up)."""
    from sklearn.decomposition import PCA

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(values)
    if method != "tsne":
        raise ValueError(f"method must be pca or tsne, got {method!r}")
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, values.shape[1], len(values)), random_state=seed).fit_transform(values)
    perplexity = float(min(30.0, max(2.0, (len(values) - 1) / 4)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(reduced)


# -------------------------------------------------------------------------------------------- scores


def _read_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            scores.append(float(row["score"]))
            labels.append(int(row["label"]))
    return np.asarray(scores), np.asarray(labels)


def score_histograms(suite_dir: str | Path, out: str | Path, *, bins: int = 30, columns: int = 4) -> Path:
    """One panel per run (``<run>/scores.csv`` under ``suite_dir``, or ``suite_dir/scores.csv`` itself):
    normal vs anomalous image scores, with the stored threshold and the image AUROC in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    suite_dir = Path(suite_dir)
    files = [suite_dir / "scores.csv"] if (suite_dir / "scores.csv").is_file() else sorted(suite_dir.glob("*/scores.csv"))
    if not files:
        raise FileNotFoundError(f"no scores.csv in '{suite_dir}' or its run folders (written by `glass suite`)")
    cols = min(columns, len(files))
    rows = math.ceil(len(files) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for index, path in enumerate(files):
        ax = fig.add_subplot(rows, cols, index + 1)
        scores, labels = _read_scores(path)
        metrics = {}
        if (path.parent / "metrics.json").is_file():
            metrics = json.loads((path.parent / "metrics.json").read_text())
        finite = scores[np.isfinite(scores)]
        edges = np.linspace(finite.min(), finite.max() + 1e-9, bins + 1) if finite.size else bins
        ax.hist(scores[labels == 0], bins=edges, alpha=0.6, color="tab:blue", label="normal")
        ax.hist(scores[labels == 1], bins=edges, alpha=0.6, color="tab:red", label="anomalous")
        threshold = (metrics.get("stored_threshold") or {}).get("image_threshold")
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        auroc = metrics.get("image_auroc")
        name = path.parent.name
        ax.set_title(f"{name}" + (f" (AUROC {100 * auroc:.1f})" if isinstance(auroc, (int, float)) else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        if index == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


# ------------------------------------------------------------------------------------------ heatmaps


def heatmap_grid(
    run_dir: str | Path,
    data_root: str | Path,
    out: str | Path,
    *,
    count: int = 8,
    category: str | None = None,
    layout: str = "auto",
    columns: int = 1,
) -> Path:
    """``count`` test images (about three quarters defective, the rest good, spread over the set) with
    their anomaly maps, the stored pixel threshold (red) and the ground truth (green)."""
    from glass_ad.model.checkpoint import Checkpoint

    checkpoint = Checkpoint.load(run_dir)
    model = checkpoint.build_model("cpu")
    dataset = load_dataset(data_root, layout, category=category)
    if not dataset.test:
        raise DatasetError(f"'{dataset.root}' has no test images")
    defects = [s for s in dataset.test if s.label == 1]
    goods = [s for s in dataset.test if s.label == 0]
    n_defect = min(len(defects), max(1, round(count * 0.75)) if defects else 0)
    chosen: list[Sample] = _spread(defects, n_defect) + _spread(goods, count - n_defect)
    items = ImageDataset(chosen, checkpoint.preprocessor())
    batch = [items[i] for i in range(len(items))]
    with torch.no_grad():
        output = model(torch.stack([b["image"] for b in batch]))
    maps = output.anomaly_maps.numpy()
    calibration = checkpoint.calibration
    vmin, vmax = calibration.heat_range()
    panels = []
    for item, amap, score in zip(batch, maps, output.image_scores.tolist()):
        image = (item["image"] * 255).round().byte().permute(1, 2, 0).numpy()
        mask = item["mask"][0].numpy() > 0.5 if item["label"] else None
        title = f"{item['defect_type']}: score {score:.3f} {Path(item['path']).name}"
        panels.append(
            visualize.overlay_panel(
                image, amap, vmin=vmin, vmax=vmax, threshold=calibration.region_level(amap), title=title, gt_mask=mask,
                colorbar=True,
            )
        )
    visualize.case_grid(panels, out, columns=columns)
    return Path(out)


__all__ = ["feature_projection", "heatmap_grid", "las_grid", "score_histograms"]
