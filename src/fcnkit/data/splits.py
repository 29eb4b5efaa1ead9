"""``make_group_splits``: ``splits/*.txt`` for a folder dataset that keep every group on one side.

Frames of one video, tiles of one scene or slices of one patient are near-copies: split at random, a validation
score measures how well the model remembers the training frames next to them (see the docs' design notes,
"Validation that does not leak"). This assigns whole groups to the validation and test splits (their samples adding up to about the
fractions asked for), the rest to training, and writes one stem per line in ``root/splits/<split>.txt``, which
the folder format reads (layout 2: ``images/*`` with ``splits/<split>.txt``).

Groups come from ``root/groups.txt`` (``<stem> <group>`` lines) or from a regular expression on the stems, as the
folder dataset reads them. Without groups every image is its own group, which is right only for independent
photographs; the result says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from fcnkit.data.folder import IMAGE_SUFFIXES, _group_finder, load_class_file
from fcnkit.data.io import DataError, PathLike

__all__ = ["GroupSplits", "make_group_splits"]


@dataclass
class GroupSplits:
    """What :func:`make_group_splits` wrote: the stems and groups of each split and the files."""

    stems: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    #: the stems carried no group: each image was its own group
    ungrouped: bool = False

    def format(self) -> str:
        lines = []
        for split, stems in self.stems.items():
            groups = self.groups[split]
            shown = ", ".join(groups[:8]) + (f" and {len(groups) - 8} more" if len(groups) > 8 else "")
            what = f"{len(groups)} groups: {shown}" if not self.ungrouped else "each image its own group"
            lines.append(f"{split}: {len(stems)} images ({what}) -> {self.files[split]}")
        return "\n".join(lines)


def make_group_splits(
    root: PathLike,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    group_pattern: str | None = None,
    overwrite: bool = False,
) -> GroupSplits:
    """Write ``root/splits/train.txt``, ``val.txt`` (and ``test.txt`` when ``test`` > 0), whole groups each.

    Groups are shuffled with ``seed`` and given to test, then val, until each holds at least its fraction of the
    images; at least one group goes to each of them, and at least one stays for training. An existing split file
    is never replaced unless ``overwrite``: the error names it.
    """
    root = Path(root).expanduser()
    load_class_file(root)  # a folder dataset: the class file is there and valid
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{root} has no images/ folder")
    if any(p.is_dir() for p in images.iterdir()):
        raise DataError(
            f"{images} holds sub-folders (the images/<split>/ layout): its splits are the folders already; "
            "data split writes splits/*.txt for images kept together in images/"
        )
    stems = sorted(p.stem for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not stems:
        raise DataError(f"no image in {images}")
    if not (0 < val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"val and test are fractions of the images with val > 0 and val + test < 1, got {val}, {test}")
    group_of = _group_finder(root, group_pattern)
    found = {stem: group_of(stem) for stem in stems}
    ungrouped = all(g is None for g in found.values())
    missing = [s for s, g in found.items() if g is None]
    if missing and not ungrouped:
        raise DataError(
            f"{len(missing)} images have no group (first: {missing[0]!r}): "
            + ("add them to groups.txt" if (root / "groups.txt").is_file() else f"group_pattern {group_pattern!r}")
        )
    members: dict[str, list[str]] = {}
    for stem, group in found.items():
        members.setdefault(group if group is not None else stem, []).append(stem)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    wanted = {"test": test, "val": val} if test > 0 else {"val": val}
    if len(order) < len(wanted) + 1:
        raise DataError(f"{len(order)} groups cannot fill train and {', '.join(wanted)} with whole groups")
    chosen: dict[str, list[str]] = {}
    for split, fraction in wanted.items():
        chosen[split] = []
        while order and (not chosen[split] or sum(len(members[g]) for g in chosen[split]) < fraction * len(stems)):
            if len(order) == 1:  # the last group stays for training
                break
            chosen[split].append(order.pop(0))
    chosen["train"] = order
    folder = root / "splits"
    result = GroupSplits(ungrouped=ungrouped)
    names = ["train", "val", *(["test"] if test > 0 else [])]
    existing = [folder / f"{n}.txt" for n in names if (folder / f"{n}.txt").exists()]
    if existing and not overwrite:
        raise DataError(
            f"{', '.join(map(str, existing))} already exist: data split does not replace split files (move them "
            "away, or pass --overwrite)"
        )
    folder.mkdir(exist_ok=True)
    for name in names:
        groups = sorted(chosen[name])
        split_stems = sorted(s for g in groups for s in members[g])
        path = folder / f"{name}.txt"
        path.write_text("".join(f"{s}\n" for s in split_stems))
        result.stems[name], result.groups[name], result.files[name] = split_stems, groups, path
    return result
