"""Data loading: FER+ cold (PNG decoding) against warm (the decoded-array cache), and fer2013.csv parsing.

    python benchmarks/data_loading.py [--rounds 3] [--ferplus PATH] [--skip-ferplus] [--skip-csv]

Table 1, FER+ (`--ferplus`, by default ../shared/data/ferplus beside the repository;
skipped, with a note, when it is absent). Images are all the faces the load returns,
every split together (majority labels: the faces whose top vote is unknown or NF are
dropped before decoding, so they are neither decoded nor counted).
(a) cold, the reference: `fer.data.load(path, cache_dir=EMPTY)`, into a cache folder
    emptied before each round: the fingerprint of the source, reading and decoding every
    PNG of FER2013Train/ and FER2013Valid/, then writing the .npz entry. What a user's
    first load costs.
(b) warm: the same call again, served from the entry that (a) has just written: the
    fingerprint of the source (`fer.data.cache.fingerprint`: a walk of the folders and
    a stat of every file) and `fer.data.cache.read` (np.load of the uncompressed .npz).
    The issue's goal: under 1 s for all 32k images.
Below them, the parts, timed on their own in the same rounds: the fingerprint and the
read that make up (b), and the write (np.savez) that ends (a).

Table 2, fer2013.csv: a file of the real size, generated into a temporary folder
(35,887 rows under the header emotion,pixels,Usage: 28,709 Training, 3,589 PublicTest,
3,589 PrivateTest in that order, as in the original; 2,304 space-separated pixel values
a row; emotions 0-6 drawn with a seeded generator). The pixels are FER+ faces when
table 1 ran (its 31,940 faces, tiled in a seeded order: real images, so the digits per
value are those of the real file), seeded random values otherwise. Rows are all data
rows of the file; every method ends with the faces as uint8 48x48 arrays per split.
(a) reference: the Kaggle notebooks' way, `pandas.read_csv`, then
    `np.array(p.split(), dtype=np.uint8)` for each row's pixels, split by Usage.
(b) the same with `np.fromstring(p, dtype=np.uint8, sep=" ")` for each row: the
    faster notebook variant.
(c) the project's parser: `fer.data.load(csv, use_cache=False)` (fer.data.fer2013:
    the csv module, np.fromstring per row, and every row checked: column count,
    Usage, emotion code, 2,304 values in 0-255).
(d) the project's warm load of the same csv: `fer.data.load(csv)` served from the
    cache (filled once, untimed, before the rounds).

Every call is timed once per round and the rounds are interleaved (cold, warm, parts,
cold, ...; a, b, c, d, a, ...) so that load from other processes on the machine hits
all of them; the tables give the median round, its CPU seconds (process time, all
threads: loading is single-threaded, so on a busy machine CPU seconds are the steadier
figure) and every round. Ratios are against (a) of the same table in the same run:
absolute rates depend on the machine and whatever else it is doing. Everything runs
with a warm OS page cache (the files were read or written just before); the cache
folders are temporary, so the user's own cache (FER_CACHE_DIR, ~/.cache/fer) is never
touched. No progress bars (progress=False).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fer.data import cache, load  # noqa: E402
from fer.data.fer2013 import FER2013_TO_EMOTIONS, USAGE_TO_SPLIT  # noqa: E402
from fer.data.splits import IMAGE_SIZE  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py)

DEFAULT_FERPLUS = ROOT.parent / "shared" / "data" / "ferplus"
CSV_ROWS = {"Training": 28_709, "PublicTest": 3_589, "PrivateTest": 3_589}  # 35,887, the original's
PIXELS = IMAGE_SIZE * IMAGE_SIZE
WARM_GOAL_S = 1.0


# -- measuring -------------------------------------------------------------------------------


def timed(call):
    """(result, wall seconds, CPU seconds of this process) of one call."""
    started, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, time.perf_counter() - started, time.process_time() - cpu


def n_images(splits) -> int:
    return sum(len(split) for _, split in splits.items())


def table(title: str, unit: str, count: int, rows: dict[str, list[tuple[float, float]]], reference: str) -> None:
    """Markdown: median seconds, count/s, median CPU s, speedup against `reference`, every round."""
    ref = statistics.median(s for s, _ in rows[reference])
    width = max(map(len, rows))
    print()
    print(title)
    print()
    print(f"| {'method':<{width}} | seconds | {unit}/s | CPU s | vs (a) | rounds, seconds |")
    print(f"| {'-' * width} | ---: | ---: | ---: | ---: | --- |")
    for name, values in rows.items():
        seconds = statistics.median(s for s, _ in values)
        cpu = statistics.median(c for _, c in values)
        rounds = ", ".join(f"{s:.3f}" if s < 10 else f"{s:.1f}" for s, _ in values)
        print(f"| {name:<{width}} | {seconds:.3f} | {count / seconds:,.0f} | {cpu:.3f} "
              f"| {ref / seconds:.1f}x | {rounds} |")


# -- table 1: FER+ cold against warm ---------------------------------------------------------


def bench_ferplus(path: Path, rounds: int, work: Path):
    """Run table 1; returns the loaded Splits (their faces feed the generated csv)."""
    files = sum(1 for p in path.rglob("*") if p.is_file())
    cold_dir, parts_dir = work / "ferplus-cache", work / "ferplus-write"
    options = {"kind": "ferplus", "label_mode": "majority", "skip_bad": False}  # as fer.data.load builds them
    names = {
        "cold": "(a) cold: fingerprint + decode the PNGs + write the cache",
        "warm": "(b) warm: fingerprint + read the cache",
        "fingerprint": f"  part of (b): cache.fingerprint ({files:,} files stat-ed)",
        "read": "  part of (b): cache.read (np.load of the .npz)",
        "write": "  part of (a): cache.write (np.savez)",
    }
    times = {name: [] for name in names.values()}
    splits = None
    for round_ in range(rounds):
        shutil.rmtree(cold_dir, ignore_errors=True)
        cold, *t = timed(lambda: load(path, cache_dir=cold_dir, progress=False))
        times[names["cold"]].append(t)
        warm, *t = timed(lambda: load(path, cache_dir=cold_dir, progress=False))
        times[names["warm"]].append(t)
        key, *t = timed(lambda: cache.fingerprint([path], options))
        times[names["fingerprint"]].append(t)
        read, *t = timed(lambda: cache.read(cold_dir, key))
        times[names["read"]].append(t)
        shutil.rmtree(parts_dir, ignore_errors=True)
        _, *t = timed(lambda: cache.write(parts_dir, key, cold))
        times[names["write"]].append(t)
        if round_ == 0:  # the warm load must be the cold one, read back (and the key the one load used)
            assert read is not None, "cache.fingerprint here does not match the key fer.data.load used"
            assert [n for n, _ in cold.items()] == [n for n, _ in warm.items()]
            for (_, a), (_, b) in zip(cold.items(), warm.items()):
                assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
            splits = cold
        print(f"  FER+ round {round_ + 1}/{rounds} done", file=sys.stderr)
    shutil.rmtree(cold_dir, ignore_errors=True)
    shutil.rmtree(parts_dir, ignore_errors=True)

    images = n_images(splits)
    sizes = ", ".join(f"{name} {len(split):,}" for name, split in splits.items())
    table(f"FER+ {path}: {images:,} images ({sizes}), majority labels",
          "images", images, times, names["cold"])
    warm = [s for s, _ in times[names["warm"]]]
    median = statistics.median(warm)
    met = "MET" if median < WARM_GOAL_S else "NOT MET"
    print(f"\ngoal, warm load under {WARM_GOAL_S:.0f} s for all {images:,} images: {met} "
          f"(median {median:.3f} s; {sum(s < WARM_GOAL_S for s in warm)} of {len(warm)} rounds under)")
    return splits


# -- table 2: fer2013.csv parsing ------------------------------------------------------------


def write_fer2013_csv(path: Path, faces: np.ndarray | None, seed: int = 0) -> str:
    """The real-size fer2013.csv at `path`; says where its pixels came from."""
    rng = np.random.default_rng(seed)
    total = sum(CSV_ROWS.values())
    if faces is not None and len(faces):
        order = np.concatenate([rng.permutation(len(faces)) for _ in range(-(-total // len(faces)))])[:total]
        pixels, source = faces.reshape(len(faces), PIXELS)[order], f"FER+ faces ({len(faces):,}, tiled, seeded order)"
    else:
        pixels, source = rng.integers(0, 256, (total, PIXELS), dtype=np.uint8), "seeded random values"
    emotions = rng.integers(0, 7, total)
    tokens = [str(v).encode() for v in range(256)]
    usages = [usage for usage, count in CSV_ROWS.items() for _ in range(count)]
    with open(path, "wb") as file:
        file.write(b"emotion,pixels,Usage\n")
        for emotion, row, usage in zip(emotions.tolist(), pixels, usages):
            file.write(b"%d,%s,%s\n" % (emotion, b" ".join([tokens[v] for v in row.tolist()]), usage.encode()))
    return source


def pandas_rows(parse_row):
    """A notebook-style loader: pandas.read_csv, `parse_row` on every pixels string, split by Usage."""

    def run(csv_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        frame = pd.read_csv(csv_path)
        images = np.array([parse_row(p) for p in frame["pixels"]]).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        emotions = frame["emotion"].to_numpy()
        usage = frame["Usage"].to_numpy()
        return {name: (images[usage == u], emotions[usage == u]) for u, name in USAGE_TO_SPLIT.items()}

    return run


def bench_csv(rounds: int, work: Path, faces: np.ndarray | None) -> None:
    csv_path = work / "csv" / "fer2013.csv"
    csv_path.parent.mkdir()
    csv_cache = work / "csv-cache"
    (source, seconds, _) = timed(lambda: write_fer2013_csv(csv_path, faces))
    rows = sum(CSV_ROWS.values())
    print(f"\ngenerated {csv_path.name}: {rows:,} rows, {csv_path.stat().st_size / 1e6:.0f} MB, "
          f"pixels from {source}, in {seconds:.1f} s", file=sys.stderr)
    methods = {
        "(a) pandas.read_csv + np.array(p.split(), uint8) per row (reference)":
            pandas_rows(lambda p: np.array(p.split(), dtype=np.uint8)),
        "(b) pandas.read_csv + np.fromstring(p, uint8, sep=' ') per row":
            pandas_rows(lambda p: np.fromstring(p, dtype=np.uint8, sep=" ")),
        "(c) fer.data.load(csv, use_cache=False): the project's parser":
            lambda p: load(p, use_cache=False, progress=False),
        "(d) fer.data.load(csv), warm: served from the cache":
            lambda p: load(p, cache_dir=csv_cache, progress=False),
    }
    load(csv_path, cache_dir=csv_cache, progress=False)  # fills the cache (d) reads; untimed
    times = {name: [] for name in methods}
    for round_ in range(rounds):
        results = {}
        for name, method in methods.items():
            results[name], *t = timed(lambda: method(csv_path))
            times[name].append(t)
        if round_ == 0:  # all four return the same faces
            by_split, fromstring, project, warm = results.values()
            for name, split in project.items():
                images, emotions = by_split[name]
                assert np.array_equal(images, split.images), name
                assert np.array_equal(fromstring[name][0], images), name
                assert np.array_equal(np.take(FER2013_TO_EMOTIONS, emotions), split.labels), name
                assert np.array_equal(getattr(warm, name).images, images), name
        del results
        print(f"  csv round {round_ + 1}/{rounds} done", file=sys.stderr)
    table(f"fer2013.csv (generated, real size): {rows:,} rows, {csv_path.stat().st_size / 1e6:.0f} MB, "
          f"pixels from {source}", "rows", rows, times, next(iter(methods)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--ferplus", type=Path, default=DEFAULT_FERPLUS,
                        help=f"FER+ folder (default {DEFAULT_FERPLUS})")
    parser.add_argument("--skip-ferplus", action="store_true", help="leave out table 1 (FER+ cold / warm)")
    parser.add_argument("--skip-csv", action="store_true", help="leave out table 2 (fer2013.csv parsing)")
    args = parser.parse_args(argv)

    print(f"machine: {describe('numpy', 'pandas', 'pillow')}")
    print(f"rounds: {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="fer-bench-data-") as tmp:
        work = Path(tmp)
        os.environ["FER_CACHE_DIR"] = str(work / "default-cache")  # belt and braces: never the user's cache
        faces = None
        if args.skip_ferplus:
            pass
        elif not (args.ferplus / "FER2013Train").is_dir():
            print(f"\nFER+ table skipped: no FER+ data at {args.ferplus} (no FER2013Train/ in it); "
                  "give its folder with --ferplus PATH.")
        else:
            splits = bench_ferplus(args.ferplus.resolve(), args.rounds, work)
            faces = np.concatenate([split.images for _, split in splits.items()])
            del splits
        if not args.skip_csv:
            bench_csv(args.rounds, work, faces)


if __name__ == "__main__":
    main()
