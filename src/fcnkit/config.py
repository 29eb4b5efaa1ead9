"""Typed training configs: dataclasses loaded from YAML, with dotted command-line overrides.

* A recipe is a YAML file whose keys mirror ``TrainConfig``; it may name a ``base:`` file (relative to
  itself) whose values it overrides, which may name its own base (a loop is an error). Sections merge key by
  key, except ``options`` mappings, which replace the base's as a whole.
* ``key.sub=value`` overrides are parsed with YAML and checked against the field's type.
* Unknown keys are errors that name the key and suggest the closest valid one.
* A field with a fixed set of values is annotated ``Literal[...]`` (the aliases below); the loader refuses any
  other value, naming the key and the allowed values. The modules that implement a choice (losses, optimisers,
  schedules) read the same aliases with :func:`choices`, so each list is written once, here.
* Every run directory holds the fully resolved config (``config.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .registry import close_matches

#: ``loss.reduction``: the mean over valid pixels, or their sum (the original FCN recipes)
Reduction = Literal["mean", "sum"]
#: ``optim.name``
OptimizerName = Literal["sgd", "adamw"]
#: ``schedule.name``
ScheduleName = Literal["constant", "poly", "cosine", "step"]
#: ``amp``: mixed precision (fp16 only on CUDA, with a gradient scaler)
AmpMode = Literal["none", "bf16", "fp16"]
#: ``test.mode``
InferenceMode = Literal["whole", "slide"]
#: ``data.on_error``: what a training sample that cannot be read does
OnError = Literal["raise", "skip"]


def choices(alias: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` alias allows, in order: ``choices(Reduction) == ("mean", "sum")``."""
    return typing.get_args(alias)


@dataclass
class ModelConfig:
    name: str = "fcn8s_timm"
    #: taken from the dataset when left empty
    num_classes: int | None = None
    #: whole-model weights: a declared tag or a file (see fcnkit.list_weights())
    weights: str | None = None
    #: the factory's options, e.g. {backbone: resnet18, aux: true, backbone_weights: imagenet}
    options: dict[str, Any] = field(default_factory=dict)
    #: fine-tuning: start from another model's weights (an fcnkit checkpoint, "<model>.<weights tag>" or a
    #: torchvision / torchfcn file): every tensor whose name and shape match is loaded, classifier layers made
    #: for another class count keep their initialisation, any other mismatch is an error (fcnkit.finetune_from)
    init_from: str | None = None


@dataclass
class DataConfig:
    name: str = "camvid"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    #: extra dataset options (e.g. voc_root / sbd_root for voc_trainaug)
    options: dict[str, Any] = field(default_factory=dict)
    #: validation on another dataset (e.g. train on sbd, validate on seg11valid); defaults to name/root/options
    val_name: str | None = None
    val_root: str | None = None
    val_options: dict[str, Any] | None = None
    #: training crop [h, w]; null trains on whole images (batch 1 or padded batches)
    crop_size: list[int] | None = None
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    #: rescale so the long side is base_size before the random scale (FastFCN / torchvision style)
    base_size: int | None = None
    hflip: float = 0.5
    color_jitter: float = 0.0
    #: a gamma curve 255 * (x / 255) ** gamma after the colour jitter, gamma drawn log-uniformly from
    #: [1 / (1 + gamma_jitter), 1 + gamma_jitter]; unlike brightness and contrast, which a per-image
    #: standardisation (model option input_norm: image) undoes, it changes the tones' shape: dark scenes get
    #: lighter or darker in a way the network still sees
    gamma_jitter: float = 0.0
    #: probabilities that a training batch is mixed (at most one per batch; fcnkit.data.mixing): Mosaic of four
    #: half-size samples, CutMix of a partner's box, MixUp of two samples (the loss then mixes both labels'
    #: losses); mix_alpha is the Beta(alpha, alpha) parameter of CutMix's and MixUp's share
    mosaic: float = 0.0
    cutmix: float = 0.0
    mixup: float = 0.0
    mix_alpha: float = 1.0
    #: a finish at another resolution: the last ``finish_fraction`` of the run (of the time budget, else of the
    #: steps) trains on ``finish_crop_size`` crops (null: whole images) rescaled by ``finish_scale_range`` (null:
    #: ``scale_range``), e.g. full 360x480 CamVid frames at scale 1 to end a run of small crops. It starts at the
    #: first epoch boundary past that point
    finish_fraction: float = 0.0
    finish_crop_size: list[int] | None = None
    finish_scale_range: list[float] | None = None
    batch_size: int = 8
    val_batch_size: int = 1
    workers: int = 2
    #: decode every training image and label once, before the first step, and keep them in memory (uint8):
    #: no PNG decoding per step, so loader workers are rarely needed (``workers: 0`` on a 2-core machine)
    cache: bool = False
    #: a training sample that cannot be read (corrupt image, missing or bad label): "raise" stops training with
    #: the file's name; "skip" leaves it out of its batch, warns once per file and records it in metrics.jsonl
    on_error: OnError = "raise"
    #: before the first step, read every training label once (no image is decoded) and stop when a declared class
    #: has no pixel while the ignore value covers a large share (a 0/255 mask whose foreground would be ignored:
    #: the error names the classes.yaml line that fixes it)
    check_labels: bool = True


@dataclass
class LossConfig:
    #: "mean" over valid pixels, or "sum" over pixels as in the original FCN recipes. The two differ by a
    #: factor of about H*W*batch in gradient size: the summed recipes use lr around 1e-10. Change both together.
    reduction: Reduction = "mean"
    #: a list of per-class weights, a method computing them from the training labels' class pixel counts
    #: ("median_frequency": median(f) / f_c; "sqrt_median_frequency": its square root; "enet": 1 / ln(1.02 + p_c)),
    #: or null
    class_weights: list[float] | Literal["median_frequency", "sqrt_median_frequency", "enet"] | None = None
    aux_weight: float = 0.0
    #: EncNet's semantic-encoding loss (BCE on which classes occur in the image); FastFCN uses 0.2
    se_weight: float = 0.0
    label_smoothing: float = 0.0
    ohem_thresh: float | None = None
    ohem_min_kept: int = 0
    #: each head's loss is ce_weight x cross-entropy (the settings above) + the weighted terms below
    #: (fcnkit.losses.region: Dice and Tversky as segmentation_models_pytorch defines them, softmax focal,
    #: Lovasz-softmax); the extra terms need reduction "mean"
    ce_weight: float = 1.0
    dice_weight: float = 0.0
    tversky_weight: float = 0.0
    #: Tversky: weight of false positives (alpha) and of false negatives (beta); 0.5 / 0.5 is Dice
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5
    focal_weight: float = 0.0
    focal_gamma: float = 2.0
    lovasz_weight: float = 0.0


@dataclass
class OptimConfig:
    name: OptimizerName = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    nesterov: bool = False
    #: Caffe style: biases at 2x lr and without weight decay (bias_lr_mult: 2, bias_decay: false)
    bias_lr_mult: float = 1.0
    bias_decay: bool = True
    norm_decay: bool = True
    #: lr multiplier of the heads (neck, classifier, aux_classifier); FastFCN / torchvision recipes use 10
    head_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    name: ScheduleName = "poly"
    #: length of training: epochs, or iterations (optimizer steps) when set
    epochs: int = 30
    iterations: int | None = None
    #: train for this many minutes of training wall-clock instead (data loading, forward, backward and
    #: optimiser steps; evaluation, checkpoints and pictures excluded). Epochs / iterations are then ignored,
    #: and poly / cosine decay run over the budget, so the schedule completes in time.
    budget_minutes: float | None = None
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001
    power: float = 0.9
    min_lr_factor: float = 0.0
    #: "step" schedule: multiply by gamma every step_size optimizer steps
    step_size: int | None = None
    gamma: float = 0.1


@dataclass
class InferenceConfig:
    """How a model is run on a whole image at test time (``fcnkit eval``, ``fcnkit predict``, ``Predictor``).

    The defaults run the whole image once. ``scales`` and ``flip`` average the logits of resized and mirrored
    copies (each resized back to the image size first); ``mode: slide`` runs ``crop_size`` windows every
    ``stride`` pixels and averages the logits where windows overlap.
    """

    mode: InferenceMode = "whole"
    #: slide window [h, w] (or [size]) and step [h, w]; the step defaults to 2/3 of the window, as FastFCN's
    crop_size: list[int] | None = None
    stride: list[int] | None = None
    #: slide: pad an image smaller than the window to the window size with black pixels (FastFCN); without
    #: padding (mmseg) the window shrinks to the image, so one window covering the image is whole-image inference
    pad: bool = False
    #: resize factors; relative to the image, or to ``base_size`` for the long side when that is set (FastFCN's
    #: test script: base_size 520 and scales 0.5, 0.75 .. 1.75 for Pascal Context and ADE20K)
    scales: list[float] = field(default_factory=lambda: [1.0])
    base_size: int | None = None
    #: also run the horizontally mirrored image and mirror its logits back
    flip: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    #: test-time inference used by ``fcnkit eval`` on this run's checkpoints (validation during training is
    #: always one whole-image pass, to stay fast)
    test: InferenceConfig = field(default_factory=InferenceConfig)
    #: run directory; holds config.yaml, metrics.jsonl, last.pth, best.pth. Empty: runs/<data folder>_<recipe>
    output_dir: str = "runs/default"
    seed: int = 0
    #: bitwise-reproducible CPU runs (torch.use_deterministic_algorithms)
    deterministic: bool = False
    device: str = "auto"
    #: fp16 only on CUDA, with a gradient scaler
    amp: AmpMode = "none"
    accumulate: int = 1
    clip_grad_norm: float | None = None
    ema_decay: float | None = None
    #: the average's decay is min(ema_decay, (1 + n) / (10 + n)) for the first N updates (TensorFlow's ramp), so
    #: a short run does not evaluate weights still anchored to the random initialisation; 0 = constant decay
    ema_warmup_steps: int = 10000
    #: NHWC model and batches: on CPU (2 cores) a training step measured 1.06x (dilated ResNet-18 FCN) to 1.32x
    #: (FCN-8s on timm ResNet-18) faster, see benchmarks/train_speed.py; the same numbers either way up to rounding
    channels_last: bool = True
    compile: bool = False
    #: keep freed memory in the process instead of handing it back to the OS after every step (glibc's malloc:
    #: see fcnkit.utils.tune_malloc). On CPU the step of the CamVid recipe took 306-312 ms with the default
    #: allocator (44k-48k page faults per step) and 257-286 ms with it; a no-op elsewhere
    tune_malloc: bool = True
    sync_bn: bool = False
    #: evaluate every N epochs (0: only at the end)
    eval_every: int = 1
    #: also write last.pth every N optimizer steps (0: at the end of each epoch only)
    checkpoint_every: int = 0
    #: also write last.pth when this many minutes of wall-clock time have passed since it was last written (0: off),
    #: so that a job killed without warning loses at most this much, whatever the epoch's length
    checkpoint_minutes: float = 10.0
    log_every: int = 10
    #: validation images drawn next to their ground truth and prediction at every evaluation (0: no pictures)
    pictures: int = 4
    tensorboard: bool = False
    #: resume from output_dir/last.pth when it exists
    resume: bool = True
    #: stop (keeping the run resumable) once the run has made this many optimizer steps (tests, smoke runs);
    #: null = no limit
    max_steps: int | None = None


# ----------------------------------------------------------------------------------------------- loading


def _describe(tp: Any) -> str:
    """An annotation in words, for error messages: ``list[float] | None`` -> "a list of float or null"."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(arg) for arg in typing.get_args(tp)]
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_describe(item).removeprefix('a ').removeprefix('an ')}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        # the type check keeps True from passing for 1 (True == 1) and 1 for "1"
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads "1e-10" (no dot) as a string; it is plainly meant as a number
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp in (float, str) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected a {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in hints:
            matches = close_matches(str(key), names)
            hint = (
                f" Did you mean: {', '.join((f'{prefix}.' if prefix else '') + m for m in matches)}?" if matches else ""
            )
            raise ConfigError(f"unknown config key {dotted!r}.{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe as a dict, its ``base:`` chain merged in (each file overrides the one it names)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _chain:
        raise ConfigError(f"{path}: base chain loops back: {' -> '.join(str(p) for p in (*_chain, path.resolve()))}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    base = data.pop("base", None)
    if base is not None:
        data = _merge(read_yaml(path.parent / base, (*_chain, path.resolve())), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with the dotted overrides applied (``data`` itself is left unchanged)."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults), apply ``key=value`` overrides and validate every key.

    An empty ``output_dir`` names the run after the data and the recipe: ``runs/<data folder>_<recipe file>``
    (``runs/my_data_cpu_budget30_fcn4s_regnetx008``), so runs on different datasets never share a folder."""
    cfg = config_from_dict(read_yaml(path) if path is not None else {}, overrides)
    if not cfg.output_dir:
        data = Path(cfg.data.root).name if cfg.data.root else cfg.data.name
        recipe = Path(path).stem if path is not None else "run"
        cfg.output_dir = str(Path("runs") / f"{data}_{recipe}")
    return cfg


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """A validated ``TrainConfig`` from a dict with the keys of a YAML recipe (nested, missing keys default)."""
    cfg = _build(TrainConfig, apply_overrides(data, overrides or []))
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """What the field types cannot say (the ``Literal`` choices were checked while loading)."""
    if cfg.accumulate < 1 or cfg.data.batch_size < 1:
        raise ConfigError("accumulate and data.batch_size must be at least 1")
    for key in ("crop_size", "finish_crop_size"):
        size = getattr(cfg.data, key)
        if size is not None and len(size) not in (1, 2):
            raise ConfigError(f"data.{key} must be [h, w] or [size], got {size}")
    if not 0.0 <= cfg.data.finish_fraction < 1.0:
        raise ConfigError(
            f"data.finish_fraction is the share of the run at the end, in [0, 1), got {cfg.data.finish_fraction}"
        )
    if cfg.data.finish_scale_range is not None and len(cfg.data.finish_scale_range) != 2:
        raise ConfigError(f"data.finish_scale_range must be [low, high], got {cfg.data.finish_scale_range}")
    d = cfg.data
    validate_augmentation(d.scale_range, d.hflip, d.color_jitter, d.gamma_jitter)
    if d.finish_scale_range is not None:
        validate_augmentation(d.finish_scale_range, d.hflip, d.color_jitter, d.gamma_jitter, "data.finish_")
    validate_mixing(d.mosaic, d.cutmix, d.mixup, d.mix_alpha)
    validate_loss(cfg.loss)
    validate_optim(cfg.optim)
    validate_schedule(cfg.schedule)
    validate_inference(cfg.test, "test.")
    _require(cfg.ema_decay is None or 0.0 < cfg.ema_decay < 1.0, f"ema_decay must be in (0, 1), got {cfg.ema_decay}")
    _require(cfg.clip_grad_norm is None or cfg.clip_grad_norm > 0, "clip_grad_norm must be > 0 (or null)")
    for key in ("eval_every", "checkpoint_every", "checkpoint_minutes", "pictures", "ema_warmup_steps"):
        _require(getattr(cfg, key) >= 0, f"{key} must be >= 0, got {getattr(cfg, key)}")
    _require(cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}")
    _require(cfg.max_steps is None or cfg.max_steps >= 1, f"max_steps must be >= 1 (or null), got {cfg.max_steps}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_augmentation(
    scale_range: Sequence[float] | None, hflip: float, color_jitter: float, gamma_jitter: float, prefix: str = "data."
) -> None:
    """Ranges of the training augmentation (also checked by :class:`fcnkit.data.TrainTransform` itself)."""
    _require(
        scale_range is None or (len(scale_range) == 2 and 0 < scale_range[0] <= scale_range[1]),
        f"{prefix}scale_range must be [low, high] with 0 < low <= high, got {scale_range}",
    )
    _require(0.0 <= hflip <= 1.0, f"data.hflip is a probability in [0, 1], got {hflip}")
    _require(0.0 <= color_jitter < 1.0, f"data.color_jitter must be in [0, 1), got {color_jitter}")
    _require(
        0.0 <= gamma_jitter <= 4.0,
        f"data.gamma_jitter must be in [0, 4] (gamma from 1 / (1 + g) to 1 + g), got {gamma_jitter}",
    )


def validate_mixing(mosaic: float, cutmix: float, mixup: float, alpha: float) -> None:
    """Batch mixing probabilities (also checked by :class:`fcnkit.data.mixing.BatchMixer`)."""
    probabilities = {"mosaic": mosaic, "cutmix": cutmix, "mixup": mixup}
    for name, p in probabilities.items():
        _require(0.0 <= p <= 1.0, f"data.{name} is a probability in [0, 1], got {p}")
    _require(
        sum(probabilities.values()) <= 1.0 + 1e-9,
        f"data.mosaic + data.cutmix + data.mixup must not exceed 1 (one per batch), got {probabilities}",
    )
    _require(alpha > 0, f"data.mix_alpha must be > 0, got {alpha}")


def validate_loss(loss: LossConfig) -> None:
    """The loss settings (also checked by :class:`fcnkit.losses.SegmentationLoss`)."""
    terms = {
        "ce": loss.ce_weight,
        "dice": loss.dice_weight,
        "tversky": loss.tversky_weight,
        "focal": loss.focal_weight,
        "lovasz": loss.lovasz_weight,
    }
    _require(
        min(terms.values()) >= 0 and any(terms.values()),
        f"loss term weights must be >= 0 and not all 0, got {terms}",
    )
    extra = [k for k, w in terms.items() if w > 0 and k != "ce"]
    _require(
        not (extra and loss.reduction == "sum"),
        f"loss terms {extra} are means: use them with loss.reduction 'mean', not 'sum'",
    )
    _require(
        min(loss.tversky_alpha, loss.tversky_beta) >= 0 and loss.focal_gamma >= 0,
        "tversky_alpha, tversky_beta and focal_gamma must be >= 0",
    )
    _require(loss.aux_weight >= 0, f"loss.aux_weight must be >= 0, got {loss.aux_weight}")
    _require(loss.se_weight >= 0, f"loss.se_weight must be >= 0, got {loss.se_weight}")
    _require(0.0 <= loss.label_smoothing < 1.0, f"loss.label_smoothing must be in [0, 1), got {loss.label_smoothing}")
    _require(
        loss.ohem_thresh is None or 0.0 < loss.ohem_thresh <= 1.0,
        f"loss.ohem_thresh is a probability in (0, 1] (or null), got {loss.ohem_thresh}",
    )
    weights = loss.class_weights
    if isinstance(weights, list):
        _require(
            bool(weights) and all(math.isfinite(w) and w >= 0 for w in weights),
            f"loss.class_weights must be finite and >= 0, got {weights}",
        )


def validate_optim(o: OptimConfig) -> None:
    """The optimiser settings (also checked by :func:`fcnkit.engine.optim.build_optimizer`)."""
    _require(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _require(0.0 <= o.momentum < 1.0, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _require(
        len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas),
        f"optim.betas must be two values in [0, 1), got {o.betas}",
    )
    _require(not (o.nesterov and o.name != "sgd"), "nesterov applies to 'sgd' only")
    for key in ("bias_lr_mult", "head_lr_mult"):
        _require(getattr(o, key) > 0, f"optim.{key} must be > 0, got {getattr(o, key)}")


def validate_schedule(s: ScheduleConfig) -> None:
    """The schedule settings (also checked by :func:`fcnkit.engine.optim.build_scheduler`)."""
    _require(s.epochs >= 1, f"schedule.epochs must be >= 1, got {s.epochs}")
    _require(s.iterations is None or s.iterations >= 1, f"schedule.iterations must be >= 1, got {s.iterations}")
    budget = s.budget_minutes
    _require(budget is None or budget > 0, f"schedule.budget_minutes must be > 0 (or null), got {budget}")
    _require(
        s.name != "step" or (s.step_size is not None and s.step_size >= 1),
        f"schedule 'step' needs step_size >= 1, got {s.step_size}",
    )
    _require(s.warmup_steps >= 0, f"warmup_steps must be >= 0, got {s.warmup_steps}")
    _require(0.0 < s.warmup_start_factor <= 1.0, f"warmup_start_factor must be in (0, 1], got {s.warmup_start_factor}")
    _require(0.0 <= s.min_lr_factor <= 1.0, f"min_lr_factor must be in [0, 1], got {s.min_lr_factor}")
    _require(s.power > 0, f"power must be > 0, got {s.power}")


def validate_inference(cfg: InferenceConfig, prefix: str = "") -> None:
    if cfg.mode not in choices(InferenceMode):  # an InferenceConfig built in code skips the loader's check
        raise ConfigError(f"{prefix}mode must be one of {', '.join(choices(InferenceMode))}; got {cfg.mode!r}")
    if cfg.mode == "slide" and not cfg.crop_size:
        raise ConfigError(f"{prefix}mode 'slide' needs {prefix}crop_size")
    for key in ("crop_size", "stride"):
        value = getattr(cfg, key)
        if value is not None and (len(value) not in (1, 2) or min(value) < 1):
            raise ConfigError(f"{prefix}{key} must be [h, w] or [size] of positive integers, got {value}")
    if not cfg.scales or min(cfg.scales) <= 0:
        raise ConfigError(f"{prefix}scales must be a non-empty list of positive factors, got {cfg.scales}")
    if cfg.base_size is not None and cfg.base_size < 1:
        raise ConfigError(f"{prefix}base_size must be positive, got {cfg.base_size}")


def inference_config(data: dict[str, Any]) -> InferenceConfig:
    """A validated ``InferenceConfig`` from the keys of a recipe's ``test:`` section."""
    cfg = _build(InferenceConfig, data, "test")
    validate_inference(cfg, "test.")
    return cfg


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
