"""DDP under ``torchrun`` (two processes, gloo on the CPU) against one process at the same global batch.

Rank r of two takes positions r, r + 2, ... of each epoch's permutation, so a step of two ranks with batches of 2
sees the same four samples as a step of one process with a batch of 4, each augmented alike (augmentation is
seeded per sample). DDP averages the two ranks' gradients; each rank's loss is a mean over its own pixels. With
no BatchNorm (whose batch statistics would differ between a batch of 2 and one of 4), no dropout and every sample
holding the same number of labelled pixels (:mod:`test_train_options` says how), the average of the two means is
the mean over the four samples: the weights must agree up to float32 rounding in another summation order.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcnkit.engine.train import train
from test_train_options import initial_weights, make_training_data, options_config, options_overrides, updates

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ddp_processes_train_the_weights_of_one_process_at_the_same_global_batch(tmp_path):
    data = make_training_data(tmp_path / "data")
    # two epochs of 3 steps, SGD with momentum and a poly decay: six steps, each carried into the next
    extra = ("schedule.epochs=2", "schedule.name=poly")
    single = options_config(data, tmp_path / "single", *extra)  # batch 4
    start = initial_weights(single)
    assert train(single).steps == 6

    (tmp_path / "cfg.yaml").write_text("{}\n")
    overrides = options_overrides(data, tmp_path / "ddp", *extra, "data.batch_size=2")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "fcnkit", "train", str(tmp_path / "cfg.yaml"), *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = torch.load(tmp_path / "single" / "last.pth", map_location="cpu", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "last.pth", map_location="cpu", weights_only=True)
    assert one["progress"]["step"] == two["progress"]["step"] == 6
    assert two["progress"]["images_seen"] == 6 * 2  # rank 0's own count: batches of 2, half the global batch
    whole, ranks = updates(one["state_dict"], start), updates(two["state_dict"], start)
    assert whole.abs().max() > 1e-3  # trained
    # float32 rounding (another order of sums, one thread against two) stays far below 1e-4 of the update; a
    # gradient summed instead of averaged over the ranks, or ranks that saw other samples, is off by its size
    assert (ranks - whole).norm() <= 1e-4 * whole.norm(), float((ranks - whole).norm() / whole.norm())
    for name, tensor in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
