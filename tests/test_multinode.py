"""Training across machines with torchrun's c10d rendezvous, played on one machine: two launchers on 127.0.0.1
("nodes"), one process each, gloo on CPU.

The reference is one launcher with two processes: the same two ranks, the same shards of the data, the same
global batch. Gradients are averaged over the two ranks (one addition, which is commutative in floating
point), so the weights must come out bitwise equal whichever node rendezvous makes rank 0. BatchNorm's running
statistics are rank 0's (DDP broadcasts them from rank 0 before every forward), so they would differ if the two
nodes swapped ranks: the check is on the parameters, the step count and the optimiser's state.

Then one node is killed (SIGKILL to its launcher and its worker) after a checkpoint; the other node's worker
waits for its lost peer, so the job is stopped there too (as a scheduler does); both nodes are started again with
the same command and resume from ``last.pth`` (the output folder is shared, as it would be on a cluster's shared filesystem)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthetic_data import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
STEPS = 9  # 12 training images / (2 ranks x batch 2) = 3 steps per epoch, 3 epochs


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data: Path, out: Path) -> list[str]:
    return ["-m", "fcnkit", "train", str(out.parent / "cfg.yaml"), "model.name=fcn_resnet18_d16", "data.name=folder",
            f"data.root={data}", "data.crop_size=[32, 32]", "data.batch_size=2", "data.workers=0", "optim.name=sgd",
            "optim.lr=0.01", "schedule.name=poly", "schedule.epochs=3", "deterministic=true", "checkpoint_every=1",
            "eval_every=0", "seed=3", "device=cpu", f"output_dir={out}"]  # fmt: skip


def _launch(args: list[str], torchrun: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun, *args]
    # a process group of its own, so that "killing the node" takes the launcher and its worker at once
    return subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _node(args: list[str], port: int, log: Path) -> subprocess.Popen:
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                  "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "fcnkit-test", "--max_restarts", "0"]  # fmt: skip
    return _launch(args, rendezvous, log)


def _wait(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> None:
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_two_nodes_equal_one_node_and_resume_after_one_is_killed(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    (tmp_path / "cfg.yaml").write_text("{}\n")

    ref_log = tmp_path / "ref.log"
    ref = _launch(
        _train_args(data, tmp_path / "ref"), ["--nproc_per_node", "2", "--master_port", str(_port())], ref_log
    )
    _wait([ref], [ref_log])

    out = tmp_path / "two_nodes"
    args = _train_args(data, out)
    port = _port()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a, b = (_node(args, port, log) for log in logs)
    last = out / "last.pth"
    deadline = time.time() + 240
    while time.time() < deadline and b.poll() is None:
        try:
            if last.exists() and torch.load(last, weights_only=True)["progress"]["step"] >= 3:
                break
        except (RuntimeError, EOFError):  # read while being replaced
            pass
        time.sleep(0.05)
    assert b.poll() is None, "the run ended before a node could be killed: " + logs[1].read_text()[-2000:]
    os.killpg(b.pid, signal.SIGKILL)
    b.wait(60)
    # The surviving node's worker waits in its next collective for the lost peer (until the process group's
    # timeout); as a scheduler would, stop the job on every node, then start it again.
    time.sleep(1)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait(60)
    killed_at = torch.load(last, weights_only=True)["progress"]["step"]
    assert 3 <= killed_at < STEPS

    port = _port()
    logs = [tmp_path / "a2.log", tmp_path / "b2.log"]
    _wait([_node(args, port, log) for log in logs], logs)
    assert "resumed from" in logs[0].read_text() + logs[1].read_text()

    want = torch.load(tmp_path / "ref" / "last.pth", weights_only=True)
    got = torch.load(last, weights_only=True)
    assert want["progress"]["step"] == got["progress"]["step"] == STEPS
    params = [name for name, _ in _named_parameters(want["state_dict"])]
    assert len(params) > 20
    for name in params:
        assert torch.equal(want["state_dict"][name], got["state_dict"][name]), name
    assert any((want["state_dict"][n] != 0).any() for n in params)  # trained weights, not a fresh copy
    for key, state in want["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(got["optimizer"]["state"][key][name])), name


def _named_parameters(state_dict: dict) -> list[tuple[str, torch.Tensor]]:
    """The entries of a state dict that are parameters (BatchNorm's running statistics and counters are not)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return [(k, v) for k, v in state_dict.items() if not k.endswith(buffers)]
