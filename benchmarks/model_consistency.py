"""One checkpoint, five ways to run it, one mIoU: what ``eval`` measures is what ``predict``, ``serve``,
``Predictor`` and an ONNX export give.

On the images of a folder dataset's split (e.g. the held-out drive of ``benchmarks/folder_recipe.py``), with the
checkpoint's recipe passes (the default) and with ``--tta none``:

1. ``fcnkit eval CHECKPOINT --json`` (its own metrics code);
2. ``fcnkit predict CHECKPOINT IMAGES --out DIR``, the label PNGs scored here with a confusion count written out
   in NumPy (nothing of fcnkit's metrics);
3. ``fcnkit serve CHECKPOINT`` as a process, each image file POSTed to ``/api/predict``, the answers counted so;
4. ``fcnkit.Predictor(CHECKPOINT)`` in this process, counted so;
5. ``fcnkit export CHECKPOINT --out model.onnx`` (with ``--tta none`` for the one-pass row: the passes travel in
   the file), then ``fcnkit predict model.onnx``, counted so.

Every command runs with its defaults (backend auto: ONNX Runtime on a CPU). Prints a table and writes it to
``--results`` with the command, commit, machine and date.

    python benchmarks/model_consistency.py runs/folder_recipe/0006R0_seed1/last.pth \\
        --data runs/folder_recipe/camvid_folder_0006R0 --split val
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def miou(pairs, num_classes: int, ignore: int) -> float:
    """Mean IoU (classes absent from ground truth and prediction left out) from (truth, prediction) arrays."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for truth, pred in pairs:
        keep = truth != ignore
        index = truth[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
        matrix += np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)
    inter = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(np.where(union > 0, inter / union, np.nan))) * 100


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fcnkit", *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def served(checkpoint: Path, images: list[Path], tta: list[str]) -> list[np.ndarray]:
    import httpx

    from fcnkit.apps.serve import serve_process

    with serve_process(str(checkpoint), *tta, cwd=REPO, timeout=600) as url, httpx.Client(timeout=300) as client:
        out = []
        for path in images:
            r = client.post(url + "/api/predict", files={"image": (path.name, path.read_bytes(), "image/png")})
            r.raise_for_status()
            out.append(np.asarray(Image.open(io.BytesIO(r.content))))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a folder dataset (classes.yaml, images, masks)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "model_consistency.json")
    args = parser.parse_args()

    import torch

    import fcnkit
    from fcnkit.apps.benchmark import device_name
    from fcnkit.config import InferenceConfig
    from fcnkit.data import build_dataset

    checkpoint, data = args.checkpoint.resolve(), args.data.resolve()
    dataset = build_dataset("folder", str(data), args.split)
    images = [Path(s.image) for s in dataset.samples]
    truths = [np.asarray(Image.open(s.label)) for s in dataset.samples]
    classes, ignore = dataset.num_classes, dataset.ignore_index
    score = lambda preds: miou(zip(truths, preds, strict=True), classes, ignore)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory(prefix="consistency_") as tmp:
        for label, tta in (("recipe passes", []), ("one pass", ["--tta", "none"])):
            row = {"passes": label}
            path = Path(tmp) / f"eval{len(tta)}.json"
            cli("eval", str(checkpoint), "--split", args.split, "--workers", "0", "--json", str(path), *tta)
            row["eval"] = json.loads(path.read_text())["miou"] * 100
            out = Path(tmp) / f"predict{len(tta)}"
            cli("predict", str(checkpoint), *map(str, images), "--out", str(out), "--no-overlay", *tta)
            row["predict"] = score([np.asarray(Image.open(out / f"{p.stem}.png")) for p in images])
            row["serve"] = score(served(checkpoint, images, tta))
            predictor = fcnkit.Predictor(checkpoint, inference=InferenceConfig() if tta else None)
            row["Predictor"] = score([predictor.predict(p).label.numpy() for p in images])
            onnx_file = Path(tmp) / f"model{len(tta)}.onnx"
            cli("export", str(checkpoint), "--out", str(onnx_file), *tta)
            onnx_out = Path(tmp) / f"onnx{len(tta)}"
            cli("predict", str(onnx_file), *map(str, images), "--out", str(onnx_out), "--no-overlay")
            row["onnx export"] = score([np.asarray(Image.open(onnx_out / f"{p.stem}.png")) for p in images])
            rows.append(row)
            print("  ".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    record = {
        "checkpoint": str(args.checkpoint),
        "split": f"{args.data.name}/{args.split} ({len(images)} images)",
        "rows": rows,
        "command": "python benchmarks/model_consistency.py " + " ".join(sys.argv[1:]),
        "commit": commit.stdout.strip(),
        "machine": f"{device_name(torch.device('cpu'))}, {platform.machine()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    args.results.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
