"""Pictures: label images with PIL (:mod:`.labels`) and charts with matplotlib (:mod:`.figures`)."""

from .figures import plot_confusion_matrix, plot_learning_curves, plot_per_class_iou
from .labels import (
    GRID_GAP,
    GRID_TITLE_HEIGHT,
    IGNORE_COLOUR,
    LABEL_PNG_COMPRESSION,
    RGB,
    Blender,
    YuvBlender,
    colorize,
    comparison_grid,
    label_to_palette_png,
    legend,
    overlay,
)

__all__ = [
    "GRID_GAP",
    "GRID_TITLE_HEIGHT",
    "IGNORE_COLOUR",
    "LABEL_PNG_COMPRESSION",
    "RGB",
    "Blender",
    "YuvBlender",
    "colorize",
    "comparison_grid",
    "label_to_palette_png",
    "legend",
    "overlay",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_per_class_iou",
]
