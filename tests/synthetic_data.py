"""A tiny folder-format dataset drawn on the fly: background, rectangles (class 1) and discs (class 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["background", "box", "disc"]
COLORS = [[0, 0, 0], [200, 40, 40], [40, 40, 200]]


def make_folder_dataset(
    root: Path, n_train: int = 12, n_val: int = 4, size: tuple[int, int] = (40, 48), seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.zeros((h, w), np.uint8)
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            label[y0 : y0 + h // 3, x0 : x0 + w // 3] = 1
            cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), h // 6
            yy, xx = np.mgrid[:h, :w]
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
            label[0, :] = 255  # a void border row, as VOC has
            image = np.stack([np.array(COLORS)[np.minimum(label, 2)][..., c] for c in range(3)], -1).astype(np.int16)
            image += rng.integers(-30, 30, image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / split / f"s{i:03d}.png")
            Image.fromarray(label).save(root / "masks" / split / f"s{i:03d}.png")
    (root / "classes.yaml").write_text(
        "classes: [background, box, disc]\ncolors: [[0, 0, 0], [200, 40, 40], [40, 40, 200]]\nignore_index: 255\n"
    )
    return root
