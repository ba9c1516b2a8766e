"""FER+ in Microsoft's layout: FER2013Train/, FER2013Valid/, optional FER2013Test/.

Each folder holds the 48x48 PNG faces and a headerless `label.csv`:

    fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0

image name, face box (left, top, right, bottom), then the votes of 10
annotators for neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt, unknown, NF (not a face), as the FERPlus repository's `data/`
folder has them. Its `generate_training_data.py` rewrites each label.csv from
fer2013new.csv without the face box (11 columns); such a row is the whole
48x48 face, so both forms are read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from fer.data._bad import (
    BadImage,
    BadItems,
    Progress,
    csv_rows,
    iterate,
    not_a_regular_file,
    parse_votes,
    printable,
    require_dir,
    require_file,
    shown,
)
from fer.data.images import read_face
from fer.data.splits import IMAGE_SIZE, NUM_CLASSES, DataError, LabelMode, Split, Splits

SOURCE = "ferplus"
FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
LABEL_FILE = "label.csv"
VOTE_COLUMNS = NUM_CLASSES + 2  # the 8 emotions, unknown, NF
ROW_COLUMNS = 2 + VOTE_COLUMNS
ROW_COLUMNS_WITHOUT_BOX = 1 + VOTE_COLUMNS  # as generate_training_data.py writes label.csv
FULL_FACE_BOX = f"(0, 0, {IMAGE_SIZE}, {IMAGE_SIZE})"
UNKNOWN, NOT_A_FACE = NUM_CLASSES, NUM_CLASSES + 1

# ASCII digits, at most 9: int() of a 5,000-digit string would raise, and no image is that large.
_COORDINATE = r"\s*(-?[0-9]{1,9})\s*"
_BOX = re.compile(rf"^\s*\(?{_COORDINATE},{_COORDINATE},{_COORDINATE},{_COORDINATE}\)?\s*$")


def vote_target(votes: np.ndarray, label_mode: LabelMode, split: str = "train") -> tuple[int, np.ndarray] | None:
    """FER+'s label rule for one image's 10 vote counts: (label, target), or None to drop it.

    MAJORITY: the argmax over all 10 columns (the first on ties); dropped when
    that is unknown or NF. PROBABILITY: the 8 emotion votes normalised to sum
    to 1, label their argmax; dropped when no annotator chose an emotion.
    The caller treats all-zero votes as a bad row before asking.

    The validation and test splits keep the majority rule's images in both
    modes (an image whose top vote is unknown or NF is dropped there too), so
    accuracy is measured on the same faces whatever the training targets;
    PROBABILITY still gives them the vote distribution as target (for the loss).
    """
    if split != "train" and int(np.argmax(votes)) >= NUM_CLASSES:
        return None
    if label_mode is LabelMode.MAJORITY:
        label = int(np.argmax(votes))
        if label >= NUM_CLASSES:
            return None
        target = np.zeros(NUM_CLASSES, np.float32)
        target[label] = 1.0
        return label, target
    emotion_votes = votes[:NUM_CLASSES]
    total = emotion_votes.sum()
    if total <= 0:
        return None
    return int(np.argmax(emotion_votes)), (emotion_votes / total).astype(np.float32)


def load_ferplus(
    path,
    *,
    label_mode: LabelMode | str = LabelMode.MAJORITY,
    skip_bad: bool = False,
    progress: Progress | None = None,
) -> Splits:
    """Load FER+ from `path` (the folder holding FER2013Train/ and FER2013Valid/).

    Returns train / val, and test when FER2013Test/ exists (else None).
    Images whose label rule drops them are counted in `dropped`; unreadable
    images and malformed label rows fail the load (all listed, first 5 shown)
    unless `skip_bad`, which leaves them out and returns them in `bad`.
    """
    label_mode = LabelMode.parse(label_mode)
    root = Path(path).expanduser()
    layout = f"FER+ expects {FOLDERS['train']}/ and {FOLDERS['val']}/ (and optionally {FOLDERS['test']}/) inside it"
    if root.name in FOLDERS.values() and not (root / FOLDERS["train"]).exists():
        raise DataError(
            f"{printable(root)!r} is one FER+ split folder; give its parent folder instead "
            f"({printable(root.parent)!r}). {layout}."
        )
    require_dir(root, "FER+ folder", f"{layout}.")
    for name in ("train", "val"):
        require_dir(root / FOLDERS[name], f"FER+ {name} folder", f"{layout}.")

    bad = BadItems(f"FER+ data in {printable(root)}", skip_bad)
    present = [name for name in ("train", "val", "test") if name != "test" or (root / FOLDERS["test"]).is_dir()]
    loaded = {}
    dropped = {}
    for name in present:
        loaded[name], dropped[name] = _load_split(root / FOLDERS[name], name, label_mode, bad, progress)
    bad.raise_if_any()
    for name, split in loaded.items():
        if len(split) == 0:
            raise DataError(
                f"FER+ {name} split {printable(root / FOLDERS[name])} has no usable images "
                f"({dropped[name]} dropped by the {label_mode.value} label rule, "
                f"{sum(1 for item in bad.items if _in_folder(item.location, root / FOLDERS[name]))} bad). "
                "Check its label.csv and images."
            )
    return Splits.from_named(
        loaded, source=SOURCE, label_mode=label_mode, location=str(root.resolve()), dropped=dropped, bad=bad.result()
    )


def _in_folder(location: str, folder: Path) -> bool:
    return location.startswith(printable(folder) + os.sep)


def _image_name_problem(image_name: str) -> str | None:
    """Why a label.csv image name cannot name a file in its split folder, or None if it can.

    FER+ names are plain file names (fer0000000.png). A name with a NUL, an
    absolute path or a ".." step would read outside the split folder (where
    the cache fingerprint does not look) or could not be opened at all.
    """
    if "\0" in image_name:
        return f"image name {shown(image_name)} holds a NUL character"
    path = Path(image_name)
    if path.is_absolute() or ".." in path.parts:
        return f"image name {shown(image_name)} leads outside the split folder; give a name inside it"
    return None


def _load_split(folder: Path, name: str, label_mode: LabelMode, bad: BadItems, progress) -> tuple[Split, int]:
    labels_path = folder / LABEL_FILE
    require_file(
        labels_path, "FER+ label file",
        "Each FER+ split folder needs the label.csv that FERPlus's generate_training_data.py writes beside the images.",
    )
    entries = []  # (image path, box, label, target, line)
    rows = 0
    dropped = 0
    seen: dict[str, int] = {}
    for line, row in csv_rows(labels_path):
        rows += 1
        where = f"{printable(labels_path)}, line {line}"
        if len(row) == ROW_COLUMNS_WITHOUT_BOX:
            row = [row[0], FULL_FACE_BOX, *row[1:]]
        if len(row) != ROW_COLUMNS:
            bad.add(
                where,
                f"expected {ROW_COLUMNS} columns (image name, face box, {VOTE_COLUMNS} vote counts) or "
                f"{ROW_COLUMNS_WITHOUT_BOX} (no face box), got {len(row)}",
            )
            continue
        image_name = row[0].strip()
        if not image_name:
            bad.add(where, "the image name is empty")
            continue
        if problem := _image_name_problem(image_name):
            bad.add(where, problem)
            continue
        if image_name in seen:
            bad.add(where, f"image {shown(image_name)} is listed twice (first on line {seen[image_name]})")
            continue
        seen[image_name] = line
        match = _BOX.match(row[1])
        if not match:
            bad.add(where, f"face box {shown(row[1])} is not of the form \"(left, top, right, bottom)\"")
            continue
        box = tuple(int(value) for value in match.groups())
        try:
            votes = parse_votes(row[2:])
        except ValueError as err:
            bad.add(where, str(err))
            continue
        if not votes.any():
            bad.add(where, f"all {VOTE_COLUMNS} vote counts are zero: the row has no label")
            continue
        rule = vote_target(votes, label_mode, name)
        if rule is None:
            dropped += 1
            continue
        entries.append((folder / image_name, box, *rule, line))
    if rows == 0:
        raise DataError(
            f"FER+ label file {printable(labels_path)} is empty: the {name} split has no images. Regenerate it."
        )

    images = np.empty((len(entries), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    keep = np.ones(len(entries), bool)
    full_box = (0, 0, IMAGE_SIZE, IMAGE_SIZE)
    for i, (image_path, box, _, _, line) in enumerate(iterate(progress, entries, len(entries), f"FER+ {name}")):
        if problem := not_a_regular_file(image_path):
            bad.add(image_path, f"{problem} (listed on line {line} of {LABEL_FILE})")
            keep[i] = False
            continue
        try:
            images[i] = read_face(image_path, box=None if box == full_box else box)
        except BadImage as err:
            bad.add(image_path, f"{err} (listed on line {line} of {LABEL_FILE})", err.__cause__)
            keep[i] = False
    labels = np.fromiter((entry[2] for entry in entries), np.int64, len(entries))
    targets = np.array([entry[3] for entry in entries], np.float32).reshape(-1, NUM_CLASSES)
    return Split(images[keep], labels[keep], targets[keep]), dropped
