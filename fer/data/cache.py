"""Decoded-array cache: a second load of the same source is near-instant.

Decoding FER+'s 32k PNGs takes seconds (about 6.5 s on 2 cores); a warm load,
the fingerprint below plus reading one uncompressed .npz, a fraction of a
second (`benchmarks/data_loading.py`). Entries are keyed by a fingerprint of
the source (every file's relative path, size and modification time, plus the
load options), so any change to the source or the options misses the cache
and reloads. Nothing is ever served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fer.data.splits import BadItem, LabelMode, Split, Splits

# Bump when a loader's output for the same input changes, so old entries miss.
CACHE_FORMAT = 1
SPLIT_NAMES = ("train", "val", "test")


def default_cache_dir() -> Path:
    """$FER_CACHE_DIR, else $XDG_CACHE_HOME/fer, else ~/.cache/fer."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fer"


def fingerprint(paths: list[Path], options: dict) -> str:
    """A digest of everything a load depends on: the files under `paths` and the options."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, **options}, sort_keys=True, default=str).encode())
    for root in map(Path, paths):
        digest.update(f"{root.resolve()}\n".encode())
        files = [((".",), root.stat())] if root.is_file() else sorted(_files_below(root))
        digest.update("".join(f"{'/'.join(parts)}\0{st.st_size}\0{st.st_mtime_ns}\n" for parts, st in files).encode())
    return digest.hexdigest()[:32]


def _files_below(root: Path):
    """(relative path parts, stat) of every file below `root`; symlinked folders are not entered.

    One os.scandir walk, one stat a file: a warm load of FER+ (32k files) is
    mostly this walk, and pathlib's rglob + is_file + stat took three times as
    long. Sorting the parts tuples gives pathlib's order, so digests are unchanged.
    """
    pending = [((), root)]
    while pending:
        parts, folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(((*parts, entry.name), entry.path))
                elif entry.is_file():
                    yield (*parts, entry.name), entry.stat()


def read(cache_dir: Path, key: str) -> Splits | None:
    """The cached Splits for `key`, or None on a miss (or an unreadable entry)."""
    entry = Path(cache_dir) / f"{key}.npz"
    if not entry.exists():
        return None
    try:
        with np.load(entry, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            splits = {
                name: Split(arrays[f"{name}_images"], arrays[f"{name}_labels"], arrays[f"{name}_targets"])
                for name in SPLIT_NAMES
                if f"{name}_images" in arrays
            }
    except (OSError, ValueError, KeyError):
        return None  # a truncated or foreign file: reload and overwrite it
    return Splits(
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        source=meta["source"],
        label_mode=LabelMode(meta["label_mode"]),
        location=meta["location"],
        dropped=meta["dropped"],
        bad=tuple(BadItem(**item) for item in meta["bad"]),
    )


def write(cache_dir: Path, key: str, splits: Splits) -> Path:
    """Store `splits` under `key`; atomic, so a killed process never leaves half an entry."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, split in splits.items():
        arrays[f"{name}_images"] = split.images
        arrays[f"{name}_labels"] = split.labels
        arrays[f"{name}_targets"] = split.targets
    meta = {
        "source": splits.source,
        "label_mode": splits.label_mode.value,
        "location": splits.location,
        "dropped": splits.dropped,
        "bad": [{"location": b.location, "reason": b.reason} for b in splits.bad],
    }
    arrays["meta"] = np.array(json.dumps(meta))
    entry = cache_dir / f"{key}.npz"
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, entry)
    return entry
