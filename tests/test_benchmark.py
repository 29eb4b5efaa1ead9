"""``fcnkit benchmark``: FLOPs against hand counts, dynamic-mode alternation, statistics on a fake clock, files, CLI."""

import argparse
import csv
import datetime
import json
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.apps.benchmark import (
    BenchResult,
    ResultsTable,
    benchmark,
    device_name,
    provenance,
    write_csv,
    write_json,
)
from fcnkit.cli.benchmark import add_parsers as add_benchmark_parser


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 8, 3, padding=1)


@pytest.mark.parametrize("batch", [1, 2])
def test_flops_of_one_conv_layer(batch):
    (r,) = benchmark(_conv(), sizes=[(16, 16)], batch_sizes=[batch], warmup=0, repeats=1)
    # Every output pixel of every output channel: 3 input channels x 3x3 taps multiply-accumulates, 2 FLOPs each.
    assert r.gflops * 1e9 == pytest.approx(2 * (8 * 3 * 9) * (16 * 16) * batch, rel=1e-12)
    assert r.params == 8 * 3 * 9 + 8
    assert r.gflops_per_s == pytest.approx(r.gflops / (r.median_ms / 1000))


def test_flops_of_a_small_fcn_are_the_sum_over_its_convolutions():
    torch.manual_seed(0)
    model = fcnkit.create_model("fcn_resnet18_d16", num_classes=3).eval()
    expected = []

    def count(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        expected.append(2 * output.numel() * (module.in_channels // module.groups) * k)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(count)
    with torch.inference_mode():
        model(torch.zeros(1, 3, 32, 32))
    by_hand = sum(expected)
    assert len(expected) == 20 + 2  # ResNet-18 (stem + 16 block convs + 3 downsamples), FCNHead (2)

    for m in model.modules():
        m._forward_hooks.clear()
    (r,) = benchmark(model, sizes=[(32, 32)], warmup=0, repeats=1)
    assert r.gflops * 1e9 == pytest.approx(by_hand, rel=1e-12)
    assert r.params == sum(p.numel() for p in model.parameters())
    assert r.name == "fcn_resnet18_d16"
    assert r.peak_memory_mb is not None and r.peak_memory_mb > 0


class Recorder:
    """A callable model that records the shape of every input it is given."""

    def __init__(self):
        self.shapes = []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape))
        return {"out": x[:, :1]}


def test_dynamic_mode_alternates_every_call_warmup_included():
    rec = Recorder()
    (r,) = benchmark(rec, sizes=[(4, 6)], batch_sizes=[2], warmup=3, repeats=4, dynamic=True, name="rec")
    a, b = (2, 3, 4, 6), (2, 3, 6, 4)
    assert rec.shapes[:7] == [a, b, a, b, a, b, a]
    assert set(rec.shapes[7:]) == {a, b}  # FLOPs and memory are measured at both shapes
    assert r.dynamic and r.input == "4x6/6x4" and len(r.times_ms) == 4
    assert r.params is None and r.gflops == 0  # no parameters, no convolution

    rec = Recorder()
    benchmark(rec, sizes=[(4, 6)], warmup=2, repeats=3)
    assert set(rec.shapes) == {(1, 3, 4, 6)}


def test_median_and_p90_on_a_fake_clock():
    durations = [0.005, 0.001, 0.009, 0.003, 0.007, 0.002, 0.010, 0.004, 0.006, 0.008]
    ticks = []
    now = 100.0
    for d in durations:
        ticks += [now, now + d]
        now += d + 1.0  # time between passes must not count
    clock = iter(ticks)
    (r,) = benchmark(_conv(), sizes=[(8, 8)], batch_sizes=[2], warmup=3, repeats=10, timer=lambda: next(clock))
    assert next(clock, None) is None  # exactly two clock reads per timed pass, none during warm-up

    # Sorted: 1..10 ms. Median of an even count: mean of the 5th and 6th. p90: rank 0.9 x 9 = 8.1 between
    # the 9th (9 ms) and 10th (10 ms) values -> 9.1 ms.
    assert r.median_ms == pytest.approx(5.5)
    assert r.p90_ms == pytest.approx(9.1)
    assert r.min_ms == pytest.approx(1.0)
    assert r.mean_ms == pytest.approx(5.5)
    assert r.times_ms == pytest.approx([1000 * d for d in durations])
    assert r.images_per_s == pytest.approx(2 / 0.0055)
    assert r.gflops_per_s == pytest.approx(r.gflops / 0.0055)


def test_csv_and_json_round_trip(tmp_path):
    results = benchmark(_conv(), sizes=[(8, 8), (8, 12)], batch_sizes=[1, 2], warmup=0, repeats=2, name="conv")
    assert [(r.size, r.batch) for r in results] == [((8, 8), 1), ((8, 8), 2), ((8, 12), 1), ((8, 12), 2)]

    write_json(results, tmp_path / "r.json")
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert [BenchResult(**{**d, "size": tuple(d["size"])}) for d in loaded] == results

    write_csv(results, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results)
    for row, r in zip(rows, results, strict=True):
        assert (row["name"], int(row["height"]), int(row["width"]), int(row["batch"])) == ("conv", *r.size, r.batch)
        for key in ("median_ms", "p90_ms", "images_per_s", "gflops", "gflops_per_s", "peak_memory_mb"):
            assert float(row[key]) == getattr(r, key)  # repr of a float round-trips exactly
        assert int(row["params"]) == r.params
        assert row["protocol.torch"] == torch.__version__
        assert int(row["protocol.repeats"]) == 2
        assert row["protocol.prepare"] == ""  # None


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="fcnkit")
    add_benchmark_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["benchmark", *argv])
    return args.func(args)


def test_cli_prints_a_table_with_the_protocol(tmp_path, capsys):
    argv = ["fcn_resnet18_d16", "--size", "32x48", "--warmup", "0", "--repeats", "2", "--num-classes", "3",
            "--json", str(tmp_path / "b.json")]  # fmt: skip
    assert _run_cli(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["model", "input", "HxW"]
    row = next(line for line in lines if line.startswith("fcn_resnet18_d16"))
    assert row.split()[1:3] == ["32x48", "1"]
    assert "0 warm-up + 2 timed" in out and "float32" in out and "input preallocated on cpu" in out
    assert f"torch {torch.__version__}" in out and f"{torch.get_num_threads()} CPU threads" in out
    assert "2 x MACs" in out
    (saved,) = json.loads((tmp_path / "b.json").read_text())
    assert saved["protocol"]["warmup"] == 0 and saved["size"] == [32, 48]


def test_cli_fast_uses_optimize_for_inference_with_the_backend_asked(monkeypatch, capsys):
    argv = ["fcn_resnet18_d16", "--size", "16x16", "--warmup", "0", "--repeats", "1", "--fast"]
    prepared = []

    def optimize_for_inference(model, backend="auto"):
        prepared.append((model, backend))
        return lambda x: model(x)

    optimize_for_inference.__module__ = "fcnkit.inference.optimize"
    optimize_for_inference.__qualname__ = "optimize_for_inference"
    monkeypatch.setattr("fcnkit.cli.benchmark.optimize_for_inference", optimize_for_inference)
    assert _run_cli(argv) == 0
    assert len(prepared) == 1 and not prepared[0][0].training and prepared[0][1] == "auto"
    assert "prepared by fcnkit.inference.optimize.optimize_for_inference" in capsys.readouterr().out
    assert _run_cli([*argv[:-1], "--backend", "onnxruntime"]) == 0  # --backend implies --fast
    assert prepared[1][1] == "onnxruntime"
    assert (
        "prepared by fcnkit.inference.optimize.optimize_for_inference(backend='onnxruntime')" in capsys.readouterr().out
    )


def test_cpu_name_carries_the_family_and_model_numbers(tmp_path, monkeypatch):
    """Machines of one name differ: the CPU's name gets /proc/cpuinfo's family and model (the first core's)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx512_bf16\n\n"
        "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: other\n"
    )
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    assert device_name(torch.device("cpu")) == "AMD EPYC 9B14 (family 25, model 17)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")  # no family / model: the name alone
    assert device_name(torch.device("cpu")) == "Some ARM core"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_provenance_names_the_checkout_commit_machine_and_date():
    record = provenance("python benchmarks/x.py --seeds 1")
    here = Path(__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
    assert record["command"] == "python benchmarks/x.py --seeds 1"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True)
    expected = head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if head.stdout.strip() else "unknown"
    assert record["commit"] == expected
    assert record["machine"] == f"{device_name(torch.device('cpu'))}, {platform.machine()}"
    written = datetime.datetime.strptime(record["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - written).total_seconds()) < 60


def test_results_table_prints_aligned_and_saves_its_figures_with_provenance(tmp_path):
    table = ResultsTable({"model": "{}", "ms": "{:.1f}", "vs eager": "{:.2f}x"}, command="python b.py --x 1")
    table.add(model="eager", ms=61.25, **{"vs eager": 1.0})
    table.add(model="onnxruntime", ms=24.94)  # a column left out shows empty
    assert table.lines() == [
        "model          ms  vs eager",
        "eager        61.2     1.00x",
        "onnxruntime  24.9",
    ]
    with pytest.raises(ValueError, match="unknown column"):
        table.add(model="x", seconds=1)
    table.protocol = "3 rounds"
    table.save(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"] == [{"model": "eager", "ms": 61.25, "vs eager": 1.0}, {"model": "onnxruntime", "ms": 24.94}]
    assert data["columns"]["vs eager"] == "{:.2f}x" and data["protocol"] == "3 rounds"
    assert data["command"] == "python b.py --x 1" and {"commit", "machine", "date"} <= set(data)
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]  # no temporary file left


class _Sleeper(nn.Module):
    """A 'model' that takes ``seconds`` a forward and records how many forwards run at once; its ``with_threads``
    (as ONNX Runtime models have) records the thread count asked for."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.seconds, self.running, self.most, self.asked = seconds, 0, 0, []
        import threading

        self.lock = threading.Lock()

    def forward(self, x):
        import time

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return {"out": self.conv(x)}

    def with_threads(self, threads: int):
        self.asked.append(threads)
        return self


def test_several_runs_at_once_time_each_forward_and_count_images_over_the_wall_clock(capsys):
    """runs=2: the prepared model's with_threads copy (threads // runs each) is called from two threads, two
    forwards always in flight; latency is each forward's own time, images/s the images over the wall-clock time;
    the table gets a runs column and the protocol says how it ran. A model that cannot run at once is refused."""
    from fcnkit.apps.benchmark import format_table, num_threads
    from fcnkit.errors import ConfigError

    model = _Sleeper(0.03)
    with num_threads(4):
        (r,) = benchmark(model, sizes=[(8, 8)], batch_sizes=[3], warmup=2, repeats=8, runs=2, prepare=lambda m: m)
    assert model.asked == [2] and model.most == 2 and r.runs == 2
    assert r.median_ms == pytest.approx(30, abs=15)  # each forward still takes its 30 ms
    # 8 forwards of 3 images, two at a time: about 4 x 30 ms of wall clock, so about twice one run's rate
    assert r.images_per_s == pytest.approx(8 * 3 / 0.12, rel=0.35)
    assert r.images_per_s > 1.4 * 3 / (r.median_ms / 1000)
    assert r.protocol["runs"] == 2 and r.protocol["threads_per_run"] == 2
    table = format_table([r])
    assert table.splitlines()[0].split()[:4] == ["model", "input", "HxW", "batch"] and " runs " in table
    assert "2 batches at once from as many threads, 2 thread(s) each" in table
    (one,) = benchmark(_conv(), sizes=[(8, 8)], warmup=0, repeats=2)
    assert one.runs == 1 and " runs " not in format_table([one])

    with pytest.raises(ConfigError, match="runs=2 needs a model that runs several batches at once"):
        benchmark(_conv(), sizes=[(8, 8)], warmup=0, repeats=1, runs=2)
    with pytest.raises(ConfigError, match="runs must be at least 1"):
        benchmark(_conv(), sizes=[(8, 8)], runs=0)
