"""Data-parallel training on a real 2-process gloo group (CPU): the gradient arithmetic, and `torchrun` on
`glass train` against a single-process run of the same effective batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.evaluation.tester import test as run_test
from glass_ad.training import train
from glass_ad.training.distributed import Distributed

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_gradients(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    group = Distributed.from_environment("cpu")
    try:
        torch.manual_seed(0)  # the same initial weights on every rank, then rank 0's broadcast anyway
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
        group.broadcast_module(model)
        x = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
        index = group.shard(np.arange(10))
        model(x[index]).square().mean().backward()
        group.average_gradients(model)
        buffer = nn.BatchNorm1d(3)
        buffer.running_mean.fill_(float(rank))
        group.average_buffers(buffer)
        value = group.broadcast({"rank": rank})
        torch.save(
            {"grads": [p.grad for p in model.parameters()], "index": index, "mean": buffer.running_mean, "value": value},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        group.close()


def test_averaged_gradients_equal_the_full_batch_gradient(tmp_path):
    port = _free_port()
    mp.start_processes(_rank_gradients, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()  # equal shards: the mean of the ranks' means is the batch mean
    for rank in ranks:
        for got, want in zip(rank["grads"], [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert torch.equal(rank["mean"], torch.full((3,), 0.5))
        assert rank["value"] == {"rank": 0}
    assert sorted(np.concatenate([r["index"] for r in ranks]).tolist()) == list(range(10))


def test_single_process_is_the_plain_path(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = Distributed.from_environment()
    assert not group.active and group.is_main
    index = np.arange(7)
    assert group.shard(index) is index
    assert group.broadcast(3) == 3


# ---------------------------------------------------------------------------------------------------
# torchrun on `glass train`

TRAIN_OPTIONS = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--epochs", "6", "--no-early-stopping",
                 "--seed", "0", "--precision", "fp32", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=40, n_test_good=10, n_test_defect=10, size=64)


@pytest.mark.slow
def test_torchrun_trains_one_model_like_a_single_process(data, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "glass_ad", "train", str(data), "--out", str(run), "--threads", "1", *TRAIN_OPTIONS]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved ") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == sorted(
        ["config.yaml", "history.csv", "model.pt"]
    )
    checkpoint = torch.load(run / "model.pt", weights_only=True)
    assert checkpoint["training"]["processes"] == 2
    assert len(checkpoint["training"]["history"]) == 6

    config = make_config("fast", backbone="efficientnet_lite0", image_size=64, epochs=6, early_stopping=False,
                         seed=0, precision="fp32")  # fmt: skip
    single = train(data, tmp_path / "single", config, progress=False, echo=lambda _: None)
    ddp_report = run_test(run, data, json_path=tmp_path / "ddp.json", report_dir=None, progress=False)
    single_report = run_test(single.checkpoint.parent, data, json_path=tmp_path / "one.json", report_dir=None, progress=False)
    # The ranks draw their own GAS noise and LAS anomalies, so the runs differ like two seeds do; both must
    # learn the defects, and to the same level (stated tolerance: 0.1 image AUROC, 0.05 pixel AUROC).
    assert ddp_report["image_auroc"] > 0.85 and single_report["image_auroc"] > 0.85
    assert abs(ddp_report["image_auroc"] - single_report["image_auroc"]) <= 0.1
    assert abs(ddp_report["pixel_auroc"] - single_report["pixel_auroc"]) <= 0.05
    first_ddp, first_single = checkpoint["training"]["history"][0], single.history[0]
    assert first_ddp["loss"] == pytest.approx(first_single["loss"], rel=0.25)
