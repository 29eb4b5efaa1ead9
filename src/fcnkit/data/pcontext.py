"""PASCAL Context (59 or 60 classes) from the converted label PNGs most people train on.

On-disk layout, as mmsegmentation's converter (``tools/dataset_converters/pascal_context.py``) writes it
next to the VOC2010 images::

    VOCdevkit/VOC2010/
      JPEGImages/<id>.jpg
      SegmentationClassContext/<id>.png          # 8-bit grayscale, values 0..59
      ImageSets/SegmentationContext/{train,val}.txt   # 4,998 / 5,105 ids

``root`` may be the ``VOC2010`` folder, ``VOCdevkit`` or the folder that holds ``VOCdevkit``.

The converter keeps the 59 most frequent of the 459 Context categories, numbered 1..59 in alphabetical
order, and writes 0 for everything else (the "background" of the 60-class variant). The usual benchmark
is the 59-class one, which does not score that pixel soup: 0 becomes the ignore value and 1..59 become
0..58 (mmsegmentation's ``reduce_zero_label``). ``num_classes=60`` keeps the stored values, background
included, as class 0.
"""

from __future__ import annotations

from pathlib import Path

from fcnkit.data.base import (
    DATASETS,
    SampleFiles,
    SegmentationDataset,
    Transform,
    read_split_ids,
    resolve_split,
    voc_palette,
)
from fcnkit.data.io import PathLike
from fcnkit.data.voc import find_devkit_year
from fcnkit.errors import ConfigError

#: The 59 classes in the order of their converted label value 1..59 (alphabetical).
CONTEXT59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table",
    "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]  # fmt: skip
#: The 60-class variant: the stored value 0 ("everything else") is a class of its own.
CONTEXT60_CLASSES = ["background", *CONTEXT59_CLASSES]
CONTEXT_IGNORE_INDEX = 255


def find_context_root(root: PathLike) -> Path:
    """The ``VOC2010`` folder, given it, ``VOCdevkit`` or the folder that holds ``VOCdevkit``."""
    hint = " (the layout mmsegmentation's pascal_context converter writes, with labels in SegmentationClassContext/)"
    return find_devkit_year(root, "VOC2010", "SegmentationContext", "PASCAL Context", hint)


@DATASETS.register()
def pascal_context(
    root: PathLike,
    split: str = "train",
    transform: Transform | None = None,
    num_classes: int = 59,
) -> SegmentationDataset:
    """PASCAL Context, splits ``train`` (4,998) and ``val`` (5,105).

    ``num_classes=59`` (default): stored 0 -> ignore (255), 1..59 -> 0..58. ``num_classes=60``: values
    kept, 0 = background. A stored value above 59 raises :class:`DataError` naming the file in both cases.
    """
    if num_classes not in (59, 60):
        raise ConfigError(f"pascal_context num_classes must be 59 or 60, got {num_classes!r}")
    split = resolve_split(split, ["train", "val"], "pascal_context")
    base = find_context_root(root)
    split_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    samples = [
        SampleFiles(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClassContext" / f"{i}.png", i)
        for i in read_split_ids(split_file)
    ]
    if num_classes == 59:
        classes = CONTEXT59_CLASSES
        label_map = [CONTEXT_IGNORE_INDEX, *range(59)]
    else:
        classes = CONTEXT60_CLASSES
        # The identity, but sized 60 so that 255 (which the converter never writes) is refused like any
        # other value above 59 instead of passing as the ignore index: such a file was made by another tool.
        label_map = list(range(60))
    return SegmentationDataset(
        samples,
        classes,
        ignore_index=CONTEXT_IGNORE_INDEX,
        palette=voc_palette(len(classes)),
        label_map=label_map,
        transform=transform,
        split=split,
        source=split_file,
    )
