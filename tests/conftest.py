from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# One thread: tiny test tensors gain nothing from more, and a busy machine makes OpenMP threads spin.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    path = SHARED_DATA / "mtd"
    if not (path / "train" / "good").is_dir():
        pytest.skip("../shared/data/mtd is not available")
    return path


@pytest.fixture(scope="session")
def dtd_root() -> Path:
    path = SHARED_DATA / "dtd"
    if not path.is_dir():
        pytest.skip("../shared/data/dtd is not available")
    return path
