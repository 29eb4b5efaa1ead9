"""Published weights as data, and key maps for the checkpoints users already have.

Each ``WeightsEntry`` says where a file lives, how to check it, which key layout it uses, which
preprocessing it expects and what it was reported to reach. Nothing here downloads at import or at model
construction: files are fetched only when a model is built with ``weights=`` / ``backbone_weights=``.

Checksums: torchvision publishes the first hex digits of each file's sha256 in its file name; torchfcn
(wkentaro/pytorch-fcn) publishes md5 sums of its Caffe-converted files. Those are the digests declared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import CheckpointError, MissingFileError, UnknownNameError
from ..hub import download, load_file
from ..preprocessing import CAFFE_BGR, IMAGENET, Preprocessing
from ..registry import unknown_name_message

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class WeightsEntry:
    """One published weights file."""

    url: str
    checksum: str
    layout: str  # key layout: "fcnkit", "torchvision_segmentation", "torchfcn", "torchvision_vgg16", ...
    preprocessing: Preprocessing
    classes: tuple[str, ...] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    source: str = ""
    file_name: str | None = None

    @property
    def local_name(self) -> str:
        return self.file_name or os.path.basename(self.url.split("?")[0])

    def fetch(self) -> Path:
        return download(self.url, self.checksum, self.local_name)


_TV = "https://download.pytorch.org/models/"
_GDRIVE = "https://drive.google.com/uc?id="
_TORCHFCN = "wkentaro/pytorch-fcn (Caffe model converted from shelhamer/fcn.berkeleyvision.org)"


def _tv(file: str, layout: str, metrics: dict[str, float], classes: tuple[str, ...] | None = None) -> WeightsEntry:
    prefix = file.rsplit("-", 1)[1].split(".")[0]  # torchvision names files <name>-<sha256 prefix>.pth
    return WeightsEntry(_TV + file, f"sha256:{prefix}", layout, IMAGENET, classes, metrics, "torchvision")


def _torchfcn(drive_id: str, md5: str, file: str, metrics: dict[str, float]) -> WeightsEntry:
    return WeightsEntry(_GDRIVE + drive_id, f"md5:{md5}", "torchfcn", CAFFE_BGR, VOC_CLASSES, metrics, _TORCHFCN, file)


def _seg11(acc: float, acc_cls: float, miou: float, fwiou: float) -> dict[str, float]:
    return {
        "seg11valid_pixel_acc": acc,
        "seg11valid_mean_acc": acc_cls,
        "seg11valid_miou": miou,
        "seg11valid_fwiou": fwiou,
    }


#: Whole-model weights per registered model name. Metrics: the original Caffe models' numbers as reported
#: by shelhamer/fcn.berkeleyvision.org and torchvision's model card.
MODEL_WEIGHTS: dict[str, dict[str, WeightsEntry]] = {
    "fcn32s_vgg16": {
        "voc_caffe": _torchfcn(
            "0B9P1L--7Wd2vM2oya3k0Zlgtekk",
            "8acf386d722dc3484625964cbe2aba49",
            "fcn32s_from_caffe.pth",
            _seg11(90.49, 76.48, 63.63, 83.47),
        )
    },
    "fcn16s_vgg16": {
        "voc_caffe": _torchfcn(
            "0B9P1L--7Wd2vVGE3TkRMbWlNRms",
            "991ea45d30d632a01e5ec48002cac617",
            "fcn16s_from_caffe.pth",
            _seg11(91.00, 78.07, 65.01, 84.27),
        )
    },
    "fcn8s_vgg16": {
        "voc_caffe": _torchfcn(
            "0B9P1L--7Wd2vT0FtdThWREhjNkU",
            "dbd9bbb3829a3184913bccc74373afbb",
            "fcn8s_from_caffe.pth",
            _seg11(91.23, 77.61, 65.51, 84.55),
        )
    },
    "fcn8s_atonce_vgg16": {
        "voc_caffe": _torchfcn(
            "0B9P1L--7Wd2vblE1VUIxV1o2d2M",
            "bfed4437e941fef58932891217fe6464",
            "fcn8s-atonce_from_caffe.pth",
            _seg11(91.13, 78.50, 65.40, 84.44),
        )
    },
    "fcn_resnet50_d8": {
        "coco_voc": _tv(
            "fcn_resnet50_coco-1167a1af.pth",
            "torchvision_segmentation",
            {"coco_val2017_voc_miou": 60.5, "coco_val2017_voc_pixel_acc": 91.4},
            VOC_CLASSES,
        )
    },
    "fcn_resnet101_d8": {
        "coco_voc": _tv(
            "fcn_resnet101_coco-7ecb50ca.pth",
            "torchvision_segmentation",
            {"coco_val2017_voc_miou": 63.7, "coco_val2017_voc_pixel_acc": 91.9},
            VOC_CLASSES,
        )
    },
}

#: ImageNet backbone weights per backbone name (top-1 from torchvision's model cards).
BACKBONE_WEIGHTS: dict[str, dict[str, WeightsEntry]] = {
    "vgg16": {
        "imagenet": _tv("vgg16-397923af.pth", "torchvision_vgg16", {"imagenet_top1": 71.592}),
        "imagenet_caffe": WeightsEntry(
            _GDRIVE + "0B9P1L--7Wd2vLTJZMXpIRkVVRFk",
            "md5:aa75b158f4181e7f6230029eb96c1b13",
            "torchvision_vgg16",
            CAFFE_BGR,
            None,
            {},
            "wkentaro/pytorch-fcn (VGG16 converted from the Caffe model zoo)",
            "vgg16_from_caffe.pth",
        ),
    },
    "vgg16_bn": {"imagenet": _tv("vgg16_bn-6c64b313.pth", "torchvision_vgg16", {"imagenet_top1": 73.360})},
    "resnet18": {"imagenet": _tv("resnet18-f37072fd.pth", "torchvision_resnet", {"imagenet_top1": 69.758})},
    "resnet34": {"imagenet": _tv("resnet34-b627a593.pth", "torchvision_resnet", {"imagenet_top1": 73.314})},
    "resnet50": {
        "imagenet": _tv("resnet50-0676ba61.pth", "torchvision_resnet", {"imagenet_top1": 76.130}),
        "imagenet_v2": _tv("resnet50-11ad3fa6.pth", "torchvision_resnet", {"imagenet_top1": 80.858}),
    },
    "resnet101": {
        "imagenet": _tv("resnet101-63fe2227.pth", "torchvision_resnet", {"imagenet_top1": 77.374}),
        "imagenet_v2": _tv("resnet101-cd907fc2.pth", "torchvision_resnet", {"imagenet_top1": 81.886}),
    },
}


def list_weights(model: str | None = None) -> dict[str, list[str]]:
    """``{model name: [tags]}`` of declared whole-model weights (all models, or one)."""
    table = MODEL_WEIGHTS if model is None else {model: MODEL_WEIGHTS.get(model, {})}
    return {name: sorted(tags) for name, tags in table.items()}


def _lookup(table: dict[str, dict[str, WeightsEntry]], owner: str, tag: str, kind: str) -> WeightsEntry:
    tags = table.get(owner, {})
    if tag not in tags:
        raise UnknownNameError(
            unknown_name_message(f"{kind} for {owner}", tag, tags)
            if tags
            else f"no published {kind} are declared for {owner!r}; pass a file path instead"
        )
    return tags[tag]


def looks_like_path(spec: str | os.PathLike[str]) -> bool:
    s = os.fspath(spec)
    return os.sep in s or s.endswith((".pth", ".pt", ".ckpt", ".bin")) or os.path.exists(s)


@dataclass
class ResolvedWeights:
    state_dict: dict[str, Tensor]
    preprocessing: Preprocessing | None
    classes: tuple[str, ...] | None
    layout: str | None
    source: str


def resolve(spec: str | os.PathLike[str], owner: str, backbone: bool = False) -> ResolvedWeights:
    """Turn a weights spec (a declared tag, ``owner.tag``, or a file path) into a loaded state dict.

    A file may be a fcnkit checkpoint (its metadata wins), a raw state dict, or a dict holding one under
    ``model_state_dict`` / ``state_dict`` / ``model`` (torchfcn and most training scripts).
    """
    table, kind = (BACKBONE_WEIGHTS, "backbone weights") if backbone else (MODEL_WEIGHTS, "weights")
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise MissingFileError(f"weights file {path} does not exist")
        # A declared file fetched by hand keeps its metadata (preprocessing, classes) when passed by path.
        entry = next((e for tags in table.values() for e in tags.values() if e.local_name == path.name), None)
        return _from_object(load_file(path), entry, str(path))
    tag = str(spec)
    if "." in tag:
        owner, tag = tag.rsplit(".", 1)
    entry = _lookup(table, owner, tag, kind)
    return _from_object(load_file(entry.fetch()), entry, entry.url)


def _from_object(obj: Any, entry: WeightsEntry | None, source: str) -> ResolvedWeights:
    preprocessing = entry.preprocessing if entry else None
    classes = entry.classes if entry else None
    layout = entry.layout if entry else None
    if isinstance(obj, dict) and obj.get("format") == "fcnkit":
        meta = obj.get("card") or obj  # version 2 files hold a model card, version 1 loose entries
        if meta.get("preprocessing"):
            preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        classes = tuple(meta["classes"]) if meta.get("classes") else classes
        # the weights that were evaluated: a last.pth's EMA when it has one (as fcnkit.load_checkpoint takes)
        ema = (obj.get("ema") or {}).get("module")
        obj, layout = (ema if ema is not None else obj["state_dict"]), "fcnkit"
    elif isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    return ResolvedWeights(dict(obj), preprocessing, classes, layout, source)


_TORCHFCN_BACKBONE = ("conv", "fc6.", "fc7.")


def detect_layout(state_dict: dict[str, Tensor]) -> str:
    keys = set(state_dict)
    if "conv1_1.weight" in keys:
        return "torchfcn"
    if "features.0.weight" in keys and "classifier.0.weight" in keys:
        return "torchvision_vgg16"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "torchvision_resnet"
    return "fcnkit"  # also torchvision's segmentation layout: backbone.* / classifier.* / aux_classifier.*


def torchfcn_to_fcnkit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchfcn FCN32s/16s/8s/8sAtOnce keys (``conv1_1.weight``, ``score_fr.bias``, ``upscore8.weight``...)
    to fcnkit's (``backbone.conv1_1.weight``, ``classifier.score_fr.bias``, ``classifier.upscore8.weight``)."""
    out = {}
    for k, v in state_dict.items():
        prefix = "backbone." if k.startswith(_TORCHFCN_BACKBONE) else "classifier."
        out[prefix + k] = v
    return out


def fcnkit_to_torchfcn(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``torchfcn_to_fcnkit`` (to hand a model back to torchfcn code)."""
    return {k.split(".", 1)[1]: v for k, v in state_dict.items()}
