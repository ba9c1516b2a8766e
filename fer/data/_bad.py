"""Shared by the file-based loaders: bad-item bookkeeping and CSV reading (images: `fer.images`).

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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from fer.data.splits import BadItem, DataError
from fer.images import ImageError

# How many bad items a failing load lists before "... and N more".
MAX_LISTED = 5

SKIP_HINT = "or load with skip_bad=True (CLI: --skip-bad) to leave them out and count them in Splits.bad"

Progress = Callable[[Iterable, int, str], Iterable]


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
        self.items.append(BadItem(str(location), reason))
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
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist. {hint}")
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} is not a folder. {hint}")


def require_file(path: Path, what: str, hint: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist. {hint}")
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} is not a file. {hint}")


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
        raise DataError(f"{path}, line {line}: not valid CSV ({err}). Fix the file or re-export it as CSV.") from err
    except OSError as err:
        raise _cannot_read(path, err) from err


def _cannot_read(path: Path, err: OSError) -> DataError:
    return DataError(f"Cannot read {path}: {err.strerror or err}. Check the file's permissions.")


def _text_lines(path: Path, file) -> Iterator[str]:
    """The file's lines decoded one at a time, so an undecodable byte is reported on its own line."""
    for number, data in enumerate(file, 1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}, line {number}: not UTF-8 text (undecodable byte at column {err.start + 1}). "
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
    """FER+ vote counts -> float64 array; ValueError with a readable reason if any is not a count."""
    votes = np.empty(len(cells), np.float64)
    for i, cell in enumerate(cells):
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"vote count {cell.strip()!r} is not a number") from None
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"vote count {cell.strip()!r} must be a non-negative number")
        votes[i] = value
    return votes
