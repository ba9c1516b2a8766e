"""Property tests: whatever bytes the data files hold, a load gives Splits or a DataError.

Over the three file sources (a FER+ folder with label.csv, fer2013.csv, a
class-per-folder tree), the label parser and the cache: arbitrary bytes,
truncations and small mutations of valid files. Never a raw exception, never
a hang (a hypothesis deadline per example, and an alarm in case one blocks),
and every message short. Each example writes real files in its own temporary
folder (function-scoped fixtures are not reset between examples).
"""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fer.data import DataError, Splits, cache, load
from fer.data._bad import parse_votes
from fer.data.fer2013 import load_fer2013_csv
from fer.data.ferplus import load_ferplus
from fer.data.folders import load_folders

from conftest import assert_same_splits, fails_if_blocked

PROPERTY = settings(
    max_examples=25,
    deadline=timedelta(seconds=10),  # a load of these tiny files takes well under a second
    suppress_health_check=[HealthCheck.too_slow],
)
# An error message quotes at most ~80 characters of any value; with paths and
# the five listed items it stays far below this.
MAX_MESSAGE = 3000


def splits_or_data_error(call) -> Splits | DataError:
    """The call's Splits, or the DataError it raised; any other exception fails the test."""
    with fails_if_blocked(30), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random val carve warns for tiny trees; not the point here
        try:
            splits = call()
        except DataError as err:
            assert len(str(err)) < MAX_MESSAGE, str(err)[:500]
            return err
    assert isinstance(splits, Splits)
    for name, split in splits.items():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (48, 48), name
        assert np.isfinite(split.targets).all(), name
    return splits


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """`valid` truncated, or with a few bytes flipped, inserted or deleted."""
    data = bytearray(valid)
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.sampled_from(b'\x00\n\r," ()-.9\xff\xe9a'))
        if action == "flip" and data:
            data[position] = byte
        elif action == "insert":
            data.insert(position, byte)
        elif data:
            del data[position]
    return bytes(data)


# A handful of bytes that mean something to a CSV or number parser, plus anything.
csv_like_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b",", b"\n", b'"', b"\r", b"0", b"9", b"1e999", b"-1", b"nan", b" ", b"\xff", b"\x00",
                              b"Training", b"PublicTest", b"(0, 0, 48, 48)", b"a.png", b"../a.png"]),
             max_size=60).map(b"".join),
)


# ---------------------------------------------------------------- the label parser


@PROPERTY
@given(st.lists(st.text(max_size=500), max_size=12))
def test_parse_votes_gives_counts_or_a_short_value_error(cells):
    try:
        votes = parse_votes(cells)
    except ValueError as err:
        assert len(str(err)) < 250, str(err)[:300]
        return
    assert votes.shape == (len(cells),) and (votes >= 0).all() and np.isfinite(votes.sum())


# ---------------------------------------------------------------- fer2013.csv


def valid_fer2013() -> bytes:
    rng = np.random.default_rng(0)
    rows = [("3", "Training"), ("0", "Training"), ("6", "PublicTest"), ("2", "PrivateTest")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["emotion", "pixels", "Usage"])
    for code, usage in rows:
        writer.writerow([code, " ".join(map(str, rng.integers(0, 256, 48 * 48))), usage])
    return buffer.getvalue().encode()


VALID_FER2013 = valid_fer2013()


def load_fer2013_bytes(data: bytes, labels: bytes | None = None):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fer2013.csv"
        path.write_bytes(data)
        if labels is not None:
            (Path(folder) / "fer2013new.csv").write_bytes(labels)
        return splits_or_data_error(lambda: load_fer2013_csv(path, skip_bad=True)), splits_or_data_error(
            lambda: load_fer2013_csv(path)
        )


def test_the_valid_fer2013_file_loads():
    with_skip, strict = load_fer2013_bytes(VALID_FER2013)
    assert isinstance(strict, Splits) and (len(strict.train), len(strict.val), len(strict.test)) == (2, 1, 1)


@PROPERTY
@given(st.one_of(csv_like_bytes, st.binary(max_size=300).map(lambda tail: b"emotion,pixels,Usage\n" + tail)))
def test_fer2013_arbitrary_bytes(data):
    load_fer2013_bytes(data)


@PROPERTY
@given(mutated(VALID_FER2013))
def test_fer2013_mutations_of_a_valid_file(data):
    load_fer2013_bytes(data)


FERPLUS_HEADER = b"Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
VALID_FER2013NEW = FERPLUS_HEADER + (
    b"Training,fer0.png,4,0,0,1,3,2,0,0,0,0\nTraining,fer1.png,0,10,0,0,0,0,0,0,0,0\n"
    b"PublicTest,fer2.png,0,0,9,0,0,0,0,0,1,0\nPrivateTest,,0,0,0,0,0,0,0,0,0,0\n"
)


@PROPERTY
@given(mutated(VALID_FER2013NEW))
def test_fer2013_with_mutated_ferplus_labels(labels):
    load_fer2013_bytes(VALID_FER2013, labels)


# ---------------------------------------------------------------- FER+ folders with label.csv


VALID_LABELS = {
    "FER2013Train": b'a.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0\nb.png,"(0, 0, 48, 48)",0,10,0,0,0,0,0,0,0,0\n',
    "FER2013Valid": b'c.png,"(0, 0, 48, 48)",0,0,9,0,0,0,0,0,1,0\n',
}


def load_ferplus_files(labels: dict[str, bytes], images: dict[str, bytes]):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "ferplus"
        for split, text in labels.items():
            (root / split).mkdir(parents=True)
            (root / split / "label.csv").write_bytes(text)
            for name, data in images.items():
                (root / split / name).write_bytes(data)
        return splits_or_data_error(lambda: load_ferplus(root, skip_bad=True)), splits_or_data_error(
            lambda: load_ferplus(root)
        )


GOOD_IMAGES = {name: png(i) for i, name in enumerate(("a.png", "b.png", "c.png"))}


def test_the_valid_ferplus_folder_loads():
    _, strict = load_ferplus_files(VALID_LABELS, GOOD_IMAGES)
    assert isinstance(strict, Splits) and (len(strict.train), len(strict.val)) == (2, 1)


@PROPERTY
@given(st.one_of(csv_like_bytes, mutated(VALID_LABELS["FER2013Train"])))
def test_ferplus_arbitrary_or_mutated_label_csv(train_labels):
    load_ferplus_files({**VALID_LABELS, "FER2013Train": train_labels}, GOOD_IMAGES)


@PROPERTY
@given(st.one_of(st.binary(max_size=200), mutated(GOOD_IMAGES["a.png"])))
def test_ferplus_arbitrary_or_mutated_image(image):
    load_ferplus_files(VALID_LABELS, {**GOOD_IMAGES, "a.png": image})


# ---------------------------------------------------------------- class-per-folder trees


# Names a tree may hold: odd characters, an extension in any case, and bytes that are not UTF-8.
file_names = st.one_of(
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1, max_size=20)
    .map(lambda stem: stem + ".png"),
    st.binary(min_size=1, max_size=12).filter(lambda raw: b"/" not in raw and b"\x00" not in raw)
    .map(lambda raw: raw + b".PNG"),
)


@PROPERTY
@given(st.lists(st.tuples(file_names, st.one_of(st.binary(max_size=200), mutated(png(7)))), min_size=1, max_size=4))
def test_folders_arbitrary_names_and_image_bytes(files):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "tree"
        for cls in ("happy", "sad"):
            (root / "train" / cls).mkdir(parents=True)
            for i in range(2):
                (root / "train" / cls / f"ok{i}.png").write_bytes(png(i))
        target = root / "train" / "happy"
        for name, data in files:
            raw = name if isinstance(name, bytes) else name.encode()
            if raw in (b".", b"..") or len(raw) > 200:
                continue
            with contextlib.suppress(OSError):  # a name this file system refuses
                (target / raw.decode("utf-8", "surrogateescape")).write_bytes(data)
        splits_or_data_error(lambda: load_folders(root, skip_bad=True))
        splits_or_data_error(lambda: load_folders(root))
        splits_or_data_error(lambda: load(root, cache_dir=Path(folder) / "cache", progress=False))


# ---------------------------------------------------------------- the cache


SYNTHETIC = load("synthetic:16")


@PROPERTY
@given(st.data())
def test_a_damaged_cache_entry_is_a_miss_or_the_same_data_never_different_data(data):
    with tempfile.TemporaryDirectory() as folder:
        entry = cache.write(Path(folder), "key", SYNTHETIC)
        damaged = data.draw(mutated(entry.read_bytes()))
        entry.write_bytes(damaged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cache.CacheWarning)
            read = cache.read(Path(folder), "key")
    if read is None:
        return
    assert_same_splits(read, SYNTHETIC)


@pytest.mark.parametrize("damaged", [b"", b"PK\x03\x04", b"\x00" * 100])
def test_cache_entries_that_are_no_zip_at_all_are_misses(damaged, tmp_path):
    (tmp_path / "key.npz").write_bytes(damaged)
    with pytest.warns(cache.CacheWarning, match="key.npz is unreadable"):
        assert cache.read(tmp_path, "key") is None
