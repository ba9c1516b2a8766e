"""Shared by the file-based loaders: bad-item bookkeeping and CSV reading (images: `fer.data.images`).

A loader makes one `BadItems` per load, reports every unusable image or row to
it during the pass, and calls `raise_if_any()` at the end: with skip_bad=False
that fails once, listing the first few problems and the total; with
skip_bad=True the problems are kept and returned in `Splits.bad`.

Errors from numpy, the csv module or the file system never escape raw:
they become a `DataError` (or a `BadImage` reason) that names the file.
"""

from __future__ import annotations

import csv
import itertools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from fer.data.splits import BadItem, DataError
from fer.data.images import ImageError

# How many bad items a failing load lists before "... and N more".
MAX_LISTED = 5

SKIP_HINT = "or load with skip_bad=True (CLI: --skip-bad) to leave them out and count them in Splits.bad"

Progress = Callable[[Iterable, int, str], Iterable]

# The most characters of an input value (a CSV cell, a header, a file name) an
# error message quotes: a 30 MB header line must not become a 30 MB message.
MAX_SHOWN = 80


def shown(value, limit: int = MAX_SHOWN) -> str:
    """`value` quoted for an error message: its repr, cut to `limit` characters with the full length noted.

    repr also makes it printable: control characters and the lone surrogates
    that stand for undecodable bytes in file names are escaped.

    >>> shown("Validation")
    "'Validation'"
    >>> shown("9" * 400, limit=5)
    "'99999'... (400 characters)"
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def printable(path) -> str:
    """A path as printable text: bytes that are not UTF-8 (kept by the OS as surrogates) become \\xNN.

    Paths are shown whole (a user needs all of it to find the file), but a
    name that is not UTF-8 would otherwise make printing the message fail.

    >>> printable(os.fsdecode(b"train/happy/caf\\xe9.png"))
    'train/happy/caf\\\\xe9.png'
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` must not be opened as a data file (a FIFO, device or socket), or None if it may be.

    Opening a FIFO blocks until something writes to it, and a device can be
    endless, so only regular files (or links to them) are ever read. A missing
    or unreadable path is None here: opening it reports that better.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file; it was not opened"


# One image that cannot be used; str(err) says why (without the file name). The
# decoder's own error, under the name the loaders catch.
BadImage = ImageError


class BadItems:
    """The unusable images and rows met during one load."""

    def __init__(self, what: str, skip_bad: bool):
        self.what = what  # e.g. "FER+ data in /data/ferplus"
        self.skip_bad = skip_bad
        self.items: list[BadItem] = []
        self._first_error: BaseException | None = None

    def add(self, location: str | Path, reason: str, error: BaseException | None = None) -> None:
        self.items.append(BadItem(printable(location), reason))
        if self._first_error is None and error is not None:
            self._first_error = error

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        """Fail listing the first MAX_LISTED problems and the total, unless skipping."""
        if not self.items or self.skip_bad:
            return
        total = len(self.items)
        listed = "\n".join(f"  - {item}" for item in self.items[:MAX_LISTED])
        more = f"\n  ... and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
        noun = "item" if total == 1 else "items"
        raise DataError(
            f"{total} bad {noun} in {self.what}:\n{listed}{more}\n"
            f"Fix or remove {'it' if total == 1 else 'them'}, {SKIP_HINT}."
        ) from self._first_error

    def result(self) -> tuple[BadItem, ...]:
        return tuple(self.items)


def iterate(progress: Progress | None, iterable: Iterable, total: int, desc: str) -> Iterable:
    """`iterable`, wrapped in the caller's progress display when there is one."""
    return iterable if progress is None else progress(iterable, total, desc)


def require_dir(path: Path, what: str, hint: str) -> None:
    """DataError unless `path` is a folder (or a link to one); `what` and `hint` word the message."""
    if not path.exists():
        raise DataError(f"{what} {printable(path)!r} does not exist. {hint}")
    if not path.is_dir():
        raise DataError(f"{what} {printable(path)!r} is not a folder. {hint}")


def require_file(path: Path, what: str, hint: str) -> None:
    """DataError unless `path` is a regular file (or a link to one): never a FIFO or device, which could hang."""
    if not path.exists():
        raise DataError(f"{what} {printable(path)!r} does not exist. {hint}")
    if path.is_dir():
        raise DataError(f"{what} {printable(path)!r} is not a file. {hint}")
    if problem := not_a_regular_file(path):
        raise DataError(f"{what} {printable(path)!r} {problem}. {hint}")


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) for each non-blank row of a CSV file; 1-based physical line numbers.

    A row spanning several lines (a quoted newline) is numbered by its first line.
    Unreadable files, bytes that are not UTF-8 text and malformed CSV become a
    DataError naming the file and line.
    """
    line = 1
    try:
        with open(path, "rb") as file:
            lines = _text_lines(path, file)
            for text in lines:
                if '"' in text:
                    # Quoted cells may hold commas or newlines: the csv module reads this
                    # row, pulling as many further lines as it spans.
                    reader = csv.reader(itertools.chain([text], lines))
                    row, span = next(reader, []), reader.line_num
                else:
                    # A line without quotes is plain comma-separated cells, which str.split
                    # reads much faster than the csv module: a fer2013.csv (8 KB rows) loads
                    # in 0.7x the time (BENCHMARKS.md).
                    row, span = text.rstrip("\r\n").split(","), 1
                if any(cell.strip() for cell in row):
                    yield line, row
                line += span
    except csv.Error as err:
        raise DataError(
            f"{printable(path)}, line {line}: not valid CSV ({err}). Fix the file or re-export it as CSV."
        ) from err
    except OSError as err:
        raise _cannot_read(path, err) from err


def _cannot_read(path: Path, err: OSError) -> DataError:
    return DataError(f"Cannot read {printable(path)}: {err.strerror or err}. Check the file's permissions.")


def _text_lines(path: Path, file) -> Iterator[str]:
    """The file's lines decoded one at a time, so an undecodable byte is reported on its own line."""
    for number, data in enumerate(file, 1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{printable(path)}, line {number}: not UTF-8 text (undecodable byte at column {err.start + 1}). "
                "Check that the file is the CSV and not an archive or image, and save it as UTF-8."
            ) from err
        yield text[1:] if number == 1 and text.startswith("\ufeff") else text


def count_lines(path: Path) -> int:
    """Newline-terminated lines in a file (plus a last unterminated one), read in binary chunks."""
    count = 0
    last = b"\n"
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 22):
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as err:
        raise _cannot_read(path, err) from err
    return count + (last != b"\n")


def parse_votes(cells: list[str]) -> np.ndarray:
    """FER+ vote counts -> float64 array; ValueError with a readable reason if any is not a count.

    A count is any non-negative number (FER+ writes whole numbers; shares are
    accepted too), and the counts must sum to a finite number, so that vote
    shares can be taken. The reason quotes at most MAX_SHOWN characters of a cell.

    >>> parse_votes(["4", "0", " 2 "]).tolist()
    [4.0, 0.0, 2.0]
    """
    votes = np.empty(len(cells), np.float64)
    for i, cell in enumerate(cells):
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"vote count {shown(cell.strip())} is not a number") from None
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"vote count {shown(cell.strip())} must be a non-negative number")
        votes[i] = value
    if not np.isfinite(votes.sum()):
        raise ValueError("the vote counts are too large to add up; each is the number of annotators who chose it")
    return votes
