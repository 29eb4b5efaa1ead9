"""Cityscapes fine annotations, read as the official packages unpack (``leftImg8bit_trainvaltest.zip``,
``gtFine_trainvaltest.zip``) into one folder::

    root/
      leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png    # 2,975 / 500 / 1,525
      gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
      gtFine/.../<city>_<seq>_<frame>_gtFine_labelTrainIds.png   # optional, made by cityscapesScripts

An image and its label share the stem ``<city>_<seq>_<frame>`` and the city folder; a missing label is
reported, by name, when the sample is loaded.

``*_labelIds.png`` holds the 34 label ids 0..33 of cityscapesScripts' ``labels.py`` (the license plate,
id -1, is never drawn). The benchmark scores 19 of them; they are mapped to train ids 0..18 with the
official table and the other 15 ids to the ignore value 255. The official tools only ever write ids
0..33, so any other value means the file is not a Cityscapes labelIds map: it raises an error naming the
file rather than being quietly ignored. ``label_type="trainIds"`` reads the ``*_labelTrainIds.png`` that
``createTrainIdLabelImgs.py`` generates instead (values 0..18 and 255, used as stored).

The ``test`` split's gtFine maps are placeholders (the test labels are withheld) holding only void ids:
they load, but every pixel is ignored.
"""

from __future__ import annotations

from pathlib import Path

from fcnkit.data.base import DATASETS, SampleFiles, SegmentationDataset, Transform, resolve_split
from fcnkit.data.io import DataError, PathLike
from fcnkit.errors import ConfigError
from fcnkit.registry import close_matches

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
#: The colours cityscapesScripts' labels.py gives these classes.
CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
CITYSCAPES_IGNORE_INDEX = 255

#: The label ids (labels.py's ``id``) of the 19 evaluated classes, in train-id order 0..18.
_EVALUATED_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
#: label id 0..33 -> train id (255 for the ids the benchmark does not score).
LABEL_ID_TO_TRAIN_ID = [CITYSCAPES_IGNORE_INDEX] * 34
for _train_id, _label_id in enumerate(_EVALUATED_IDS):
    LABEL_ID_TO_TRAIN_ID[_label_id] = _train_id
del _train_id, _label_id

_LABEL_SUFFIXES = {"labelIds": "_gtFine_labelIds.png", "trainIds": "_gtFine_labelTrainIds.png"}
_IMAGE_SUFFIX = "_leftImg8bit.png"


@DATASETS.register()
def cityscapes(
    root: PathLike,
    split: str = "train",
    transform: Transform | None = None,
    label_type: str = "labelIds",
) -> SegmentationDataset:
    """Cityscapes gtFine, splits ``train`` (2,975), ``val`` (500), ``test`` (1,525); 19 classes, ignore 255.

    ``label_type``: ``"labelIds"`` (default) maps ``*_gtFine_labelIds.png`` through the official id -> train
    id table; ``"trainIds"`` reads ``*_gtFine_labelTrainIds.png`` as stored.
    """
    if label_type not in _LABEL_SUFFIXES:
        matches = close_matches(label_type, _LABEL_SUFFIXES)
        hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
        raise ConfigError(f"unknown cityscapes label_type {label_type!r}.{hint} Choose labelIds or trainIds.")
    split = resolve_split(split, ["train", "val", "test"], "cityscapes")
    root = Path(root).expanduser()
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DataError(
            f"no Cityscapes images found: {image_dir} does not exist (root should hold leftImg8bit/ and gtFine/)"
        )
    label_suffix = _LABEL_SUFFIXES[label_type]
    samples = []
    for image in sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}")):
        stem = image.name[: -len(_IMAGE_SUFFIX)]
        city = image.parent.name
        samples.append(SampleFiles(image, root / "gtFine" / split / city / f"{stem}{label_suffix}", stem))
    return SegmentationDataset(
        samples,
        CITYSCAPES_CLASSES,
        ignore_index=CITYSCAPES_IGNORE_INDEX,
        palette=CITYSCAPES_PALETTE,
        label_map=LABEL_ID_TO_TRAIN_ID if label_type == "labelIds" else None,
        transform=transform,
        split=split,
        source=image_dir,
    )
