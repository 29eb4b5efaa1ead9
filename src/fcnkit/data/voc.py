"""PASCAL VOC 2012, SBD and the two compositions the FCN papers train on.

On-disk layouts, as the archives unpack:

* VOC2012: ``VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
  ImageSets/Segmentation/{train,val,trainval}.txt}``; labels are palette PNGs holding indices 0-20 and
  255 for the void outlines.
* SBD: ``benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}``; the label is the
  ``Segmentation`` field of the ``GTcls`` struct in each .mat file (0-20, no void).

``root`` may point at the innermost folder or at any folder above it that the archive created
(``VOCdevkit`` or the folder holding it; ``benchmark_RELEASE`` or the folder holding it).

Compositions:

* ``voc_trainaug`` ("train_aug", 10,582 images): SBD train + SBD val + VOC train, minus VOC val; labels
  from SBD where it has the image, else from VOC. Its ``val`` split is plain VOC val.
* ``seg11valid``: the FCN papers' validation set, VOC2011 val ids that are not in SBD train (736 images),
  read from the VOC2012 folders. The exact list is VOC2011's; VOC2012 does not ship it, so:
  if ``ImageSets/Segmentation/seg11valid.txt`` exists under the VOC root, its ids (kept when they are in
  VOC2012 val) are used; otherwise the list is *computed* as VOC2012 val minus SBD train, which starts from
  the larger VOC2012 val and therefore holds more than 736 images. Put the original file in place to
  reproduce published numbers.
* "SBD train + seg11valid", the original recipe, is ``sbd`` split ``train`` with ``seg11valid`` split ``val``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from fcnkit.data.base import DATASETS, SampleFiles, SegmentationDataset, Transform, read_split_ids, resolve_split
from fcnkit.data.base import voc_palette as voc_palette
from fcnkit.data.io import DataError, PathLike
from fcnkit.errors import ConfigError

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
VOC_IGNORE_INDEX = 255


def find_devkit_year(root: PathLike, year: str, image_sets: str, dataset: str, hint: str = "") -> Path:
    """The ``VOCdevkit/<year>`` folder (e.g. ``VOC2012``) holding ``ImageSets/<image_sets>``, given that folder,
    ``VOCdevkit`` or the folder that holds ``VOCdevkit``; a DataError naming what was expected otherwise."""
    root = Path(root).expanduser()
    for candidate in (root, root / year, root / "VOCdevkit" / year):
        if (candidate / "ImageSets" / image_sets).is_dir():
            return candidate
    raise DataError(
        f"no {dataset} dataset found under {root}: expected {root}/ImageSets/{image_sets} or "
        f"{root}/VOCdevkit/{year}/ImageSets/{image_sets}{hint}"
    )


def find_voc_root(root: PathLike) -> Path:
    """The ``VOC2012`` folder, given it, ``VOCdevkit`` or the folder that holds ``VOCdevkit``."""
    return find_devkit_year(root, "VOC2012", "Segmentation", "VOC2012")


def find_sbd_root(root: PathLike) -> Path:
    """SBD's ``dataset`` folder, given it, ``benchmark_RELEASE`` or the folder that holds ``benchmark_RELEASE``."""
    root = Path(root).expanduser()
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir() and (candidate / "img").is_dir():
            return candidate
    raise DataError(
        f"no SBD dataset found under {root}: expected {root}/cls and {root}/img, or "
        f"{root}/benchmark_RELEASE/dataset/{{cls,img}}"
    )


def _voc_files(voc: Path, ids: list[str]) -> list[SampleFiles]:
    return [SampleFiles(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png", i) for i in ids]


def _sbd_files(sbd: Path, ids: list[str]) -> list[SampleFiles]:
    return [SampleFiles(sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat", i) for i in ids]


def _voc_dataset(
    samples: list[SampleFiles], split: str, source: PathLike, transform: Transform | None
) -> SegmentationDataset:
    return SegmentationDataset(
        samples,
        VOC_CLASSES,
        ignore_index=VOC_IGNORE_INDEX,
        palette=voc_palette(len(VOC_CLASSES)),
        transform=transform,
        split=split,
        source=source,
    )


@DATASETS.register()
def voc2012(root: PathLike, split: str = "train", transform: Transform | None = None) -> SegmentationDataset:
    """PASCAL VOC 2012 segmentation, splits ``train`` (1,464), ``val`` (1,449), ``trainval``; 21 classes."""
    split = resolve_split(split, ["train", "val", "trainval"], "voc2012")
    voc = find_voc_root(root)
    split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    return _voc_dataset(_voc_files(voc, read_split_ids(split_file)), split, split_file, transform)


@DATASETS.register()
def sbd(root: PathLike, split: str = "train", transform: Transform | None = None) -> SegmentationDataset:
    """Semantic Boundaries Dataset class labels, splits ``train`` (8,498) and ``val`` (2,857); VOC's 21 classes."""
    split = resolve_split(split, ["train", "val"], "sbd")
    base = find_sbd_root(root)
    split_file = base / f"{split}.txt"
    return _voc_dataset(_sbd_files(base, read_split_ids(split_file)), split, split_file, transform)


@DATASETS.register()
def voc_trainaug(
    root: PathLike | None = None,
    split: str = "train",
    transform: Transform | None = None,
    voc_root: PathLike | None = None,
    sbd_root: PathLike | None = None,
) -> SegmentationDataset:
    """VOC "train_aug": (SBD train | SBD val | VOC train) - VOC val for ``train``; VOC val for ``val``.

    ``root`` may hold both ``VOCdevkit`` and ``benchmark_RELEASE``; ``voc_root`` / ``sbd_root`` override it.
    Images and labels come from SBD for the ids SBD has (so the pair is always consistent), else from VOC.
    """
    split = resolve_split(split, ["train", "val"], "voc_trainaug")
    voc_root, sbd_root = voc_root or root, sbd_root or root
    if voc_root is None:
        raise ConfigError("voc_trainaug needs root (holding VOCdevkit and benchmark_RELEASE) or voc_root")
    voc = find_voc_root(voc_root)
    voc_val_file = voc / "ImageSets" / "Segmentation" / "val.txt"
    voc_val = read_split_ids(voc_val_file)
    if split == "val":
        return _voc_dataset(_voc_files(voc, voc_val), split, voc_val_file, transform)
    if sbd_root is None:
        raise ConfigError("voc_trainaug split 'train' needs the SBD dataset: pass root or sbd_root")
    base = find_sbd_root(sbd_root)
    sbd_ids = set(read_split_ids(base / "train.txt")) | set(read_split_ids(base / "val.txt"))
    voc_train = set(read_split_ids(voc / "ImageSets" / "Segmentation" / "train.txt"))
    ids = sorted((sbd_ids | voc_train) - set(voc_val))
    samples = [
        SampleFiles(base / "img" / f"{i}.jpg", base / "cls" / f"{i}.mat", i)
        if i in sbd_ids
        else SampleFiles(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png", i)
        for i in ids
    ]
    return _voc_dataset(samples, split, f"{base} + {voc}", transform)


@DATASETS.register()
def seg11valid(
    root: PathLike,
    split: str = "val",
    transform: Transform | None = None,
    sbd_root: PathLike | None = None,
) -> SegmentationDataset:
    """The FCN validation set: VOC val ids outside SBD train, read from the VOC2012 folders (split ``val``).

    Uses ``<VOC2012>/ImageSets/Segmentation/seg11valid.txt`` when present (the original 736 ids), else
    computes VOC2012 val minus SBD train (SBD found under ``sbd_root``, default ``root``); see the module
    docstring for why the computed list is larger.
    """
    split = resolve_split(split, ["val"], "seg11valid")
    voc = find_voc_root(root)
    voc_val_file = voc / "ImageSets" / "Segmentation" / "val.txt"
    voc_val = read_split_ids(voc_val_file)
    listed_file = voc / "ImageSets" / "Segmentation" / "seg11valid.txt"
    if listed_file.is_file():
        listed = read_split_ids(listed_file)
        in_val = set(voc_val)
        ids = [i for i in listed if i in in_val]
        if len(ids) < len(listed):
            warnings.warn(
                f"{listed_file}: {len(listed) - len(ids)} ids are not in VOC2012 val and were skipped", stacklevel=2
            )
        source: PathLike = listed_file
    else:
        try:
            base = find_sbd_root(sbd_root or root)
        except DataError as exc:
            raise DataError(
                f"seg11valid needs either {listed_file} or the SBD dataset to compute the list (VOC val minus "
                f"SBD train): {exc}"
            ) from None
        sbd_train = set(read_split_ids(base / "train.txt"))
        ids = [i for i in voc_val if i not in sbd_train]
        source = f"{voc_val_file} minus {base / 'train.txt'}"
    return _voc_dataset(_voc_files(voc, ids), split, source, transform)
