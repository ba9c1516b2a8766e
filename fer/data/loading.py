"""`load`: one entry point for every data source, with source detection and caching."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from fer.data import cache
from fer.data._bad import not_a_regular_file, printable, require_file, shown
from fer.data.splits import DataError, LabelMode, Splits

SYNTHETIC = "synthetic"
DEFAULT_SYNTHETIC_TRAIN_SIZE = 4000


def show_progress(iterable, total: int, desc: str):
    """Wrap a long decode loop in a progress bar on stderr (stdout stays clean for results)."""
    with click.progressbar(iterable, length=total, label=desc, file=sys.stderr, show_pos=True) as bar:
        yield from bar


def describe_source(data) -> tuple[str, Path | None]:
    """Which source `data` names: ("synthetic", None) or (source kind, path).

    Accepts "synthetic" or "synthetic:N" (N training faces), a FER+ root
    (holding FER2013Train/), a fer2013.csv file or a folder holding one, or a
    class-per-folder tree (holding train/).
    """
    if data is None or str(data) == SYNTHETIC or str(data).startswith(f"{SYNTHETIC}:"):
        synthetic_train_size(data)  # "synthetic:abc" is refused here, at the door, like a missing path
        return SYNTHETIC, None
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(
            f"Data path {printable(path)!r} does not exist. Give a FER+ folder (with FER2013Train/), "
            "a fer2013.csv file, a class-per-folder tree (with train/), or 'synthetic'."
        )
    if problem := not_a_regular_file(path):
        raise DataError(f"Data path {printable(path)!r} {problem}. Give a folder or a fer2013.csv file.")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "fer2013", path
        raise DataError(
            f"{printable(path)} is a file but not a .csv; only fer2013.csv-style files can be loaded directly."
        )
    if (path / "FER2013Train").is_dir():
        return "ferplus", path
    if (path / "fer2013.csv").is_file():
        return "fer2013", path / "fer2013.csv"
    if (path / "train").is_dir():
        return "folders", path
    raise DataError(
        f"Cannot tell what data {printable(path)} holds: expected FER2013Train/ (FER+), fer2013.csv, "
        f"or train/<class>/ image folders inside it; found {_some_names(path)}."
    )


def _some_names(folder: Path, count: int = 10) -> str:
    """The first `count` names in `folder`, each quoted short, for a message."""
    try:
        names = sorted(child.name for child in folder.iterdir())
    except OSError as err:
        return f"nothing readable ({err.strerror or err})"
    return "[" + ", ".join(shown(name, 40) for name in names[:count]) + (", ...]" if len(names) > count else "]")


def synthetic_train_size(data) -> int:
    if data is None or str(data) == SYNTHETIC:
        return DEFAULT_SYNTHETIC_TRAIN_SIZE
    size = str(data).split(":", 1)[1]
    if not size.isdigit() or int(size) < 8:
        raise DataError(f"'synthetic:N' needs a whole number N >= 8 of training faces; got {shown(data)}.")
    return int(size)


def load(
    data=None,
    *,
    label_mode: str | LabelMode = LabelMode.MAJORITY,
    skip_bad: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    ferplus_labels=None,
    use_cache: bool = True,
    cache_dir=None,
    progress: bool = True,
) -> Splits:
    """Load train / val / test faces from any supported source.

    Args:
        data: a path (FER+ root, fer2013.csv, class-per-folder tree) or
            "synthetic[:N]"; None means the embedded synthetic default.
        label_mode: "majority" or "probability" (see `LabelMode`).
        skip_bad: skip unreadable images and malformed rows, counting them in
            `Splits.bad`, instead of failing on the first load that meets any.
        val_fraction, seed: how a folder tree without val/ has val carved
            from train (stratified); the synthetic generator's seed.
        ferplus_labels: for fer2013.csv, FER+'s fer2013new.csv (found beside
            the csv when not given) to get the 8 FER+ classes.
        use_cache, cache_dir: decoded arrays are cached (see `fer.data.cache`).
        progress: show a progress bar while decoding.
    """
    label_mode = LabelMode.parse(label_mode)
    kind, path = describe_source(data)
    if kind == SYNTHETIC:
        from fer.data.synthetic import load_synthetic

        return load_synthetic(train_size=synthetic_train_size(data), seed=seed, label_mode=label_mode)

    options = {"kind": kind, "label_mode": label_mode.value, "skip_bad": skip_bad}
    inputs = [path]
    if kind == "folders":
        options.update(val_fraction=val_fraction, seed=seed)
    if kind == "fer2013":
        labels = Path(ferplus_labels) if ferplus_labels else path.parent / "fer2013new.csv"
        if ferplus_labels:
            require_file(labels, "FER+ label file", "Give the path of FER+'s fer2013new.csv, or leave it out.")
        if labels.is_file() and not not_a_regular_file(labels):
            inputs.append(labels)
            ferplus_labels = labels
    key = _cache_key(inputs, options) if use_cache else None
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()

    if key and (cached := cache.read(cache_dir, key)) is not None:
        return cached
    started = time.monotonic()
    splits = _load_from_source(kind, path, label_mode, skip_bad, val_fraction, seed, ferplus_labels, progress)
    if key:
        try:
            cache.write(cache_dir, key, splits)
        except OSError as err:  # a read-only home must not stop training
            print(f"fer: could not write the data cache in {printable(cache_dir)}: {err}", file=sys.stderr)
    if progress:
        print(f"fer: loaded {kind} data from {path} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return splits


def _cache_key(inputs: list[Path], options: dict) -> str | None:
    """The cache key, or None (no caching) when the source cannot be walked: the loader then says why."""
    try:
        return cache.fingerprint(inputs, options)
    except OSError:
        return None


def _load_from_source(kind, path, label_mode, skip_bad, val_fraction, seed, ferplus_labels, progress):
    common = {"label_mode": label_mode, "skip_bad": skip_bad, "progress": show_progress if progress else None}
    if kind == "ferplus":
        from fer.data.ferplus import load_ferplus

        return load_ferplus(path, **common)
    if kind == "fer2013":
        from fer.data.fer2013 import load_fer2013_csv

        return load_fer2013_csv(path, ferplus_labels=ferplus_labels, **common)
    from fer.data.folders import load_folders

    return load_folders(path, val_fraction=val_fraction, seed=seed, **common)

