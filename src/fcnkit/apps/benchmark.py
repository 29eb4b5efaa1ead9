"""Speed, FLOPs and memory of a segmentation model: the functions behind ``fcnkit benchmark`` and ``benchmarks/``.

What is measured, and how (speed figures of different projects are only comparable when the protocol is
stated, so every result carries its ``protocol`` and the printed table ends with it):

* **Latency**: whole forward passes (final resize included) of one batch, in eval mode under
  ``torch.inference_mode``, on a random-normal input allocated on the device beforehand (no host-to-device
  copy is timed). ``warmup`` untimed passes, then ``repeats`` timed ones; median and 90th percentile
  (linear interpolation, as ``numpy.percentile``). On CUDA, ``torch.cuda.synchronize()`` brackets every
  timed pass (FastFCN's own script does not synchronise, a known flaw).
* **Several runs at once** (``runs > 1``, ONNX Runtime on the CPU): the prepared model's copy whose operators run
  on ``threads // runs`` threads (:meth:`fcnkit.export.OnnxRuntimeModel.with_threads`) is called from ``runs``
  threads, ``runs`` batches in flight all the time, as ``fcnkit predict`` runs a stream. Latency is still per
  batch (under that load); images/s are the images of the timed passes over their wall-clock time.
* **Dynamic mode** (torchfcn's speed test): every call alternates between ``(H, W)`` and its transpose
  ``(W, H)``, warm-up included, and the latency reported is that of the mixed sequence. This shows the cost of
  shape changes (cuDNN/oneDNN re-planning, recompilation of a compiled model).
* **FLOPs**: counted, not estimated, with ``torch.utils.flop_counter.FlopCounterMode`` on one forward. Like
  pytorch-auto-drive it reports FLOPs = 2 x multiply-accumulates, and only of the operations that counter
  knows: convolutions (transposed too) and matrix products. Bias adds, normalisation, activations, pooling
  and resizes are not counted. They are counted on the model as given, before ``prepare``, because a
  compiled graph hides its operations from the counter; optimisations that keep the maths (BN folding,
  channels-last, compilation) leave the count unchanged.
* **Peak memory**: the peak of the memory allocated during one (untimed) forward above what was allocated
  before it, so weights and the input are excluded: activations, workspaces and the output. CUDA:
  ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the allocation before the
  pass. CPU: the process's peak RSS cannot be reset and includes allocator caching, so it is not used;
  instead ``torch.profiler`` with ``profile_memory=True`` records every allocation and free made through
  PyTorch's CPU allocator during one forward, and the peak of their running sum is reported. Memory that
  oneDNN or other libraries allocate outside PyTorch's allocator is not seen.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..version import __version__

__all__ = [
    "BenchResult",
    "ResultsTable",
    "benchmark",
    "count_flops",
    "describe_protocol",
    "device_name",
    "format_table",
    "num_threads",
    "peak_memory",
    "sync",
    "time_concurrent",
    "time_forwards",
    "time_interleaved",
    "timed",
    "write_csv",
    "write_json",
]

#: What is timed: ``(B, 3, H, W)`` float tensor -> ``{"out": (B, C, H, W), ...}``.
Forward = Callable[[Tensor], Any]

#: Short forms, stored in every result's protocol; ``describe_protocol`` prints the long ones.
FLOPS_METHOD = "FlopCounterMode, 2 x MACs of conv + matmul, model before prepare"
MEMORY_METHODS = {
    "cuda": "max_memory_allocated minus allocated before, one forward",
    "cpu": "torch.profiler CPU-allocator peak, one forward",
}
_LONG = {
    FLOPS_METHOD: "counted with torch.utils.flop_counter.FlopCounterMode on one forward of the model before "
    "prepare; FLOPs = 2 x MACs of convolutions and matrix products; bias, normalisation, activations, pooling "
    "and resizes not counted",
    MEMORY_METHODS["cuda"]: "torch.cuda.max_memory_allocated() over one forward minus what was allocated before "
    "it (weights and input excluded)",
    MEMORY_METHODS["cpu"]: "peak of the running sum of allocations and frees through PyTorch's CPU allocator "
    "during one forward (torch.profiler, profile_memory=True; weights and input excluded; memory allocated "
    "outside PyTorch's allocator not seen)",
}


@dataclass
class BenchResult:
    """One row: a model at one input size and batch size.

    ``size`` is ``(H, W)``; with ``dynamic`` the passes alternated between ``(H, W)`` and ``(W, H)``.
    Latencies are per forward of the whole batch, in milliseconds; with ``runs`` batches at once, each forward's
    own time under that load, and ``images_per_s`` the images over the wall-clock time. ``gflops`` is per forward
    (whole batch), ``None`` when it could not be counted; ``peak_memory_mb`` is in MiB (2**20 bytes).
    """

    name: str
    size: tuple[int, int]
    batch: int
    dynamic: bool
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    images_per_s: float
    params: int | None
    gflops: float | None
    gflops_per_s: float | None
    peak_memory_mb: float | None
    runs: int = 1
    protocol: dict[str, Any] = field(default_factory=dict)
    times_ms: list[float] = field(default_factory=list)

    @property
    def input(self) -> str:
        h, w = self.size
        return f"{h}x{w}/{w}x{h}" if self.dynamic else f"{h}x{w}"

    def to_dict(self) -> dict[str, Any]:
        """Everything, nested (``protocol``) and with the raw timings: the JSON form."""
        data = asdict(self)
        data["size"] = list(self.size)
        return data

    def to_row(self) -> dict[str, Any]:
        """A flat row for CSV: scalar fields, ``height``/``width`` and ``protocol.<key>`` columns."""
        data = self.to_dict()
        h, w = data.pop("size")
        data.pop("times_ms")
        protocol = data.pop("protocol")
        row = {"name": data.pop("name"), "height": h, "width": w, **data}
        row.update({f"protocol.{k}": v for k, v in protocol.items()})
        return row


def benchmark(
    model_or_callable: nn.Module | Forward,
    sizes: Sequence[tuple[int, int]] = ((480, 640),),
    batch_sizes: Sequence[int] = (1,),
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    dynamic: bool = False,
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
    prepare: Callable[[nn.Module], Forward] | None = None,
    threads: int | None = None,
    timer: Callable[[], float] = time.perf_counter,
    runs: int = 1,
) -> list[BenchResult]:
    """Time ``model_or_callable`` at every ``(H, W)`` in ``sizes`` and every batch size; see the module docstring.

    Args:
        model_or_callable: maps a ``(B, 3, H, W)`` tensor to ``{"out": (B, C, H, W)}``. An ``nn.Module`` is put
            in eval mode and moved to ``device`` and ``dtype`` in place; any other callable must already
            live there. Parameters are counted when it has ``.parameters()`` (before ``prepare``).
        sizes: input sizes ``(H, W)``; in ``dynamic`` mode each alternates with ``(W, H)``.
        batch_sizes: ``B`` values; each (size, batch) pair is one result.
        warmup: untimed passes before the timed ones, for each (size, batch).
        repeats: timed passes for each (size, batch).
        dynamic: alternate ``(H, W)`` / ``(W, H)`` on every call, as torchfcn's speed test does.
        dtype: input dtype (and the module's, when it is one).
        name: the name in the results (default: the registry name of an fcnkit model, else the type's).
        prepare: called once on the eval-mode model, on its device and dtype; what it returns is timed (e.g.
            ``fcnkit.optimize_for_inference``). FLOPs and parameters stay those of the model given.
        threads: CPU threads (``torch.set_num_threads``) for the duration of the call; default unchanged.
        timer: seconds as a float; called exactly twice per timed pass (before and after), so tests can
            inject a fake clock.
        runs: batches run at once, each from its own thread (ONNX Runtime on the CPU only, through ``prepare``'s
            model's ``with_threads``: ``threads // runs`` threads a run); 1, the default, times one batch at a time.

    Returns:
        One ``BenchResult`` per (size, batch), sizes outermost.
    """
    sizes = [(int(h), int(w)) for h, w in sizes]
    batch_sizes = [int(b) for b in batch_sizes]
    if not sizes or any(h < 1 or w < 1 for h, w in sizes):
        raise ConfigError(f"sizes must be positive (H, W) pairs, got {sizes}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive, got {batch_sizes}")
    if runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}")
    if warmup < 0 or repeats < 1:
        raise ConfigError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    model = model_or_callable
    if isinstance(model, nn.Module):
        model.eval().to(device=device, dtype=dtype)
    name = name or _model_name(model)
    params = _count_params(model)

    with num_threads(threads):
        forward = prepare(model) if prepare is not None else model
        protocol = _protocol(device, dtype, warmup, repeats, dynamic, prepare, timer)
        if runs > 1:
            forward = _concurrent_copy(forward, runs)
            protocol["runs"] = runs
            protocol["threads_per_run"] = max(1, torch.get_num_threads() // runs)
        results = []
        for h, w in sizes:
            for batch in batch_sizes:
                shapes = [(h, w), (w, h)] if dynamic else [(h, w)]
                inputs = [torch.randn(batch, 3, *s, device=device, dtype=dtype) for s in shapes]
                with torch.inference_mode():
                    if runs > 1:
                        seconds, wall = time_concurrent(forward, inputs, runs, warmup, repeats, timer)
                    else:
                        seconds = time_forwards(forward, inputs, device, warmup, repeats, timer)
                    flops = count_flops(model, inputs)
                    peaks = [peak_memory(forward, x, device) for x in inputs]
                    memory = None if None in peaks else max(peaks)
                result = _result(name, (h, w), batch, dynamic, seconds, params, flops, memory, protocol)
                if runs > 1:
                    result.runs = runs
                    result.images_per_s = batch * repeats / wall if wall > 0 else math.inf
                    if flops is not None and wall > 0:
                        result.gflops_per_s = flops / 1e9 * repeats / wall
                results.append(result)
                del inputs
    return results


def timed(fn: Callable[[], object], device: torch.device, timer: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one call of ``fn``; on CUDA the device is synchronised before and after it."""
    sync(device)
    start = timer()
    fn()
    sync(device)
    return timer() - start


def time_forwards(
    forward: Forward, inputs: list[Tensor], device: torch.device, warmup: int, repeats: int, timer: Callable
) -> list[float]:
    """Seconds of each timed pass; call ``i`` (warm-up included) gets ``inputs[i % len(inputs)]``."""
    for i in range(warmup):
        forward(inputs[i % len(inputs)])
    return [
        timed(functools.partial(forward, inputs[i % len(inputs)]), device, timer)
        for i in range(warmup, warmup + repeats)
    ]


def time_concurrent(
    forward: Forward, inputs: list[Tensor], runs: int, warmup: int, repeats: int, timer: Callable
) -> tuple[list[float], float]:
    """``runs`` threads keep ``runs`` forwards in flight (CPU): the seconds of each timed forward, and the wall-clock
    seconds from the first timed one's start to the last one's end. Forward ``i`` (warm-up included) gets
    ``inputs[i % len(inputs)]``; the warm-up forwards run at once too, and finish before the timed ones start."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[float, float]:
        start = timer()
        forward(inputs[i % len(inputs)])
        return start, timer()

    with ThreadPoolExecutor(runs, thread_name_prefix="fcnkit-bench") as pool:
        list(pool.map(one, range(warmup)))
        spans = list(pool.map(one, range(warmup, warmup + repeats)))
    return [end - start for start, end in spans], max(e for _, e in spans) - min(s for s, _ in spans)


def _concurrent_copy(forward: Forward, runs: int) -> Forward:
    """The copy of a prepared model that ``runs`` threads may call at once, each run on ``threads // runs``
    threads (``with_threads``, which ONNX Runtime models have); a clear error for other models."""
    copy = getattr(forward, "with_threads", None)
    threaded = copy(max(1, torch.get_num_threads() // runs)) if callable(copy) else None
    if threaded is None:
        raise ConfigError(
            f"runs={runs} needs a model that runs several batches at once: ONNX Runtime on the CPU (fcnkit "
            f"benchmark --fast, or --backend onnxruntime); {type(forward).__name__} runs one at a time"
        )
    return threaded


def time_interleaved(
    runs: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int,
    repeats: int,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each timed call of each of ``runs``, the runs taking turns on every repeat.

    Comparing two models on a shared machine, load from other processes then hits both alike, so their ratio
    holds even when the absolute times drift. Every run gets ``warmup`` untimed calls first.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            seconds[name].append(timed(fn, device, timer))
    return seconds


def count_flops(model: Forward, inputs: list[Tensor]) -> float | None:
    """Mean FLOPs of one forward over ``inputs`` (the two shapes of dynamic mode), or None if uncountable."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    try:
        for x in inputs:
            with FlopCounterMode(display=False) as counter:
                model(x)
            counts.append(counter.get_total_flops())
    except Exception as e:  # a callable that dispatch modes cannot see through: report n/a, say why
        warnings.warn(f"FLOPs could not be counted ({type(e).__name__}: {e}); reporting n/a", stacklevel=3)
        return None
    return sum(counts) / len(counts)


def peak_memory(forward: Forward, x: Tensor, device: torch.device) -> float | None:
    """MiB allocated at the peak of one forward, above what was allocated before it (None: not measurable)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward(x)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    # Kineto logs its start/stop (and, with a CUDA wheel on a machine without a GPU, a device-count error) to
    # stderr on every profile; level 6 silences it. Only set when the user has not chosen a level.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward(x)
    try:  # the raw allocation records are not public API: if a torch version moves them, report n/a
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    events = [e for e in events if e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak / 2**20


def _result(
    name: str,
    size: tuple[int, int],
    batch: int,
    dynamic: bool,
    seconds: list[float],
    params: int | None,
    flops: float | None,
    memory: float | None,
    protocol: dict[str, Any],
) -> BenchResult:
    median = statistics.median(seconds)
    return BenchResult(
        name=name,
        size=size,
        batch=batch,
        dynamic=dynamic,
        median_ms=1000 * median,
        p90_ms=1000 * float(np.percentile(seconds, 90)),
        min_ms=1000 * min(seconds),
        mean_ms=1000 * statistics.fmean(seconds),
        images_per_s=batch / median if median > 0 else math.inf,
        params=params,
        gflops=flops / 1e9 if flops is not None else None,
        gflops_per_s=flops / 1e9 / median if flops is not None and median > 0 else None,
        peak_memory_mb=memory,
        protocol=dict(protocol),
        times_ms=[1000 * s for s in seconds],
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_name(model: Any) -> str:
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and arch.get("name"):
        return str(arch["name"])
    return getattr(model, "__name__", None) or type(model).__name__


def _count_params(model: Any) -> int | None:
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return None
    return sum(p.numel() for p in parameters())


@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its x86 family and model numbers where ``/proc/cpuinfo`` gives them
    (machines sold under one name, "AMD EPYC", differ in speed and in what they multiply in hardware)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("model name", "cpu family", "model"):
                    fields.setdefault(key, value)
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def provenance(command: str) -> dict[str, str]:
    """What a results file records beside its figures: the ``command`` that made them, the commit of the code that
    ran (``unknown`` outside a git checkout; ``-dirty`` appended when tracked files had uncommitted changes), the machine (:func:`device_name` and the architecture) and the UTC
    date. The benchmarks of ``benchmarks/`` write it so that a table generated from their files can say how."""
    import datetime
    import subprocess

    here = os.path.dirname(__file__)
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        )
        git_id = git.stdout.strip() + ("-dirty" if git.stdout.strip() and changed.stdout.strip() else "")
    except OSError:  # no git on this machine
        git_id = ""
    return {
        "command": command,
        "commit": git_id or "unknown",
        "machine": f"{device_name(torch.device('cpu'))}, {platform.machine()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class ResultsTable:
    """A benchmark's table as data: columns with their display format, one dict per row, the protocol and the
    :func:`provenance` of the run. The scripts of ``benchmarks/`` print it and save it (``--json``), and
    ``benchmarks/report.py`` renders the docs' tables from the saved file, so a published figure always has its
    command, commit, machine and date beside it.

    ``columns`` maps a column name to a ``str.format`` template for its values (``"{:.1f}"``, ``"{:.2f}x"``,
    ``"{}"``); a row may leave a column out (shown empty).
    """

    def __init__(self, columns: dict[str, str], *, command: str, protocol: str = "") -> None:
        self.columns = dict(columns)
        self.rows: list[dict[str, Any]] = []
        self.protocol = protocol
        self.notes: list[str] = []
        self.provenance = provenance(command)  # taken when the run starts

    def add(self, **row: Any) -> dict[str, Any]:
        """Add a row (column names with spaces are given through ``**{"median ms": v}``); returns it."""
        unknown = sorted(set(row) - set(self.columns))
        if unknown:
            raise ValueError(f"unknown column(s) {', '.join(unknown)}; the table has {', '.join(self.columns)}")
        self.rows.append(row)
        return row

    @staticmethod
    def cell(template: str, value: Any) -> str:
        return "" if value is None else template.format(value)

    def lines(self) -> list[str]:
        """The table as aligned text (what the scripts print)."""
        cells = [[self.cell(t, row.get(c)) for c, t in self.columns.items()] for row in self.rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(self.columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
            )

        return [line(list(self.columns)).rstrip(), *(line(r).rstrip() for r in cells)]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.provenance,
            "protocol": self.protocol,
            "notes": self.notes,
            "columns": self.columns,
            "rows": self.rows,
        }

    def finish(self, json_path: str | os.PathLike[str] | None = None) -> None:
        """Print the table and its protocol; with ``json_path`` (a script's ``--json``) save it there too."""
        for line in self.lines():
            print(line)
        print(f"\nprotocol: {self.protocol}")
        for note in self.notes:
            print(note)
        if json_path:
            self.save(json_path)
            print(f"wrote {json_path}")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table and its provenance as JSON (through a temporary file, so a crash leaves no half file)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)


def _protocol(
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
    dynamic: bool,
    prepare: Callable | None,
    timer: Callable,
) -> dict[str, Any]:
    protocol: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "warmup": warmup,
        "repeats": repeats,
        "dynamic": dynamic,
        "sync": "cuda synchronize around every timed forward" if device.type == "cuda" else "none (CPU)",
        "timer": _qualname(timer),
        "prepare": _qualname(prepare) if prepare is not None else None,
        "flops": FLOPS_METHOD,
        "memory": MEMORY_METHODS["cuda" if device.type == "cuda" else "cpu"],
        "torch": torch.__version__,
        "fcnkit": __version__,
    }
    if device.type == "cuda":
        protocol["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    else:  # oneDNN or PyTorch's native kernels: often a several-fold difference on CPU
        protocol["mkldnn"] = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return protocol


def _qualname(fn: Callable) -> str:
    if isinstance(fn, functools.partial):
        options = ", ".join(f"{k}={v!r}" for k, v in fn.keywords.items())
        return f"{_qualname(fn.func)}({options})"
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}" if module else qualname


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:,.{digits}f}"


def format_table(results: Sequence[BenchResult]) -> str:
    """A fixed-width table of ``results`` followed by the protocol(s) they were measured under."""
    header = ("model", "input HxW", "batch", "median ms", "p90 ms", "images/s", "params", "GFLOPs", "GFLOP/s",
              "peak MiB")  # fmt: skip
    rows = [
        (
            r.name, r.input, str(r.batch), _fmt(r.median_ms, 2), _fmt(r.p90_ms, 2), _fmt(r.images_per_s, 2),
            f"{r.params / 1e6:.2f}M" if r.params is not None else "n/a", _fmt(r.gflops, 2), _fmt(r.gflops_per_s),
            _fmt(r.peak_memory_mb),
        )
        for r in results
    ]  # fmt: skip
    if any(r.runs > 1 for r in results):  # a column only where several batches ran at once
        header = (*header[:3], "runs", *header[3:])
        rows = [(*row[:3], str(r.runs), *row[3:]) for row, r in zip(rows, results, strict=True)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [line.format(*header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [line.format(*row) for row in rows]

    protocols: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for r in results:
        key = json.dumps(r.protocol, sort_keys=True, default=str)
        protocols.setdefault(key, (r.protocol, []))[1].append(r.name)
    for protocol, names in protocols.values():
        lines.append("")
        if len(protocols) > 1:
            lines.append(f"for {', '.join(dict.fromkeys(names))}:")
        lines += describe_protocol(protocol)
    return "\n".join(lines)


def describe_protocol(protocol: dict[str, Any]) -> list[str]:
    """The protocol as a few readable lines (the footer of ``format_table``)."""
    p = protocol
    if not p:
        return ["protocol: not recorded"]
    dynamic = ", alternating HxW / WxH on every call (torchfcn dynamic mode)" if p.get("dynamic") else ""
    prepare = f", model prepared by {p['prepare']}" if p.get("prepare") else ""
    extra = "".join(f", {k.replace('_', '.')}={p[k]}" for k in ("cudnn_benchmark", "mkldnn") if k in p)
    return [
        f"protocol: eval + torch.inference_mode, random {p.get('dtype')} input preallocated on {p.get('device')}"
        f"{dynamic}{prepare}; {p.get('warmup')} warm-up + {p.get('repeats')} timed whole forwards (final resize "
        f"included) per row, timer {p.get('timer')}, sync: {p.get('sync')}{extra}; latency per batch, median "
        f"and p90; "
        + (
            f"{p['runs']} batches at once from as many threads, {p.get('threads_per_run')} thread(s) each; latency per "
            "batch under that load; images/s = images / wall-clock time of the timed forwards"
            if p.get("runs", 1) > 1
            else "images/s = batch / median"
        ),
        f"device: {p.get('device')} ({p.get('device_name')}), {p.get('threads')} CPU threads; "
        f"torch {p.get('torch')}, fcnkit {p.get('fcnkit')}",
        f"GFLOPs per forward: {_LONG.get(p.get('flops'), p.get('flops'))}; GFLOP/s = GFLOPs x forwards per second",
        f"peak MiB: {_LONG.get(p.get('memory'), p.get('memory'))}",
    ]


def write_csv(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> None:
    """One row per result: the scalar fields, ``height``/``width`` and ``protocol.<key>`` columns (no raw times;
    ``write_json`` keeps those). ``None`` is written as an empty cell."""
    rows = [r.to_row() for r in results]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])


def write_json(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> None:
    """A JSON list of results (``BenchResult.to_dict``: nested protocol, raw timings in ``times_ms``)."""
    with open(path, "w") as f:
        json.dump([r.to_dict() for r in results], f, indent=2)
        f.write("\n")
