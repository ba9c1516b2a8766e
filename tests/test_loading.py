"""`fer.data.load`: source detection, the decoded-array cache, and `fer data inspect`."""

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fer.cli import main
from fer.data import DataError, cache, describe_source, load

REAL_FERPLUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ferplus"


def write_tree(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("happy", "sad", "neutral", "angry"):
        for i in range(per_class):
            path = root / "train" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (60, 60), dtype=np.uint8)).save(path)
        path = root / "val" / cls / "v.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(path)
    return root


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "faces")


def test_sources_are_told_apart_by_what_the_path_holds(tmp_path, tree):
    assert describe_source(None) == ("synthetic", None)
    assert describe_source("synthetic:64") == ("synthetic", None)
    assert describe_source(tree) == ("folders", tree)
    (tmp_path / "ferplus" / "FER2013Train").mkdir(parents=True)
    assert describe_source(tmp_path / "ferplus")[0] == "ferplus"
    csv = tmp_path / "fer2013.csv"
    csv.write_text("emotion,pixels,Usage\n")
    assert describe_source(csv) == ("fer2013", csv)
    assert describe_source(tmp_path)[0] == "fer2013"  # a folder holding fer2013.csv


def test_unknown_or_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "stuff" / "misc").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Cannot tell what data .* found \['misc'\]"):
        load(tmp_path / "stuff")
    with pytest.raises(DataError, match="whole number N >= 8"):
        load("synthetic:lots")


def test_synthetic_default_needs_no_files():
    splits = load("synthetic:64")
    assert splits.source == "synthetic" and len(splits.train) == 64
    assert splits.train.images.dtype == np.uint8 and splits.train.images.shape[1:] == (48, 48)


def test_second_load_is_served_from_the_cache(tree, tmp_path, count_decodes):
    first = load(tree, cache_dir=tmp_path / "cache", progress=False)
    second = load(tree, cache_dir=tmp_path / "cache", progress=False)
    assert len(count_decodes) == 1
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    for (name, a), (_, b) in zip(first.items(), second.items()):
        np.testing.assert_array_equal(a.images, b.images, err_msg=name)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.targets, b.targets)
    assert (second.source, second.location, second.label_mode) == (first.source, first.location, first.label_mode)


def test_a_changed_source_or_option_is_loaded_again(tree, tmp_path, count_decodes):
    cache_dir = tmp_path / "cache"
    load(tree, cache_dir=cache_dir, progress=False)
    extra = tree / "train" / "happy" / "new.png"
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(extra)
    grown = load(tree, cache_dir=cache_dir, progress=False)
    assert len(count_decodes) == 2 and len(grown.train) + len(grown.val) == 17
    # Same size, new content: the modification time still changes the fingerprint.
    Image.fromarray(np.full((48, 48), 10, np.uint8)).save(extra)
    os.utime(extra, ns=(1, 1))
    changed = load(tree, cache_dir=cache_dir, progress=False)
    assert len(count_decodes) == 3
    assert any((img == 10).all() for img in changed.train.images)
    load(tree, cache_dir=cache_dir, progress=False, val_fraction=0.3)  # another option, another entry
    assert len(count_decodes) == 4


def test_a_corrupt_cache_entry_is_replaced_not_trusted(tree, tmp_path, count_decodes):
    cache_dir = tmp_path / "cache"
    load(tree, cache_dir=cache_dir, progress=False)
    entry = next(cache_dir.glob("*.npz"))
    entry.write_bytes(b"not a zip file")
    with pytest.warns(cache.CacheWarning, match=entry.name):
        splits = load(tree, cache_dir=cache_dir, progress=False)
    assert len(count_decodes) == 2 and len(splits.train) == 12


def test_cache_can_be_bypassed(tree, tmp_path, count_decodes):
    load(tree, cache_dir=tmp_path / "cache", use_cache=False, progress=False)
    assert not (tmp_path / "cache").exists()


def test_inspect_prints_counts_and_writes_the_figure(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    figure = tmp_path / "overview.png"
    result = CliRunner().invoke(main, ["data", "inspect", str(tree), "-o", str(figure)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert lines["happiness"][1] == "3" and lines["contempt"][1] == "0"
    assert "imbalance" in lines and "no images of" in result.output
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 800


def test_inspect_reports_bad_data_without_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FERPLUS.is_dir(), reason="real FER+ data (../shared/data/ferplus) not present")
def test_real_ferplus_is_cached_after_the_first_load(tmp_path, monkeypatch):
    first = load(REAL_FERPLUS, cache_dir=tmp_path / "cache", progress=False)
    assert (len(first.train), len(first.val)) == (28_385, 3_555)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the second load decoded the PNGs again")

    monkeypatch.setattr("fer.data.ferplus.load_ferplus", no_decoding)
    second = load(REAL_FERPLUS, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(first.train.images, second.train.images)


def _pathlib_fingerprint(paths, options):
    """The fingerprint as first written, with pathlib: the digests of caches users already hold."""
    import hashlib
    import json

    digest = hashlib.sha256()
    digest.update(json.dumps({"format": cache.CACHE_FORMAT, **options}, sort_keys=True, default=str).encode())
    for root in map(Path, paths):
        digest.update(f"{root.resolve()}\n".encode())
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def test_fingerprint_is_unchanged_so_existing_cache_entries_still_hit(tmp_path):
    root = tmp_path / "faces"
    for name in ("train/happy/b.png", "train/happy/a.png", "train/Sad/c.png", "val/x.png", ".hidden", "Z.csv"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    (root / "file-link.csv").symlink_to(root / "Z.csv")  # a file: counted
    options = {"kind": "folders", "label_mode": "majority"}
    assert cache.fingerprint([root], options) == _pathlib_fingerprint([root], options)
    assert cache.fingerprint([root / "Z.csv"], options) == _pathlib_fingerprint([root / "Z.csv"], options)
    (root / "train/Sad/c.png").write_bytes(b"changed, and longer")
    assert cache.fingerprint([root], options) == _pathlib_fingerprint([root], options)


def test_fingerprint_follows_linked_folders_as_the_loader_does(tmp_path):
    root = tmp_path / "faces"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(b"a")
    (root / "train").mkdir(parents=True)
    (root / "train" / "happy").symlink_to(elsewhere, target_is_directory=True)
    (root / "train" / "loop").symlink_to(root, target_is_directory=True)  # a cycle: walked once, not forever
    options = {"kind": "folders"}
    before = cache.fingerprint([root], options)
    (elsewhere / "b.png").write_bytes(b"b")
    assert cache.fingerprint([root], options) != before
