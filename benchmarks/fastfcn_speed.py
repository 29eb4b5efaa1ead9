"""Does JPU make EncNet / PSP / DeepLabV3 faster than their dilated-ResNet baselines?

For each head, builds ``<head>_resnet<depth>_jpu`` (stride-32 backbone + JPU) and ``<head>_resnet<depth>_d8``
(backbone dilated to stride 8, no neck) with random weights, and times whole forward passes (final resize
included) in eval mode under ``torch.inference_mode``. The two models of a pair are timed alternately,
repeat by repeat, so that load from other processes on a shared machine hits both alike. On CUDA every
timed pass is bracketed by ``torch.cuda.synchronize()`` (FastFCN's own FPS script does not synchronise).

FastFCN's published figures (README / paper: Pascal Context, 512x512, batch 1, one GPU, with the aux and
SE branches built) are printed beside the measured ratio. Only the ratio is comparable across machines.

    python benchmarks/fastfcn_speed.py                      # 512x512, batch 1, CPU
    python benchmarks/fastfcn_speed.py --device cuda --repeats 50 --warmup 10
    python benchmarks/fastfcn_speed.py --size 128 --repeats 1 --warmup 0   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

import fcnkit
from fcnkit.apps.benchmark import ResultsTable, device_name, time_interleaved

#: FastFCN README, ResNet-50 unless noted: frames per second of (dilated baseline, JPU model).
PUBLISHED_FPS = {
    ("enc", 50): (18.77, 37.56),
    ("psp", 50): (18.08, 28.48),
    ("deeplabv3", 50): (15.99, 20.67),
    ("enc", 101): (10.51, 32.02),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="square input side (default 512, as FastFCN)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's own choice)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per model")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model")
    parser.add_argument("--heads", nargs="+", default=["enc", "psp", "deeplabv3"], choices=["enc", "psp", "deeplabv3"])
    parser.add_argument("--depth", type=int, default=50, choices=[50, 101])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--num-classes", type=int, default=59, help="59: Pascal Context, as published")
    parser.add_argument("--aux", action="store_true", help="build the aux head too (FastFCN's FPS runs did)")
    parser.add_argument("--json", type=Path, help="also save the table with its command, commit and machine here")
    return parser.parse_args(argv)


def build(name: str, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return fcnkit.create_model(name, num_classes=args.num_classes, aux=args.aux).to(device).eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)

    table = ResultsTable(
        {
            "model": "{}",
            "ms/image (median)": "{:.1f}",
            "ms/image (min)": "{:.1f}",
            "FPS": "{:.2f}",
            "JPU speed-up": "{:.2f}x",
            "FastFCN paper (GPU)": "{}",
        },
        command=" ".join(["python benchmarks/fastfcn_speed.py", *sys.argv[1:]]),
    )
    for head in args.heads:
        names = {kind: f"{head}_resnet{args.depth}_{kind}" for kind in ("jpu", "d8")}
        models = {names[kind]: build(names[kind], args, device) for kind in ("d8", "jpu")}
        with torch.inference_mode():
            runs = {name: functools.partial(model, x) for name, model in models.items()}
            times = time_interleaved(runs, device, args.warmup, args.repeats)
        del models, runs
        if device.type == "cuda":
            torch.cuda.empty_cache()
        ms = {n: (1000 * statistics.median(t) / args.batch, 1000 * min(t) / args.batch) for n, t in times.items()}
        ratio = ms[names["d8"]][0] / ms[names["jpu"]][0]
        published = PUBLISHED_FPS.get((head, args.depth))
        paper = (
            f"{published[1] / published[0]:.2f}x ({published[1]:.1f} vs {published[0]:.1f} FPS)" if published else "n/a"
        )
        for kind in ("d8", "jpu"):
            median, best = ms[names[kind]]
            table.add(
                model=names[kind],
                FPS=1000 / median,
                **{"ms/image (median)": median, "ms/image (min)": best},
                **({"JPU speed-up": ratio, "FastFCN paper (GPU)": paper} if kind == "jpu" else {}),
            )

    table.protocol = (
        f"input {args.batch}x3x{args.size}x{args.size} float32, {args.num_classes} classes, "
        f"aux head {'on' if args.aux else 'off'}, random weights, eval + inference_mode, "
        f"{args.warmup} warm-up and {args.repeats} timed passes per model (models alternating), "
        f"median (and min) of the timed passes, whole forward incl. final resize"
        f"{', cuda synchronize around each pass' if device.type == 'cuda' else ''}; "
        f"device {device.type} ({device_name(device)}), {torch.get_num_threads()} threads; torch {torch.__version__}"
    )
    table.notes = ["FastFCN paper: Pascal Context, 512x512, batch 1, GPU, aux and SE branches built, no device sync."]
    table.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
