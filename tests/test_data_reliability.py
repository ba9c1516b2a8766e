"""Issue 18: the data sources and their cache under broken caches, odd files, links and huge values.

Each test reproduces one reported defect (the row number of the issue's table
is in its name) on real files under tmp_path, and checks the fixed behaviour:
a miss that is rebuilt with a warning, a bad item or a DataError that names the
file, never a raw traceback, a hang or a giant allocation.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fer.cli import main
from fer.data import DataError, cache, load
from fer.data._bad import MAX_SHOWN, parse_votes, shown
from fer.data.cache import CacheWarning
from fer.data.fer2013 import load_fer2013_csv
from fer.data.ferplus import load_ferplus
from fer.data.folders import load_folders

from conftest import assert_same_splits, fails_if_blocked

CLASSES = ("happy", "sad", "neutral", "angry")


def write_tree(root: Path, per_class: int = 3) -> Path:
    """train/<class>/ and val/<class>/ of small random PNGs."""
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        for split, count in (("train", per_class), ("val", 1)):
            for i in range(count):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(path)
    return root


def png_bytes(value: int = 128) -> bytes:
    """A valid 48x48 grayscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 48), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "faces")


# ---------------------------------------------------------------- row 1: broken cache entries


def _truncate(entry: Path):
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def _empty(entry: Path):
    entry.write_bytes(b"")


def _flip_a_pixel_byte(entry: Path):
    data = bytearray(entry.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the train images: the zip CRC no longer matches
    entry.write_bytes(bytes(data))


def _drop(member: str):
    def drop(entry: Path):
        with zipfile.ZipFile(entry) as source:
            kept = {name: source.read(name) for name in source.namelist() if name != member}
        with zipfile.ZipFile(entry, "w") as target:
            for name, data in kept.items():
                target.writestr(name, data)

    drop.__name__ = f"drop_{member}"
    return drop


def _meta_without_bad(entry: Path):
    with np.load(entry) as arrays:
        kept = {name: arrays[name] for name in arrays.files}
    kept["meta"] = np.array('{"source": "folders", "label_mode": "majority", "location": "x", "dropped": {}}')
    with open(entry, "wb") as file:
        np.savez(file, **kept)


BREAKAGES = [_truncate, _empty, _flip_a_pixel_byte, _drop("meta.npy"), _drop("train_labels.npy"), _meta_without_bad]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_row1_a_broken_cache_entry_is_a_warned_miss_that_is_rebuilt(breakage, tree, tmp_path, count_decodes):
    cache_dir = tmp_path / "cache"
    first = load(tree, cache_dir=cache_dir, progress=False)
    entry = next(cache_dir.glob("*.npz"))
    breakage(entry)
    with pytest.warns(CacheWarning, match=rf"Data cache entry {entry}.*loaded from the source again"):
        rebuilt = load(tree, cache_dir=cache_dir, progress=False)
    assert len(count_decodes) == 2
    assert_same_splits(rebuilt, first)
    # The entry was rewritten: the next load is a plain hit, with no warning and no decode.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = load(tree, cache_dir=cache_dir, progress=False)
    assert len(count_decodes) == 2
    assert_same_splits(again, first)


def test_row1_a_broken_entry_is_removed_even_when_the_reload_fails(tree, tmp_path):
    cache_dir = tmp_path / "cache"
    load(tree, cache_dir=cache_dir, progress=False)
    entry = next(cache_dir.glob("*.npz"))
    _empty(entry)
    with pytest.warns(CacheWarning):
        assert cache.read(cache_dir, entry.stem) is None
    assert not entry.exists()  # one warning, not one on every later load


# ---------------------------------------------------------------- row 13: failed cache writes


WRITE_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from fer.data import cache, load
splits = load("synthetic:64")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    cache.write(sys.argv[1], "key", splits)
except OSError as err:
    print("OSError", err.errno)
"""


def test_row13_a_cache_write_that_fails_leaves_no_file_behind(tmp_path):
    # A real failing write: the child may write at most 20 kB per file, like a disk that fills up.
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", WRITE_UNDER_A_FILE_SIZE_LIMIT, str(cache_dir)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OSError"), result.stdout + result.stderr
    assert list(cache_dir.iterdir()) == []


# ---------------------------------------------------------------- row 5: names that are not UTF-8


@pytest.fixture
def tree_with_a_latin1_name(tree):
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, not UTF-8: the OS hands Python a lone surrogate
    try:
        (tree / "train" / "happy" / name).write_bytes(png_bytes())
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    return tree, tree / "train" / "happy" / name


@pytest.mark.parametrize("use_cache", [True, False])
def test_row5_a_name_that_is_not_utf8_loads(tree_with_a_latin1_name, tmp_path, use_cache):
    tree, _ = tree_with_a_latin1_name
    splits = load(tree, cache_dir=tmp_path / "cache", use_cache=use_cache, skip_bad=True, progress=False)
    assert len(splits.train) + len(splits.val) == 17


def test_row5_a_bad_image_with_such_a_name_is_reported_printably(tree_with_a_latin1_name, tmp_path, monkeypatch):
    tree, image = tree_with_a_latin1_name
    image.write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        load(tree, cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert "caf\\xe9.png" in message
    message.encode("utf-8")  # printable: no lone surrogates left to fail a print
    splits = load(tree, cache_dir=tmp_path / "cache", skip_bad=True, progress=False)
    assert [item.location.rsplit("/", 1)[-1] for item in splits.bad] == ["caf\\xe9.png"]

    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["data", "inspect", str(tree), "--skip-bad", "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    assert "caf\\xe9.png" in result.output


# ---------------------------------------------------------------- row 6: blank lines do not size the array


def fer2013_rows(count: int) -> str:
    pixels = " ".join(["7"] * 48 * 48)
    usages = ["Training", "PublicTest"] * count
    return "emotion,pixels,Usage\n" + "".join(f"{i % 7},{pixels},{usages[i]}\n" for i in range(count))


@pytest.mark.slow  # a fresh Python process that imports TensorFlow, or seconds of work: not the fast lane
def test_row6_blank_lines_after_the_rows_do_not_size_the_image_array(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_text(fer2013_rows(6) + "\n" * 2_000_000)  # 2 MB of blank lines: 4.6 GB if sized by lines
    tracemalloc.start()
    try:
        splits = load_fer2013_csv(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(splits.train), len(splits.val)) == (3, 3)
    assert (splits.train.images == 7).all()
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB for 6 faces"


def test_row6_short_bad_rows_before_good_ones_still_fit(tmp_path):
    # The array is sized by the bytes a face needs: many short bad rows do not use up slots.
    path = tmp_path / "fer2013.csv"
    rows = fer2013_rows(4).splitlines(keepends=True)
    path.write_text(rows[0] + "3,1 2 3,Training\n" * 500 + "".join(rows[1:]))
    splits = load_fer2013_csv(path, skip_bad=True)
    assert (len(splits.train), len(splits.val), len(splits.bad)) == (2, 2, 500)


# ---------------------------------------------------------------- row 8: FIFOs are never opened


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def test_row8_a_fifo_in_a_class_folder_is_a_bad_item_not_a_hang(tree, tmp_path):
    pipe = fifo(tree / "train" / "happy" / "x.png")
    with fails_if_blocked():
        with pytest.raises(DataError, match=r"x\.png: is a FIFO \(named pipe\), not a regular file"):
            load_folders(tree)
        splits = load(tree, skip_bad=True, cache_dir=tmp_path / "cache", progress=False)
    assert [(item.location, "FIFO" in item.reason) for item in splits.bad] == [(str(pipe), True)]
    assert len(splits.train) == 12


def test_row8_fifos_in_place_of_label_files_and_csvs_are_refused(tmp_path):
    root = tmp_path / "ferplus"
    for folder in ("FER2013Train", "FER2013Valid"):
        fifo(root / folder / "label.csv")
    csv_pipe = fifo(tmp_path / "csv" / "fer2013.csv")
    data_pipe = fifo(tmp_path / "data")
    with fails_if_blocked():
        with pytest.raises(DataError, match=r"label\.csv' is a FIFO"):
            load_ferplus(root)
        with pytest.raises(DataError, match=r"fer2013\.csv' is a FIFO"):
            load_fer2013_csv(csv_pipe)
        with pytest.raises(DataError, match="is a FIFO"):
            load(data_pipe)


def test_row8_a_fifo_named_in_label_csv_is_a_bad_item(tmp_path):
    split = tmp_path / "ferplus" / "FER2013Train"
    valid = tmp_path / "ferplus" / "FER2013Valid"
    for folder in (split, valid):
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(png_bytes())
        (folder / "label.csv").write_text('a.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n'
                                          'p.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n')
        fifo(folder / "p.png")
    with fails_if_blocked():
        splits = load_ferplus(tmp_path / "ferplus", skip_bad=True)
    assert len(splits.train) == 1 and len(splits.bad) == 2
    assert all("FIFO" in item.reason and "line 2 of label.csv" in item.reason for item in splits.bad)


# ---------------------------------------------------------------- row 9: symlinked class folders


def test_row9_images_added_behind_a_linked_class_folder_are_noticed(tree, tmp_path, count_decodes):
    outside = tmp_path / "outside_happy"
    (tree / "train" / "happy").rename(outside)
    (tree / "train" / "happy").symlink_to(outside, target_is_directory=True)
    cache_dir = tmp_path / "cache"
    assert len(load(tree, cache_dir=cache_dir, progress=False).train) == 12
    (outside / "new.png").write_bytes(png_bytes())
    grown = load(tree, cache_dir=cache_dir, progress=False)
    assert len(count_decodes) == 2 and len(grown.train) == 13


@pytest.mark.parametrize(
    "link, target",
    [
        ("train/happy", "train"),  # would read every image of train as happy
        ("train/happy", "."),  # the whole tree as happy
        ("train/happy", "train/sad"),  # the sad faces twice, once as happy
        ("val/happy", "train/happy"),  # the same faces in train and val
    ],
)
def test_row9_a_class_folder_linked_onto_another_folder_is_an_error_naming_both(tree, tmp_path, link, target):
    shutil.rmtree(tree / link)
    (tree / link).symlink_to((tree / target).resolve(), target_is_directory=True)
    with pytest.raises(DataError) as info:
        load(tree, cache_dir=tmp_path / "cache", skip_bad=True, progress=False)
    message = str(info.value)
    assert f"Class folder {tree / link} resolves to {(tree / target).resolve()}" in message
    assert "overlaps the" in message
    assert not list((tmp_path / "cache").glob("*.npz"))


def test_row9_a_link_loop_inside_a_class_folder_is_an_error_not_endless(tree):
    (tree / "train" / "happy" / "again").symlink_to(tree / "train" / "happy", target_is_directory=True)
    with pytest.raises(DataError, match=r"again is a link back to the folder .*train/happy above it"):
        load_folders(tree)


def test_row9_linked_subfolders_and_images_inside_a_class_folder_are_read(tree, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "e.png").write_bytes(png_bytes())
    (tree / "train" / "sad" / "more").symlink_to(extra, target_is_directory=True)
    (tree / "train" / "sad" / "linked.png").symlink_to(extra / "e.png")
    assert len(load_folders(tree).train) == 14


# ---------------------------------------------------------------- row 10: huge values are quoted short


def assert_short(text: str, value: str, limit: int = 1000):
    assert value not in text and len(text) < limit, f"{len(text)} characters"


def test_row10_a_huge_header_line_is_not_echoed(tmp_path):
    header = "x" * 300_000
    path = tmp_path / "fer2013.csv"
    path.write_text(f"{header},pixels,Usage\n")
    with pytest.raises(DataError, match=r"\(300,013 characters\) lacks the column\(s\) emotion") as info:
        load_fer2013_csv(path)
    assert_short(str(info.value), header)


def test_row10_a_400_digit_vote_is_not_echoed(tmp_path):
    vote = "9" * 400
    with pytest.raises(ValueError, match=r"must be a non-negative number") as info:
        parse_votes(["1", vote])
    assert_short(str(info.value), vote)
    for folder in ("FER2013Train", "FER2013Valid"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "label.csv").write_text(f'a.png,"(0, 0, 48, 48)",{vote},0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(DataError) as info:
        load_ferplus(tmp_path)
    assert_short(str(info.value), vote)


def test_row10_every_long_cell_is_cut_in_fer2013_messages(tmp_path):
    long = "7" * 5000
    pixels = " ".join(["1"] * 2304)
    path = tmp_path / "fer2013.csv"
    path.write_text(
        "emotion,pixels,Usage\n"
        f"{long},{pixels},Training\n"  # emotion
        f"1,{pixels},{long}\n"  # Usage
        f"1,{long} {pixels},Training\n"  # a pixel: 5,000 digits, once an int() error
        f"1,{pixels},Training,{long}\n"  # columns
    )
    with pytest.raises(DataError) as info:
        load_fer2013_csv(path)
    assert "4 bad items" in str(info.value)
    assert_short(str(info.value), long, limit=2000)  # four items, each with the file's path


def test_shown_quotes_at_most_the_limit():
    assert shown("Training") == "'Training'"
    cut = shown("a" * 1000)
    assert cut.startswith("'" + "a" * MAX_SHOWN + "'") and cut.endswith("(1,000 characters)")
    assert shown(os.fsdecode(b"\xff")) == "'\\udcff'"  # printable


# ---------------------------------------------------------------- row 12: data inspect -o


@pytest.mark.parametrize(
    "output, message",
    [("/nonexistent/x.png", "the folder '/nonexistent' does not exist"), ("x.foo", "'.foo' is not an image format")],
)
def test_row12_inspect_refuses_an_unwritable_figure_path_before_loading(output, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fer.data.load", lambda *a, **k: pytest.fail("the data was loaded before -o was checked"))
    result = CliRunner().invoke(main, ["data", "inspect", "synthetic:64", "-o", output])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Invalid value for '--output'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_row12_a_figure_that_cannot_be_saved_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    # Its folder exists, so the early check passes; the disk then fills while the figure is written.
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", disk_full)
    result = CliRunner().invoke(main, ["data", "inspect", "synthetic:64", "-o", "x.png"])
    assert result.exit_code == 1, result.output
    assert "Error: Cannot write the figure to x.png: disk full" in result.output
    assert isinstance(result.exception, SystemExit)
    assert list(tmp_path.glob("x*")) == []  # nothing torn, no temporary file left
