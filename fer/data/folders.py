"""Class-per-folder image trees: `train/<class>/*.png`, optional `val/` (or `validation/`) and `test/`.

Images may be any size and colour mode (RGB, RGBA, palette, 16-bit, ...) in
PNG, JPEG, BMP, GIF or WebP: each is converted to 8-bit grayscale and resized
to 48x48 (see `fer.images.decode_face`). Class folder names are matched to
EMOTIONS case-insensitively, with the usual synonyms (`SYNONYMS`). Without a
val/ folder, val is carved from train, stratified by class.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from fer.data._bad import BadImage, BadItems, Progress, iterate, require_dir
from fer.images import read_face
from fer.data.splits import EMOTIONS, IMAGE_SIZE, DataError, LabelMode, Split, Splits

SOURCE = "folders"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}

# Folder name (lower case, "-" and " " read as "_") -> EMOTIONS name. Every
# EMOTIONS name maps to itself as well.
SYNONYMS = {
    "neutral": "neutral",
    "calm": "neutral",
    "happiness": "happiness",
    "happy": "happiness",
    "joy": "happiness",
    "surprise": "surprise",
    "surprised": "surprise",
    "sadness": "sadness",
    "sad": "sadness",
    "anger": "anger",
    "angry": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "afraid": "fear",
    "contempt": "contempt",
    "contemptuous": "contempt",
}
assert set(SYNONYMS.values()) == set(EMOTIONS) and all(SYNONYMS[name] == name for name in EMOTIONS)


def class_index(folder_name: str) -> int | None:
    """The EMOTIONS index a class folder name stands for, or None if it names no known emotion."""
    key = folder_name.strip().lower().replace("-", "_").replace(" ", "_")
    name = SYNONYMS.get(key)
    return None if name is None else EMOTIONS.index(name)


def load_folders(
    path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    label_mode: LabelMode | str = LabelMode.MAJORITY,
    skip_bad: bool = False,
    progress: Progress | None = None,
) -> Splits:
    """Load a class-per-folder tree at `path` (holding train/<class>/ folders).

    val/ (or validation/) and test/ are used when present; without a val
    folder, `val_fraction` of train is carved off, stratified by class, with
    `seed`. Labels are hard, so targets are one-hot in both label modes.
    Unreadable images fail the load (all listed, first 5 shown) unless
    `skip_bad`, which leaves them out and returns them in `bad`.
    """
    label_mode = LabelMode.parse(label_mode)
    root = Path(path).expanduser()
    layout = "A class-per-folder tree holds train/<class>/ image folders (and optionally val/ and test/)"
    require_dir(root, "Image folder tree", f"{layout}.")
    split_dirs = _find_split_dirs(root)
    if "train" not in split_dirs:
        raise DataError(f"No train/ folder in {root}. {layout}; class names: {', '.join(EMOTIONS)}.")
    if "val" not in split_dirs and not 0 < val_fraction < 1:
        raise DataError(
            f"{root} has no val/ folder, so val is carved from train, which needs 0 < val_fraction < 1; "
            f"got {val_fraction}. Add a val/ folder or give a fraction such as 0.1."
        )

    listed = {name: _list_images(folder) for name, folder in split_dirs.items()}
    unknown = sorted({folder for files in listed.values() for folder in files[1]})
    if unknown:
        accepted = ", ".join(sorted(SYNONYMS))
        raise DataError(
            f"Unknown class folder name(s) in {root}: {', '.join(unknown)}. "
            f"Rename them to an emotion; accepted names (any case): {accepted}."
        )
    for name, (files, _) in listed.items():
        if not files:
            raise DataError(
                f"The {name} split {split_dirs[name]} holds no images (.png, .jpg, .jpeg, .bmp, .gif, .webp) "
                "in its class folders. Put images in <split>/<class>/, or remove the empty split folder."
            )

    bad = BadItems(f"image folders in {root}", skip_bad)
    decoded = {name: _decode(files, name, bad, progress) for name, (files, _) in listed.items()}
    bad.raise_if_any()
    for name, split in decoded.items():
        if len(split) == 0:
            raise DataError(f"The {name} split {split_dirs[name]} has no readable images; all were bad.")

    train = decoded["train"]
    val = decoded.get("val")
    if val is None:
        train, val = _carve_val(train, val_fraction, seed, split_dirs["train"])
    return Splits(
        train=train,
        val=val,
        test=decoded.get("test"),
        source=SOURCE,
        label_mode=label_mode,
        location=str(root.resolve()),
        dropped={name: 0 for name in ("train", "val", "test") if name != "test" or "test" in decoded},
        bad=bad.result(),
    )


def _find_split_dirs(root: Path) -> dict[str, Path]:
    by_name: dict[str, list[Path]] = {}
    for child in sorted(root.iterdir()):
        if child.is_dir():
            by_name.setdefault(child.name.lower(), []).append(child)
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        matches = [folder for name in names for folder in by_name.get(name, [])]
        if len(matches) > 1:
            raise DataError(
                f"{root} has more than one {split} folder ({', '.join(p.name for p in matches)}); keep one."
            )
        if matches:
            found[split] = matches[0]
    return found


def _list_images(split_dir: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image path, class index) for every image under split_dir/<class>/ (recursively), and unknown class names.

    Hidden files and folders (".DS_Store", "._x.jpg" from macOS, ".ipynb_checkpoints")
    and files without an image extension are ignored.
    """
    files = []
    unknown = []
    for class_dir in sorted(split_dir.iterdir()):
        if class_dir.name.startswith((".", "__")) or not class_dir.is_dir():
            continue
        label = class_index(class_dir.name)
        if label is None:
            unknown.append(f"{split_dir.name}/{class_dir.name}")
            continue
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            for filename in sorted(filenames):
                if not filename.startswith(".") and os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                    files.append((Path(dirpath) / filename, label))
    return files, unknown


def _decode(files: list[tuple[Path, int]], name: str, bad: BadItems, progress) -> Split:
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    keep = np.ones(len(files), bool)
    for i, (image_path, _) in enumerate(iterate(progress, files, len(files), f"images {name}")):
        try:
            images[i] = read_face(image_path, exif=True)
        except BadImage as err:
            bad.add(image_path, str(err), err.__cause__)
            keep[i] = False
    labels = np.fromiter((label for _, label in files), np.int64, len(files))
    return Split.from_labels(images[keep], labels[keep])


def _carve_val(train: Split, val_fraction: float, seed: int, train_dir: Path) -> tuple[Split, Split]:
    """Split val off train, stratified by class where the class counts allow it.

    Classes with a single image cannot be in both splits; they stay in train.
    If the remaining classes still cannot be stratified (val smaller than the
    number of classes), the split is random and a warning says so.
    """
    from sklearn.model_selection import train_test_split

    n = len(train)
    n_val = int(np.ceil(n * val_fraction))
    if n < 2 or n_val >= n:
        raise DataError(
            f"{train_dir} has {n} usable image(s): too few to carve a validation split of {val_fraction:.0%} from. "
            "Add images, or add a val/ folder."
        )
    counts = np.bincount(train.labels)
    singletons = np.isin(train.labels, np.flatnonzero(counts == 1))
    pool = np.flatnonzero(~singletons)
    n_classes = len(np.unique(train.labels[pool]))
    indices = np.arange(n)
    if len(pool) >= 2 and n_classes <= n_val <= len(pool) - n_classes:
        if singletons.any():
            names = ", ".join(EMOTIONS[c] for c in np.flatnonzero(counts == 1))
            warnings.warn(
                f"{train_dir}: class(es) {names} have a single image, kept in train; "
                "val is stratified over the other classes. Add a val/ folder or more images for a fair validation.",
                stacklevel=3,
            )
        train_idx, val_idx = train_test_split(
            pool, test_size=n_val, random_state=seed, stratify=train.labels[pool]
        )
        train_idx = np.concatenate([train_idx, indices[singletons]])
    else:
        warnings.warn(
            f"{train_dir}: {n} images in {len(counts.nonzero()[0])} classes are too few for a stratified "
            f"validation split of {val_fraction:.0%}; val was drawn at random, so some classes may be missing "
            "from it. Add a val/ folder or more images for a fair validation.",
            stacklevel=3,
        )
        train_idx, val_idx = train_test_split(indices, test_size=n_val, random_state=seed)
    return train.take(np.sort(train_idx)), train.take(np.sort(val_idx))
