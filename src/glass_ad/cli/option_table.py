"""README's table of useful `glass train` options, with every recipe number read from config.py.

Each row is (options, meaning); a meaning may name settings as ``{fast.FIELD}``, ``{paper.FIELD}`` (the
recipe's value), ``{default.FIELD}`` (the `GlassConfig` default) or ``{by.FIELD}`` ("fast 4, paper 20"),
printed by `config.show_value`. `scripts/readme_tables.py` writes the table into README.md and
`tests/test_readme_tables.py` fails when README's copy is stale.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from glass_ad.config import GlassConfig, by_recipe, make_config, show_value

ROWS: tuple[tuple[str, str], ...] = (
    ("`--recipe fast\\|paper`", "fast default, or the reference schedule"),
    (
        "`--backbone NAME`",
        "`{default.backbone}` (default, offline), `efficientnet_lite0`, `wide_resnet50_2` (paper), "
        "`resnet18/50/101`, any timm name",
    ),
    ("`--weights PATH`", "backbone weights file (for torchvision/timm backbones without a cached download)"),
    (
        "`--fit auto\\|crop\\|stretch`, `--image-shape HxW`",
        "how frames become the network input: `auto` crops square-ish images (the reference), stretches "
        "elongated ones, and gives elongated products of one shape a rectangular input that keeps their aspect "
        "ratio (e.g. 288×720 for 500×1260 strips; `docs/method.md`)",
    ),
    ("`--hypothesis auto\\|manifold\\|hypersphere`", "GLASS-j rule, or force GLASS-m / GLASS-h"),
    (
        "`--branch-check-steps N`",
        "with `auto`: train the picked branch on a copy for N steps first (and the other when the pick is dead "
        "or the hypersphere); the pick gives way if its GAS stays near chance, or if it is the hypersphere and "
        "the manifold's GAS trains and scores clearly higher on validation ({by.branch_check_steps}; 0 = the "
        "rule alone)",
    ),
    (
        "`--hypersphere-shell relative\\|paper`",
        "GLASS-h's GAS shell: every copy at least r1 spacings outside its own patch's radius (`relative`), or "
        "the paper's [r′1, 2r′1] (`paper`); {by.hypersphere_shell}",
    ),
    ("`--textures DIR`", "texture images for LAS (DTD); without it, procedural textures"),
    ("`--foreground auto\\|on\\|off`", "keep LAS anomalies on the object"),
    (
        "`--target-false-alarm-rate {default.target_false_alarm_rate}` (`--far`)",
        "target false-alarm rate of the stored threshold (estimate and 95 % interval printed; `docs/deploy.md`)",
    ),
    (
        "`--epochs`, `--lr`, `--lr-schedule constant\\|cosine`, `--patience`, `--time-limit MIN`",
        "schedule (fast: ≤ {fast.epochs} epochs, early stopping on the validation split once GAS has trained, "
        "no epoch started that would end, with the finishing, past {fast.time_limit_min} minutes; paper: "
        "{paper.epochs} epochs; `--time-limit 0`: none)",
    ),
    (
        "`--feature-spacing`, `--r1`, `--r2`",
        "GAS lengths in units of the measured normal spacing (median distance to the nearest patch of another "
        "normal image): {by.feature_spacing}; fast r1 = {fast.r1}, r2 = {fast.r2}, paper r1 = {paper.r1}, "
        "r2 = {paper.r2}; `--feature-spacing 0` = the reference's absolute lengths",
    ),
    (
        "`--patch-fraction`, `--max-patches-per-image`, `--las-fraction`, `--gas-patch-fraction`",
        "work per iteration: share of patch vectors per branch and at most this many per image (so a large or "
        "elongated input costs about as much per step as a square one), share of images with a LAS copy, of "
        "normal vectors through GAS (fast {fast.patch_fraction} / {fast.max_patches_per_image} / "
        "{fast.las_fraction} / {fast.gas_patch_fraction}; paper {paper.patch_fraction} / "
        "{paper.max_patches_per_image} / {paper.las_fraction} / {paper.gas_patch_fraction}; "
        "`--max-patches-per-image 0`: no cap)",
    ),
    (
        "`--las-variants N`",
        "LAS copies per image whose backbone features are computed once and re-used ({by.las_variants}; 0: a fresh "
        "copy at every visit, as the reference)",
    ),
    (
        "`--las-weight`, `--las-ignore-margin`",
        "the LAS term: its weight, and how many patches around a mask are left out of it "
        "({default.las_weight} / {default.las_ignore_margin}, as the reference; docs/method.md)",
    ),
    (
        "`--ascent-steps`, `--ascent-step-size`, `--project-every`",
        "gradient ascent (fast {fast.ascent_steps} / {fast.ascent_step_size} / {fast.project_every}; "
        "paper {paper.ascent_steps} / {paper.ascent_step_size} / {paper.project_every})",
    ),
    (
        "`--selection worst\\|las`, `--texture-colour auto\\|colour\\|grey`",
        "model selection on the worse of two synthetic families (LAS, unseen strokes/blobs); grey textures for "
        "grey products",
    ),
    (
        "`--score hybrid\\|glass`",
        "the discriminator's logit + the distances to the nearest normal training patch and window, or the "
        "discriminator alone: the paper's method ({by.score})",
    ),
    (
        "`--bank-neighbours N`, `--bank-patches R`, `--bank-descriptor mean_spread\\|mean`",
        "the hybrid's memory bank: R patch vectors kept per training image (a k-centre coreset), each image "
        "compared with those of its N nearest training images, nearest by the mean and spread of their patch "
        "vectors or by the mean alone ({default.bank_neighbours} / {default.bank_patches} / "
        "{default.bank_descriptor}; `--bank-neighbours 0`: one coreset of a {default.memory_bank_fraction} "
        "share of all patches)",
    ),
    (
        "`--bank-coarse-window W`, `--bank-coarse-rows R`",
        "the hybrid's coarse part: the distance of the means of W×W windows of the patch grid to those of the "
        "same nearest images, R kept per image ({default.bank_coarse_window} / {default.bank_coarse_rows}; "
        "`--bank-coarse-window 0`: none)",
    ),
    (
        "`--cache-features/--no-cache-features`, `--precision auto\\|fp32\\|bf16`",
        "cached backbone features ({by.cache_features}); training arithmetic (`auto`: bf16 where the CPU has "
        "AMX bf16 units or on a GPU with bf16; {by.precision})",
    ),
    (
        "`--num-threads N` (`--threads`), `--device cuda`",
        "CPU threads, at least 1 (also on `glass test` and `glass predict`), device",
    ),
    (
        "`--backbone-chunk N`",
        "images per backbone pass (0: the whole batch); default a fixed rule of batch size and input area, never "
        "timing, so the same seed trains the same model",
    ),
    (
        "`--engine torch\\|onnx\\|openvino`, `--onnx FILE` (`glass test`, `glass predict`)",
        "score with PyTorch or an exported model; results and reports name the engine and its precision "
        "(`fp32`, `int8`, …)",
    ),
    (
        "`--bit-depth N`",
        "bits per channel of images deeper than 8 bits (12-bit camera data in 16-bit files: 12); one fixed scale "
        "per model, recorded in the checkpoint",
    ),
    ("`--force`", "replace the results of an earlier run (every command refuses by default)"),
    (
        "`--resume`",
        "continue an interrupted `glass train` (Ctrl-C, SIGTERM) from its last completed epoch, to the same "
        "model as an uninterrupted run; refused when the data set changed since (`docs/deploy.md`)",
    ),
)


@dataclass(frozen=True)
class _ByRecipe:
    """``{by.FIELD}``: the field's values by recipe."""

    def __getattr__(self, name: str) -> str:
        return by_recipe(name)


class _SettingFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        return show_value(value) if not format_spec else super().format_field(value, format_spec)


def markdown() -> str:
    """The option table as Markdown, its numbers from config.py."""
    names = dict(fast=make_config("fast"), paper=make_config("paper"), default=GlassConfig(), by=_ByRecipe())
    formatter = _SettingFormatter()
    lines = ["| option | meaning |", "|---|---|"]
    lines += [f"| {formatter.format(option, **names)} | {formatter.format(meaning, **names)} |" for option, meaning in ROWS]
    return "\n".join(lines) + "\n"


__all__ = ["ROWS", "markdown"]
