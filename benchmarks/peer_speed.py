"""fcnkit's inference paths against the peers' plain eager models, in one run, on the same random weights.

(a) ``fcn_resnet50_d8`` against torchvision's ``fcn_resnet50`` (eager, eval, inference_mode), at 360x480 and
    512x512; (b) ``fcn8s_vgg16`` against the same network as a plain torchfcn-layout module
    (``tests/reference_torchfcn.py``), at 480x640; (c) ``timm`` (the CamVid recipe's FCN-8s on regnetx_002, 360x480)
    and ``encnet`` (EncNet + JPU on ResNet-50, 480x480), which no peer package runs, against the same fcnkit model
    in plain eager PyTorch. The peer's weights are loaded into fcnkit's model, so both
    compute the same function; each fcnkit path is checked against the peer's logits (max difference and
    arg-max agreement) before it is timed.

Timing is interleaved: after the warm-up, every round runs the peer and each path once, in turn, and the
figures are medians over rounds. A shared machine drifts by 10-20 % within minutes; interleaving lets the
drift hit every row alike, and the ratio column is the median of the per-round ratios (peer / path).

The machine's practical fp32 peak is measured in the same run as the best GFLOP/s of large matrix multiplies
(2048 and 4096 square), and each row's GFLOP/s (FLOPs counted with ``FlopCounterMode`` on the peer, 2 x MACs)
is given as a share of it.

    python benchmarks/peer_speed.py                                # CPU, fp32, batch 1, default paths
    python benchmarks/peer_speed.py --paths fold_bn onnxruntime compile --rounds 20
    python benchmarks/peer_speed.py --cases resnet:360x480 timm:360x480 encnet:480x480 vgg:480x640
    python benchmarks/peer_speed.py --cases resnet:360x480 --paths default onnxruntime int8 int8_reduce_range \
        --calib ../shared/data/camvid/train
    python benchmarks/peer_speed.py --device cuda --paths fold_bn+channels_last bf16 compile_bf16
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fcnkit
from fcnkit.apps.benchmark import ResultsTable, count_flops, time_interleaved, timed
from fcnkit.inference import optimize_for_inference, resolve_backend
from fcnkit.utils import compare_logits

#: Exact paths (fp32; logits within float rounding of the peer's).
EXACT_PATHS = ("default", "eager", "fold_bn", "fold_bn+channels_last", "onnxruntime", "openvino", "compile")
#: Reduced-precision paths (opt-in; their arg-max agreement with the fp32 peer is printed).
REDUCED_PATHS = ("bf16", "fp16", "compile_bf16", "int8", "int8_reduce_range")
DEFAULT_PATHS = ("default", "eager", "fold_bn", "fold_bn+channels_last", "onnxruntime", "openvino")


def matmul_peak(device: torch.device, sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5) -> float:
    """Best GFLOP/s of n x n fp32 matrix multiplies (2 n^3 FLOPs each)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b
        for _ in range(repeats):
            seconds = timed(lambda a=a, b=b: a @ b, device)
            best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


#: calibration images of the int8 paths (``--calib``; default: random smooth images written to a temporary folder)
CALIB: dict[str, str] = {}


def _calibration_folder(onnx_dir: str, size: tuple[int, int]) -> str:
    if CALIB.get("dir"):
        return CALIB["dir"]
    folder = Path(onnx_dir) / "calib"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size[::-1], Image.BILINEAR).save(folder / f"{i}.png")
    return str(folder)


def fcnkit_path(model: torch.nn.Module, path: str, onnx_dir: str, size: tuple[int, int] = (360, 480)) -> Callable:
    """The callable for one path; every one goes through ``optimize_for_inference`` except plain eager."""
    if path == "default":  # what Predictor, fcnkit eval and fcnkit predict use: backend "auto"
        backend = resolve_backend("auto", next(model.parameters()).device)
        where = os.path.join(onnx_dir, "default.onnx") if backend != "torch" else None
        return optimize_for_inference(model, backend=backend, onnx_path=where)
    if path == "eager":
        return model
    if path == "fold_bn":
        return optimize_for_inference(model, backend="torch", channels_last=False)
    if path == "fold_bn+channels_last":
        return optimize_for_inference(model, channels_last=True)
    if path in ("onnxruntime", "openvino"):
        return optimize_for_inference(model, backend=path, onnx_path=os.path.join(onnx_dir, f"{path}.onnx"))
    if path in ("int8", "int8_reduce_range"):  # fcnkit quantize: ONNX Runtime static QDQ, run by ONNX Runtime
        from fcnkit.export import OnnxRuntimeModel
        from fcnkit.inference.quantize import quantize_onnx

        out = os.path.join(onnx_dir, f"{path}.onnx")
        calib = _calibration_folder(onnx_dir, size)
        quantize_onnx(model, calib, out, reduce_range=path.endswith("reduce_range"), limit=16)
        return OnnxRuntimeModel(out)
    if path == "compile":
        return optimize_for_inference(model, compile=True)
    if path in ("bf16", "fp16"):
        return optimize_for_inference(model, channels_last=True, amp=path)
    if path == "compile_bf16":
        return optimize_for_inference(model, channels_last=True, amp="bf16", compile=True)
    raise ValueError(path)


def peer_and_fcnkit(case: str) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    torch.manual_seed(0)
    if case == "resnet":
        from torchvision.models.segmentation import fcn_resnet50

        peer = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False).eval()
        randomise_bn(peer)
        ours = fcnkit.create_model("fcn_resnet50_d8", num_classes=21).eval()
        ours.load_state_dict(peer.state_dict())
        return peer, ours, "torchvision fcn_resnet50"
    if case in ("timm", "encnet"):
        # no peer package runs these networks: the baseline is the same fcnkit model, plain eager PyTorch
        if case == "timm":  # the CamVid recipe's model (configs/camvid/budget30_fcn8s_camvid.yaml)
            ours = fcnkit.create_model("fcn8s_timm", num_classes=11, backbone="regnetx_002", upsample="bilinear")
            name = "fcnkit fcn8s_timm regnetx_002 eager"
        else:  # FastFCN's EncNet + JPU on ResNet-50, 59 Pascal Context classes
            ours = fcnkit.create_model("enc_resnet50_jpu", num_classes=59)
            name = "fcnkit enc_resnet50_jpu eager"
        randomise_bn(ours)
        ours.eval()
        return copy.deepcopy(ours), ours, name
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from reference_torchfcn import TorchfcnFCN  # the torchfcn layout, written independently of fcnkit

    peer = TorchfcnFCN(n_class=21, variant="8s").eval()
    with torch.no_grad():  # random convolutions; the upsampling deconvolutions keep their bilinear kernels
        for m in peer.modules():
            if type(m) is torch.nn.Conv2d:
                m.weight.normal_(0, 0.01)
                m.bias.normal_(0, 0.01)
    ours = fcnkit.create_model("fcn8s_vgg16", num_classes=21, weights=None).eval()
    from fcnkit.models.weights import torchfcn_to_fcnkit

    ours.load_state_dict(torchfcn_to_fcnkit(peer.state_dict()))
    return peer, ours, "torchfcn-layout FCN8s"


COLUMNS = {
    "case": "{}",
    "path": "{}",
    "median ms": "{:.1f}",
    "p90 ms": "{:.1f}",
    "GFLOP/s": "{:.1f}",
    "% peak": "{:.0%}",
    "vs peer": "{:.2f}x",
    "check": "{}",
}


def run_case(
    case: str, paths: list[str], args: argparse.Namespace, device: torch.device, peak: float, table: ResultsTable
) -> None:
    kind, size = case.split(":")
    h, w = (int(v) for v in size.split("x"))
    peer, ours, peer_name = peer_and_fcnkit(kind)
    peer, ours = peer.to(device), ours.to(device)
    x = torch.randn(1, 3, h, w, device=device)
    with torch.inference_mode():
        gflops = count_flops(peer, [x]) / 1e9
    runners: dict[str, Callable] = {"peer": peer if kind != "vgg" else (lambda t, net=peer: {"out": net(t)})}
    with torch.inference_mode():
        reference = runners["peer"](x)["out"].float()
    checks = {}
    with tempfile.TemporaryDirectory() as onnx_dir:
        for path in paths:
            start = time.perf_counter()
            try:
                fn = fcnkit_path(ours, path, onnx_dir, (h, w))
            except (RuntimeError, ImportError, ValueError) as e:
                print(f"{kind} {h}x{w}: path {path} unavailable: {str(e).splitlines()[0]}")
                continue
            prepare = time.perf_counter() - start
            with torch.inference_mode():
                out = fn(x)["out"].float()
            parity = compare_logits(reference, out)
            checks[path] = f"max diff {parity.max_abs_diff:.1e}, argmax {parity.argmax_agreement:.4%}"
            checks[path] += f", prepared in {prepare:.0f} s"
            runners[path] = fn
        with torch.inference_mode():
            runs = {name: functools.partial(fn, x) for name, fn in runners.items()}
            seconds = time_interleaved(runs, device, args.warmup, args.rounds)
        times = {name: [1000 * s for s in values] for name, values in seconds.items()}
    label = f"{kind} {h}x{w}"
    for name, ms in times.items():
        med, p90 = statistics.median(ms), float(np.percentile(ms, 90))
        ratio = statistics.median(p / m for p, m in zip(times["peer"], ms, strict=True))
        shown = f"peer: {peer_name}" if name == "peer" else f"fcnkit {name}"
        table.add(
            case=label,
            path=shown,
            **{"median ms": med, "p90 ms": p90, "GFLOP/s": gflops / med * 1e3, "% peak": gflops / med * 1e3 / peak},
            **{"vs peer": ratio, "check": checks.get(name)},
        )
        print(
            f"{label:<16}{shown:<28}{med:>10.1f}{p90:>9.1f}{gflops / med * 1e3:>9.1f}"
            f"{gflops / med * 1e3 / peak:>8.0%}{ratio:>8.2f}x  {checks.get(name, '')}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), choices=EXACT_PATHS + REDUCED_PATHS)
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per runner (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds; each runs every runner once")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calib", help="calibration images of the int8 paths (default: random smooth images)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["resnet:360x480", "resnet:512x512", "vgg:480x640", "timm:360x480", "encnet:480x480"],
        help="MODEL:HxW, MODEL one of resnet, vgg, timm, encnet",
    )
    parser.add_argument("--json", type=Path, help="also save the table with its command, commit and machine here")
    args = parser.parse_args(argv)
    table = ResultsTable(COLUMNS, command=" ".join(["python benchmarks/peer_speed.py", *sys.argv[1:]]))
    CALIB["dir"] = args.calib or ""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    peak = matmul_peak(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"practical fp32 peak (best large matmul): {peak:.1f} GFLOP/s on {where}")
    header = f"{'case':<16}{'path':<28}{'median ms':>10}{'p90 ms':>9}{'GFLOP/s':>9}{'% peak':>8}{'vs peer':>9}  check"
    print(header)
    print("-" * len(header))
    for case in args.cases:
        run_case(case, args.paths, args, device, peak, table)
    table.protocol = (
        f"batch 1, fp32 input, random weights shared by peer and fcnkit, eval + inference_mode, "
        f"{args.warmup} warm-up forwards per runner, then {args.rounds} interleaved rounds (median, p90; 'vs peer' "
        f"= median of per-round peer/path ratios), GFLOPs counted with FlopCounterMode on the peer "
        f"({platform.machine()}, {device.type}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}); "
        f"% peak against the practical fp32 peak of the same run, the best large matrix multiply: {peak:.1f} GFLOP/s"
    )
    print(f"\nprotocol: {table.protocol}")
    if args.json:
        table.save(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
