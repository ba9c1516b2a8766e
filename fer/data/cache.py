"""Decoded-array cache: a second load of the same source is near-instant.

Decoding FER+'s 32k PNGs takes seconds (about 6.5 s on 2 cores); a warm load,
the fingerprint below plus reading one uncompressed .npz, a fraction of a
second (`benchmarks/data_loading.py`). Entries are keyed by a fingerprint of
the source (every file's relative path, size and modification time, plus the
load options), so any change to the source or the options misses the cache
and reloads. Nothing is ever served stale.

A broken entry (truncated, emptied, a flipped byte, a missing array, another
program's file) is a miss: a `CacheWarning` names it, it is removed, and the
load decodes the source again and writes a fresh entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np

from fer.data._bad import printable
from fer.data.splits import BadItem, LabelMode, Split, Splits
from fer.utils.atomic import atomic_output

# Bump when a loader's output for the same input changes, so old entries miss.
CACHE_FORMAT = 2  # 2: probability labels keep the majority rule's validation and test images
SPLIT_NAMES = ("train", "val", "test")


class CacheWarning(UserWarning):
    """A cache entry could not be used and is being rebuilt; training goes on."""


def default_cache_dir() -> Path:
    """$FER_CACHE_DIR, else $XDG_CACHE_HOME/fer, else ~/.cache/fer."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fer"


def fingerprint(paths: list[Path], options: dict) -> str:
    """A digest of everything a load depends on: the files under `paths` and the options.

    Folders are walked the way the loaders read them: links to folders are
    followed (a tree assembled from symlinks is read through them, so adding
    an image behind a link changes the digest), a link back to a folder the
    walk is already inside is not entered again (the loader refuses such a
    tree), and only regular files count (a FIFO or device is never read).
    File names need not be UTF-8: they are digested as the bytes the OS holds.
    OSError if a folder cannot be listed.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, **options}, sort_keys=True, default=str).encode())
    for root in map(Path, paths):
        digest.update(os.fsencode(root.resolve()) + b"\n")
        files = [((".",), root.stat())] if root.is_file() else sorted(_files_below(root))
        digest.update(b"".join(_file_line(parts, st) for parts, st in files))
    return digest.hexdigest()[:32]


def _file_line(parts: tuple[str, ...], st: os.stat_result) -> bytes:
    # os.fsencode gives back the bytes of a name that is not UTF-8; for every other
    # name it is the UTF-8 that str.encode gave, so existing digests are unchanged.
    return os.fsencode("/".join(parts)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode()


def _files_below(root: Path):
    """(relative path parts, stat) of every regular file below `root`, following links to folders.

    One os.scandir walk, one stat a file: a warm load of FER+ (32k files) is
    mostly this walk, and pathlib's rglob + is_file + stat took three times as
    long. Sorting the parts tuples gives pathlib's order, so digests of trees
    without linked folders are unchanged. A folder whose (device, inode) is
    already on the path from `root` is a link cycle and is not entered again.
    """
    root_stat = os.stat(root)
    pending = [((), root, frozenset({(root_stat.st_dev, root_stat.st_ino)}))]
    while pending:
        parts, folder, ancestors = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    st = entry.stat()  # follows links, as the loaders do when they open a path
                except OSError:
                    continue  # a dangling link: nothing a loader could read
                if stat.S_ISDIR(st.st_mode):
                    identity = (st.st_dev, st.st_ino)
                    if identity not in ancestors:
                        pending.append(((*parts, entry.name), entry.path, ancestors | {identity}))
                elif stat.S_ISREG(st.st_mode):
                    yield (*parts, entry.name), st


def read(cache_dir: Path, key: str) -> Splits | None:
    """The cached Splits for `key`, or None on a miss.

    An entry that cannot be used is a miss too: it is removed, with a
    CacheWarning naming the file, so the caller decodes the source again and
    writes a fresh entry. Never raises for what the entry holds.
    """
    entry = Path(cache_dir) / f"{key}.npz"
    if not entry.exists():
        return None
    try:
        return _read_entry(entry)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file (BadZipFile, EOFError,
        # KeyError, a huge shape in a flipped header: MemoryError ...), it is a miss, never a crash
        warnings.warn(
            f"Data cache entry {printable(entry)} is unreadable ({type(err).__name__}: {str(err)[:200]}); "
            "it was removed and the data is being loaded from the source again.",
            CacheWarning,
            stacklevel=3,
        )
        with contextlib.suppress(OSError):
            entry.unlink()
        return None


def _read_entry(entry: Path) -> Splits:
    with np.load(entry, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"][()]))
        splits = {
            name: Split(arrays[f"{name}_images"], arrays[f"{name}_labels"], arrays[f"{name}_targets"])
            for name in SPLIT_NAMES
            if f"{name}_images" in arrays
        }
    return Splits.from_named(
        splits,
        source=str(meta["source"]),
        label_mode=LabelMode(meta["label_mode"]),
        location=str(meta["location"]),
        dropped={str(name): int(count) for name, count in meta["dropped"].items()},
        bad=tuple(BadItem(str(item["location"]), str(item["reason"])) for item in meta["bad"]),
    )


def write(cache_dir: Path, key: str, splits: Splits) -> Path:
    """Store `splits` under `key`; OSError if that fails (disk full, read-only).

    Atomic: the arrays go to a temporary file beside the entry, which is
    renamed over it only when complete, and removed on any failure, so neither
    a killed process nor a full disk leaves half an entry or a stray file.
    """
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
    with atomic_output(entry, "the data cache entry") as partial:  # readers see a whole entry or none
        with open(partial, "wb") as tmp:
            np.savez(tmp, **arrays)
    return entry
