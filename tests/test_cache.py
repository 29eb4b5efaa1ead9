"""The in-memory training cache (``data.cache``) and the allocator setting of the training loop."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys

import pytest
import torch

from fcnkit.data import build_dataset
from fcnkit.engine.train import train
from fcnkit.errors import DataError
from synthetic_data import make_folder_dataset
from test_train import tiny_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("cache"), n_train=6, n_val=2, size=(40, 48))


def test_cached_samples_equal_the_files_and_are_compact(folder):
    dataset = build_dataset("folder", folder, "train")
    expected = [dataset.load(i) for i in range(len(dataset))]
    seen = []
    held = dataset.cache(on_sample=seen.append)
    assert dataset.cached and seen == list(range(6))
    assert held == 6 * (3 * 40 * 48 + 40 * 48)  # uint8 image and uint8 label (values 0-2 and 255)
    for i, want in enumerate(expected):
        got = dataset.load(i)
        assert got["name"] == want["name"] and torch.equal(got["image"], want["image"])
        assert got["label"].dtype == torch.uint8 and torch.equal(got["label"].long(), want["label"])


def test_an_unreadable_sample_keeps_raising_from_the_cache(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n_train=3, n_val=1)
    bad = root / "images" / "train" / "s001.png"
    bad.write_bytes(b"not a png")
    dataset = build_dataset("folder", root, "train")
    dataset.cache()  # no error here: it is kept for the sample
    bad.unlink()  # and the cache does not read the file again
    for _ in range(2):
        with pytest.raises(DataError, match="s001"):
            dataset.load(1)
    assert dataset.load(2)["image"].shape == (3, 40, 48)


def test_training_from_the_cache_gives_the_same_weights(folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fcnkit")
    common = ("schedule.epochs=2", "pictures=0", "eval_every=0", "deterministic=true", "ema_decay=null")
    plain = train(tiny_config(folder, tmp_path / "files", *common))
    cached = train(tiny_config(folder, tmp_path / "memory", *common, "data.cache=true"))
    assert plain.steps == cached.steps == 2
    assert any("6 training samples decoded into memory" in r.getMessage() for r in caplog.records)
    a = torch.load(tmp_path / "files" / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "memory" / "last.pth", weights_only=True)["state_dict"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


#: five training steps of a small FCN-8s after six warm-up steps, in a fresh process: the minor page faults
FAULTS_SCRIPT = """
import resource, sys, torch
import fcnkit
from fcnkit.utils import tune_malloc
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    assert tune_malloc()
torch.manual_seed(0)
model = fcnkit.create_model("fcn8s_timm", num_classes=3, backbone="regnetx_002")
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(2, 3, 128, 160), torch.randint(0, 3, (2, 128, 160))
def step():
    torch.nn.functional.cross_entropy(model(x)["out"], y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(6):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuned_malloc_stops_the_page_faults_of_training_steps():
    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True, timeout=120
        )
        return int(done.stdout)

    # measured here: 1200 to 9000 faults with glibc's defaults (its mmap threshold adapts to the first large
    # blocks freed, which varies from process to process), 0-640 once tuned (0 in most runs; the rest are the
    # heap's first touches, more of them after only three warm-up steps): the most of up to three default runs
    # against the fewest of up to three tuned ones
    default = 0
    for _ in range(3):
        default = max(default, faults("default"))
        if default > 2000:
            break
    tuned = faults("tuned")
    for _ in range(2):
        if tuned < default / 10:
            break
        tuned = min(tuned, faults("tuned"))
    assert default > 2000 and tuned < default / 10
