"""Custom data in a plain folder: one place to set the classes, two simple ways to lay out the files.

::

    root/
      classes.yaml            # or classes.yml / classes.json
      images/<split>/*.jpg    # layout 1: one folder per split ...
      masks/<split>/*.png     #   ... masks matched to images by file stem
      images/*.jpg            # layout 2: all images together ...
      masks/*.png
      splits/<split>.txt      #   ... and one stem per line for each split

Layout 1 is used when ``images/<split>/`` exists, else layout 2. Without a ``masks`` folder the samples are
unlabelled (for inference). ``classes.yaml``::

    classes: [background, road, car]      # required; the index of a name is its class index
    colors: [[0, 0, 0], [128, 64, 128], [64, 0, 128]]   # optional, one per class
    ignore_index: 255                     # optional, default 255
    ignore_colors: [[255, 255, 255]]      # optional, colours of void pixels in RGB masks
    label_map: {255: 1}                   # optional: stored mask value -> class index (or ignore_index)
    color_tolerance: 8                    # optional: RGB masks saved as JPEG, colours this far off still match

Masks are index PNGs (palette or grayscale, pixel = class index or ignore_index) or, when ``colors`` is
given, RGB images whose colours are translated through it; a colour in neither ``colors`` nor
``ignore_colors`` raises an error listing it and the file.

``label_map`` is for masks whose values are not class indices: a binary mask saved as 0/255 (lesions, cracks,
buildings) with ``classes: [background, lesion]`` needs ``label_map: {255: 1}``, or 255, the default
``ignore_index``, would hide every foreground pixel (``fcnkit data check`` and training stop on that and name this
line). Values the map does not name keep their value. ``color_tolerance`` (0 by default) lets an RGB mask pixel
match the declared colour nearest to it when no channel is more than that many levels off, as JPEG compression
leaves them; a colour farther from every declared one is still an error.

**Groups** keep frames of one video (tiles of one scene, slices of one patient) on one side of a split. A
sample's group comes from ``root/groups.txt`` (lines ``<stem> <group>``) when that file exists, else from
``group_pattern``, a regular expression searched in the stem (its first parenthesised group, or the whole match:
``"^[^_]+"`` takes ``street07`` from ``street07_000123``). ``groups=[...]`` keeps only those groups,
``exclude_groups=[...]`` drops them, and ``split`` may join splits with ``+`` (``"train+val"``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fcnkit.data.base import (
    DATASETS,
    SampleFiles,
    SegmentationDataset,
    Transform,
    read_split_ids,
    select_groups,
    split_names,
)
from fcnkit.data.io import RGB, DataError, PathLike, read_label
from fcnkit.errors import ConfigError
from fcnkit.registry import close_matches

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")
_CLASS_KEYS = ("classes", "colors", "ignore_index", "ignore_colors", "label_map", "color_tolerance")


def load_class_file(root: PathLike) -> dict[str, Any]:
    """Read and validate ``root/classes.yaml`` (or .yml / .json); returns the four keys, defaults filled in."""
    root = Path(root)
    path = next((root / name for name in CLASS_FILES if (root / name).is_file()), None)
    if path is None:
        raise DataError(f"no class file in {root}: create {root / 'classes.yaml'} with 'classes: [name, ...]'")
    try:
        if path.suffix == ".json":
            spec = json.loads(path.read_text())
        else:
            import yaml

            spec = yaml.safe_load(path.read_text())
    except Exception as exc:  # yaml / json parse errors
        raise DataError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise DataError(f"{path} should hold a mapping with a 'classes' list")
    for key in spec:
        if key not in _CLASS_KEYS:
            matches = close_matches(str(key), _CLASS_KEYS)
            hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
            raise DataError(f"{path}: unknown key {key!r}.{hint} Accepted keys: {', '.join(_CLASS_KEYS)}.")
    classes = spec.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{path}: 'classes' must be a non-empty list of names")
    ignore_index = spec.get("ignore_index", 255)
    if not isinstance(ignore_index, int):
        raise DataError(f"{path}: 'ignore_index' must be an integer, got {ignore_index!r}")
    colors = _colour_list(spec.get("colors"), path, "colors")
    if colors is not None and len(colors) != len(classes):
        raise DataError(f"{path}: 'colors' has {len(colors)} entries for {len(classes)} classes")
    ignore_colors = _colour_list(spec.get("ignore_colors"), path, "ignore_colors") or []
    label_map = spec.get("label_map")
    if label_map is not None:
        ok = isinstance(label_map, dict) and all(
            isinstance(k, int)
            and 0 <= k <= 65535
            and isinstance(v, int)
            and (0 <= v < len(classes) or v == ignore_index)
            for k, v in label_map.items()
        )
        if not ok:
            raise DataError(
                f"{path}: 'label_map' must map stored mask values (0-65535) to class indices 0..{len(classes) - 1} "
                f"or the ignore_index {ignore_index}, e.g. label_map: {{255: 1}}; got {label_map!r}"
            )
        if colors is not None:
            raise DataError(f"{path}: 'label_map' is for index masks; RGB masks are mapped by 'colors'")
    tolerance = spec.get("color_tolerance", 0)
    if not isinstance(tolerance, int) or not 0 <= tolerance <= 64:
        raise DataError(f"{path}: 'color_tolerance' must be an integer 0-64 (levels per channel), got {tolerance!r}")
    return {
        "classes": classes,
        "colors": colors,
        "ignore_index": ignore_index,
        "ignore_colors": ignore_colors,
        "label_map": label_map,
        "color_tolerance": tolerance,
    }


def lookup_table(label_map: dict[int, int], ignore_index: int) -> list[int]:
    """``label_map`` as the dataset's lookup table: identity for the values it does not name."""
    size = max(256, ignore_index + 1, *(k + 1 for k in label_map))
    table = list(range(size))
    for stored, index in label_map.items():
        table[stored] = index
    return table


def _colour_list(value: Any, path: Path, key: str) -> list[RGB] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(c, list | tuple) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in value
    )
    if not ok:
        raise DataError(f"{path}: '{key}' must be a list of [r, g, b] triples with values 0-255")
    return [(int(r), int(g), int(b)) for r, g, b in value]


def _by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; two files with one stem are ambiguous and rejected."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"two files share the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def _mask_for(masks: dict[str, Path] | None, mask_dir: Path, stem: str) -> Path | None:
    if masks is None:
        return None
    # A missing mask keeps its expected path so that loading the sample names the file that is absent.
    return masks.get(stem, mask_dir / f"{stem}.png")


def _group_finder(root: Path, pattern: str | None) -> Callable[[str], str | None]:
    """stem -> group (or None): from ``root/groups.txt``, else from ``pattern``, else no groups."""
    listing = root / "groups.txt"
    if listing.is_file():
        table = {}
        for line_no, line in enumerate(listing.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise DataError(f"{listing}:{line_no}: expected '<stem> <group>', got {line.strip()!r}")
            table[fields[0]] = fields[1]
        return table.get
    if pattern is None:
        return lambda stem: None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"group_pattern {pattern!r} is not a regular expression: {exc}") from None

    def find(stem: str) -> str | None:
        match = regex.search(stem)
        return None if match is None else (match.group(1) if regex.groups else match.group(0))

    return find


def _split_samples(root: Path, split: str) -> tuple[list[SampleFiles], Path]:
    """The samples of one split and where they are listed (its image folder or its split file)."""
    per_split_images = root / "images" / split
    split_file = root / "splits" / f"{split}.txt"
    if per_split_images.is_dir():
        mask_dir = root / "masks" / split
        masks = _by_stem(mask_dir) if mask_dir.is_dir() else None
        images = _by_stem(per_split_images)
        samples = [SampleFiles(path, _mask_for(masks, mask_dir, stem), stem) for stem, path in images.items()]
        source: Path = per_split_images
    elif split_file.is_file():
        mask_dir = root / "masks"
        masks = _by_stem(mask_dir) if mask_dir.is_dir() else None
        images = _by_stem(root / "images") if (root / "images").is_dir() else {}
        samples = [
            # An unknown stem keeps a path without suffix, so loading it reports the missing image by name.
            SampleFiles(images.get(stem, root / "images" / stem), _mask_for(masks, mask_dir, stem), stem)
            for stem in read_split_ids(split_file)
        ]
        source = split_file
    else:
        raise DataError(
            f"split {split!r} not found in {root}: expected the folder {per_split_images} or the file {split_file}"
        )
    return samples, source


@DATASETS.register()
def folder(
    root: PathLike,
    split: str = "train",
    transform: Transform | None = None,
    group_pattern: str | None = None,
    groups: Sequence[str] | None = None,
    exclude_groups: Sequence[str] | None = None,
) -> SegmentationDataset:
    """A custom dataset in the folder format described in this module's docstring; ``split`` is any name, or
    names joined by ``+``; ``group_pattern``, ``groups`` and ``exclude_groups`` as described there."""
    root = Path(root).expanduser()
    spec = load_class_file(root)
    group_of = _group_finder(root, group_pattern)
    found = [_split_samples(root, name) for name in split_names(split)]
    samples = [s._replace(group=group_of(s.name)) for split_samples, _ in found for s in split_samples]
    samples = select_groups(samples, groups, exclude_groups, where=f"folder {split}")
    source = found[0][1]

    colour_map: dict[RGB, int] | None = None
    if spec["colors"] is not None:
        colour_map = {colour: index for index, colour in enumerate(spec["colors"])}
        for colour in spec["ignore_colors"]:
            colour_map.setdefault(colour, spec["ignore_index"])
    label_map = spec["label_map"]
    return SegmentationDataset(
        samples,
        spec["classes"],
        ignore_index=spec["ignore_index"],
        palette=spec["colors"],
        label_map=lookup_table(label_map, spec["ignore_index"]) if label_map else None,
        transform=transform,
        label_reader=functools.partial(read_label, colors=colour_map, tolerance=spec["color_tolerance"]),
        split=split,
        source=source,
    )
