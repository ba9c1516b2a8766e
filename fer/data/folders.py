"""Class-per-folder image trees: `train/<class>/*.png`, optional `val/` (or `validation/`) and `test/`.

Images may be any size and colour mode (RGB, RGBA, palette, 16-bit, ...) in
PNG, JPEG, BMP, GIF or WebP: each is converted to 8-bit grayscale and resized
to 48x48 (see `fer.data.images.decode_face`). Class folder names are matched to
EMOTIONS case-insensitively, with the usual synonyms (`SYNONYMS`). Without a
val/ folder, val is carved from train, stratified by class.

Links: a split or class folder may be a symlink (trees are often assembled
from links to avoid copying images), and links to folders or images inside
a class folder are followed too, as `cp -rL` or `rsync -L` would; the cache
fingerprint walks the tree the same way, so adding an image behind a link is
noticed. What a link must not do is make one folder count twice: a class
folder that resolves to a split folder, to (or into) another class folder,
or a link that leads back to a folder above it, is a DataError naming both
paths, since it would silently relabel or duplicate images.
Only regular files are read: a FIFO, socket or device named like an image is
a bad item and is never opened (opening a FIFO blocks forever).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from fer.data._bad import (
    BadImage,
    BadItems,
    Progress,
    iterate,
    not_a_regular_file,
    printable,
    require_dir,
    shown,
)
from fer.data.images import read_face
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
        raise DataError(f"No train/ folder in {printable(root)}. {layout}; class names: {', '.join(EMOTIONS)}.")
    if "val" not in split_dirs and not 0 < val_fraction < 1:
        raise DataError(
            f"{printable(root)} has no val/ folder, so val is carved from train, which needs 0 < val_fraction < 1; "
            f"got {val_fraction}. Add a val/ folder or give a fraction such as 0.1."
        )

    class_dirs = {name: _class_dirs(folder) for name, folder in split_dirs.items()}
    unknown = sorted(f"{split_dirs[name].name}/{folder.name}" for name, dirs in class_dirs.items()
                     for folder, label in dirs if label is None)
    if unknown:
        accepted = ", ".join(sorted(SYNONYMS))
        raise DataError(
            f"Unknown class folder name(s) in {printable(root)}: {', '.join(shown(name) for name in unknown[:10])}"
            f"{' and more' if len(unknown) > 10 else ''}. "
            f"Rename them to an emotion; accepted names (any case): {accepted}."
        )
    _refuse_overlapping_folders(split_dirs, [folder for dirs in class_dirs.values() for folder, _ in dirs])
    listed = {name: _list_images(dirs) for name, dirs in class_dirs.items()}
    for name, files in listed.items():
        if not files:
            raise DataError(
                f"The {name} split {printable(split_dirs[name])} holds no images (.png, .jpg, .jpeg, .bmp, .gif, .webp) "
                "in its class folders. Put images in <split>/<class>/, or remove the empty split folder."
            )

    bad = BadItems(f"image folders in {root}", skip_bad)
    decoded = {name: _decode(files, name, bad, progress) for name, files in listed.items()}
    bad.raise_if_any()
    for name, split in decoded.items():
        if len(split) == 0:
            raise DataError(f"The {name} split {printable(split_dirs[name])} has no readable images; all were bad.")

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
    for child in _children(root):
        if child.is_dir():
            by_name.setdefault(child.name.lower(), []).append(child)
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        matches = [folder for name in names for folder in by_name.get(name, [])]
        if len(matches) > 1:
            raise DataError(
                f"{printable(root)} has more than one {split} folder "
                f"({', '.join(shown(p.name) for p in matches)}); keep one."
            )
        if matches:
            found[split] = matches[0]
    return found


def _children(folder: Path) -> list[Path]:
    """The entries of `folder`, sorted; DataError (not a raw OSError) if it cannot be listed."""
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise DataError(
            f"Cannot list the folder {printable(folder)}: {err.strerror or err}. Check its permissions."
        ) from err


def _class_dirs(split_dir: Path) -> list[tuple[Path, int | None]]:
    """(class folder, EMOTIONS index or None for an unknown name) for each folder in split_dir.

    Hidden folders (".ipynb_checkpoints", "__MACOSX") and loose files are ignored.
    """
    return [
        (child, class_index(child.name))
        for child in _children(split_dir)
        if not child.name.startswith((".", "__")) and child.is_dir()
    ]


def _refuse_overlapping_folders(split_dirs: dict[str, Path], class_dirs: list[Path]) -> None:
    """DataError if, through links, a class folder is a split folder or shares images with another class folder.

    train/happy -> ../train would read every image of the split as "happy";
    val/happy -> ../train/happy would put the same faces in train and val.
    """
    real = {folder: folder.resolve() for folder in [*split_dirs.values(), *class_dirs]}
    for folder in class_dirs:
        for split_dir in split_dirs.values():
            if real[split_dir].is_relative_to(real[folder]):
                _overlap_error(folder, split_dir, real, "the split folder")
    for i, folder in enumerate(class_dirs):
        for other in class_dirs[i + 1:]:
            if real[folder].is_relative_to(real[other]) or real[other].is_relative_to(real[folder]):
                # Name the link first: it is what the user made and has to change.
                is_link = real[other] != other.absolute()
                _overlap_error(*((other, folder) if is_link else (folder, other)), real, "the class folder")


def _overlap_error(folder: Path, other: Path, real: dict[Path, Path], what: str):
    raise DataError(
        f"Class folder {printable(folder)} resolves to {printable(real[folder])}, which overlaps {what} "
        f"{printable(other)} (resolving to {printable(real[other])}): its images would be read twice or under "
        "the wrong label. Make each class folder (or the link standing for it) lead to that class's images only."
    )


def _list_images(class_dirs: list[tuple[Path, int | None]]) -> list[tuple[Path, int]]:
    """(image path, class index) for every image under each known class folder (recursively).

    Hidden files and folders (".DS_Store", "._x.jpg" from macOS, ".ipynb_checkpoints")
    and files without an image extension are ignored.
    """
    files = []
    for class_dir, label in class_dirs:
        if label is not None:
            files.extend((path, label) for path in _images_below(class_dir))
    return files


def _images_below(folder: Path, ancestors: tuple[tuple[Path, tuple[int, int]], ...] = ()) -> list[Path]:
    """Image files below `folder`: its own (sorted) first, then each subfolder's, following links.

    `ancestors` are the folders above on this path, with their (device, inode):
    a link back to one of them would loop, and is a DataError naming both.
    """
    try:
        st = os.stat(folder)
    except OSError as err:
        raise DataError(f"Cannot open the folder {printable(folder)}: {err.strerror or err}.") from err
    identity = (st.st_dev, st.st_ino)
    for above, above_identity in ancestors:
        if above_identity == identity:
            raise DataError(
                f"{printable(folder)} is a link back to the folder {printable(above)} above it, so the "
                "tree never ends. Remove the link, or replace it by a copy of what it should hold."
            )
    images = []
    subfolders = []
    try:
        with os.scandir(folder) as entries:  # d_type from the listing: no stat per image
            for entry in entries:
                if _is_dir(entry):
                    if not entry.name.startswith((".", "__")):
                        subfolders.append(Path(entry.path))
                elif not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    images.append(Path(entry.path))
    except OSError as err:
        raise DataError(f"Cannot list the folder {printable(folder)}: {err.strerror or err}.") from err
    images.sort()
    for subfolder in sorted(subfolders):
        images.extend(_images_below(subfolder, (*ancestors, (folder, identity))))
    return images


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether a listing entry is a folder, following a link; a dangling link is not one."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _decode(files: list[tuple[Path, int]], name: str, bad: BadItems, progress) -> Split:
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    keep = np.ones(len(files), bool)
    for i, (image_path, _) in enumerate(iterate(progress, files, len(files), f"images {name}")):
        if problem := not_a_regular_file(image_path):
            bad.add(image_path, problem)
            keep[i] = False
            continue
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
