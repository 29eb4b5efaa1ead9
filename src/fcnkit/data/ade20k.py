"""ADE20K as released for the MIT Scene Parsing Benchmark (``ADEChallengeData2016.zip``).

On-disk layout::

    ADEChallengeData2016/
      images/{training,validation}/ADE_{train,val}_<8 digits>.jpg        # 20,210 / 2,000
      annotations/{training,validation}/ADE_{train,val}_<8 digits>.png   # 8-bit grayscale, values 0..150

``root`` may be the ``ADEChallengeData2016`` folder or the folder that holds it. Splits are ``train`` and
``val``; the folder names ``training`` and ``validation`` are accepted as well.

Annotation value ``k`` in 1..150 is the k-th class of ``objectInfo150.csv``; 0 marks pixels the annotators
left out or that belong to none of the 150 classes. It is not a class to predict, so 0 becomes the ignore
value and 1..150 become 0..149. Images are matched to annotations by file stem; an image without its
annotation is reported, by name, when it is loaded.
"""

from __future__ import annotations

from pathlib import Path

from fcnkit.data.base import DATASETS, SampleFiles, SegmentationDataset, Transform, resolve_split, voc_palette
from fcnkit.data.io import DataError, PathLike

#: The 150 classes in annotation order 1..150 (the first name of each row of objectInfo150.csv, written
#: out where that name is split over several words, as most code bases do).
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
ADE20K_IGNORE_INDEX = 255
_SPLIT_FOLDERS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_ade20k_root(root: PathLike) -> Path:
    """The ``ADEChallengeData2016`` folder, given it or the folder that holds it."""
    root = Path(root).expanduser()
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise DataError(
        f"no ADE20K dataset found under {root}: expected {root}/images and {root}/annotations, or "
        f"{root}/ADEChallengeData2016/{{images,annotations}}"
    )


@DATASETS.register()
def ade20k(root: PathLike, split: str = "train", transform: Transform | None = None) -> SegmentationDataset:
    """ADE20K scene parsing, splits ``train`` (20,210) and ``val`` (2,000); 150 classes, 0 -> ignore (255)."""
    split = resolve_split(split, list(_SPLIT_FOLDERS), "ade20k")
    folder = _SPLIT_FOLDERS[split]
    base = find_ade20k_root(root)
    image_dir, label_dir = base / "images" / folder, base / "annotations" / folder
    for directory in (image_dir, label_dir):
        if not directory.is_dir():
            raise DataError(f"ADE20K split {split!r}: folder not found: {directory}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    samples = [SampleFiles(p, label_dir / f"{p.stem}.png", p.stem) for p in images]
    return SegmentationDataset(
        samples,
        ADE20K_CLASSES,
        ignore_index=ADE20K_IGNORE_INDEX,
        palette=voc_palette(len(ADE20K_CLASSES)),
        label_map=[ADE20K_IGNORE_INDEX, *range(len(ADE20K_CLASSES))],
        transform=transform,
        split="train" if folder == "training" else "val",
        source=image_dir,
    )
