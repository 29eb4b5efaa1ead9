"""fcnkit's inference paths against the peers' plain eager models, in one run, on the same random weights.

(a) ``fcn_resnet50_d8`` against torchvision's ``fcn_resnet50`` (eager, eval, inference_mode), at 360x480 and
    512x512; (b) ``fcn8s_vgg16`` against the same network as a plain torchfcn-layout module
    (``tests/reference_torchfcn.py``), at 480x640. The peer's weights are loaded into fcnkit's model, so both
    compute the same function; each fcnkit path is checked against the peer's logits (max difference and
    arg-max agreement) before it is timed. The machine's practical fp32 peak is measured in the same run as
    the best GFLOP/s of a large matrix multiply, and each row's GFLOP/s (FLOPs counted with
    ``FlopCounterMode``, 2 x MACs) is given as a share of it.

    python benchmarks/peer_speed.py                      # CPU, fp32, batch 1, all paths
    python benchmarks/peer_speed.py --paths eager fold_bn --repeats 20
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import fcnkit
from fcnkit.optimize import optimize_for_inference

PATHS = ("eager", "fold_bn", "fold_bn+channels_last")


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of an n x n fp32 matrix multiply (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def count_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def time_model(fn: Callable[[torch.Tensor], dict], x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        return [_timed(lambda: fn(x)) * 1000 for _ in range(repeats)]


def randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def fcnkit_path(model: torch.nn.Module, path: str) -> Callable:
    if path == "eager":
        return model
    if path == "fold_bn":
        return optimize_for_inference(model)
    if path == "fold_bn+channels_last":
        return optimize_for_inference(model, channels_last=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cases", nargs="+", default=["resnet:360x480", "resnet:512x512", "vgg:480x640"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"practical fp32 peak (best 2048x2048 matmul): {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    header = f"{'case':<28}{'path':<26}{'median ms':>10}{'p90 ms':>9}{'GFLOP/s':>9}{'% peak':>8}{'vs peer':>9}  check"
    print(header)
    print("-" * len(header))
    for case in args.cases:
        kind, size = case.split(":")
        h, w = (int(v) for v in size.split("x"))
        peer, ours, peer_name = peer_and_fcnkit(kind)
        x = torch.randn(1, 3, h, w)
        gflops = count_gflops(peer, x)
        peer_fn = peer if kind == "resnet" else (lambda t, net=peer: {"out": net(t)})
        with torch.inference_mode():
            reference = peer_fn(x)["out"]
        peer_ms = statistics.median(time_model(peer_fn, x, args.warmup, args.repeats))
        label = f"{kind} {h}x{w}"
        print(f"{label:<28}{'peer: ' + peer_name:<26}{peer_ms:>10.1f}{'':>9}{gflops / peer_ms * 1e3:>9.1f}"
              f"{gflops / peer_ms * 1e3 / peak:>8.0%}{1.0:>8.2f}x")  # fmt: skip
        for path in args.paths:
            fn = fcnkit_path(ours, path)
            with torch.inference_mode():
                out = fn(x)["out"]
            diff = float((out - reference).abs().max())
            agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
            times = time_model(fn, x, args.warmup, args.repeats)
            med, p90 = statistics.median(times), sorted(times)[int(0.9 * (len(times) - 1))]
            print(f"{label:<28}{'fcnkit ' + path:<26}{med:>10.1f}{p90:>9.1f}{gflops / med * 1e3:>9.1f}"
                  f"{gflops / med * 1e3 / peak:>8.0%}{peer_ms / med:>8.2f}x  max|diff| {diff:.1e}, "
                  f"argmax {agree:.4%}")  # fmt: skip
    print(f"\nprotocol: batch 1, fp32, random weights shared by peer and fcnkit, eval + inference_mode, "
          f"{args.warmup} warm-up + {args.repeats} timed forwards per row (median, p90), GFLOPs counted with "
          f"FlopCounterMode on the peer ({platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
