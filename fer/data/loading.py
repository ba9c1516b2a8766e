"""`load`: one entry point for every data source, with source detection and caching."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from fer.data import cache
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
        return SYNTHETIC, None
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(
            f"Data path {str(path)!r} does not exist. Give a FER+ folder (with FER2013Train/), "
            "a fer2013.csv file, a class-per-folder tree (with train/), or 'synthetic'."
        )
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "fer2013", path
        raise DataError(f"{path} is a file but not a .csv; only fer2013.csv-style files can be loaded directly.")
    if (path / "FER2013Train").is_dir():
        return "ferplus", path
    if (path / "fer2013.csv").is_file():
        return "fer2013", path / "fer2013.csv"
    if (path / "train").is_dir():
        return "folders", path
    raise DataError(
        f"Cannot tell what data {path} holds: expected FER2013Train/ (FER+), fer2013.csv, "
        f"or train/<class>/ image folders inside it; found {sorted(p.name for p in path.iterdir())[:10]}."
    )


def synthetic_train_size(data) -> int:
    if data is None or str(data) == SYNTHETIC:
        return DEFAULT_SYNTHETIC_TRAIN_SIZE
    size = str(data).split(":", 1)[1]
    if not size.isdigit() or int(size) < 8:
        raise DataError(f"'synthetic:N' needs a whole number N >= 8 of training faces; got {data!r}.")
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
        if ferplus_labels and not labels.is_file():
            raise DataError(f"FER+ label file {str(labels)!r} does not exist.")
        if labels.is_file():
            inputs.append(labels)
            ferplus_labels = labels
    key = cache.fingerprint(inputs, options)
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()

    if use_cache and (cached := cache.read(cache_dir, key)) is not None:
        return cached
    started = time.monotonic()
    splits = _load_from_source(kind, path, label_mode, skip_bad, val_fraction, seed, ferplus_labels, progress)
    if use_cache:
        try:
            cache.write(cache_dir, key, splits)
        except OSError as err:  # a read-only home must not stop training
            print(f"fer: could not write the data cache in {cache_dir}: {err}", file=sys.stderr)
    if progress:
        print(f"fer: loaded {kind} data from {path} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return splits


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

