"""``check_dataset``: read every sample once, collect what is wrong, summarise what is there.

Meant to run before a long training job: one pass finds every unreadable, missing, misaligned or
out-of-range file (instead of the first one, hours in), and the class frequencies show at a glance
whether the labels are what the class list says they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fcnkit.data.base import SegmentationDataset
from fcnkit.data.io import DataError


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found. Pixel counts cover the samples that loaded without error."""

    num_samples: int
    num_checked: int = 0
    errors: list[str] = field(default_factory=list)
    num_unlabelled: int = 0
    min_hw: tuple[int, int] | None = None
    max_hw: tuple[int, int] | None = None
    label_values: list[int] = field(default_factory=list)
    class_pixels: list[int] = field(default_factory=list)
    ignored_pixels: int = 0
    ignore_index: int = 255
    class_names: list[str] = field(default_factory=list)
    #: samples per group (drive, video, scene), when the dataset assigns groups
    groups: dict[str, int] = field(default_factory=dict)

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def labelled_pixels(self) -> int:
        return sum(self.class_pixels) + self.ignored_pixels

    @property
    def class_frequency(self) -> list[float]:
        """Percentage of the non-ignored pixels in each class."""
        total = sum(self.class_pixels)
        return [100.0 * n / total if total else 0.0 for n in self.class_pixels]

    @property
    def ignored_percent(self) -> float:
        """Percentage of all labelled pixels that carry the ignore value."""
        total = self.labelled_pixels
        return 100.0 * self.ignored_pixels / total if total else 0.0

    def format(self, class_names: Sequence[str] | None = None) -> str:
        """A readable multi-line summary: counts, sizes, a per-class frequency table, then the errors."""
        names = list(class_names) if class_names is not None else self.class_names
        lines = [f"samples: {self.num_checked} checked of {self.num_samples}, {self.num_errors} with errors"]
        if self.groups:
            lines.append(f"groups ({len(self.groups)}): " + ", ".join(f"{g} {n}" for g, n in self.groups.items()))
        if self.num_unlabelled:
            lines.append(f"unlabelled samples: {self.num_unlabelled}")
        if self.min_hw is not None and self.max_hw is not None:
            lines.append(
                f"image size (HxW): height {self.min_hw[0]}..{self.max_hw[0]}, width {self.min_hw[1]}..{self.max_hw[1]}"
            )
        lines.append("label values seen: " + (" ".join(map(str, self.label_values)) or "none"))
        if self.class_pixels:
            lines.append(f"ignored pixels (value {self.ignore_index}): {self.ignored_percent:.2f}% of labelled pixels")
            width = max([len("class"), *(len(n) for n in names)])
            lines.append(f"  {'#':>3}  {'class':<{width}}  {'pixels':>14}  {'% non-ignored':>13}")
            for index, (count, pct) in enumerate(zip(self.class_pixels, self.class_frequency, strict=True)):
                name = names[index] if index < len(names) else f"class {index}"
                note = "  (absent)" if count == 0 else ""
                lines.append(f"  {index:>3}  {name:<{width}}  {count:>14,}  {pct:>12.2f}%{note}")
        if self.errors:
            lines.append(f"errors ({self.num_errors}):")
            lines.extend(f"  {message}" for message in self.errors)
        return "\n".join(lines)


#: a declared class with no pixel is a trap (masks storing it under the ignore value) when the ignore value
#: covers at least this share of the labelled pixels
IGNORED_SHARE_TRAP = 5.0


def label_traps(report: DatasetReport, where: str) -> list[str]:
    """What in ``report`` says the labels do not mean what the class list says, each with the fix named.

    The trap: declared classes with no pixel at all while the ignore value covers a large share of the labelled
    pixels (at least :data:`IGNORED_SHARE_TRAP` %). The usual cause is a binary mask saved as 0/255 with classes
    ``[background, foreground]``: 255 is the default ``ignore_index``, so every foreground pixel would be ignored,
    the model would learn one class and its mIoU would look excellent. The fix is a ``label_map`` line in
    ``classes.yaml`` (folder format) that sends the stored value to the class index."""
    if not report.class_pixels or report.labelled_pixels == 0 or report.ignored_percent < IGNORED_SHARE_TRAP:
        return []
    absent = [i for i, n in enumerate(report.class_pixels) if n == 0]
    if not absent:
        return []
    names = report.class_names
    listed = ", ".join(f"{names[i]!r} (index {i})" if i < len(names) else f"index {i}" for i in absent)
    ignore = report.ignore_index
    head = (
        f"{where}: {'class' if len(absent) == 1 else 'classes'} {listed} {'has' if len(absent) == 1 else 'have'} no "
        f"pixel, while {report.ignored_percent:.2f}% of the labelled pixels hold {ignore}, the ignore_index. Masks "
        f"saved as 0/{ignore} store the foreground as {ignore}, which training would ignore."
    )
    if len(absent) == 1:
        fix = (
            f" If {ignore} marks {names[absent[0]]!r}, add this line to classes.yaml:\n"
            f"    label_map: {{{ignore}: {absent[0]}}}\n"
            f"If {ignore} really marks pixels to ignore, that class has no labelled pixel here: remove it from "
            "'classes' (or check that this split holds the right masks)."
        )
    else:
        fix = (
            f" Send each stored value to its class with a label_map line in classes.yaml, e.g. "
            f"label_map: {{{ignore}: {absent[0]}}} (values seen: {' '.join(map(str, report.label_values))}); or "
            "remove the classes that have no labelled pixel from 'classes'."
        )
    return [head + fix]


def label_report(dataset: SegmentationDataset) -> DatasetReport:
    """Class and ignored pixel counts from the labels alone (no image decoded): the pass training makes to stop
    on :func:`label_traps` before the first step. Unreadable labels are listed in ``errors``."""
    return _scan(dataset, len(dataset), labels_only=True)


def _count(
    label: torch.Tensor, dataset: SegmentationDataset, report: DatasetReport, class_pixels: torch.Tensor, values: set
) -> None:
    # load() has already rejected values other than classes and the ignore index, so one bincount
    # over the rest gives both the class counts and the values present (cheaper than torch.unique).
    label = label.long()
    ignored = label == dataset.ignore_index
    num_ignored = int(ignored.sum())
    counts = torch.bincount(label[~ignored], minlength=dataset.num_classes)
    values.update(torch.nonzero(counts).flatten().tolist())
    if num_ignored:
        values.add(dataset.ignore_index)
    report.ignored_pixels += num_ignored
    class_pixels += counts


def check_dataset(dataset: SegmentationDataset, max_samples: int | None = None) -> DatasetReport:
    """Load the first ``max_samples`` samples (all by default) without the dataset's transform.

    Per-file :class:`DataError` s are collected in the report rather than raised, so one pass lists every
    broken file. Everything else (a bug, an interrupted run) propagates.
    """
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    return _scan(dataset, count, labels_only=False)


def _scan(dataset: SegmentationDataset, count: int, labels_only: bool) -> DatasetReport:
    """One pass over the first ``count`` samples (their labels only, or images and labels)."""
    report = DatasetReport(
        num_samples=len(dataset),
        ignore_index=dataset.ignore_index,
        class_names=list(dataset.classes),
        class_pixels=[0] * dataset.num_classes,
        groups={} if labels_only else dataset.group_counts(),
    )
    values: set[int] = set()
    class_pixels = torch.zeros(dataset.num_classes, dtype=torch.int64)
    for index in range(count):
        report.num_checked += 1
        try:
            sample = {"label": dataset.load_label(index)} if labels_only else dataset.load(index)
        except DataError as exc:
            report.errors.append(str(exc))
            continue
        if not labels_only:
            h, w = sample["image"].shape[-2:]
            report.min_hw = (h, w) if report.min_hw is None else (min(report.min_hw[0], h), min(report.min_hw[1], w))
            report.max_hw = (h, w) if report.max_hw is None else (max(report.max_hw[0], h), max(report.max_hw[1], w))
        label = sample.get("label")
        if label is None:
            report.num_unlabelled += 1
            continue
        _count(label, dataset, report, class_pixels, values)
    report.label_values = sorted(values)
    report.class_pixels = class_pixels.tolist()
    return report
