from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# GLASS_SHARED_DATA points elsewhere (or at nothing, to check that realdata tests skip cleanly).
SHARED_DATA = Path(os.environ.get("GLASS_SHARED_DATA") or ROOT.parent / "shared" / "data")

# One thread: tiny test tensors gain nothing from more, and a busy machine makes OpenMP threads spin.
torch.set_num_threads(1)

# Fixtures that read ../shared/data: a test using one is marked `realdata` (so `-m "not realdata"` leaves it
# out) whether or not its file says so, and it skips when the data is absent.
_REALDATA_FIXTURES = {"mtd_root", "mpdd_root", "dtd_root"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _REALDATA_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("realdata") is None:
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    path = SHARED_DATA / "mtd"
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"real data not available: {path} (../shared/data/mtd)")
    return path


@pytest.fixture(scope="session")
def mpdd_root() -> Path:
    path = SHARED_DATA / "mpdd_metal_plate"
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"real data not available: {path} (../shared/data/mpdd_metal_plate)")
    return path


@pytest.fixture(scope="session")
def dtd_root() -> Path:
    path = SHARED_DATA / "dtd"
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} (../shared/data/dtd)")
    return path


# ------------------------------------------------------------------------------ reading pictures back

# Matplotlib's tab:blue / tab:red at alpha 0.6 over white: the colours of the normal / anomalous bars of
# `visualize.score_histogram` and `previews.score_histograms`.
NORMAL_BAR = (120, 173, 210)
ANOMALOUS_BAR = (230, 125, 126)


def column_runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True values in a 1-D boolean array."""
    index = np.flatnonzero(columns)
    if not index.size:
        return []
    breaks = np.flatnonzero(np.diff(index) > 1)
    starts = np.r_[index[0], index[breaks + 1]]
    ends = np.r_[index[breaks], index[-1]]
    return list(zip(starts.tolist(), ends.tolist()))


def histogram_parts(path: Path, min_bar_height: int = 100) -> dict[str, list[tuple[int, int]]]:
    """Decode a histogram PNG: the column ranges of normal bars and anomalous bars at least
    `min_bar_height` pixels tall, and of dark vertical lines over 100 pixels tall (the axes spines and the
    dashed threshold line; tick labels and text are shorter). Legend patches are too short to count."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)

    def near(colour: tuple[int, int, int]) -> np.ndarray:
        return np.abs(pixels - np.asarray(colour)).max(axis=2) <= 4

    return {
        "normal": column_runs(near(NORMAL_BAR).sum(axis=0) >= min_bar_height),
        "anomalous": column_runs(near(ANOMALOUS_BAR).sum(axis=0) >= min_bar_height),
        "dark": column_runs((pixels.max(axis=2) < 60).sum(axis=0) > 100),
    }


@pytest.fixture(scope="session")
def read_histogram() -> Callable[..., dict[str, list[tuple[int, int]]]]:
    """`histogram_parts` for test modules (a fixture, since test files do not import each other)."""
    return histogram_parts


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch on one thread for a module of tiny 64 px models: they gain nothing from threads, and on a
    shared, busy CPU OpenMP's two threads wait on each other for milliseconds per operation (measured:
    1.8 s vs 0.02 s per batch). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
