"""Folder prediction throughput: ``fcnkit predict``'s pipeline against a plain torchvision loop, in one run.

Both segment the same image files with the same weights and write one label PNG per image:

* ``plain loop``: for each file, in turn: PIL decode, ``torchvision.transforms.functional`` to a float tensor
  and normalise, the model in eager PyTorch (eval, inference_mode), arg-max, ``PIL.Image.save`` of the label;
* ``fcnkit predict``: :func:`fcnkit.inference.predict_files` with a :class:`fcnkit.Predictor` of the
  checkpoint as ``fcnkit predict`` builds it (backend ``auto``, its export cached and made before timing),
  the next files decoding and the finished ones being written in threads, same-size images batched
  (``--batch-size``), overlays off so both write the same files.

Rounds are interleaved (plain, fcnkit, then fcnkit, plain...), each a full pass over the files; the figures are
medians of images/s over rounds and the ratio is the median per-round ratio. The labels of both are compared
pixel by pixel (their agreement is printed). With ``--starts``, ``fcnkit predict`` is also run twice as a
command on a fresh ``$FCNKIT_CACHE``, and the wall time of each start (process to first line "model: ...")
and its line are printed: the second finds the export the first made.

    python benchmarks/predict_speed.py --model runs/demo/train/best.pth --images runs/demo/data/images/test
    python benchmarks/predict_speed.py --model RUN/best.pth --images CAMVID_FRAMES --limit 60 --starts
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import fcnkit
from fcnkit.inference import Predictor, describe_backend, expand_inputs, predict_files


def plain_loop(model: torch.nn.Module, paths: list[Path], out: Path) -> None:
    """What a user writes with torchvision and PIL: one file after the other, nothing overlapped."""
    mean, std = _mean_std(model)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in paths:
            x = TF.pil_to_tensor(Image.open(path).convert("RGB")).float()
            x = TF.normalize(x / 255.0, mean, std).unsqueeze(0)
            label = model(x)["out"].argmax(1)[0].to(torch.uint8).numpy()
            Image.fromarray(label).save(out / f"{path.stem}.png")


def _mean_std(model: torch.nn.Module) -> tuple[list[float], list[float]]:
    p = model.preprocessing
    if getattr(p, "channel_order", "RGB") != "RGB" or getattr(p, "scale", 1 / 255) not in (1 / 255, 1.0 / 255.0):
        raise SystemExit("the plain loop here handles RGB models normalised from 0-1 (ImageNet-style) only")
    return list(p.mean), list(p.std)


def _starts(model: str, image: Path) -> list[tuple[float, str]]:
    """Two ``fcnkit predict`` commands on one image with a fresh cache: (seconds to the 'model:' line, line)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FCNKIT_CACHE": tmp}
        env.pop("FCNKIT_BACKEND", None)
        for i in range(2):
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "fcnkit", "predict", model, str(image), "--out", f"{tmp}/out{i}"],
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            line = ""
            for text in proc.stderr:
                if text.startswith("model: "):
                    line = text.strip()
                    seconds = time.perf_counter() - start
                    break
            proc.communicate()
            results.append((seconds if line else float("nan"), line))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an fcnkit checkpoint")
    parser.add_argument("--images", required=True, nargs="+", help="image files or folders")
    parser.add_argument("--limit", type=int, help="at most this many images")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--starts", action="store_true", help="also time two fresh `fcnkit predict` starts")
    args = parser.parse_args(argv)
    paths = expand_inputs(args.images)[: args.limit]
    model = fcnkit.load_checkpoint(args.model).eval()
    start = time.perf_counter()
    predictor = Predictor(args.model, batch_size=args.batch_size)
    prepared = time.perf_counter() - start
    print(f"{len(paths)} images ({'; '.join(sorted({'x'.join(map(str, Image.open(p).size[::-1])) for p in paths}))})")
    print(f"fcnkit predict: {describe_backend(predictor.model)}; Predictor built in {prepared:.1f} s")
    rates: dict[str, list[float]] = {"plain loop": [], "fcnkit predict": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "plain loop": lambda: plain_loop(model, paths, Path(tmp) / "plain"),
            "fcnkit predict": lambda: predict_files(
                predictor, paths, Path(tmp) / "fcnkit", overlays=False, show_progress=False
            ),
        }
        runs["plain loop"](), runs["fcnkit predict"]()  # warm-up (allocations, ONNX Runtime's first runs)
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for name in order:
                t = time.perf_counter()
                runs[name]()
                rates[name].append(len(paths) / (time.perf_counter() - t))
        same = total = 0
        for p in paths:
            a = np.array(Image.open(Path(tmp) / "plain" / f"{p.stem}.png"))
            b = np.array(Image.open(Path(tmp) / "fcnkit" / f"{p.stem}.png"))
            same, total = same + int((a == b).sum()), total + a.size
    print(f"{'pipeline':<16}{'images/s':>10}{'vs plain':>10}")
    for name, values in rates.items():
        ratio = statistics.median(v / p for v, p in zip(values, rates["plain loop"], strict=True))
        print(f"{name:<16}{statistics.median(values):>10.2f}{ratio:>9.2f}x")
    print(f"label agreement, fcnkit vs plain loop: {same / total:.4%} of {total} pixels")
    if args.starts:
        for i, (seconds, line) in enumerate(_starts(args.model, paths[0]), 1):
            print(
                f"fcnkit predict start {i} (fresh process, {'empty' if i == 1 else 'same'} cache): {seconds:.1f} s, {line}"
            )
    print(
        f"\nprotocol: {len(paths)} files, {args.rounds} interleaved rounds after one warm-up pass each (median images/s,"
        f" ratio = median per-round ratio), labels written as PNG by both, batch {args.batch_size} for fcnkit "
        f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
