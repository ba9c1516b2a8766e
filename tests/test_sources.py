"""The three file sources (FER+ folders, fer2013.csv, class-per-folder trees) on tiny real files.

Every test writes its own small PNGs / CSVs under tmp_path. The tests on the
real FER+ copy (../shared/data/ferplus) skip cleanly where it is absent.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer.data import EMOTIONS, DataError, LabelMode
from fer.data.fer2013 import load_fer2013_csv
from fer.data.ferplus import load_ferplus
from fer.data.folders import SYNONYMS, load_folders

REAL_FERPLUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ferplus"

E = {name: i for i, name in enumerate(EMOTIONS)}


# ---------------------------------------------------------------- helpers


def face(seed: int, size=(48, 48)) -> np.ndarray:
    """A distinct uint8 grayscale image (height x width = size[1] x size[0])."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None, **options) -> Path:
    """Any format PIL writes, chosen by the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    image = image.convert(mode) if mode else image
    image.save(path, **options)
    return path


def votes(**counts) -> list[int]:
    """10 FER+ vote columns from keyword counts, e.g. votes(neutral=6, unknown=2)."""
    order = (*EMOTIONS, "unknown", "NF")
    return [counts.get(name, 0) for name in order]


def write_label_csv(folder: Path, rows) -> Path:
    """rows: (name, votes) or raw lists of cells; a headerless FER+ label.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "label.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        for row in rows:
            if isinstance(row, tuple):
                name, vote_counts = row[0], row[1]
                box = row[2] if len(row) > 2 else "(0, 0, 48, 48)"
                writer.writerow([name, box, *vote_counts])
            else:
                writer.writerow(row)
    return path


def write_ferplus_split(folder: Path, rows, seed0=0) -> dict[str, np.ndarray]:
    """Writes a PNG for every (name, votes) row and the label.csv; returns name -> image."""
    images = {}
    for i, row in enumerate(rows):
        if isinstance(row, tuple):
            images[row[0]] = face(seed0 + i)
            save(folder / row[0], images[row[0]])
    write_label_csv(folder, rows)
    return images


TRAIN_ROWS = [
    ("fer0000000.png", votes(neutral=4, sadness=1, anger=3, disgust=2)),  # neutral
    ("fer0000001.png", votes(neutral=1, happiness=9)),  # happiness
    ("fer0000002.png", votes(neutral=2, happiness=1, unknown=7)),  # unknown: dropped in majority
    ("fer0000003.png", votes(NF=10)),  # not a face: dropped in both modes
    ("fer0000004.png", votes(surprise=3, fear=3, contempt=1)),  # tie: first max (surprise) wins
    ("fer0000005.png", votes(contempt=6, anger=4)),  # contempt
]
VALID_ROWS = [
    ("fer0000010.png", votes(sadness=10)),
    ("fer0000011.png", votes(disgust=5, anger=4, unknown=1)),
]


@pytest.fixture
def ferplus_root(tmp_path):
    root = tmp_path / "ferplus"
    images = write_ferplus_split(root / "FER2013Train", TRAIN_ROWS)
    images |= write_ferplus_split(root / "FER2013Valid", VALID_ROWS, seed0=100)
    return root, images


PIXEL_COUNT = 48 * 48


def pixels_text(array: np.ndarray) -> str:
    return " ".join(map(str, array.ravel()))


def write_fer2013(path: Path, rows, header=("emotion", "pixels", "Usage")) -> Path:
    """rows: (emotion, pixels: array or str, usage) or raw lists of cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for row in rows:
            if isinstance(row, tuple):
                emotion, pixels, usage = row
                writer.writerow([emotion, pixels if isinstance(pixels, str) else pixels_text(pixels), usage])
            else:
                writer.writerow(row)
    return path


def write_fer2013new(path: Path, rows) -> Path:
    """rows: (usage, image name, votes) or raw lists of cells."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["Usage", "Image name", *EMOTIONS, "unknown", "NF"])
        for row in rows:
            writer.writerow([row[0], row[1], *row[2]] if isinstance(row, tuple) else row)
    return path


# fer2013 code, usage: one row per code in train, two val rows, one test row.
FER2013_ROWS = [(code, "Training") for code in range(7)] + [(3, "PublicTest"), (6, "PublicTest"), (0, "PrivateTest")]


@pytest.fixture
def fer2013_csv(tmp_path):
    images = [face(200 + i) for i in range(len(FER2013_ROWS))]
    path = write_fer2013(
        tmp_path / "fer2013.csv", [(code, img, usage) for (code, usage), img in zip(FER2013_ROWS, images)]
    )
    return path, images


def assert_split_shapes(split):
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == (48, 48)
    assert split.labels.dtype == np.int64
    assert split.targets.dtype == np.float32 and split.targets.shape == (len(split), 8)
    np.testing.assert_allclose(split.targets.sum(axis=1), 1.0, rtol=1e-6)


def raises_data_error(*fragments, call):
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    return info.value


# ---------------------------------------------------------------- FER+


def test_ferplus_majority(ferplus_root):
    root, images = ferplus_root
    splits = load_ferplus(root)
    assert splits.source == "ferplus" and splits.label_mode is LabelMode.MAJORITY
    assert splits.location == str(root.resolve())
    assert splits.test is None and splits.bad == ()
    assert splits.dropped == {"train": 2, "val": 0}
    assert splits.train.labels.tolist() == [E["neutral"], E["happiness"], E["surprise"], E["contempt"]]
    assert splits.val.labels.tolist() == [E["sadness"], E["disgust"]]
    np.testing.assert_array_equal(splits.train.images[1], images["fer0000001.png"])
    np.testing.assert_array_equal(splits.val.images[0], images["fer0000010.png"])
    for _, split in splits.items():
        assert_split_shapes(split)
        np.testing.assert_array_equal(split.targets.argmax(1), split.labels)
        assert set(np.unique(split.targets)) <= {0.0, 1.0}


def test_ferplus_label_files_as_generate_training_data_writes_them_without_the_face_box(ferplus_root):
    # Microsoft's generate_training_data.py writes label.csv from fer2013new.csv: name and 10 votes, 11 columns.
    root, images = ferplus_root
    with_box = load_ferplus(root)
    for folder, rows in (("FER2013Train", TRAIN_ROWS), ("FER2013Valid", VALID_ROWS)):
        write_label_csv(root / folder, [[name, *vote_counts] for name, vote_counts in rows])
    without_box = load_ferplus(root)
    assert without_box.bad == () and without_box.dropped == with_box.dropped
    for name, split in with_box.items():
        np.testing.assert_array_equal(getattr(without_box, name).images, split.images)
        np.testing.assert_array_equal(getattr(without_box, name).targets, split.targets)


def test_ferplus_probability(ferplus_root):
    root, images = ferplus_root
    splits = load_ferplus(root, label_mode="probability")
    assert splits.label_mode is LabelMode.PROBABILITY
    # Only the NF-only row is dropped: the unknown-majority row has emotion votes.
    assert splits.dropped == {"train": 1, "val": 0}
    assert len(splits.train) == 5
    np.testing.assert_allclose(splits.train.targets[0][[0, 3, 4, 5]], [0.4, 0.1, 0.3, 0.2], rtol=1e-6)
    np.testing.assert_allclose(splits.train.targets[2][:2], [2 / 3, 1 / 3], rtol=1e-6)  # unknown votes left out
    np.testing.assert_array_equal(splits.train.images[2], images["fer0000002.png"])
    assert splits.train.labels.tolist() == [0, 1, 0, 2, 7]
    assert_split_shapes(splits.train)
    assert_split_shapes(splits.val)


def test_ferplus_validation_holds_the_same_faces_in_both_label_modes(tmp_path):
    """An unknown-majority face trains under probability labels, but is never scored: accuracy is comparable."""
    root = tmp_path / "ferplus"
    write_ferplus_split(root / "FER2013Train", TRAIN_ROWS)
    write_ferplus_split(root / "FER2013Valid", [*VALID_ROWS, ("fer0000012.png", votes(happiness=3, unknown=6))],
                        seed0=100)
    majority, probability = load_ferplus(root), load_ferplus(root, label_mode="probability")
    assert len(probability.train) == 5 and len(majority.train) == 4  # the unknown-majority training face stays
    assert probability.dropped["val"] == majority.dropped["val"] == 1
    np.testing.assert_array_equal(probability.val.images, majority.val.images)
    np.testing.assert_array_equal(probability.val.labels, majority.val.labels)
    np.testing.assert_allclose(probability.val.targets[1][[4, 5]], [4 / 9, 5 / 9], rtol=1e-6)  # soft, for the loss


def test_ferplus_test_split_and_progress(ferplus_root):
    root, _ = ferplus_root
    write_ferplus_split(root / "FER2013Test", [("fer0000020.png", votes(fear=7))], seed0=300)
    calls = []

    def progress(iterable, total, desc):
        calls.append((total, desc))
        yield from iterable

    splits = load_ferplus(root, progress=progress)
    assert splits.test.labels.tolist() == [E["fear"]]
    assert splits.dropped == {"train": 2, "val": 0, "test": 0}
    assert splits.eval_split_name == "test"
    assert [total for total, _ in calls] == [4, 2, 1]
    assert all("FER+" in desc for _, desc in calls)


def test_ferplus_other_sizes_modes_and_face_box(tmp_path):
    root = tmp_path / "fp"
    train = root / "FER2013Train"
    quadrant = np.zeros((96, 96, 3), np.uint8)
    quadrant[:48, :48] = 255  # white top-left quadrant
    save(train / "big.png", quadrant)  # RGB, 96x96
    save(train / "default_box.png", quadrant)
    halves = np.zeros((96, 96), np.uint8)
    halves[:48] = 255  # white top half, black bottom half
    save(train / "halves.png", halves)
    write_label_csv(
        train,
        [
            ("big.png", votes(neutral=1), "(0, 0, 96, 96)"),
            ("default_box.png", votes(neutral=1), "(0, 0, 48, 48)"),
            ("halves.png", votes(neutral=1), "(0, 48, 96, 96)"),  # left, top, right, bottom
        ],
    )
    write_ferplus_split(root / "FER2013Valid", VALID_ROWS)
    images = load_ferplus(root).train.images
    assert images.shape == (3, 48, 48)
    assert images[0][:20, :20].min() > 240 and images[0][-20:, -20:].max() < 15  # resized, not cropped
    # (0, 0, 48, 48) on a bigger image is FER+'s default box: the whole image is used.
    np.testing.assert_array_equal(images[1], images[0])
    assert images[2].max() < 15  # cropped to the black bottom half


def test_ferplus_missing_folders(tmp_path, ferplus_root):
    root, _ = ferplus_root
    raises_data_error("nowhere", "does not exist", "FER2013Train", call=lambda: load_ferplus(tmp_path / "nowhere"))
    raises_data_error("give its parent folder", call=lambda: load_ferplus(root / "FER2013Train"))
    (root / "FER2013Valid" / "label.csv").unlink()
    raises_data_error(str(root / "FER2013Valid" / "label.csv"), "does not exist", call=lambda: load_ferplus(root))
    for file in (root / "FER2013Valid").iterdir():
        file.unlink()
    (root / "FER2013Valid").rmdir()
    raises_data_error("FER2013Valid", "does not exist", call=lambda: load_ferplus(root))


def test_ferplus_empty_split_is_an_error_even_with_skip_bad(ferplus_root):
    root, _ = ferplus_root
    (root / "FER2013Valid" / "label.csv").write_text("")
    raises_data_error("label.csv", "empty", call=lambda: load_ferplus(root, skip_bad=True))


def test_ferplus_split_with_only_dropped_images_is_an_error(ferplus_root):
    root, _ = ferplus_root
    write_label_csv(root / "FER2013Valid", [("fer0000010.png", votes(unknown=9))])
    raises_data_error("FER2013Valid", "no usable images", "1 dropped", call=lambda: load_ferplus(root))


def test_ferplus_bad_items_fail_listing_them_all_then_skip_bad_counts_them(ferplus_root):
    root, _ = ferplus_root
    train = root / "FER2013Train"
    (train / "fer0000001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt
    (train / "fer0000004.png").unlink()  # missing
    png = (train / "fer0000005.png").read_bytes()
    (train / "fer0000005.png").write_bytes(png[: len(png) // 2])  # truncated
    with open(train / "label.csv", "a", newline="") as file:
        file.write('fer0000006.png,"(0, 0, 48, 48)",1,2,3\n')  # line 7: too few columns
        file.write(f'fer0000007.png,"(0, 0, 48, 48)",{",".join(["0"] * 10)}\n')  # line 8: all-zero votes
        file.write('fer0000008.png,"(0, 0, 48, 48)",1,x,0,0,0,0,0,0,0,0\n')  # line 9: not a number
    error = raises_data_error(
        "6 bad items",
        "label.csv, line 7",
        "expected 12 columns",
        "got 5",
        "label.csv, line 8",
        "zero",
        "label.csv, line 9",
        "'x'",
        "fer0000001.png",
        "fer0000004.png",
        "and 1 more",
        "skip_bad=True",
        call=lambda: load_ferplus(root),
    )
    assert "Traceback" not in str(error)
    splits = load_ferplus(root, skip_bad=True)
    assert len(splits.bad) == 6
    assert len(splits.train) == 1 and splits.train.labels.tolist() == [E["neutral"]]
    locations = [item.location for item in splits.bad]
    assert str(train / "fer0000004.png") in locations and str(train / "fer0000005.png") in locations
    reasons = {item.location: item.reason for item in splits.bad}
    assert reasons[str(train / "fer0000004.png")] == "the image file is missing (listed on line 5 of label.csv)"
    assert "corrupt" in reasons[str(train / "fer0000005.png")]


def test_ferplus_bad_face_box_and_duplicates(ferplus_root):
    root, _ = ferplus_root
    write_label_csv(
        root / "FER2013Valid",
        [("fer0000010.png", votes(sadness=3), "(0, 0, 60, 60)"), ("fer0000011.png", votes(anger=3), "box"),
         ("fer0000010.png", votes(sadness=3))],
    )
    raises_data_error(
        "fer0000010.png: face box (0, 0, 60, 60) does not lie inside the 48x48 image",
        "label.csv, line 2: face box 'box'",
        "label.csv, line 3: image 'fer0000010.png' is listed twice (first on line 1)",
        call=lambda: load_ferplus(root),
    )


# ---------------------------------------------------------------- fer2013.csv


def test_fer2013_seven_classes(fer2013_csv):
    path, images = fer2013_csv
    splits = load_fer2013_csv(path)
    assert splits.source == "fer2013" and splits.location == str(path.resolve())
    # codes 0 Angry .. 6 Neutral, in EMOTIONS order
    expected = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    assert splits.train.labels.tolist() == [E[name] for name in expected]
    assert splits.val.labels.tolist() == [E["happiness"], E["neutral"]]
    assert splits.test.labels.tolist() == [E["anger"]]
    assert splits.dropped == {"train": 0, "val": 0, "test": 0} and splits.bad == ()
    np.testing.assert_array_equal(splits.train.images[4], images[4])
    np.testing.assert_array_equal(splits.val.images[1], images[8])
    np.testing.assert_array_equal(splits.test.images[0], images[9])
    for _, split in splits.items():
        assert_split_shapes(split)
    assert load_fer2013_csv(path.parent).train.labels.tolist() == splits.train.labels.tolist()  # a folder works
    prob = load_fer2013_csv(path, label_mode=LabelMode.PROBABILITY)  # hard labels: one-hot either way
    np.testing.assert_array_equal(prob.train.targets, splits.train.targets)


def test_fer2013_without_test_rows_has_no_test_split(tmp_path):
    path = write_fer2013(tmp_path / "x.csv", [(3, face(1), "Training"), (4, face(2), "PublicTest")])
    splits = load_fer2013_csv(path)
    assert splits.test is None and splits.dropped == {"train": 0, "val": 0}


def test_fer2013_accepts_any_column_order_and_whitespace(tmp_path):
    # Kaggle's icml_face_data.csv variant: "emotion, Usage, pixels"
    path = write_fer2013(
        tmp_path / "icml.csv",
        [
            ["5", "Training", "  " + pixels_text(face(1)).replace(" ", "\t", 3) + " "],
            ["1", "PublicTest", pixels_text(face(2))],
        ],
        header=("emotion", " Usage", " pixels"),
    )
    splits = load_fer2013_csv(path)
    assert splits.train.labels.tolist() == [E["surprise"]]
    np.testing.assert_array_equal(splits.train.images[0], face(1))


def test_fer2013_quoted_csv_reads_like_plain(fer2013_csv, tmp_path):
    # Lines without quotes are split on commas without the csv module; a line
    # with a quote goes through it. Both must give the same faces and the same
    # line numbers, also in a file that mixes them.
    path, _ = fer2013_csv
    with open(path, newline="") as source, open(tmp_path / "quoted.csv", "w", newline="") as target:
        csv.writer(target, quoting=csv.QUOTE_ALL).writerows(csv.reader(source))
    assert (tmp_path / "quoted.csv").read_text().startswith('"emotion","pixels","Usage"')
    plain, quoted = load_fer2013_csv(path), load_fer2013_csv(tmp_path / "quoted.csv")
    for name, split in plain.items():
        np.testing.assert_array_equal(getattr(quoted, name).images, split.images)
        np.testing.assert_array_equal(getattr(quoted, name).labels, split.labels)

    rows = [
        (3, face(1), "Training"),  # line 2
        ["3", pixels_text(face(2)), 'Training "a\nb"'],  # lines 3-4: a quoted newline in one cell
        (9, face(3), "Training"),  # line 5: bad emotion
        (2, face(4), "PublicTest"),  # line 6
    ]
    for name, quoting in (("plain.csv", csv.QUOTE_MINIMAL), ("all.csv", csv.QUOTE_ALL)):
        file = tmp_path / name
        with open(file, "w", newline="") as out:
            writer = csv.writer(out, quoting=quoting)
            writer.writerow(("emotion", "pixels", "Usage"))
            writer.writerows([list(map(str, row[:1])) + [pixels_text(row[1]), row[2]] if isinstance(row, tuple)
                              else row for row in rows])
        splits = load_fer2013_csv(file, skip_bad=True)
        assert [item.location.rsplit(" ", 1)[-1] for item in splits.bad] == ["3", "5"], name
        np.testing.assert_array_equal(splits.val.images[0], face(4))


FERPLUS_NEW_ROWS = [
    ("Training", "fer0000000.png", votes(anger=6, neutral=4)),
    ("Training", "fer0000001.png", votes(disgust=1, contempt=5, unknown=4)),
    ("Training", "", votes(NF=10)),  # dropped by FER+: no image name
    ("Training", "fer0000003.png", votes(unknown=6, happiness=4)),  # majority unknown
    ("Training", "fer0000004.png", votes(fear=5, surprise=5)),
    ("Training", "fer0000005.png", votes(sadness=10)),
    ("Training", "fer0000006.png", votes(neutral=10)),
    ("PublicTest", "fer0000007.png", votes(happiness=8, surprise=2)),
    ("PublicTest", "fer0000008.png", votes(neutral=9, NF=1)),
    ("PrivateTest", "fer0000009.png", votes(anger=3, fear=4)),
]


def test_fer2013_with_ferplus_labels_beside(fer2013_csv):
    path, images = fer2013_csv
    write_fer2013new(path.parent / "fer2013new.csv", FERPLUS_NEW_ROWS)
    splits = load_fer2013_csv(path)
    assert splits.train.labels.tolist() == [E[n] for n in ("anger", "contempt", "surprise", "sadness", "neutral")]
    assert splits.val.labels.tolist() == [E["happiness"], E["neutral"]]
    np.testing.assert_array_equal(splits.train.images[2], images[4])
    assert splits.test.labels.tolist() == [E["fear"]]
    assert splits.dropped == {"train": 2, "val": 0, "test": 0}  # 1 empty name + 1 unknown majority

    prob = load_fer2013_csv(path, label_mode="probability")
    assert prob.dropped == {"train": 1, "val": 0, "test": 0}
    assert len(prob.train) == 6
    np.testing.assert_allclose(prob.train.targets[1][[E["disgust"], E["contempt"]]], [1 / 6, 5 / 6], rtol=1e-6)
    np.testing.assert_allclose(prob.train.targets[2][E["happiness"]], 1.0)
    for _, split in prob.items():
        assert_split_shapes(split)


def test_fer2013_with_explicit_ferplus_labels(fer2013_csv, tmp_path):
    path, _ = fer2013_csv
    labels = write_fer2013new(tmp_path / "elsewhere.csv", FERPLUS_NEW_ROWS)
    splits = load_fer2013_csv(path, ferplus_labels=labels)
    assert len(splits.train) == 5
    missing = tmp_path / "nope.csv"
    raises_data_error("nope.csv", "does not exist", call=lambda: load_fer2013_csv(path, ferplus_labels=missing))


def test_fer2013_ferplus_labels_must_match_rows(fer2013_csv, tmp_path):
    path, _ = fer2013_csv
    short = write_fer2013new(tmp_path / "short.csv", FERPLUS_NEW_ROWS[:-1])
    raises_data_error("10 data rows", "short.csv has 9", call=lambda: load_fer2013_csv(path, ferplus_labels=short))
    long = write_fer2013new(tmp_path / "long.csv", [*FERPLUS_NEW_ROWS, FERPLUS_NEW_ROWS[0]])
    raises_data_error("10 data rows", "long.csv has 11", call=lambda: load_fer2013_csv(path, ferplus_labels=long))
    swapped = list(FERPLUS_NEW_ROWS)
    swapped[7] = ("Training", *swapped[7][1:])
    wrong = write_fer2013new(tmp_path / "wrong.csv", swapped)
    raises_data_error(
        "fer2013.csv, line 9 has Usage 'PublicTest'",
        "wrong.csv, line 9",
        "'Training'",
        call=lambda: load_fer2013_csv(path, ferplus_labels=wrong, skip_bad=True),
    )
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("Usage,Image name,a,b\n")
    raises_data_error(
        "header.csv, line 1", "fer2013new.csv", call=lambda: load_fer2013_csv(path, ferplus_labels=bad_header)
    )


def test_fer2013_ferplus_label_file_bad_rows(fer2013_csv):
    path, _ = fer2013_csv
    rows = list(FERPLUS_NEW_ROWS)
    rows[0] = ("Training", "fer0000000.png", votes())  # line 2: all zero
    rows[4] = ["Training", "fer0000004.png", "1", "2"]  # line 6: columns
    labels = write_fer2013new(path.parent / "fer2013new.csv", rows)
    raises_data_error(
        "2 bad items", f"{labels}, line 2", "zero", f"{labels}, line 6", "expected 12 columns", "got 4",
        call=lambda: load_fer2013_csv(path),
    )
    splits = load_fer2013_csv(path, skip_bad=True)
    assert len(splits.bad) == 2 and len(splits.train) == 3


def test_fer2013_bad_rows(tmp_path):
    good = face(1)

    def with_token(position, token):  # the good pixels with one value replaced
        tokens = pixels_text(good).split()
        tokens[position - 1] = token
        return " ".join(tokens)

    rows = [
        (3, good, "Training"),  # line 2
        (3, pixels_text(good[:, 1:]) + " 1" * 47, "Training"),  # line 3: 2303 values
        (3, with_token(2, "abc"), "Training"),  # line 4: non-numeric
        (3, with_token(2304, "256"), "Training"),  # line 5: out of range
        (7, good, "Training"),  # line 6: unknown emotion
        (3, good, "Validation"),  # line 7: unknown Usage
        ["3", pixels_text(good)],  # line 8: columns
        (4, with_token(9, "-1"), "Training"),  # line 9: negative
        (2, good, "PublicTest"),  # line 10
    ]
    path = write_fer2013(tmp_path / "fer2013.csv", rows)
    raises_data_error(
        "7 bad items",
        "fer2013.csv, line 3: expected 2304 pixel values (48x48), got 2303",
        "fer2013.csv, line 4: pixel 2 is 'abc'",
        "fer2013.csv, line 5: pixel 2304 is 256, outside 0-255",
        "fer2013.csv, line 6: emotion '7'",
        "fer2013.csv, line 7: Usage 'Validation'",
        "and 2 more",
        call=lambda: load_fer2013_csv(path),
    )
    splits = load_fer2013_csv(path, skip_bad=True)
    assert len(splits.bad) == 7
    assert [item.location.rsplit(" ", 1)[-1] for item in splits.bad] == ["3", "4", "5", "6", "7", "8", "9"]
    assert "expected 3 columns" in splits.bad[5].reason
    assert "pixel 9 is '-1'" in splits.bad[6].reason
    assert len(splits.train) == 1 and len(splits.val) == 1


def test_fer2013_file_errors(tmp_path):
    raises_data_error("missing.csv", "does not exist", call=lambda: load_fer2013_csv(tmp_path / "missing.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    raises_data_error("empty.csv", "empty", call=lambda: load_fer2013_csv(empty))
    no_usage = write_fer2013(tmp_path / "train.csv", [(1, face(1), "x")], header=("emotion", "pixels"))
    raises_data_error("train.csv, line 1", "usage", call=lambda: load_fer2013_csv(no_usage))
    no_val = write_fer2013(tmp_path / "noval.csv", [(1, face(1), "Training")])
    raises_data_error("noval.csv", "PublicTest", "empty", call=lambda: load_fer2013_csv(no_val, skip_bad=True))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"emotion,pixels,Usage\n\xff\xfe\x00garbage")
    raises_data_error("binary.csv", "line 2", call=lambda: load_fer2013_csv(binary))
    unclosed = tmp_path / "unclosed.csv"  # an unclosed quote runs past the csv module's field limit
    unclosed.write_text('emotion,pixels,Usage\n1,"' + "1 " * 70_000 + ",Training\n")
    raises_data_error("unclosed.csv, line 2", "not valid CSV", call=lambda: load_fer2013_csv(unclosed))


# ---------------------------------------------------------------- class-per-folder trees


def rgb(seed, size):
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture
def folder_tree(tmp_path):
    root = tmp_path / "faces"
    save(root / "train" / "Happy" / "a.png", rgb(1, (100, 80)))  # RGB, odd size
    save(root / "train" / "Happy" / "b.JPG", rgb(2, (64, 64)), format="JPEG")  # upper-case extension
    save(root / "train" / "angry" / "c.png", face(3, (30, 30)), mode="P")  # palette, upscaled
    save(root / "train" / "SURPRISED" / "d.gif", face(4))
    save(root / "train" / "fearful" / "nested" / "e.bmp", face(5, (50, 40)))  # in a sub-folder
    save(root / "train" / "contemptuous" / "f.png", rgb(6, (48, 48)), mode="RGBA")
    (root / "train" / "Happy" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "train" / "Happy" / "._a.png").write_bytes(b"\x00\x05AppleDouble")  # macOS resource fork
    (root / "train" / "Happy" / "notes.txt").write_text("not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    save(root / "validation" / "Neutral" / "g.webp", face(7), lossless=True)
    save(root / "validation" / "sad" / "h.png", face(8))
    save(root / "test" / "disgusted" / "i.png", face(9))
    return root


def test_folders_happy_path(folder_tree):
    splits = load_folders(folder_tree)
    assert splits.source == "folders" and splits.location == str(folder_tree.resolve())
    assert splits.bad == () and splits.dropped == {"train": 0, "val": 0, "test": 0}
    # class folders in sorted order: Happy, SURPRISED, angry, contemptuous, fearful
    assert sorted(splits.train.labels.tolist()) == sorted(
        [E["happiness"], E["happiness"], E["anger"], E["surprise"], E["fear"], E["contempt"]]
    )
    assert sorted(splits.val.labels.tolist()) == [E["neutral"], E["sadness"]]
    assert splits.test.labels.tolist() == [E["disgust"]]
    for _, split in splits.items():
        assert_split_shapes(split)
    gif = splits.train.images[splits.train.labels == E["surprise"]][0]
    np.testing.assert_array_equal(gif, face(4))  # 48x48 grayscale: unchanged
    expected = np.asarray(Image.fromarray(rgb(1, (100, 80))).convert("L").resize((48, 48), Image.Resampling.BILINEAR))
    assert any(np.array_equal(image, expected) for image in splits.train.images)
    prob = load_folders(folder_tree, label_mode="probability")
    np.testing.assert_array_equal(prob.train.targets, splits.train.targets)  # one-hot


def test_folders_sixteen_bit_png(tmp_path):
    root = tmp_path / "t"
    values = np.full((48, 48), 65535, np.uint16)
    values[:24] = 32896  # 128 * 257
    save(root / "train" / "neutral" / "a.png", values)
    save(root / "train" / "neutral" / "b.png", face(1))
    save(root / "val" / "neutral" / "c.png", face(2))
    image = load_folders(root).train.images[0]
    assert image[:24].tolist() == [[128] * 48] * 24 and image[24:].min() == 255


def test_folders_synonyms_cover_all_emotions():
    assert set(SYNONYMS.values()) == set(EMOTIONS)
    for name in ("angry", "happy", "sad", "surprised", "fearful", "scared", "disgusted", "contemptuous", "calm"):
        assert name in SYNONYMS


def test_folders_unknown_class_names(folder_tree):
    (folder_tree / "train" / "bored").mkdir()
    (folder_tree / "test" / "Excited").mkdir()
    raises_data_error(
        "train/bored", "test/Excited", "accepted names", "happiness", "angry", call=lambda: load_folders(folder_tree)
    )


def test_folders_missing_and_empty(tmp_path, folder_tree):
    raises_data_error("nothing", "does not exist", call=lambda: load_folders(tmp_path / "nothing"))
    (tmp_path / "no_train" / "val").mkdir(parents=True)
    raises_data_error("No train/ folder", call=lambda: load_folders(tmp_path / "no_train"))
    (tmp_path / "empty" / "train" / "happy").mkdir(parents=True)
    raises_data_error("train", "holds no images", call=lambda: load_folders(tmp_path / "empty"))
    for file in (folder_tree / "test" / "disgusted").iterdir():
        file.unlink()
    raises_data_error("test", "holds no images", call=lambda: load_folders(folder_tree, skip_bad=True))


def test_folders_bad_images(folder_tree):
    broken = folder_tree / "train" / "Happy" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    empty = folder_tree / "train" / "angry" / "empty.png"
    empty.write_bytes(b"")
    raises_data_error("2 bad items", str(broken), str(empty), "empty (0 bytes)", call=lambda: load_folders(folder_tree))
    splits = load_folders(folder_tree, skip_bad=True)
    assert len(splits.bad) == 2 and len(splits.train) == 6


def test_folders_carve_stratified_val(tmp_path):
    root = tmp_path / "t"
    for i in range(10):
        save(root / "train" / "happy" / f"h{i}.png", face(i))
        save(root / "train" / "sad" / f"s{i}.png", face(100 + i))
    splits = load_folders(root, val_fraction=0.2, seed=3)
    assert len(splits.train) == 16 and len(splits.val) == 4 and splits.test is None
    assert np.bincount(splits.val.labels, minlength=8)[[E["happiness"], E["sadness"]]].tolist() == [2, 2]
    again = load_folders(root, val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again.val.images, splits.val.images)
    assert splits.dropped == {"train": 0, "val": 0}
    raises_data_error("val_fraction", call=lambda: load_folders(root, val_fraction=1.5))


def test_folders_carve_with_too_few_images_warns_instead_of_crashing(tmp_path):
    root = tmp_path / "t"
    for i in range(6):
        save(root / "train" / "happy" / f"h{i}.png", face(i))
    save(root / "train" / "fear" / "f.png", face(50))  # a single image: cannot be stratified
    with pytest.warns(UserWarning, match="single image"):
        splits = load_folders(root, val_fraction=0.3)
    assert len(splits.train) + len(splits.val) == 7 and E["fear"] in splits.train.labels
    tiny = tmp_path / "tiny"
    for name in ("happy", "sad", "fear"):
        save(tiny / "train" / name / "x.png", face(len(name)))
    with pytest.warns(UserWarning, match="at random"):
        splits = load_folders(tiny, val_fraction=0.3)
    assert len(splits.train) == 2 and len(splits.val) == 1
    one = tmp_path / "one"
    save(one / "train" / "happy" / "x.png", face(1))
    raises_data_error("too few", "val/ folder", call=lambda: load_folders(one))


# ---------------------------------------------------------------- the real FER+ copy


def real_ferplus():
    if not (REAL_FERPLUS / "FER2013Train" / "label.csv").is_file():
        pytest.skip(f"real FER+ data not found at {REAL_FERPLUS}")
    return REAL_FERPLUS


@pytest.mark.slow
def test_real_ferplus_majority_counts():
    root = real_ferplus()
    started = time.perf_counter()
    splits = load_ferplus(root)
    seconds = time.perf_counter() - started
    print(f"decoded real FER+ train + valid in {seconds:.1f}s")
    assert len(splits.train) == 28_385 and len(splits.val) == 3_555
    assert splits.dropped == {"train": 28_558 - 28_385, "val": 3_579 - 3_555}
    assert splits.bad == () and splits.test is None
    # README: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt
    assert splits.train.class_counts().tolist() == [10_295, 7_526, 3_557, 3_530, 2_463, 191, 655, 168]
    assert splits.train.images.dtype == np.uint8 and splits.train.images.shape == (28_385, 48, 48)
    assert 60 < splits.train.images.mean() < 200


def test_real_fer2013new_labels():
    root = real_ferplus()
    from fer.data._bad import BadItems
    from fer.data.fer2013 import _read_ferplus_labels

    bad = BadItems("real", skip_bad=False)
    entries = _read_ferplus_labels(root / "fer2013new.csv", bad)
    assert len(entries) == 35_887 and len(bad) == 0
    usages = [entry[1] for entry in entries]
    assert {u: usages.count(u) for u in set(usages)} == {"Training": 28_709, "PublicTest": 3_589, "PrivateTest": 3_589}
    assert sum(entry[2] is None for entry in entries) == 173  # empty image names: dropped by FER+
    assert entries[0][0] == 2 and entries[-1][0] == 35_888  # file lines, header = line 1
