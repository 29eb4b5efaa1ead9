"""Charts drawn with matplotlib: learning curves, confusion matrix, per-class IoU.

matplotlib is one of fcnkit's dependencies; figures are made without pyplot (so nothing is shown and nothing
leaks between calls) and rendered headless with Agg.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import Tensor

from ..errors import DataError
from .labels import RGB, PathLike, _palette_array

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix", "plot_learning_curves", "plot_per_class_iou"]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib Figure that is not registered with pyplot, so it is freed when it goes out of scope."""
    import matplotlib

    # Headless rendering. Once pyplot is imported (a notebook, a user's script) switching the backend would
    # close the user's open figures, so only choose it when nobody has yet; Figure.savefig renders PNG with
    # Agg whatever the backend is.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(fig: Figure, out_png: PathLike) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor="white")
    return out


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.45", fontsize=11)


def plot_learning_curves(
    train: Sequence[dict[str, Any]], val: Sequence[dict[str, Any]], out_png: PathLike, title: str = "run"
) -> Path:
    """Three panels: training loss, learning rate and val mIoU (%) against the step.

    ``train`` and ``val`` are a run's training and evaluation records, sorted by step, as
    :func:`fcnkit.engine.runlog.read_run_log` reads them from ``metrics.jsonl``: training records carry ``step``,
    ``lr`` and ``loss_*`` keys, evaluation records ``step`` and ``val`` (a dict with ``miou``, a fraction).
    The loss panel shows ``loss_total``, plus ``loss_main`` and any other ``loss_*`` part (``loss_aux``) when
    the run had more than one. Without evaluation records (a run still in its first epoch) the mIoU panel is
    empty and says so.

    Returns:
        ``out_png`` as a Path (parent folders are created). The picture is 1500 x 400 px.
    """
    if not train and not val:
        raise DataError(f"{title}: no training or evaluation records to draw")

    fig = _new_figure((15, 4))
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3, sharex=True)
    fig.suptitle(f"{title}: learning curves")

    steps = [r["step"] for r in train]
    loss_keys = sorted(
        {k for r in train for k in r if k.startswith("loss_")}, key=lambda k: (k != "loss_total", k != "loss_main", k)
    )
    if loss_keys == ["loss_total", "loss_main"]:
        loss_keys = ["loss_total"]  # without extra terms main == total; one line says it all
    for key in loss_keys:
        ys = [float(r.get(key, math.nan)) for r in train]  # NaN leaves a gap where a part was not logged
        main_line = key == "loss_total"
        ax_loss.plot(steps, ys, label=key.removeprefix("loss_"), linewidth=1.8 if main_line else 1.0)
    if len(loss_keys) > 1:
        ax_loss.legend(fontsize=9)
    if not train:
        _no_data(ax_loss, "no training records")
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")

    if train:
        ax_lr.plot(steps, [float(r.get("lr", math.nan)) for r in train], color="C2")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        _no_data(ax_lr, "no training records")
    ax_lr.set(title="learning rate", xlabel="step", ylabel="lr")

    if val:
        val_steps = [r["step"] for r in val]
        miou = [100.0 * float(r["val"].get("miou", math.nan)) for r in val]
        ax_val.plot(val_steps, miou, "o-", color="C3", markersize=4)
        finite = [(m, s) for m, s in zip(miou, val_steps, strict=True) if not math.isnan(m)]
        if finite:
            best, best_step = max(finite)
            ax_val.plot([best_step], [best], "*", color="C3", markersize=12)
            # mIoU curves rise from lower left to upper right, so the lower right corner is usually free.
            ax_val.text(
                0.97, 0.05, f"best {best:.2f} @ step {best_step}", transform=ax_val.transAxes, ha="right", fontsize=9
            )
    else:
        _no_data(ax_val, "no evaluation records yet")
        ax_val.set_ylim(0, 100)
    ax_val.set(title="validation mIoU", xlabel="step", ylabel="mIoU (%)")

    for ax in (ax_loss, ax_lr, ax_val):
        ax.grid(alpha=0.3)
    return _save(fig, out_png)


def _compact(count: float) -> str:
    """Pixel counts run into the millions; ``1234567 -> '1.2M'``, ``847600 -> '848k'`` fit inside a cell."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= limit:
            scaled = count / limit
            return f"{scaled:.0f}{suffix}" if abs(scaled) >= 100 else f"{scaled:.1f}{suffix}"
    return f"{count:.0f}"


def _percent_cell(share: float) -> str:
    """A share in 0..1 as whole percent; a rare confusion would round to "0", which reads like "never"."""
    return f"{100 * share:.0f}" if share >= 0.005 else "<1"


def plot_confusion_matrix(
    matrix: np.ndarray | Tensor,
    classes: Sequence[str],
    out_png: PathLike,
    normalize: Literal["true", "pred", "all"] | None = "true",
) -> Path:
    """A heat map of a ``(C, C)`` confusion matrix (rows ground truth, columns prediction, as in metrics).

    Args:
        matrix: ``(C, C)`` pixel counts, ``matrix[t, p]`` = pixels of class ``t`` predicted as ``p``.
        classes: ``C`` names, shown on both axes.
        out_png: where to write the PNG (parent folders are created).
        normalize: ``"true"`` divides each row by its total (the recall view: where do class ``t``'s pixels
            go), ``"pred"`` each column, ``"all"`` the whole matrix, ``None`` shows raw counts. Rows or
            columns with no pixels are drawn light grey.

    When ``C <= 25`` every non-empty cell is written in: whole percent when normalised (``<1`` for a
    non-zero share below 0.5 %), compact counts (``1.2M``) otherwise; cells with zero pixels are left blank
    so the mistakes that do happen stand out.

    Returns:
        ``out_png`` as a Path.
    """
    counts = (matrix.detach().cpu().numpy() if isinstance(matrix, Tensor) else np.asarray(matrix)).astype(np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"matrix must be (C, C), got shape {tuple(counts.shape)}")
    c = counts.shape[0]
    if len(classes) != c:
        raise ValueError(f"got {len(classes)} class names for a {c}x{c} matrix")
    if normalize not in ("true", "pred", "all", None):
        raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}")

    if normalize is None:
        shown = counts
    else:
        total = {"true": counts.sum(1, keepdims=True), "pred": counts.sum(0, keepdims=True), "all": counts.sum()}[
            normalize
        ]
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(total > 0, counts / total, np.nan)  # an empty row has no distribution to show

    side = float(np.clip(3.0 + 0.45 * c, 6.0, 24.0))
    fig = _new_figure((side + 1.2, side))  # first, so a missing matplotlib gets the friendly message
    import matplotlib
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.88")
    vmax = 1.0 if normalize is not None else max(float(np.nanmax(counts)), 1.0)
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    if normalize is not None:
        bar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    else:
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))

    # Tick labels shrink with the number of classes so that 150 (ADE20K) still fit beside each other.
    cell_pt = side * 0.75 * 72 / c
    tick_pt = float(np.clip(cell_pt * 0.6, 4.0, 10.0))
    ax.set_xticks(range(c), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_pt)
    ax.set_yticks(range(c), classes, fontsize=tick_pt)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    what = {"true": "% of each ground-truth class", "pred": "% of each predicted class", "all": "% of all pixels"}
    ax.set_title(f"confusion matrix ({what[normalize]})" if normalize else "confusion matrix (pixels)")

    if c <= 25:
        text_pt = float(np.clip(cell_pt * 0.33, 6.0, 10.0))
        for t in range(c):
            for p in range(c):
                if counts[t, p] == 0 or np.isnan(shown[t, p]):
                    continue
                value = shown[t, p]
                text = _compact(value) if normalize is None else _percent_cell(value)
                dark = value > 0.55 * vmax  # white on the dark end of the colour map, black elsewhere
                ax.text(p, t, text, ha="center", va="center", fontsize=text_pt, color="white" if dark else "black")
    return _save(fig, out_png)


def plot_per_class_iou(
    iou: np.ndarray | Tensor,
    classes: Sequence[str],
    out_png: PathLike,
    palette: Sequence[RGB] | None = None,
) -> Path:
    """A horizontal bar per class with its IoU in %, and the mIoU (NaN-mean) as a dashed line.

    Args:
        iou: ``(C,)`` IoU in 0..1, NaN for classes excluded from the mean (``SegMetrics.iou``).
        classes: ``C`` names, listed top to bottom in class order.
        out_png: where to write the PNG (parent folders are created).
        palette: colours the bars with the class colours (outlined, so white classes still show);
            one colour for all bars when omitted.

    Excluded (NaN) classes get no bar and the text ``n/a``, so they cannot be read as a score of 0.

    Returns:
        ``out_png`` as a Path. The picture is 800 px wide and grows with ``C``.
    """
    values = (iou.detach().cpu().numpy() if isinstance(iou, Tensor) else np.asarray(iou)).astype(np.float64)
    values = values.reshape(-1)
    c = len(values)
    if len(classes) != c:
        raise ValueError(f"got {len(classes)} class names for {c} IoU values")
    colours: Any = "C0"
    if palette is not None:
        pal = _palette_array(palette)
        if len(pal) < c:
            raise ValueError(f"palette has {len(pal)} colours for {c} classes")
        colours = pal[:c] / 255.0

    pct = 100.0 * values
    fig = _new_figure((8.0, float(np.clip(1.2 + 0.32 * c, 3.0, 48.0))))
    ax = fig.subplots()
    y = np.arange(c)
    ax.barh(y, np.nan_to_num(pct, nan=0.0), color=colours, edgecolor="0.25", linewidth=0.6)
    ax.set_yticks(y, classes, fontsize=9 if c <= 40 else 7)
    ax.invert_yaxis()  # class 0 at the top, like a table
    for i, v in enumerate(pct):
        if np.isnan(v):
            ax.text(1.0, i, "n/a", va="center", ha="left", fontsize=9, color="0.4", style="italic")
        else:
            ax.text(v + 1.0, i, f"{v:.1f}", va="center", ha="left", fontsize=8)
    title = "per-class IoU"
    if np.isfinite(pct).any():
        miou = float(np.nanmean(pct))
        # The mean goes in the title rather than a legend box, which could cover a long bar.
        ax.axvline(miou, color="0.2", linestyle="--", linewidth=1.0)
        title += f" (dashed: mIoU {miou:.2f})"
    ax.set_xlim(0, 110)  # room right of a 100 % bar for its number
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("IoU (%)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_png)
