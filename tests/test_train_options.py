"""Training options the shipped recipes use, each run through the loop and checked against numbers computed here
by hand or with plain PyTorch: ``accumulate``, ``clip_grad_norm``, ``schedule.iterations`` with a warm-up and poly
decay, ``data.val_name`` / ``data.val_root`` and ``amp: bf16`` on the CPU.

The model is FCN-8s on timm's ``test_convnext`` (LayerNorm only): no BatchNorm, no dropout, so a batch's gradient
is the mean of its samples' gradients, whichever way the batch is split. It starts from random weights everywhere
(``model.init_from`` a randomised checkpoint; FCN's score layers would otherwise start at zero and the first
step would reach nothing but them). The data has no ignored pixel and the crops never pad (scale 1, 32x32 crops
of 40x48 images), so every sample holds the same number of labelled pixels and a mean over a batch equals the
mean of the means of its halves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fcnkit
from conftest import randomize_
from fcnkit.config import TrainConfig, load_config
from fcnkit.engine.run import build_run
from fcnkit.engine.state import TrainState
from fcnkit.engine.train import forward_backward, optimizer_step, train
from synthetic_data import make_folder_dataset

MODEL_OPTIONS = {"backbone": "test_convnext", "upsample": "bilinear"}


def options_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    """A tiny run on ``root`` (see :func:`make_training_data`): batches of 4, SGD, constant lr, one epoch."""
    return [
        "model.name=fcn8s_timm",
        "model.options={backbone: test_convnext, upsample: bilinear}",
        f"model.init_from={root / 'start.pth'}",
        "data.name=folder",
        f"data.root={root}",
        "data.crop_size=[32, 32]",
        "data.scale_range=[1.0, 1.0]",  # no rescale: 32x32 crops of the 40x48 images never pad
        "data.batch_size=4",
        "data.workers=0",
        "optim.name=sgd",
        "optim.lr=0.05",
        "optim.momentum=0.9",
        "optim.weight_decay=0.0",
        "schedule.name=constant",
        "schedule.epochs=1",
        "eval_every=0",
        "pictures=0",
        "channels_last=false",
        "device=cpu",
        "log_every=1",
        "seed=3",
        f"output_dir={out}",
        *extra,
    ]


def options_config(root: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(None, options_overrides(root, out, *extra))


def make_unignored_dataset(root: Path, **kwargs) -> Path:
    """:func:`make_folder_dataset` with its void row (255) relabelled as background: every pixel counts."""
    make_folder_dataset(root, **kwargs)
    for mask in (root / "masks").rglob("*.png"):
        label = np.array(Image.open(mask))
        label[label == 255] = 0
        Image.fromarray(label).save(mask)
    return root


def make_training_data(root: Path) -> Path:
    """The unignored dataset and ``start.pth``, random weights of the model (every layer, score layers included)."""
    make_unignored_dataset(root)
    model = randomize_(fcnkit.create_model("fcn8s_timm", num_classes=3, **MODEL_OPTIONS), seed=5)
    fcnkit.save_checkpoint(root / "start.pth", model)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_training_data(tmp_path_factory.mktemp("unignored"))


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)["state_dict"]


def initial_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights ``train(cfg)`` starts from."""
    return {k: v.clone() for k, v in build_run(cfg).model.state_dict().items()}


def updates(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every floating-point entry's change, as one flat vector."""
    return torch.cat([(after[k] - before[k]).flatten() for k in before if before[k].is_floating_point()])


def training_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss_total" in r]


# ------------------------------------------------------------------------------------------- accumulate


def test_accumulated_micro_batches_make_the_update_of_one_batch_of_their_total_size(data, tmp_path):
    """Three steps of batch 4 against three steps of two accumulated micro-batches of 2: the same four samples
    per step (one permutation per epoch, augmentation seeded per sample), the same mean gradient, so the same
    weights, with SGD momentum carrying each step into the next."""
    cfg = options_config(data, tmp_path / "batch4")
    start = initial_weights(cfg)
    assert train(cfg).steps == 3  # 12 images / 4
    accumulated = train(options_config(data, tmp_path / "acc2", "data.batch_size=2", "accumulate=2"))
    assert accumulated.steps == 3  # 6 micro-batches / 2
    whole = updates(weights_of(tmp_path / "batch4"), start)
    split = updates(weights_of(tmp_path / "acc2"), start)
    assert whole.abs().max() > 1e-3  # the runs trained
    # float32 sums in another order: 1e-4 of the update's size; an update left undivided by `accumulate` or a step
    # per micro-batch is off by about its own size
    assert (split - whole).norm() <= 1e-4 * whole.norm(), float((split - whole).norm() / whole.norm())
    # the control: three steps of batch 2 without accumulation (one step per pair of samples) go elsewhere
    half = train(options_config(data, tmp_path / "half", "data.batch_size=2", "max_steps=3"))
    assert half.steps == 3
    assert (updates(weights_of(tmp_path / "half"), start) - whole).norm() > 0.05 * whole.norm()


# ------------------------------------------------------------------------------------------- clip_grad_norm


def test_clip_grad_norm_rescales_the_first_update_to_the_limit(data, tmp_path):
    """One SGD step with ``clip_grad_norm``, against the gradient computed here with plain cross-entropy on the
    same first batch: the step is ``lr * g * limit / (|g| + 1e-6)`` (clip_grad_norm_'s factor; momentum's buffer
    starts as the gradient itself), so the whole update's norm is ``lr * limit``."""
    lr, limit = 1.0, 0.5
    cfg = options_config(data, tmp_path / "clip", f"optim.lr={lr}", f"clip_grad_norm={limit}", "max_steps=1")
    run = build_run(cfg)  # the same seed, hence the initial weights and the first batch that train(cfg) gets
    model = run.model.train()
    batch = next(iter(run.loader))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    logits = model(batch["image"])["out"]
    loss = F.cross_entropy(logits, batch["label"], ignore_index=255)
    grads = torch.autograd.grad(loss, params)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    assert norm > 4 * limit, norm  # the clip really acts on this step
    factor = limit / (norm + 1e-6)
    start = {n: p.detach().clone() for n, p in zip(names, params, strict=True)}
    expected = {n: start[n] - lr * factor * g for n, g in zip(names, grads, strict=True)}

    assert train(cfg).steps == 1
    got = weights_of(tmp_path / "clip")
    step = updates(got, start)
    want = updates(expected, start)
    assert step.norm() == pytest.approx(lr * limit, rel=1e-4)
    assert (step - want).norm() <= 1e-4 * want.norm(), float((step - want).norm() / want.norm())


# ------------------------------------------------------------------------------------ schedule.iterations


def test_iterations_set_the_run_length_and_the_lr_follows_warmup_times_poly(data, tmp_path):
    """``schedule.iterations: 5`` over epochs of 3 steps: the run makes 5 optimiser steps (into a second epoch,
    past ``schedule.epochs: 1``), and after step t the lr is ``lr * warm(t) * (1 - t / 5) ** 0.9`` with
    ``warm(t) = 0.1 + 0.9 * t / 2`` for t < 2, else 1."""
    lr, total, warmup, start_factor, power = 0.02, 5, 2, 0.1, 0.9
    extra = (f"optim.lr={lr}", "schedule.name=poly", f"schedule.iterations={total}", f"schedule.warmup_steps={warmup}",
             f"schedule.warmup_start_factor={start_factor}", f"schedule.power={power}")  # fmt: skip
    result = train(options_config(data, tmp_path / "poly", *extra))
    assert result.steps == total
    records = training_records(tmp_path / "poly")
    assert [(r["step"], r["epoch"]) for r in records] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    # worked by hand: t = 1: 0.02 * 0.55 * 0.8 ** 0.9; t = 2: 0.02 * 0.6 ** 0.9; ... t = 5: 0
    expected = [0.02 * 0.55 * 0.8**0.9, 0.02 * 0.6**0.9, 0.02 * 0.4**0.9, 0.02 * 0.2**0.9, 0.0]
    for t, (record, want) in enumerate(zip(records, expected, strict=True), start=1):
        warm = start_factor + (1 - start_factor) * t / warmup if t < warmup else 1.0
        assert want == pytest.approx(lr * warm * (1 - t / total) ** power, abs=1e-15)
        assert record["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15), t
    ckpt = torch.load(tmp_path / "poly" / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["scheduler"]["last_epoch"] == total
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.0] * len(ckpt["optimizer"]["param_groups"])


# --------------------------------------------------------------------------------- val_name / val_root


def write_camvid_val(root: Path, sizes: list[tuple[int, int]], seed: int = 7) -> Path:
    """A CamVid-layout folder (SegNet's ``val.txt``, ``val/``, ``valannot/``) whose labels use classes 0-2 (the
    classes the model was trained on), class 5 (which it never predicts) and the void value 11."""
    rng = np.random.default_rng(seed)
    lines = []
    for i, (h, w) in enumerate(sizes):
        name = f"0016E5_{i:05d}"
        label = rng.integers(0, 3, (h, w)).astype(np.uint8)
        label[: h // 4, : w // 4] = 5
        label[-2:, :] = 11
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for folder, pixels in (("val", image), ("valannot", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / folder / f"{name}.png")
        lines.append(f"val/{name}.png valannot/{name}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def write_folder_val(root: Path, sizes: list[tuple[int, int]], seed: int = 11) -> Path:
    """A folder-format dataset of the training classes whose val split has its own images, sizes and labels."""
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        for folder in ("images/val", "masks/val"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images/val" / f"v{i}.png")
        label = rng.integers(0, 3, (h, w)).astype(np.uint8)
        label[0, :] = 255
        Image.fromarray(label).save(root / "masks/val" / f"v{i}.png")
    (root / "classes.yaml").write_text("classes: [background, box, disc]\nignore_index: 255\n")
    return root


def hand_miou(model: torch.nn.Module, pairs: list[tuple[Path, Path]], num_classes: int, void: int) -> list[float]:
    """Per-class IoU of ``model`` over image / label files: the normalisation, one confusion matrix summed over
    every labelled pixel and IoU = tp / (gt + pred - tp), NaN where a class is in neither, all written out here."""
    p = model.preprocessing
    assert p.channel_order == "RGB"
    mean, std = torch.tensor(p.mean).view(3, 1, 1), torch.tensor(p.std).view(3, 1, 1)
    matrix = np.zeros((num_classes, num_classes), np.int64)
    model.eval()
    for image_path, label_path in pairs:
        rgb = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1).float()
        with torch.no_grad():
            pred = model(((rgb * p.scale - mean) / std)[None])["out"][0].argmax(0).numpy()
        label = np.array(Image.open(label_path)).astype(np.int64)
        keep = label != void
        matrix += np.bincount(num_classes * label[keep] + pred[keep], minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return list(np.where(union > 0, tp / union, np.nan))


@pytest.mark.parametrize("other", ["camvid", "folder"])
def test_validation_reads_the_dataset_val_name_and_val_root_name(data, tmp_path, other):
    """Train on the folder dataset, validate on another one: a CamVid-layout folder (``val_name: camvid`` and
    ``val_root``; its 11 classes and void 11) or another folder-format dataset (``val_root`` alone). The logged
    validation is the IoU per class computed here from the other dataset's files with the trained weights."""
    sizes = [(40, 52), (36, 44), (48, 36)]  # at least 32 each way: the stride-32 tap has a pixel
    if other == "camvid":
        root = write_camvid_val(tmp_path / "CamVid", sizes)
        extra = ("data.val_name=camvid", f"data.val_root={root}")
        pairs = [(root / "val" / f"0016E5_{i:05d}.png", root / "valannot" / f"0016E5_{i:05d}.png") for i in range(3)]
        num_classes, void = 11, 11
    else:
        root = write_folder_val(tmp_path / "other", sizes)
        extra = (f"data.val_root={root}",)
        pairs = [(root / "images/val" / f"v{i}.png", root / "masks/val" / f"v{i}.png") for i in range(3)]
        num_classes, void = 3, 255
    out = tmp_path / "run"
    result = train(options_config(data, out, "schedule.iterations=2", *extra))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (val,) = [r["val"] for r in map(json.loads, lines) if "val" in r]
    want = hand_miou(fcnkit.load_checkpoint(out / "last.pth"), pairs, num_classes, void)
    assert len(val["iou"]) == num_classes
    np.testing.assert_allclose(np.array(val["iou"], dtype=np.float64), want, rtol=0, atol=1e-12)
    assert val["miou"] == pytest.approx(float(np.nanmean(want)), abs=1e-12)
    assert result.best_miou == pytest.approx(val["miou"], abs=1e-12)
    if other == "camvid":
        assert val["iou"][5] == 0.0  # in the other dataset's labels, never predicted: counted, as 0
        assert [c for c, v in enumerate(val["iou"]) if math.isnan(v)] == [3, 4, 6, 7, 8, 9, 10]  # in neither


# -------------------------------------------------------------------------------------------- amp: bf16


def test_bf16_autocast_step_on_cpu_runs_the_layers_in_bfloat16_close_to_float32(data, tmp_path):
    """``amp: bf16`` on the CPU: every convolution and linear layer of the training forward yields bfloat16, the
    loss stays within bf16's rounding of the float32 loss on the same batch and weights (8 bits of mantissa: a
    few 1e-3 relative) without being equal to it, the gradients are float32 and point the same way, and the
    step leaves finite weights. Then a whole run, validation included, under bf16."""
    runs = {amp: build_run(options_config(data, tmp_path / amp, f"amp={amp}")) for amp in ("bf16", "none")}
    assert runs["bf16"].amp_dtype is torch.bfloat16 and runs["none"].amp_dtype is None
    seen: list[torch.dtype] = []
    layers = [m for m in runs["bf16"].model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for m in layers]
    batch = next(iter(runs["bf16"].loader))
    loss = {amp: forward_backward(run, TrainState(), batch)["total"] for amp, run in runs.items()}
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(layers) > 10 and set(seen) == {torch.bfloat16}
    assert loss["bf16"] != loss["none"]
    assert loss["bf16"] == pytest.approx(loss["none"], rel=2e-2)
    grads = {
        amp: torch.cat([p.grad.flatten() for p in run.model.parameters() if p.grad is not None])
        for amp, run in runs.items()
    }
    assert grads["bf16"].dtype == torch.float32 and torch.isfinite(grads["bf16"]).all()
    assert F.cosine_similarity(grads["bf16"], grads["none"], dim=0) > 0.99
    before = [p.detach().clone() for p in runs["bf16"].model.parameters()]
    optimizer_step(runs["bf16"])
    after = list(runs["bf16"].model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))

    result = train(options_config(data, tmp_path / "bf16_run", "amp=bf16", "schedule.iterations=2"))
    assert result.steps == 2 and result.best_miou is not None and math.isfinite(result.best_miou)
    assert all(math.isfinite(r["loss_total"]) for r in training_records(tmp_path / "bf16_run"))
