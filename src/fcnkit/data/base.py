"""The one dataset class: a list of (image, label, name) files plus what the labels mean.

Every format (VOC, SBD, CamVid, a plain folder) is a small factory function that finds the files and
returns a :class:`SegmentationDataset`; the reading, checking and error messages live here, once.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fcnkit.data.io import RGB, PathLike, read_image, read_label
from fcnkit.errors import ConfigError, DataError
from fcnkit.registry import Registry

#: Dataset factories by name. Each takes ``root``, ``split`` and ``transform`` (plus its own options)
#: and returns a :class:`SegmentationDataset`. Filled by the explicit imports in ``fcnkit.data``.
DATASETS: Registry[SegmentationDataset] = Registry("dataset")

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


class SampleFiles(NamedTuple):
    """Where one sample lives: its image, its label (None for unlabelled data), a short name and its group.

    ``group`` names what the sample must not be separated from when data is split: the video, drive, scene or
    patient it comes from (frames of one drive are near-copies of each other; a validation frame whose
    neighbours are in the training set measures memory, not generalisation). None when the dataset does not know.
    """

    image: Path
    label: Path | None
    name: str
    group: str | None = None


def voc_palette(n: int = 256) -> list[RGB]:
    """The PASCAL VOC colour map: the bits of the class index are spread over the high bits of R, G, B.

    Bit 0 of the index goes to R, bit 1 to G, bit 2 to B (at bit 7 of each channel), the next three bits
    to bit 6, and so on. ``voc_palette(21)[1] == (128, 0, 0)``; ``voc_palette(256)[255] == (224, 224, 192)``.
    """
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours


class SegmentationDataset(torch.utils.data.Dataset):
    """Image / label-map pairs with class names, an ignore value and a colour per class.

    ``dataset[i]`` returns ``{"image": uint8 (3, H, W), "label": int64 (H, W), "name": str}`` passed through
    ``transform`` when one is set (the training and evaluation transforms turn the image into a
    normalised float ``(3, h, w)``). Unlabelled samples (``label`` path None) have no ``"label"`` key.

    Raw label values are first sent through ``label_map`` when given (an int64 lookup table: Cityscapes
    label ids -> train ids, ADE20K's "minus one", ...), then every value must be a class index
    ``0 .. num_classes - 1`` or ``ignore_index``; anything else raises :class:`DataError` listing the values.
    """

    def __init__(
        self,
        samples: Sequence[SampleFiles],
        classes: Sequence[str],
        *,
        ignore_index: int = 255,
        palette: Sequence[RGB] | None = None,
        label_map: Tensor | Sequence[int] | None = None,
        transform: Transform | None = None,
        label_reader: Callable[[Path], Tensor] = read_label,
        split: str = "",
        source: PathLike = "",
    ) -> None:
        if not classes:
            raise DataError("a dataset needs at least one class name")
        if 0 <= ignore_index < len(classes):
            raise DataError(
                f"ignore_index {ignore_index} is also the index of class {classes[ignore_index]!r}; "
                f"use a value outside 0..{len(classes) - 1}"
            )
        palette = list(palette) if palette is not None else voc_palette(len(classes))
        if len(palette) != len(classes):
            raise DataError(f"palette has {len(palette)} colours for {len(classes)} classes")
        if not samples:
            where = f" ({source})" if source else ""
            raise DataError(f"split {split!r} is empty: no samples found{where}")
        self.samples = list(samples)
        self.classes = list(classes)
        self.ignore_index = int(ignore_index)
        self.palette = [(int(r), int(g), int(b)) for r, g, b in palette]
        self.label_map = None if label_map is None else torch.as_tensor(label_map, dtype=torch.int64)
        self.transform = transform
        self.label_reader = label_reader
        self.split = split
        self.source = str(source)
        #: decoded samples (or the error each raised) once :meth:`cache` has run
        self._cache: list[tuple[Tensor, Tensor | None] | DataError] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def group_counts(self) -> dict[str, int]:
        """Samples per group, sorted by group name (empty when the dataset assigns no groups)."""
        return dict(sorted(Counter(s.group for s in self.samples if s.group is not None).items()))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, source={self.source!r})"
        )

    def cache(self, on_sample: Callable[[int], None] | None = None) -> int:
        """Decode every sample once and keep it in memory; returns the bytes held.

        From then on :meth:`load` copies nothing from disk: the image stays uint8 and the label is kept in the
        smallest integer type that holds its values (uint8 for most datasets): 0.66 MiB a 360x480 CamVid frame,
        242 MiB for its 367 training frames. A sample that cannot be read keeps its :class:`DataError`, raised
        again at every access, so ``data.on_error`` treats it as before. ``on_sample(i)`` is called after each sample (progress).
        DataLoader workers started afterwards share the decoded tensors with the parent process (fork).
        """
        entries: list[tuple[Tensor, Tensor | None] | DataError] = []
        held = 0
        for index in range(len(self.samples)):
            try:
                sample = self._read(index)
            except DataError as e:
                entries.append(e)
            else:
                label = sample.get("label")
                if label is not None:
                    label = label.to(_smallest_int_dtype(label, self.ignore_index))
                    held += label.nbytes
                entries.append((sample["image"], label))
                held += sample["image"].nbytes
            if on_sample is not None:
                on_sample(index)
        self._cache = entries
        return held

    @property
    def cached(self) -> bool:
        """Whether :meth:`cache` holds every sample in memory."""
        return self._cache is not None

    def load(self, index: int) -> Sample:
        """The raw sample, without ``transform``: uint8 image ``(3, H, W)``, int64 label ``(H, W)``, name.

        From memory after :meth:`cache`, where the label keeps its compact integer type.
        """
        if self._cache is None:
            return self._read(index)
        entry = self._cache[index]
        if isinstance(entry, DataError):
            raise entry
        image, label = entry
        sample: Sample = {"image": image, "name": self.samples[index].name}
        if label is not None:
            sample["label"] = label
        return sample

    def load_label(self, index: int) -> Tensor | None:
        """The label of sample ``index`` alone (mapped and checked; None for an unlabelled sample): what a pass
        over the labels needs, without decoding the image."""
        if self._cache is not None:
            return self.load(index).get("label")
        files = self.samples[index]
        if files.label is None:
            return None
        if not files.label.is_file():
            raise DataError(f"label file missing for sample {files.name!r}: {files.label}")
        label = self.label_reader(files.label)
        if self.label_map is not None:
            label = self._apply_label_map(label, files.label)
        self._check_values(label, files.label)
        return label

    def _read(self, index: int) -> Sample:
        """Sample ``index`` read from its files and checked."""
        files = self.samples[index]
        image = read_image(files.image)
        sample: Sample = {"image": image, "name": files.name}
        if files.label is None:
            return sample
        if not files.label.is_file():
            raise DataError(f"label file missing for sample {files.name!r}: {files.label}")
        label = self.label_reader(files.label)
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise DataError(self._size_mismatch_message(files, tuple(image.shape[1:]), tuple(label.shape)))
        if self.label_map is not None:
            label = self._apply_label_map(label, files.label)
        self._check_values(label, files.label)
        sample["label"] = label
        return sample

    def _apply_label_map(self, label: Tensor, path: Path) -> Tensor:
        table = self.label_map
        outside = (label < 0) | (label >= len(table))
        if outside.any():
            values = torch.unique(label[outside]).tolist()
            raise DataError(
                f"label {path} has raw values {values} that the label_map (size {len(table)}) does not cover"
            )
        return table[label]

    def _check_values(self, label: Tensor, path: Path) -> None:
        bad = ((label < 0) | (label >= self.num_classes)) & (label != self.ignore_index)
        if bad.any():
            values = torch.unique(label[bad]).tolist()
            raise DataError(
                f"label {path} has values {values} that are neither a class index (0..{self.num_classes - 1}) "
                f"nor the ignore index {self.ignore_index}"
            )

    @staticmethod
    def _size_mismatch_message(files: SampleFiles, image_hw: tuple[int, ...], label_hw: tuple[int, ...]) -> str:
        msg = (
            f"image and label sizes differ for sample {files.name!r}: image {files.image} is "
            f"{image_hw[0]}x{image_hw[1]} (HxW), label {files.label} is {label_hw[0]}x{label_hw[1]}"
        )
        if label_hw == image_hw[::-1]:
            msg += (
                ". The label matches the image turned by 90 degrees: the image probably carries an EXIF "
                "orientation tag that the label lacks (images are read upright, as viewers show them)"
            )
        return msg


def _smallest_int_dtype(label: Tensor, ignore_index: int) -> torch.dtype:
    """uint8, int16 or int32 when every value of ``label`` (and the ignore index) fits, else int64."""
    low = min(int(label.min()), ignore_index) if label.numel() else ignore_index
    high = max(int(label.max()), ignore_index) if label.numel() else ignore_index
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return torch.int64


def select_groups(
    samples: Sequence[SampleFiles],
    groups: Sequence[str] | None = None,
    exclude_groups: Sequence[str] | None = None,
    where: str = "",
) -> list[SampleFiles]:
    """The samples of ``groups`` (all when None), minus those of ``exclude_groups``.

    A name in ``groups`` that no sample has is an error listing the close names and every known group, so a
    typo does not silently drop a whole drive. A name in ``exclude_groups`` may be absent (the same options often
    build train and val, which hold different groups) unless it looks like a typo of a group that is present.
    """
    if groups is None and exclude_groups is None:
        return list(samples)
    # YAML reads a group named 7 or 2024 as a number; group names are strings
    groups = None if groups is None else [str(g) for g in groups]
    exclude_groups = None if exclude_groups is None else [str(g) for g in exclude_groups]
    known = sorted({s.group for s in samples if s.group is not None})
    if not known:
        raise ConfigError(f"{where}: groups / exclude_groups given, but this dataset assigns no groups to samples")
    for name, strict in [*((g, True) for g in groups or []), *((g, False) for g in exclude_groups or [])]:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5 if strict else 0.8)
        if strict or close:
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: no sample is in group {name!r}.{hint} Groups: {', '.join(known)}.")
    keep, drop = set(groups) if groups is not None else set(known), set(exclude_groups or [])
    return [s for s in samples if s.group in keep and s.group not in drop]


def shared_groups(a: SegmentationDataset, b: SegmentationDataset) -> list[str]:
    """Groups with samples in both datasets (e.g. train and val): the sign of a leaking split."""
    return sorted(set(a.group_counts()) & set(b.group_counts()))


def split_names(split: str) -> list[str]:
    """``"train+val"`` -> ``["train", "val"]``: the splits whose samples a combined split holds, in order."""
    names = [part.strip() for part in split.split("+")]
    if not all(names):
        raise ConfigError(f"split {split!r}: expected a name or names joined by '+', e.g. 'train+val'")
    return names


def resolve_split(split: str, known: Sequence[str], dataset: str) -> str:
    """Return ``split`` if ``dataset`` has it, else raise ValueError suggesting the closest names."""
    if split in known:
        return split
    close = difflib.get_close_matches(split, known, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"Unknown split {split!r} for dataset {dataset!r}.{hint} Known splits: {', '.join(known)}.")


def read_split_ids(path: Path) -> list[str]:
    """Ids listed one per line (the first whitespace-separated field); blank lines and '#' comments skipped."""
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line.split()[0])
    return ids
