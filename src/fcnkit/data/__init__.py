"""Datasets as users have them on disk, joint transforms, variable-size batching and a dataset check.

>>> ds = build_dataset("camvid", "/data/CamVid", "train", transform=EvalTransform(IMAGENET))
>>> loader = DataLoader(ds, batch_size=4, collate_fn=functools.partial(pad_collate, ignore_index=ds.ignore_index))

One file per on-disk format (``voc.py``, ``camvid.py``, ``pcontext.py``, ``ade20k.py``, ``cityscapes.py``,
``folder.py``, and ``synthetic.py`` which writes the folder format); each registers small factory
functions in :data:`DATASETS`, filled by the explicit imports below. ``io.py`` reads images and labels (every
failure a :class:`~fcnkit.errors.DataError` naming the file), ``base.py`` holds the dataset base class and the
registry, ``transforms.py`` the joint train/eval transforms and ``pad_collate``, ``check.py`` the whole-split
check behind ``fcnkit data check``. Layer: beside ``models``, above the base, below everything else.
"""

from __future__ import annotations

from typing import Any

from fcnkit.data import ade20k as _ade20k  # noqa: F401  (registers ade20k)
from fcnkit.data import camvid as _camvid  # noqa: F401  (registers camvid)
from fcnkit.data import cityscapes as _cityscapes  # noqa: F401  (registers cityscapes)
from fcnkit.data import folder as _folder  # noqa: F401  (registers folder)
from fcnkit.data import pcontext as _pcontext  # noqa: F401  (registers pascal_context)
from fcnkit.data import voc as _voc  # noqa: F401  (registers voc2012, sbd, voc_trainaug, seg11valid)
from fcnkit.data.base import DATASETS, SampleFiles, SegmentationDataset, select_groups, shared_groups, voc_palette
from fcnkit.data.check import DatasetReport, check_dataset, label_report, label_traps
from fcnkit.data.io import DataError, PathLike, decode_image, read_image, read_label
from fcnkit.data.transforms import EvalTransform, TrainTransform, pad_collate


def build_dataset(name: str, root: PathLike | None, split: str, **options: Any) -> SegmentationDataset:
    """The dataset registered as ``name`` at ``root``; ``options`` go to its factory (e.g. ``transform``).

    An unknown name raises KeyError, an option the factory does not take raises TypeError; both list the
    closest valid names.
    """
    return DATASETS.build(name, root=root, split=split, **options)


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return DATASETS.names()


__all__ = [
    "DATASETS",
    "DataError",
    "DatasetReport",
    "EvalTransform",
    "SampleFiles",
    "SegmentationDataset",
    "TrainTransform",
    "build_dataset",
    "check_dataset",
    "decode_image",
    "label_report",
    "label_traps",
    "list_datasets",
    "pad_collate",
    "read_image",
    "read_label",
    "select_groups",
    "shared_groups",
    "voc_palette",
]
