"""The Kaggle / ICML 2013 `fer2013.csv`, optionally relabelled with FER+'s `fer2013new.csv`.

fer2013.csv: header `emotion,pixels,Usage`, one face per row, 2,304 space
separated pixel values (48x48, row-major). Usage Training / PublicTest /
PrivateTest become train / val / test. Its 7 emotion codes (0 Angry,
1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral) map onto EMOTIONS;
contempt never occurs.

fer2013new.csv (FER+): the same rows in the same order, with 10 vote counts
instead of one code (header `Usage,Image name,neutral,...,contempt,unknown,NF`).
With it the labels are FER+'s 8 classes, by the same rule as `load_ferplus`;
rows whose image name is empty were dropped by FER+ and are dropped here too.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fer.data._bad import (
    BadItems,
    Progress,
    count_lines,
    csv_rows,
    iterate,
    parse_votes,
    printable,
    require_file,
    shown,
)
from fer.data.ferplus import VOTE_COLUMNS, vote_target
from fer.data.splits import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, DataError, LabelMode, Split, Splits

SOURCE = "fer2013"
PIXELS = IMAGE_SIZE * IMAGE_SIZE
# The fewest bytes a row with a usable face can take: 2,304 one-digit values and
# the 2,303 separators between them. File size // this bounds the number of faces.
MIN_FACE_BYTES = 2 * PIXELS - 1
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# fer2013 code -> index into EMOTIONS.
FER2013_TO_EMOTIONS = tuple(
    EMOTIONS.index(name)
    for name in ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
)
FERPLUS_LABELS_NAME = "fer2013new.csv"
FERPLUS_HEADER = ("usage", "image name", *EMOTIONS, "unknown", "nf")
REQUIRED_COLUMNS = ("emotion", "pixels", "usage")


def load_fer2013_csv(
    path,
    *,
    ferplus_labels=None,
    label_mode: LabelMode | str = LabelMode.MAJORITY,
    skip_bad: bool = False,
    progress: Progress | None = None,
) -> Splits:
    """Load fer2013.csv (`path`: the file, or a folder holding it).

    Labels: FER+'s 8 classes when `ferplus_labels` (a fer2013new.csv) is given
    or a fer2013new.csv sits beside the csv; fer2013's own 7 otherwise (one-hot
    targets in either label mode). Malformed rows fail the load (all listed,
    first 5 shown) unless `skip_bad`, which leaves them out and returns them in `bad`.
    """
    label_mode = LabelMode.parse(label_mode)
    csv_path = Path(path).expanduser()
    if csv_path.is_dir():
        csv_path = csv_path / "fer2013.csv"
    require_file(csv_path, "fer2013 CSV file", "Give the path of fer2013.csv (header emotion,pixels,Usage).")
    if ferplus_labels is not None:
        labels_path = Path(ferplus_labels).expanduser()
        require_file(labels_path, "FER+ label file", "Give the path of FER+'s fer2013new.csv, or leave it out.")
    else:
        beside = csv_path.parent / FERPLUS_LABELS_NAME
        labels_path = beside if beside.is_file() and beside.resolve() != csv_path.resolve() else None

    described = f"fer2013 data {printable(csv_path)}"
    bad = BadItems(described + (f" with FER+ labels {printable(labels_path)}" if labels_path else ""), skip_bad)
    votes_by_row = _read_ferplus_labels(labels_path, bad) if labels_path else None
    total = len(votes_by_row) if votes_by_row is not None else max(count_lines(csv_path) - 1, 0)

    rows, header_line, header = _rows_after_header(
        csv_path, f"{printable(csv_path)} is empty. A fer2013.csv starts with the header emotion,pixels,Usage."
    )
    columns = _column_indices(csv_path, header_line, header)
    n_columns = len(header)
    emotion_col, pixels_col, usage_col = (columns[name] for name in REQUIRED_COLUMNS)

    # Sized by what the file can hold, not by its line count alone: 6 rows followed by
    # 20 MB of blank lines must not ask for 43 GiB.
    images = np.empty((min(total, _file_size(csv_path) // MIN_FACE_BYTES), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    n_images = 0
    kept = {name: [] for name in USAGE_TO_SPLIT.values()}  # index into images, label, target
    dropped = {name: 0 for name in USAGE_TO_SPLIT.values()}
    seen_splits = set()
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)
    n_rows = 0
    for index, (line, row) in enumerate(iterate(progress, rows, total, csv_path.name)):
        n_rows = index + 1
        if votes_by_row is not None and index >= len(votes_by_row):
            n_rows = index + 1 + sum(1 for _ in rows)
            break
        where = f"{printable(csv_path)}, line {line}"
        if len(row) != n_columns:
            bad.add(where, f"expected {n_columns} columns (header {shown(','.join(header))}), got {len(row)}")
            continue
        usage = row[usage_col].strip()
        split = USAGE_TO_SPLIT.get(usage)
        if split is None:
            bad.add(where, f"Usage {shown(usage)} is not one of {', '.join(USAGE_TO_SPLIT)}")
            continue
        seen_splits.add(split)
        if votes_by_row is not None:
            entry = votes_by_row[index]
            if entry is None:  # a bad row of the label file, already reported
                continue
            label_line, label_usage, votes = entry
            if label_usage != usage:
                raise DataError(
                    f"{printable(csv_path)}, line {line} has Usage {shown(usage)} but {printable(labels_path)}, "
                    f"line {label_line} (the same row) has {shown(label_usage)}. fer2013new.csv must list the rows of this "
                    "fer2013.csv in the same order; use the fer2013new.csv made for this file, or leave it out."
                )
            if votes is None:  # no image name: FER+ dropped this face
                dropped[split] += 1
                continue
            rule = vote_target(votes, label_mode, split)
            if rule is None:
                dropped[split] += 1
                continue
            label, target = rule
        else:
            code = row[emotion_col].strip()
            # len() first: int() of a 5,000-digit code would raise instead of reporting it.
            if not (code.isascii() and code.isdigit() and len(code) <= 3 and int(code) < len(FER2013_TO_EMOTIONS)):
                bad.add(where, f"emotion {shown(code)} is not a fer2013 code 0-6 ({', '.join(FER2013_EMOTIONS)})")
                continue
            label = FER2013_TO_EMOTIONS[int(code)]
            target = one_hot[label]
        try:
            images[n_images] = _parse_pixels(row[pixels_col]).reshape(IMAGE_SIZE, IMAGE_SIZE)
        except ValueError as err:
            bad.add(where, str(err))
            continue
        kept[split].append((n_images, label, target))
        n_images += 1
    if votes_by_row is not None and n_rows != len(votes_by_row):
        raise DataError(
            f"{printable(csv_path)} has {n_rows} data rows but {printable(labels_path)} has {len(votes_by_row)}. fer2013new.csv must "
            "list the rows of this fer2013.csv in the same order (FER+'s file belongs to the original "
            "35,887-row fer2013.csv); use the matching files, or leave the FER+ labels out."
        )
    bad.raise_if_any()

    splits = {}
    for name, items in kept.items():
        if not items:
            if name == "test" and name not in seen_splits:
                continue  # no PrivateTest rows at all: no test split
            usage = next(u for u, s in USAGE_TO_SPLIT.items() if s == name)
            raise DataError(
                f"{printable(csv_path)} has no usable {usage} rows, so the {name} split would be empty "
                f"({dropped[name]} dropped by the label rule). A fer2013.csv needs Training and PublicTest rows."
            )
        rows_idx = np.fromiter((item[0] for item in items), np.int64, len(items))
        labels = np.fromiter((item[1] for item in items), np.int64, len(items))
        targets = np.array([item[2] for item in items], np.float32)
        splits[name] = Split(images[rows_idx], labels, targets)
    kept_dropped = {name: count for name, count in dropped.items() if name in splits}
    return Splits.from_named(
        splits, source=SOURCE, label_mode=label_mode, location=str(csv_path.resolve()), dropped=kept_dropped,
        bad=bad.result(),
    )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as err:
        raise DataError(f"Cannot read {printable(path)}: {err.strerror or err}.") from err


def _rows_after_header(path: Path, empty_message: str):
    """(the rows after the header, the header's line number, the header); DataError(empty_message) if empty."""
    rows = csv_rows(path)
    header_line, header = next(rows, (1, None))
    if header is None:
        raise DataError(empty_message)
    return rows, header_line, header


def _column_indices(csv_path: Path, line: int, header: list[str]) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise DataError(
            f"{printable(csv_path)}, line {line}: the header {shown(','.join(header))} lacks the column(s) "
            f"{', '.join(missing)}. A fer2013.csv starts with the header emotion,pixels,Usage."
        )
    return {name: names.index(name) for name in REQUIRED_COLUMNS}


def _read_ferplus_labels(path: Path, bad: BadItems) -> list:
    """One entry per data row: (line, usage, votes or None when FER+ dropped it), or None for a bad row."""
    rows, header_line, header = _rows_after_header(
        path, f"FER+ label file {printable(path)} is empty. It starts with the header {','.join(FERPLUS_HEADER)}."
    )
    if tuple(cell.strip().lower() for cell in header) != FERPLUS_HEADER:
        raise DataError(
            f"{printable(path)}, line {header_line}: the header is {shown(','.join(header))}, expected "
            "'Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF'. "
            "Is this FER+'s fer2013new.csv?"
        )
    entries = []
    for line, row in rows:
        where = f"{printable(path)}, line {line}"
        if len(row) != len(FERPLUS_HEADER):
            bad.add(where, f"expected {len(FERPLUS_HEADER)} columns (Usage, Image name, {VOTE_COLUMNS} vote counts), "
                    f"got {len(row)}")
            entries.append(None)
            continue
        usage = row[0].strip()
        if not row[1].strip():
            entries.append((line, usage, None))
            continue
        try:
            votes = parse_votes(row[2:])
        except ValueError as err:
            bad.add(where, str(err))
            entries.append(None)
            continue
        if not votes.any():
            bad.add(where, f"all {VOTE_COLUMNS} vote counts are zero: the row has no label")
            entries.append(None)
            continue
        entries.append((line, usage, votes))
    return entries


def _parse_pixels(text: str) -> np.ndarray:
    """2,304 whitespace-separated values 0-255 -> uint8; ValueError naming the problem.

    Fast path: numpy's C text parser, np.fromstring with sep=" " (its text
    mode is supported; only the binary mode, sep="", is deprecated). It stops
    at the first token that is not a number: numpy >= 2.3 raises ValueError
    there, older versions warn (DeprecationWarning, made an error here). Any
    failure, wrong count or out-of-range value goes to the token-by-token
    path, which finds the offending token for the message.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        if values.size == PIXELS and values.min() >= 0 and values.max() <= 255:
            return values.astype(np.uint8)
    except (ValueError, DeprecationWarning):
        pass
    return _parse_pixels_slowly(text)


def _parse_pixels_slowly(text: str) -> np.ndarray:
    tokens = text.split()
    for position, token in enumerate(tokens, 1):
        if not (token.isascii() and token.isdigit()):
            raise ValueError(f"pixel {position} is {shown(token)}, not a whole number 0-255")
        if len(token) > 3 or int(token) > 255:  # int() of a 5,000-digit token would raise
            raise ValueError(f"pixel {position} is {token if len(token) <= 3 else shown(token)}, outside 0-255")
    if len(tokens) != PIXELS:
        raise ValueError(f"expected {PIXELS} pixel values (48x48), got {len(tokens)}")
    return np.array(tokens, dtype=np.int64).astype(np.uint8)
