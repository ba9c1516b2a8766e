"""`fer data inspect`: what a data source holds, as a table and a figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from fer.data._bad import printable, shown
from fer.utils.atomic import OutputError, atomic_output
from fer.data.splits import EMOTIONS, DataError, Splits

SAMPLES_PER_CLASS = 8


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest over smallest class among the classes present (inf when one is absent)."""
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) else float("nan")


def describe(splits: Splits) -> str:
    """Per-split class counts and shares, imbalance, and what was dropped or skipped."""
    names = [name for name, _ in splits.items()]
    width = max(len(e) for e in EMOTIONS)
    lines = [f"Source: {splits.source} ({splits.location}), labels: {splits.label_mode.value}", ""]
    lines.append(f"{'class':<{width}}" + "".join(f"{name:>18}" for name in names))
    counts = {name: split.class_counts() for name, split in splits.items()}
    totals = {name: max(len(split), 1) for name, split in splits.items()}
    for index, emotion in enumerate(EMOTIONS):
        cells = "".join(f"{counts[n][index]:>10} ({counts[n][index] / totals[n]:5.1%})" for n in names)
        lines.append(f"{emotion:<{width}}{cells}")
    lines.append(f"{'total':<{width}}" + "".join(f"{len(split):>18}" for _, split in splits.items()))
    lines.append(
        f"{'imbalance':<{width}}" + "".join(f"{imbalance_ratio(counts[n]):>17.1f}x" for n in names)
    )
    for name in names:
        absent = [EMOTIONS[i] for i in np.flatnonzero(counts[name] == 0)]
        if absent:
            lines.append(f"{name}: no images of {', '.join(absent)}")
    for name, count in splits.dropped.items():
        if count:
            lines.append(f"{name}: {count} images dropped by the {splits.label_mode.value} label rule")
    if splits.bad:
        lines.append(f"{len(splits.bad)} bad items skipped; first: {splits.bad[0]}")
    lines[0] = printable(lines[0])  # a location that is not UTF-8 must not stop the printing
    return "\n".join(lines)


def figure_path(path) -> Path:
    """`path` as the place to write the overview figure, or DataError saying what to change.

    Checked before any data is loaded, so a typo costs a second, not a decode:
    the folder must exist (it is not created: a mistyped folder would silently
    scatter figures), and the extension must be one matplotlib writes (.png,
    .pdf, .svg, ...); a name without an extension is written as PNG.

    >>> figure_path("overview.png").name
    'overview.png'
    """
    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = path.suffix.lower().lstrip(".")
    if extension and extension not in formats:
        raise DataError(
            f"Cannot write the figure to {shown(path)}: {shown(path.suffix)} is not an image format matplotlib "
            f"writes. Use one of {', '.join('.' + name for name in sorted(formats))}."
        )
    folder = path.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(
            f"Cannot write the figure to {printable(path)!r}: the folder {printable(folder)!r} {state}. "
            "Create it first, or give a path in an existing folder."
        )
    return path


def plot_overview(splits: Splits, path, seed: int = 0) -> Path:
    """Sample training faces per class (left) and the class distribution per split (right), written to `path`.

    DataError if `path` cannot be written (see `figure_path`; also a full disk
    or a read-only folder), never a raw matplotlib or OS error.
    """
    path = figure_path(path)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(14, 7), layout="constrained")
    faces_area, bars_area = fig.subfigures(1, 2, width_ratios=[1, 1.1])
    axes = faces_area.subplots(len(EMOTIONS), SAMPLES_PER_CLASS)
    faces_area.suptitle("Training faces per class")
    train = splits.train
    for row, emotion in enumerate(EMOTIONS):
        indices = np.flatnonzero(train.labels == row)
        chosen = rng.choice(indices, size=min(SAMPLES_PER_CLASS, len(indices)), replace=False)
        for col in range(SAMPLES_PER_CLASS):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(chosen):
                ax.imshow(train.images[chosen[col]], cmap="gray", vmin=0, vmax=255)
            if col == 0:
                ax.set_ylabel(emotion, rotation=0, ha="right", va="center", fontsize=9)

    ax = bars_area.subplots()
    names = [name for name, _ in splits.items()]
    width = 0.8 / len(names)
    x = np.arange(len(EMOTIONS))
    for i, (name, split) in enumerate(splits.items()):
        counts = split.class_counts()
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, counts, width, label=f"{name} ({len(split)})")
        ax.bar_label(bars, fontsize=7, rotation=90, padding=2)
    ax.set_xticks(x, EMOTIONS, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution: {splits.source}, {splits.label_mode.value} labels")
    ax.margins(y=0.15)
    ax.legend()
    try:
        with atomic_output(path, "the figure") as partial:  # a whole image or none
            fig.savefig(partial, dpi=110, format=Path(path).suffix.lstrip(".").lower() or "png")
    except OSError as err:
        raise DataError(str(err) if isinstance(err, OutputError) else
                        f"Cannot write the figure to {printable(path)!r}: {err.strerror or err}.") from err
    return path
